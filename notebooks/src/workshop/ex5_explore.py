# %% [markdown]
# # Exercise 5: diagnose a broken run, then fix it
#
# Someone trained an adapter and it learned nothing. Use two of the workbench's instruments
# to find out why, and to fix it: the **diagnostics** (`s.diagnose()`: findings in words,
# each with evidence and a suggestion) and the **learning-rate finder** (`s.find_lr()`).

# %% tags=["parameters"]
# %load ../_shared/workshop_parameters.py

STEPS = 12
BATCH_SIZE = 8
LR_STEPS = 30

# %%
import workbench as wb
from workbench.tasks.records import records_to_json

train, test = records_to_json(train_size=TRAIN_SIZE, test_size=TEST_SIZE)
s = wb.Session("runs/ex5")
s.load_model(MODEL)
report = s.load_data(train, validation=test)
# The first mistake: a cutoff at the median length, to save memory.
s.set_max_length(int(report.lengths["total"].median))
broken = s.train(lora=wb.LoRA(r=8), lr=1e-7, max_steps=STEPS, batch_size=BATCH_SIZE,
                 eval_every=STEPS, wait=True)
print(broken.status.state.value, "loss", round(broken.status.loss, 3))

# %% [markdown]
# **1.** Ask the session what went wrong. Put the `kind` of every finding in a set `FOUND`,
# and read each finding's evidence and suggestion.

# %% tags=["exercise"]
diagnosis = ...
FOUND = ...

# %% tags=["solution"]
diagnosis = s.diagnose()
for finding in diagnosis:
    print(f"[{finding.kind}] {finding.evidence}\n    -> {finding.suggestion}")
FOUND = {finding.kind for finding in diagnosis}

# %% [markdown]
# **2.** Two findings point at two settings. Load the model again (the broken run's adapter
# is still on it) and set a cutoff that cuts no answer (`report.lengths["total"].max` is the
# longest row in tokens; `None` keeps every row whole). Then run the learning-rate finder
# and set `GOOD_LR` to its suggestion.

# %% tags=["exercise"]
s.load_model(MODEL)
s.set_max_length(...)
finder = ...
GOOD_LR = ...

# %% tags=["solution"]
s.load_model(MODEL)
s.set_max_length(report.lengths["total"].max)
finder = s.find_lr(lora=wb.LoRA(r=8), batch_size=4, num_steps=LR_STEPS)
print(finder.advice)
display(finder)
GOOD_LR = finder.suggested_lr

# %% [markdown]
# **3.** Train again with `GOOD_LR` (the same steps and batch size) and diagnose the new run.
# Which findings are gone?

# %% tags=["exercise"]
fixed = ...
after = ...

# %% tags=["solution"]
fixed = s.train(lora=wb.LoRA(r=8), lr=GOOD_LR, max_steps=STEPS, batch_size=BATCH_SIZE,
                eval_every=STEPS, wait=True)
after = {finding.kind for finding in s.diagnose()}
print("before:", sorted(FOUND), "after:", sorted(after))

# %% [markdown]
# **Check.**

# %%
from workbench.exercises import check, check_defined, check_number, check_type

check_defined(globals(), "FOUND")
check_type(FOUND, set, "FOUND", "the kinds of the findings")
check({"flat_loss", "answers_cut"} <= FOUND, f"FOUND should hold the broken run's kinds: {FOUND}")
check_defined(globals(), "finder", "GOOD_LR")
check(hasattr(finder, "suggested_lr"), f"finder should be what s.find_lr(...) returns, not "
      f"{finder!r:.60}")
check_number(GOOD_LR, "GOOD_LR", positive=True)
check(finder.suggested_lr == GOOD_LR, f"GOOD_LR should be the finder's suggestion, "
      f"{finder.suggested_lr:.1e}, not {GOOD_LR!r}")
check(GOOD_LR > 1e-6, f"GOOD_LR should be well above the broken run's 1e-7, not {GOOD_LR:.1e}")
check_defined(globals(), "fixed", "after")
check(hasattr(fixed, "status"), f"fixed should be what s.train(...) returns, not {fixed!r:.60}")
check(fixed.status.state.value == "finished", "the new run should have finished")
check_type(after, set, "after", "the kinds of the new run's findings")
now = set(s.diagnose().kinds)
check(after == now, f"after should be the kinds s.diagnose() finds now, {sorted(now)}")
check("answers_cut" not in after and "end_of_turn_untrained" not in after,
      f"the new run still has {sorted(after & {'answers_cut', 'end_of_turn_untrained'})}")
print("found", sorted(FOUND), "and fixed them; the finder suggested", f"{GOOD_LR:.1e}")

# %% [markdown]
# ### Hints
# - Each finding has `kind`, `evidence` and `suggestion`; `s.diagnose()` looks at the latest
#   run, the data and the latest evaluation.
# - A loss that doesn't move from the start means the learning rate is far too low (or no
#   token is trained at all).
# - The finder's curve: the suggestion is where the loss falls fastest, well before it blows
#   up. On a short run a slightly lower rate is a safe choice too.
