# %% [markdown]
# # Exercise 1: find the data problems
#
# A colleague collected training data for the records-to-JSON task and wrote it to
# `people.jsonl`. Before training on it, find what is wrong with it, and clean it.
#
# Work through the cells; replace each `...` with your code. The last cell checks your work.
# *Hints* are at the bottom.

# %% tags=["parameters"]
# %load ../_shared/workshop_parameters.py

# %%
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
Path("runs/ex1/people.jsonl").write_text("\n".join(lines) + "\n")
print(len(lines), "lines written to runs/ex1/people.jsonl")

# %% [markdown]
# **1.** Load `runs/ex1/people.jsonl` with the held-out rows `test` as validation and a
# cutoff of 256 tokens. It fails: read the error. Then load it so that broken rows are
# skipped instead.

# %% tags=["exercise"]
report = ...  # s.load_data(...)
print(report)

# %% tags=["solution"]
try:
    s.load_data("runs/ex1/people.jsonl", validation=test, max_length=256)
except wb.DataError as err:
    print("first try:", err)
report = s.load_data("runs/ex1/people.jsonl", validation=test, max_length=256,
                     on_error="skip")
print(report)

# %% [markdown]
# **2.** Which kinds of problem are there, and how many of each? Which of them would you fix,
# and which are expected for this synthetic task?

# %% tags=["exercise"]
...

# %% tags=["solution"]
print(report.by_kind)
# small_dataset is expected: 64 rows is a small data set. The others are real problems.
for p in report.problems:
    if p.kind != "small_dataset":
        print(p)

# %% [markdown]
# **3.** Look at two flagged rows as the model sees them (`s.example(row)`; a validation row
# is `s.example(row, "validation")`). What does the model train on for each?

# %% tags=["exercise"]
...

# %% tags=["solution"]
for p in report.problems:
    if p.kind in ("empty_field", "no_trained_tokens", "truncated_answer", "too_long"):
        ex = s.example(p.row, p.split)
        print(f"{p.kind}: row {p.row}, {ex.cut} tokens cut, trains on {ex.trained_text!r}")

# %% [markdown]
# **4.** Build `clean`, a list of the good training rows (`s.example(i).row` gives the row as
# read), and load it again with the same settings.

# %% tags=["exercise"]
clean = ...
report = ...
print(report.by_kind)

# %% tags=["solution"]
serious = ("duplicate", "empty_field", "no_trained_tokens", "truncated_answer", "too_long")
drop = {p.row for p in report.problems if p.split == "train" and p.kind in serious}
leaked = {s.example(p.row, "validation").text for p in report.problems if p.kind == "leak"}
clean = [s.example(i).row for i in range(report.train)
         if i not in drop and s.example(i).text not in leaked]
report = s.load_data(clean, validation=test, max_length=256)
print(report.by_kind)

# %% [markdown]
# **Check.**

# %%
from workbench.exercises import check, check_defined, check_type

check_defined(globals(), "report", "clean")
check_type(clean, list, "clean", "a list of the good rows")
check(hasattr(report, "count"), f"report should be what s.load_data returns, not {report!r:.60}")
for kind in ("malformed", "duplicate", "leak", "empty_field", "no_trained_tokens",
             "truncated_answer", "too_long"):
    check(report.count(kind) == 0, f"the report still has {report.count(kind)} {kind} problem(s)")
check(all(row in rows for row in clean),
      "clean holds rows that are not the colleague's: build it from the rows as read")
good = len(train) - 1  # every row but the copies, the held-out one, the empty and the long
check(report.train == good, f"clean should keep every good row: {good}, not {report.train}")
print(f"clean: {report.train} training rows")

# %% [markdown]
# ### Hints
# - `on_error="skip"` keeps going past broken rows and reports them as `malformed`.
# - `report.by_kind` counts problems; each `Problem` has `kind`, `row`, `split`, `message`.
# - Duplicates are found after normalising whitespace and case.
# - A *leak* is a validation row that is also in training: it is reported on the validation
#   row, and you drop the training copy.
