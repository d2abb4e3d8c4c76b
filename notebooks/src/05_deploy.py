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
# **Time.** About 6-8 minutes on a 2-core CPU with Gemma 3 270M (training is 3 of them).

# %% tags=["parameters"]
MODEL = "gemma-3-270m"
TRAIN_SIZE = 64
TEST_SIZE = 16
EPOCHS = 2
BATCH_SIZE = 8
MAX_STEPS = None
PORT = 8000              # the local server's port (loopback only)
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
# (`ollama create mymodel -f Modelfile` with `FROM ./model.gguf`).

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
# ## 6. The run as a script
#
# When the data or the model outgrow this machine, `to_script` writes the run as a standalone
# `accelerate` training script (with its settings and the tokenized data it used) that
# reproduces it on one or several GPUs, without the workbench installed. Its README says how
# to launch it.

# %%
script = s.to_script(s.run_dir / "script")
print(sorted(p.name for p in script.iterdir()))
print((script / "README.md").read_text())
