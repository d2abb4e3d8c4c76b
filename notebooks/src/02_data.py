# %% [markdown]
# # Data: formats, templates, masks, lengths and problems
#
# Most failed fine-tunes fail on the data: a template that differs between training and
# inference, answers cut off by the length limit, every label masked, duplicates, a test set
# that leaks into training. This notebook looks at data the way the model will see it.
#
# Nothing here trains, so it runs in a minute or two (after the model's first conversion).

# %% tags=["parameters"]
MODEL = "gemma-3-270m"
TRAIN_SIZE = 64
TEST_SIZE = 16
MAX_LENGTH = 256   # the token cutoff tried in sections 4 and 5
# %load _shared/small_machine.py

# %%
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

# %% [markdown]
# ## 1. Formats
#
# `load_data` reads JSONL, JSON, CSV, Parquet, a `datasets.Dataset`, a pandas DataFrame or a
# list of dicts, and detects the format from the column names:
#
# | format | columns |
# |---|---|
# | alpaca | `instruction`, `output` (and `input`, `system`) |
# | qa | `prompt`/`question`, `answer`/`completion`/`response` |
# | chat | `messages`: `[{"role": ..., "content": ...}]` |
# | sharegpt | `conversations`: `[{"from": "human"/"gpt", "value": ...}]` |
# | text | `text` (raw text, every token trained: continued pretraining) |
#
# Every prompt/answer format becomes a chat conversation inside, so one template and one
# masking rule serve them all. A chat turn meant as context only (not trained) carries
# OpenAI's `"weight": 0`; TRL's prompt/completion message lists work too, the prompt's own
# assistant turns kept as context.

# %%
(files / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
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

# %% [markdown]
# Columns with other names? Map them to the canonical fields with `columns=`:

# %%
odd = pd.DataFrame({"q": ["What is 2 + 2?", "Capital of France?"], "a": ["4", "Paris"]})
s.load_data(odd, validation=None, columns={"prompt": "q", "answer": "a"}).format

# %% [markdown]
# ## 2. Templates
#
# A template turns a conversation into the exact text the model reads. The same template must
# be used for training and for inference; if the two renderings differ by even one token
# (a trailing space, a missing newline), the model is trained on text it never sees when
# used. `check_template` compares them token by token.
#
# By default the workbench uses the tokenizer's own chat template; Gemma 3 270M ships
# without one, so it gets the built-in `gemma` template (Gemma's `<start_of_turn>` format).

# %%
from workbench.data import TEMPLATES, check_template, render_prompt, resolve_template

conversation = [{"role": "user", "content": "What is 2 + 2?"}]
default = resolve_template(None, s.tokenizer)
print("default template:", default.name, "| built in:", sorted(TEMPLATES))
for template in [default, *(TEMPLATES[name] for name in sorted(TEMPLATES))]:
    print(f"--- {template.name}: {check_template(template, s.tokenizer).message}")
    print(render_prompt(template, s.tokenizer, conversation))

# %% [markdown]
# Choose another template with `template=` (a name, a `Template`, or Jinja text):

# %%
s.load_data(train, validation=test, template="alpaca")
print(s.example(0).text)

# %% [markdown]
# ## 3. Masks: which tokens are trained
#
# An example as the model sees it: its tokens, and for each one whether it carries a label.
# Only the answer (and the end-of-turn token after it) is trained; the prompt is masked. In
# the printout the trained tokens are in `[brackets]`.

# %%
s.load_data(train, validation=test)   # back to the default template
ex = s.example(0)
print(ex)
print("trained text:", repr(ex.trained_text))

# %%
pd.DataFrame([(t.text, t.id, t.trained, t.special) for t in ex.tokens],
             columns=["token", "id", "trained", "special"]).tail(12)

# %% [markdown]
# ## 4. Lengths and the cutoff
#
# Memory and time grow with the longest example in a batch, so a cutoff (`max_length`) keeps
# them in check. But tokens past the cutoff are lost, and since an example keeps its start,
# what it loses is its end: the answer. If part of the answer is cut, the model learns to
# stop in the middle; if all of it is, the example trains nothing. Lengths
# here are counted with the real tokenizer and template, not in words.

# %%
report = s.data_report()
print(report)

# %%
import plotly.graph_objects as go

counts, edges = report.histogram
go.Figure(go.Bar(x=list(edges[:-1]), y=list(counts)),
          layout=dict(title="total tokens per example", height=300,
                      xaxis_title="tokens", yaxis_title="examples"))

# %% [markdown]
# Try a few cutoffs and count the examples that would lose tokens. `set_max_length` tokenizes
# again with the new cutoff (the DataInspector panel has the same as a slider).

# %%
longest = report.lengths["total"].max
for cutoff in [longest // 4, longest // 2, longest, MAX_LENGTH]:
    r = s.set_max_length(cutoff)
    print(f"max_length {cutoff:>5}: {r.count('no_trained_tokens')} with no trained token, "
          f"{r.count('truncated_answer')} with a cut answer, {r.count('too_long')} too long")
s.set_max_length(None);

# %% [markdown]
# ## 5. Problems: a messy data set
#
# Real data is messier. We plant five problems in a copy of the training rows:
#
# 1. an exact duplicate,
# 2. an empty answer,
# 3. a very long row,
# 4. a held-out row copied into training (a *leak*: the evaluation would flatter the model),
# 5. one line of the JSONL file that is not valid JSON.

# %%
rows = [dict(r) for r in train]
rows.append(dict(rows[0]))                                   # 1. exact duplicate
rows.append(dict(rows[1], output=""))                        # 2. empty answer
rows.append(dict(rows[2], input=rows[2]["input"] + " She also keeps bees." * 80))  # 3. long
rows.append(dict(test[0]))                                   # 4. leak
lines = [json.dumps(r) for r in rows]
lines.insert(5, '{"instruction": "Extract the person", "output": ')  # 5. broken line
messy = files / "messy.jsonl"
messy.write_text("\n".join(lines) + "\n")
print(f"{len(rows)} rows and one broken line written to {messy}")

# %% [markdown]
# By default a malformed row stops the load with an error that names the file, the line and
# the field, and nothing is changed:

# %%
try:
    s.load_data(messy, validation=test, max_length=MAX_LENGTH)
except wb.DataError as err:
    print("DataError:", err)

# %% [markdown]
# With `on_error="skip"` the broken line is skipped and reported as a `malformed` problem,
# next to everything else the report finds:

# %%
report = s.load_data(messy, validation=test, max_length=MAX_LENGTH, on_error="skip")
print(report.by_kind)
for p in report.problems:
    print(p)

# %% [markdown]
# Each problem points at a row: look at it as the model sees it. Here the long row: its
# answer lies past the cutoff, so nothing of it is trained.

# %%
serious = ("duplicate", "empty_field", "no_trained_tokens", "truncated_answer", "too_long")
flagged = sorted({p.row for p in report.problems if p.split == "train" and p.kind in serious})
long_row = next(p.row for p in report.problems
                if p.kind in ("no_trained_tokens", "truncated_answer", "too_long"))
ex = s.example(long_row)
print(f"row {long_row}: {len(ex.tokens)} tokens kept, {ex.cut} cut, "
      f"trained text {ex.trained_text!r}")

# %% [markdown]
# Clean it: drop the flagged training rows and the leaked one (the leak is reported on the
# validation row; the training copy is its duplicate), then load again. What remains is the
# reminder that 64 examples is a small data set. (The rows share one instruction and a few
# sentence patterns; near-duplicate detection leaves text that many rows share out, so those
# patterns are not flagged.)

# %%
leaked = {s.example(p.row, "validation").text for p in report.problems if p.kind == "leak"}
clean = [s.example(i).row for i in range(report.train)
         if i not in flagged and s.example(i).text not in leaked]
report = s.load_data(clean, validation=test, max_length=MAX_LENGTH)
print(f"{len(clean)} rows kept;", report.by_kind)

# %% [markdown]
# ## 6. The DataInspector panel
#
# Everything above in one panel: browse the rows, see the token view of any example, move the
# cutoff slider over the length histogram, and click a problem to open its row.

# %%
s.inspect_data()
