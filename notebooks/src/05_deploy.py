# %% [markdown]
# # Deployment: merge, quantize, export, serve
#
# After training, the adapter is a few megabytes next to the base model. To use it elsewhere:
#
# 1. **merge** it into the base weights (one ordinary model, no `peft` needed),
# 2. **quantize** it to shrink it (4-bit or 8-bit, bitsandbytes),
# 3. **export** it as a model folder (safetensors), an adapter only, or a GGUF file for
#    llama.cpp and Ollama,
# 4. **serve** it over an OpenAI-compatible HTTP API.
#
# **Time.** About 8-10 minutes on a 2-core CPU with Gemma 3 270M (training is 3 of them, the
# two-process run of section 6 about 2).

# %% tags=["parameters"]
MODEL = "gemma-3-270m"
TRAIN_SIZE = 64
TEST_SIZE = 16
EPOCHS = 2
BATCH_SIZE = 8
MAX_STEPS = None
PORT = 8000              # the local server's port (loopback only)
SCALED_STEPS = 4         # steps of the two-process run in section 6
# %load _shared/small_machine.py

# %% [markdown]
# First a model worth deploying: the quickstart's recipe, run in blocking mode.

# %%
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

# %% [markdown]
# ## 1. Export the adapter alone
#
# Small, and loads onto the same base model anywhere with `peft`
# (or `s.load_adapter(folder)` in a session).

# %%
adapter = s.export("export/adapter", format="adapter")
sorted(p.name for p in adapter.iterdir())

# %% [markdown]
# ## 2. Merge
#
# `merge()` adds the adapter's update into the base weights. The merged model computes what
# the adapter model did (greedy answers are the same), with no adapter left.

# %%
s.merge()

# %%
after = s.generate(prompt, max_new_tokens=48)
print("same answer after merging:", after == before)

# %% [markdown]
# ## 3. Export: safetensors and GGUF
#
# The safetensors folder loads with `transformers` alone, and serves with vLLM or Text
# Generation Inference. GGUF is the format of llama.cpp and Ollama
# (`ollama create mymodel -f Modelfile` with `FROM ./model.gguf`). This one is exact
# (`f32`); `gguf_type="q8_0"` or `"q4_0"` makes it smaller, and `"q4_k_m"`, the size most
# llama.cpp and Ollama users pick, is made by llama.cpp itself (it needs llama-cpp-python).

# %%
merged = s.export("export/merged")
gguf = s.export("export/gguf", format="gguf")
for folder in [merged, gguf]:
    size = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
    print(f"{folder.name}: {size:.1f} MiB", sorted(p.name for p in folder.iterdir()))

# %% [markdown]
# ## 4. Quantize
#
# 4-bit NF4 stores each weight in about half a byte. The table shows what changes: size on
# disk, memory, speed, and how far the answers move (probe prompts answered before and
# after). On a CPU a 4-bit model is smaller but not faster; on a GPU it is both smaller and
# usually about as fast.

# %%
s.quantize("4bit")

# %% [markdown]
# ## 5. Serve
#
# `serve()` starts `transformers serve` for the exported folder on `127.0.0.1` (this machine
# only) and returns when the model answers. `usage()` prints how to call it with `curl` or
# the `openai` client, and how to serve the same folder with vLLM on a GPU host.

# %%
server = s.serve(port=PORT)
row = test[0]
print(server.chat(f"{row['instruction']}\n\n{row['input']}", max_tokens=48))

# %%
server.stop()

# %% [markdown]
# ## 6. Several processes, GPUs or machines
#
# The same `train` call scales out with one more keyword; the run then trains under
# `accelerate launch` in a group of child processes, and this notebook follows it in the same
# monitor (Pause, Stop, Evaluate now and Save now reach every process at the same step).
# The global batch, the data order and the checkpoints are the same as in one process, so the
# loss curve is the same, and a run can move between one process and several with `resume`.
#
# | you have | call |
# |---|---|
# | one GPU or a laptop | `s.train(...)` |
# | several GPUs, model fits on one | `s.train(..., processes=N)`: DDP, a copy per GPU |
# | a model too big for one GPU | `s.train(..., processes=N, fsdp=True)`: sharded |
# | several machines | `s.train(..., processes=N, machines=M, main_address=IP)` |
#
# With several machines, the command to run on each other machine is printed.
#
# Before renting GPUs, ask the memory estimate what each process will need:

# %%
for processes, fsdp in ((1, False), (8, False), (8, True)):
    est = wb.estimate_memory("mistral-7b", method="full", device="cuda", batch_size=8,
                             processes=processes, fsdp=fsdp)
    print(f"{est.title()}: {est.total / 2**30:.1f} GiB per GPU")

# %% [markdown]
# Here, two CPU processes (over gloo) train a few steps of the same recipe: on CPU this only
# shows the path (it is not faster than one process); on a machine with GPUs, one process
# per GPU is. Each process loads its own copy of the model; this notebook's copy receives the
# final weights when the run ends.

# %%
scaled = wb.Session("runs/deploy-scaled")
scaled.load_model(MODEL)
scaled.load_data(train, validation=test)
scaled_run = scaled.train(lora=wb.LoRA(r=8), lr=5e-4, max_steps=SCALED_STEPS,
                          batch_size=BATCH_SIZE, processes=2)
scaled_run

# %%
status = scaled_run.wait()
print(status.state.value, "at step", status.step, "on", scaled_run.launch.world_size, "processes")
print(scaled.generate(prompt, max_new_tokens=24))

# %% [markdown]
# ## 7. The run as a script
#
# When the data or the model outgrow this machine, `to_script` writes the run as a standalone
# `accelerate` training script (with its settings and the tokenized data it used) that
# reproduces it on one or several GPUs, without the workbench installed. Its README says how
# to launch it.

# %%
script = s.to_script(s.run_dir / "script")
print(sorted(p.name for p in script.iterdir()))
print((script / "README.md").read_text())
