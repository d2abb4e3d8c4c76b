# %% [markdown]
# # Exercise 3: tune the learning rate
#
# Find a good learning rate for LoRA on the records task with a few short runs. Each run
# trains `STEPS` steps from a fresh adapter.

# %% tags=["parameters"]
# %load ../_shared/workshop_parameters.py

STEPS = 6
BATCH_SIZE = 8

# %%
import workbench as wb
from workbench.tasks.records import records_to_json

train, test = records_to_json(train_size=TRAIN_SIZE, test_size=TEST_SIZE)


def short_run(lr):
    """Train a fresh LoRA adapter for STEPS steps at ``lr``; returns the run."""
    s = wb.Session(f"runs/ex3/lr-{lr}", verbose=False)
    s.load_model(MODEL)
    s.load_data(train, validation=test)
    return s.train(lora=wb.LoRA(r=8), lr=lr, max_steps=STEPS, batch_size=BATCH_SIZE,
                   eval_every=STEPS, wait=True)


# %% [markdown]
# **1.** Choose three learning rates spread over a wide range (factors of 10) and train a
# short run for each.

# %% tags=["exercise"]
LRS = [...]
runs = {lr: short_run(lr) for lr in LRS}

# %% tags=["solution"]
LRS = [5e-5, 5e-4, 5e-3]
runs = {lr: short_run(lr) for lr in LRS}

# %% [markdown]
# **2.** Put the runs side by side with `wb.compare([...run folders...])`. Which learning rate
# gives the lowest eval loss? Set `BEST_LR`.

# %% tags=["exercise"]
comparison = ...
BEST_LR = ...

# %% tags=["solution"]
comparison = wb.compare([run.run_dir for run in runs.values()])
display(comparison)
final = {lr: run.status.eval_loss for lr, run in runs.items()}
BEST_LR = min(final, key=final.get)
print("eval loss by lr:", final, "-> BEST_LR =", BEST_LR)

# %% [markdown]
# **3.** Discuss: would the best learning rate be the same for 10 times more steps? For full
# fine-tuning instead of LoRA?

# %% [markdown]
# **Check.**

# %%
from numbers import Real

from workbench.exercises import check, check_defined, check_number, check_type

check_defined(globals(), "LRS")
check_type(LRS, (list, tuple), "LRS", "the learning rates tried")
for i, lr in enumerate(LRS):
    check_number(lr, f"LRS[{i}]", positive=True)
check(len(set(LRS)) >= 3, f"LRS should hold three or more different rates, not {LRS}")
check(max(LRS) / min(LRS) >= 100, f"spread the rates over a wide range (factors of 10): {LRS}")
check_defined(globals(), "runs")
check_type(runs, dict, "runs", "the runs by learning rate")
for lr in runs:
    check(isinstance(lr, Real) and not isinstance(lr, bool),
          "runs should be keyed by the learning rates themselves "
          f"(runs = {{lr: short_run(lr) for lr in LRS}}), not by {type(lr).__name__} {lr!r}")
check(set(LRS) <= set(runs), f"runs has no run for {sorted(set(LRS) - set(runs))} of LRS")
for lr, run in runs.items():
    check(hasattr(run, "status"), f"runs[{lr!r}] should be what short_run returns, not {run!r:.60}")
    state = run.status.state.value
    check(state == "finished", f"the run at lr={lr!r} should have finished, not be {state}")
check_defined(globals(), "BEST_LR")
check_number(BEST_LR, "BEST_LR", positive=True)
final = {lr: run.status.eval_loss for lr, run in runs.items()}
best = min(final, key=final.get)
check(best == BEST_LR, f"BEST_LR should be the rate with the lowest eval loss, {best:g}, "
      f"not {BEST_LR!r}")
print("best learning rate:", BEST_LR)

# %% [markdown]
# ### Hints
# - `run.status.eval_loss` is the last eval loss of a run; `run.history` has all of them.
# - With only a few steps, a larger learning rate often looks best; over a long run it can
#   overshoot. LoRA usually trains well between 1e-4 and 1e-3, full fine-tuning near 1e-5.
