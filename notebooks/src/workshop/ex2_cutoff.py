# %% [markdown]
# # Exercise 2: choose the cutoff
#
# `max_length` caps the tokens per example. Memory and time grow with the longest example in
# a batch, so a few very long rows make every step expensive. But an example keeps its
# *start*: past the cutoff it loses its end, which is where the answer is. Cut into the
# answer, and the model learns to stop mid-answer; cut all of it, and the example trains
# nothing.
#
# In this data set most rows are short, and a few have a long pasted note. Choose a cutoff
# that suits the many, and decide what to do with the few.

# %% tags=["parameters"]
# %load ../_shared/workshop_parameters.py

# %%
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

# %% [markdown]
# **1.** How long is the longest example, and how long are 95% of them? Look at the report
# (`report.lengths["total"]`) or the length histogram in the DataInspector panel
# (`s.inspect_data()`).

# %% tags=["exercise"]
...

# %% tags=["solution"]
total = report.lengths["total"]
print(f"longest {total.max} tokens, 95% of examples up to {total.p95:.0f}")
s.inspect_data()

# %% [markdown]
# **2.** Choose `CUTOFF`, a multiple of 16, as small as possible, such that answers are cut in
# no more than `len(rows) // 10` examples (the rows with the long note). `s.set_max_length(n)`
# returns the report for cutoff `n`; count its `no_trained_tokens` and `truncated_answer`
# problems.

# %% tags=["exercise"]
CUTOFF = ...
checked = s.set_max_length(CUTOFF)


# %% tags=["solution"]
def answers_cut(r):
    return r.count("no_trained_tokens") + r.count("truncated_answer")


for cutoff in range(16, report.lengths["total"].max + 16, 16):
    checked = s.set_max_length(cutoff)
    if answers_cut(checked) <= len(rows) // 10:
        break
CUTOFF = cutoff
print("CUTOFF =", CUTOFF, "|", checked.by_kind)

# %% [markdown]
# **3.** The examples whose answers are cut would teach the wrong thing. Drop them (their row
# numbers are in the problems), and load the rest with `max_length=CUTOFF`. Why is dropping
# them better here than raising the cutoff?

# %% tags=["exercise"]
kept = ...
report_cut = ...

# %% tags=["solution"]
cut = {p.row for p in checked.problems if p.split == "train"
       and p.kind in ("no_trained_tokens", "truncated_answer")}
kept = [s.example(i).row for i in range(checked.train) if i not in cut]
report_cut = s.load_data(kept, validation=test, max_length=CUTOFF)
print(f"{len(kept)} rows kept;", report_cut.by_kind)
# Raising the cutoff to fit the long rows would cost memory on every step for a handful of
# examples whose extra text (the note) carries nothing the answer needs.

# %% [markdown]
# **4.** How much memory does the cutoff save? Compare `s.estimate_memory(seq_len=...)` at
# your cutoff and at the longest example, for a batch of 8.

# %% tags=["exercise"]
...

# %% tags=["solution"]
at_cutoff = s.estimate_memory(seq_len=CUTOFF, batch_size=8).total
at_longest = s.estimate_memory(seq_len=report.lengths["total"].max, batch_size=8).total
print(f"{at_cutoff / 2**30:.2f} GiB at {CUTOFF} tokens vs {at_longest / 2**30:.2f} GiB at "
      f"{report.lengths['total'].max}")

# %% [markdown]
# **Check.**

# %%
from workbench.data import PreparedData
from workbench.exercises import check, check_defined, check_number, check_type

check_defined(globals(), "CUTOFF")
check_number(CUTOFF, "CUTOFF", whole=True, positive=True)
longest = report.lengths["total"].max
check(CUTOFF % 16 == 0 and 0 < CUTOFF < longest,
      f"CUTOFF should be a multiple of 16 below the longest example ({longest}), not {CUTOFF}")
whole = PreparedData.load(rows, s.tokenizer, validation=test)  # every row, uncut
allowed = len(rows) // 10
smallest = next(c for c in range(16, longest + 16, 16)
                if whole.truncation_at(c)["answers"] <= allowed)
check(smallest == CUTOFF,
      f"CUTOFF {CUTOFF} is not the smallest multiple of 16 that cuts at most {allowed} answers")
check_defined(globals(), "kept", "report_cut")
check(hasattr(report_cut, "count"), "report_cut should be what s.load_data(...) returns")
check(report_cut.max_length == CUTOFF, f"load the kept rows with max_length={CUTOFF}")
check(report_cut.count("no_trained_tokens") + report_cut.count("truncated_answer") == 0,
      "report_cut still cuts answers: drop the rows whose answers the cutoff cuts")
check_type(kept, list, "kept", "a list of rows")
check(all(row in rows for row in kept), "kept holds rows that are not from rows")
dropped = whole.truncation_at(CUTOFF, "train")["answers"]
check(len(kept) == len(rows) - dropped,
      f"keep every row whose answer fits: {len(rows) - dropped} of them, not {len(kept)}")
print(f"cutoff {CUTOFF}: {len(kept)} of {len(rows)} rows kept, no answer cut")

# %% [markdown]
# ### Hints
# - `Problem.row` is the example's index in its split; `s.example(i).row` is the source row.
# - When very long rows are rare (a few percent), a cutoff near the 95th or 99th percentile
#   is a common starting point; then look at what those rows lose.
# - Batches are padded to their longest example: one long row makes the whole batch long.
