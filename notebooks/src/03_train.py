# %% [markdown]
# # Training: LoRA vs QLoRA, learning rate, pause / probe / resume, early stopping
#
# This notebook runs several short trainings to show what the settings do, then one longer
# run that we pause, probe and resume.
#
# **Time.** About 8-10 minutes on a 2-core CPU with Gemma 3 270M: short runs are
# `SWEEP_STEPS` steps each.

# %% tags=["parameters"]
MODEL = "gemma-3-270m"
TRAIN_SIZE = 64
TEST_SIZE = 16
BATCH_SIZE = 8
SWEEP_STEPS = 4          # steps of each short comparison run
EPOCHS = 2               # the longer run in section 4
MAX_STEPS = None         # caps the longer run (overrides EPOCHS)
PAUSE_AT = 6             # the longer run pauses after this many steps
# %load _shared/small_machine.py

# %%
import workbench as wb
from workbench.tasks.records import records_to_json

train, test = records_to_json(train_size=TRAIN_SIZE, test_size=TEST_SIZE)

# %% [markdown]
# ## 1. Hardware: what fits where
#
# `fit_table` estimates training memory for well-known models with full fine-tuning, LoRA and
# QLoRA, and compares it with the memory this machine has free (RAM on a CPU, GPU memory on a
# GPU). Use it to choose the model before downloading anything.

# %%
wb.fit_table(seq_len=256, batch_size=BATCH_SIZE)

# %% [markdown]
# ## 2. LoRA vs QLoRA
#
# QLoRA is LoRA on a base model stored in 4 bits (NF4): the frozen weights take about a
# quarter of the memory, which is what lets a 7B model train on one consumer GPU. The adapter
# itself still trains in full precision.
#
# On a CPU, 4-bit weights save memory but no time: they are dequantized at every step. And
# for a model this small the logits of the 262k-word vocabulary, not the weights, take most
# of the memory. Compare the estimates, then a few steps of each:

# %%
for method in ["lora", "qlora"]:
    est = wb.estimate_memory(MODEL, method=method, seq_len=256, batch_size=BATCH_SIZE)
    print(f"{method:>5}: {est.total / 2**30:.2f} GiB estimated")


# %%
def fmt(x):
    return "-" if x is None else f"{x:.3f}"


def short_run(name, quantization=None, **settings):
    """A fresh session and model, SWEEP_STEPS steps of training; returns the run."""
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

# %% [markdown]
# `wait=True` makes `train()` block and print a line per step, as it does in a script. The
# losses of the two runs are close: 4-bit weights cost little accuracy.
#
# ## 3. Learning rate and epochs
#
# The learning rate is the setting that matters most. Too low and the loss barely moves in
# the steps you can afford; too high and it jumps around or diverges (the workbench stops a
# run whose loss turns NaN or whose gradient explodes). Three short runs, then all of them
# side by side with `wb.compare`:

# %%
sweep = {lr: short_run(f"lr-{lr:g}", lr=lr) for lr in [5e-5, 5e-4, 5e-3]}
wb.compare([run.run_dir for run in sweep.values()])

# %% [markdown]
# **Epochs.** One epoch is one pass over the training data. With 64 examples and a batch of
# 8, an epoch is 8 steps. Small data sets need a few epochs, but every extra pass makes
# memorising easier: watch the *eval* loss (on held-out data). When it stops falling while
# the training loss keeps going down, the model is memorising, and more epochs hurt. Early
# stopping (below) ends the run at that point.
#
# ## 4. Pause, try the model, resume
#
# A longer run, started without waiting. After `PAUSE_AT` steps we pause it (the monitor's
# Pause button does the same), try the model as it is now with `s.generate`, and resume: the
# optimizer state, the learning-rate schedule and the data order carry on exactly where they
# were.
#
# The run also uses **early stopping**: it evaluates every 4 steps and stops when the eval
# loss has not improved for 2 evaluations in a row.

# %%
s = wb.Session("runs/train/main")
s.load_model(MODEL)
s.load_data(train, validation=test)
prompt = s.example(0, "validation").prompt
run = s.train(lora=wb.LoRA(r=8), lr=5e-4, epochs=EPOCHS, max_steps=MAX_STEPS,
              batch_size=BATCH_SIZE, eval_every=4, early_stopping=2,
              probes=[prompt], wait=False)
run

# %%
run.wait(step=PAUSE_AT)   # blocks until that step; the monitor's buttons keep working
run.pause()        # waits until the current step has finished
print(run)

# %%
print(test[0]["input"])
print("now:", s.generate(prompt, max_new_tokens=48))

# %%
run.resume()
status = run.wait()
print(f"{status.state.value} at step {status.step}/{status.total_steps}. {status.message}")
assert status.state.value in ("finished", "stopped"), status.error

# %% [markdown]
# The probe prompt was answered at each evaluation: the timeline shows when the model picked
# up the format. `run.history` holds every logged record (also in `history.jsonl` in the run
# folder).

# %%
for record in run.probe_history:
    print(f"step {record['step']:>3}: {record['outputs'][0][:80]!r}")

# %%
import pandas as pd

pd.DataFrame([r.__dict__ for r in run.history if r.kind in ("train", "eval")])[
    ["kind", "step", "epoch", "loss", "eval_loss", "lr", "grad_norm"]].tail(10)

# %% [markdown]
# **More controls.** `run.stop()` ends after the current step with a checkpoint;
# `run.evaluate_now()` and `run.save_now()` act at the next step boundary, even while paused.
# A run that was interrupted (the kernel died, the laptop slept) continues from its last
# complete checkpoint in a new session with `wb.Session(...).resume(run_dir)`.
