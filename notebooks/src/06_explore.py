# %% [markdown]
# # Explore: see what tuning does
#
# The quickstart trains once and compares. This notebook opens the run up, with five
# instruments that show cause and effect:
#
# 1. **A learning-rate finder**: a short sweep that plots loss against learning rate and
#    suggests one, before anything is trained.
# 2. **Plain-language diagnostics**: findings in words (overfitting, a flat loss, answers cut
#    by the cutoff...), each with its evidence and one change to try.
# 3. **A strength dial**: the adapter scaled from 0 (the base model) to 1 (tuned) and beyond,
#    on the same weights, so you can watch the JSON format appear as the dial turns.
# 4. **What each checkpoint fixed and broke**: every checkpoint answers the held-out rows;
#    a grid shows when each example first became right and whether it broke again, so the
#    best checkpoint is chosen by what it gets right, not only by its loss.
# 5. **A fork**: "what if I had lowered the learning rate here?" A new run from a checkpoint
#    of the first one, with one setting changed, drawn on the same chart.
#
# The task is the quickstart's: a one-line description of a person becomes a JSON object.
#
# **Time.** About 15-20 minutes on a 2-core laptop CPU with Gemma 3 270M (the sweep, two
# runs and six evaluations); a minute with the tiny model.

# %% [markdown]
# **Parameters.** `STEPS` is the length of the first run, `SAVE_EVERY` how often it keeps a
# checkpoint (each one becomes a column of the grid in section 5), `FORK_AT` the checkpoint
# the fork starts from and `LR_STEPS` the length of the learning-rate sweep.

# %% tags=["parameters"]
MODEL = "gemma-3-270m"  # the built-in default; or a local model folder, a .gguf file, a hub id
TRAIN_SIZE = 64          # training examples
TEST_SIZE = 16           # held-out examples
BATCH_SIZE = 8
STEPS = 24               # three passes over 64 rows at batch 8
SAVE_EVERY = 4           # a checkpoint every 4 steps: 6 checkpoints
FORK_AT = 8              # the step the fork starts from (a multiple of SAVE_EVERY)
LR_STEPS = 30            # steps of the learning-rate sweep
EVAL_LIMIT = 8           # held-out rows answered at each checkpoint
MAX_NEW_TOKENS = 48      # tokens generated per answer (the JSON needs ~35)
# %load _shared/small_machine.py

# %% [markdown]
# ## 0. Model and data
#
# The same start as the quickstart: a session, the model, the demo's training rows and the
# held-out rows as the validation split.

# %%
import workbench as wb
from workbench.tasks.records import records_to_json

s = wb.Session("runs/explore")
s.load_model(MODEL)
train, test = records_to_json(train_size=TRAIN_SIZE, test_size=TEST_SIZE)
s.load_data(train, validation=test)

# %% [markdown]
# ## 1. Which learning rate? (the LR range test)
#
# `find_lr()` trains a throwaway adapter for `LR_STEPS` steps while the learning rate grows
# exponentially from 1e-7, and records the loss at each step (Smith, 2017; fast.ai's
# `lr_find`). Too low and the loss doesn't move; too high and it blows up. The suggestion is
# where the (smoothed) loss falls fastest. Afterwards the model is exactly as it was: the
# throwaway adapter is removed.

# %%
finder = s.find_lr(lora=wb.LoRA(r=8), batch_size=4, num_steps=LR_STEPS)
finder

# %% [markdown]
# The suggestion is a starting point, not an answer. For a short run like ours a rate a bit
# below it is safe. We cap it at 1e-3, the top of LoRA's usual range.

# %%
LR = min(finder.suggested_lr, 1e-3)
print(f"training with lr={LR:.1e}")

# %% [markdown]
# ## 2. Train, keeping every checkpoint
#
# `keep_checkpoints="all"` keeps every checkpoint instead of the last two: section 5
# evaluates them all and section 6 forks from one. The monitor shows the curves and, below
# the buttons, any finding the diagnostics make while the run trains.

# %%
probe = s.example(0, "validation").prompt
run = s.train(
    lora=wb.LoRA(r=8),
    lr=LR,
    max_steps=STEPS,
    batch_size=BATCH_SIZE,
    eval_every=SAVE_EVERY,
    save_every=SAVE_EVERY,
    keep_checkpoints="all",
    probes=[probe],
)
run

# %%
status = run.wait()
assert status.state.value == "finished", status.error
print(f"{status.step} steps, loss {status.loss:.3f}, eval loss {status.eval_loss:.3f}")

# %% [markdown]
# ## 3. What went right or wrong, in words
#
# `s.diagnose()` reads the run's curves, the data report and the latest evaluation, and
# says what it finds: each finding has a `kind`, its `evidence` (the numbers) and one
# `suggestion`. An empty list means none of the rules fired. `run.diagnostics` is the same
# for the run alone, live while it trains.

# %%
diagnosis = s.diagnose()
for finding in diagnosis:
    print(f"[{finding.kind}] {finding.evidence}\n    -> {finding.suggestion}")
diagnosis

# %% [markdown]
# ## 4. The strength dial
#
# The adapter adds a small correction to every layer it touches. `set_adapter_strength(x)`
# scales that correction: 0 is the base model, 1 the tuned one, 1.5 an exaggerated one. It
# works on the same weights, so turning the dial is instant. `generate(..., chat=True)`
# wraps the message in the prompt template the model was tuned with.

# %%
message = s.example(0, "validation").prompt
for strength in (0.0, 0.5, 1.0):
    s.set_adapter_strength(strength)
    print(f"strength {strength}: {s.generate(message, MAX_NEW_TOKENS, chat=True)!r}")
s.set_adapter_strength(1.0)

# %% [markdown]
# The chat panel does the same with a slider: type a description of a person, press Send,
# move the dial and send again. *Side by side* answers with the base model and the tuned
# one at once.

# %%
s.chat(max_new_tokens=MAX_NEW_TOKENS)

# %% [markdown]
# ## 5. What each checkpoint fixed and broke
#
# Each checkpoint answers the held-out rows (the base model once). A row is *right* when its
# answer is exactly the reference JSON. In the grid, ▲ marks the checkpoint where a row first
# became right and ▼ one where it broke again. `best_step` is the checkpoint with the most
# rows right.

# %%
sweep = s.evaluate(checkpoints="all", metrics=["exact_match"], correct="exact_match",
                   limit=EVAL_LIMIT, max_new_tokens=MAX_NEW_TOKENS)
print("rows right per checkpoint:", sweep.right_counts)
print("best checkpoint: step", sweep.best_step)
sweep

# %% [markdown]
# Exporting a checkpoint is one call: the export is a standard model folder, like the
# quickstart's, made from the weights of that step. The live model is left as it was.

# %%
folder = s.export("export/best-checkpoint", checkpoint=sweep.best_step, overwrite=True)
sorted(p.name for p in folder.iterdir())

# %% [markdown]
# ## 6. A fork: what if the learning rate had been lower from step `FORK_AT` on?
#
# `run.fork(step=..., lr=...)` starts a new run from the checkpoint at that step with the
# changed settings: same adapter, same data order, different learning rate. It gets its own
# folder, and its monitor draws the parent and the fork on one chart, the fork point
# marked. (The monitor's *Fork* row does the same with a click.) Settings that define the
# adapter's shape, like the LoRA rank, can't change in a fork.

# %%
fork = run.fork(step=FORK_AT, lr=LR / 10)
fork

# %%
fork_status = fork.wait()
print(f"parent: eval loss {run.status.eval_loss:.3f}; "
      f"fork (lr {LR / 10:.1e} from step {FORK_AT}): eval loss {fork_status.eval_loss:.3f}")

# %% [markdown]
# ## Where next
#
# - Turn the dial past 1 on a message unlike the training data: when does the format start
#   to hurt the answer?
# - Fork again with more epochs instead of a lower learning rate (`run.fork(step=FORK_AT,
#   max_steps=2 * STEPS)`) and compare the curves.
# - Workshop exercise 5 (`workshop/ex5_explore.ipynb`) asks a class to use the finder and the
#   diagnostics on a deliberately broken run.
