# %% [markdown]
# # Evaluation: metrics, base vs tuned, human ratings, comparing runs
#
# A falling loss says the model fits the training data; it does not say the answers are
# good. This notebook trains two adapters (a good learning rate and a too-low one), scores
# both against the base model on held-out data, rates answers blind, and compares the runs.
#
# **Time.** About 8-10 minutes on a 2-core CPU with Gemma 3 270M.

# %% tags=["parameters"]
MODEL = "gemma-3-270m"
TRAIN_SIZE = 64
TEST_SIZE = 16
EPOCHS = 2
BATCH_SIZE = 8
MAX_STEPS = None
EVAL_LIMIT = None
MAX_NEW_TOKENS = 48
# %load _shared/small_machine.py

# %%
import json

import workbench as wb
from workbench.tasks.records import records_to_json

train, test = records_to_json(train_size=TRAIN_SIZE, test_size=TEST_SIZE)
s = wb.Session("runs/evaluate")
s.load_model(MODEL)
s.load_data(train, validation=test)
good = s.train(lora=wb.LoRA(r=8), lr=5e-4, epochs=EPOCHS, max_steps=MAX_STEPS,
               batch_size=BATCH_SIZE, eval_every=4, wait=True)

# %% [markdown]
# ## 1. Metrics
#
# Built-in metrics work offline (they ship with the workbench):
#
# | metric | measures | scale |
# |---|---|---|
# | `exact_match` | the answer equals the reference (after stripping spaces) | 0-1 |
# | `rouge` | word overlap (rouge1, rouge2, rougeL, rougeLsum) | 0-1 |
# | `bleu`, `chrf` | n-gram / character overlap, corpus level | 0-100 |
# | `perplexity` | how surprised the model is by the reference answer | lower is better |
#
# Overlap metrics reward answers that look like the reference; for structured output,
# metrics that check the structure say more. Any function
# `f(prediction, reference) -> float` is a metric: here, valid JSON and the share of fields
# right.

# %%
# %load _shared/json_valid.py


# %load _shared/fields_correct.py


print(json_valid('{"name": "Ada"}', ""), fields_correct(
    '{"name": "Ada", "age": 36, "city": null, "job": "baker"}',
    '{"name": "Ada", "age": 36, "city": "Oslo", "job": "baker"}'))

# %% [markdown]
# ## 2. Base vs tuned
#
# The base model is the same weights with the adapter switched off. Each score comes with a
# 95% bootstrap interval and the gain; with 16 examples the intervals are wide, which is the
# honest answer to "is it better?".

# %%
ev = s.evaluate(metrics=["exact_match", "rouge", "chrf", "perplexity", json_valid,
                         fields_correct],
                limit=EVAL_LIMIT, max_new_tokens=MAX_NEW_TOKENS)
print(ev.wait())  # in a notebook evaluate() returns at once; wait() blocks for the scores

# %% [markdown]
# The panel: *Scores* (with intervals), *Examples* (sorted by gain or loss, each with the
# word differences between base and tuned), *Tokens* (per-token loss of the reference: what
# the model still finds surprising) and *Human eval*.

# %%
ev.panel()

# %% [markdown]
# Rows sorted by gain over the base model, smallest first: where tuning helped least (or
# hurt), the first ones to read:

# %%
for row in ev.sorted_rows(by="fields_correct", descending=False)[:3]:
    print(f"reference: {row.reference}\ntuned:     {row.tuned}\nbase:      {row.base}\n")

# %% [markdown]
# ## 3. Blind human ratings
#
# Metrics miss things people notice. The rating panel shows the two answers to each prompt
# as **A** and **B** in a random order, never saying which is tuned, so your preference can't
# bias you. Each click is written to `ratings.jsonl` in the evaluation folder at once.

# %%
from workbench.widgets import ABRating

ABRating(ev).widget

# %% [markdown]
# The same from code: `ev.rater()` gives the next blind pair and records a verdict (`"A"`,
# `"B"` or `"tie"`, an optional 1-5 score and a comment). Here we rate one pair as an example.

# %%
rater = ev.rater()
pair = rater.current()
if pair is not None:
    index, prompt, answer_a, answer_b = pair
    print(f"A: {answer_a}\nB: {answer_b}")
    rater.rate("tie", comment="rated from code in 04_evaluate")
ev.ratings_summary()

# %% [markdown]
# ## 4. Reload an evaluation later
#
# Evaluations are saved under the session's `evaluations/` folder: settings, scores, every
# answer, and the ratings. Load one without any model, e.g. in another notebook next week:

# %%
again = wb.Evaluation.load(ev.path)
print(again.path)
print(again.ratings_summary())

# %% [markdown]
# ## 5. Compare runs
#
# A second adapter, trained at a learning rate ten times lower. We skip the base model this
# time (`compare_base=False`): it is the same as before. Saving each evaluation into its run
# folder lets `wb.compare` show losses and scores side by side.

# %%
good_ev = ev.save(good.run_dir / "evaluation")
s.load_model(MODEL)   # a fresh base for a fresh adapter
low = s.train(lora=wb.LoRA(r=8), lr=5e-5, epochs=EPOCHS, max_steps=MAX_STEPS,
              batch_size=BATCH_SIZE, eval_every=4, wait=True)
low_ev = s.evaluate(metrics=["exact_match", json_valid, fields_correct], compare_base=False,
                    limit=EVAL_LIMIT, max_new_tokens=MAX_NEW_TOKENS).save(
                        low.run_dir / "evaluation")

# %%
wb.compare([good.run_dir, low.run_dir])
