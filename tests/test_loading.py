"""Loading models from folders, GGUF files and hub ids, quantized or not, and bad specs."""

from __future__ import annotations

import http.server
import os
import shutil
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import workbench as wb
from workbench.models.loading import load_model, resolve_source


def quiet(message: str) -> None:
    pass


def test_folder_loads_in_float32_on_cpu(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir), on_event=quiet)
    assert loaded.source.kind == "folder"
    assert loaded.dtype == "float32" and loaded.device == "cpu"
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert loaded.tokenizer.pad_token is not None


@pytest.mark.parametrize(
    ("quantization", "layer_class"), [("4bit", "Linear4bit"), ("8bit", "Linear8bitLt")]
)
def test_quantized_loading_on_cpu_runs_forward_and_backward(
    tiny_model_dir, quantization, layer_class
):
    loaded = load_model(str(tiny_model_dir), quantization=quantization, on_event=quiet)
    q_proj = loaded.model.model.layers[0].self_attn.q_proj
    assert type(q_proj).__name__ == layer_class
    if quantization == "4bit":
        assert q_proj.weight.quant_state.quant_type == "nf4"
        assert q_proj.weight.quant_state.nested  # double quantization (QLoRA recipe)
        assert q_proj.compute_dtype == torch.float32  # never bf16 compute on CPU
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(loaded.model, LoraConfig(r=4, target_modules="all-linear"))
    ids = loaded.tokenizer("hello world", return_tensors="pt").input_ids
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_unknown_spec_says_what_is_accepted():
    with pytest.raises(wb.ModelLoadError, match="unknown model spec 'gemma-9-270m'.*built-in"):
        load_model("gemma-9-270m", on_event=quiet)


def test_missing_path(tmp_path):
    missing = tmp_path / "nope" / "model"
    with pytest.raises(wb.ModelLoadError, match="does not exist"):
        load_model(str(missing), on_event=quiet)


def test_folder_without_weights(tmp_path, tiny_model_dir):
    shutil.copy(tiny_model_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(wb.ModelLoadError, match=r"no \*\.safetensors weights"):
        load_model(str(tmp_path), on_event=quiet)


def test_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(wb.ModelLoadError, match="no config.json"):
        load_model(str(tmp_path), on_event=quiet)


def test_pickle_only_checkpoint_is_refused(tmp_path, tiny_model_dir):
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, tmp_path / name)
    from safetensors.torch import load_file

    torch.save(load_file(tiny_model_dir / "model.safetensors"), tmp_path / "pytorch_model.bin")
    expected = r"pickle weights \(pytorch_model.bin\).*safetensors"
    with pytest.raises(wb.ModelLoadError, match=expected):
        load_model(str(tmp_path), on_event=quiet)


def test_file_that_is_not_gguf(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"this is not a gguf file at all" * 10)
    with pytest.raises(wb.ModelLoadError, match="not a readable GGUF file"):
        load_model(str(fake), on_event=quiet)


def _gguf_kv(key: bytes, value_type: int, value: bytes) -> bytes:
    return struct.pack("<Q", len(key)) + key + struct.pack("<I", value_type) + value


def _gguf_string(length: int, text: bytes = b"") -> bytes:
    return struct.pack("<Q", length) + text


_ARCH = _gguf_kv(b"general.architecture", 8, _gguf_string(5, b"llama"))


@pytest.mark.parametrize(
    ("header", "claim"),
    [
        (struct.pack("<IQQ", 3, 2**62, 1) + _ARCH, "4,611,686,018,427,387,904 tensors"),
        (struct.pack("<IQQ", 3, 0, 2**62) + _ARCH, "4,611,686,018,427,387,904 metadata keys"),
        (
            struct.pack("<IQQ", 3, 0, 1)
            + _gguf_kv(b"general.architecture", 8, _gguf_string(2**60)),
            "the value of 'general.architecture' of 1,152,921,504,606,846,976 bytes",
        ),
        (
            struct.pack("<IQQ", 3, 0, 2)
            + _ARCH
            + _gguf_kv(b"tokens", 9, struct.pack("<IQ", 4, 2**40)),
            "the value of 'tokens', an array of 1,099,511,627,776 items",
        ),
    ],
    ids=["tensors", "keys", "string", "array"],
)
def test_a_gguf_header_claiming_more_than_the_file_holds_is_refused_at_once(
    tmp_path, header, claim
):
    # gguf's reader believed the array's count: a minute of allocating, then a SystemError
    path = tmp_path / "claims.gguf"
    path.write_bytes(b"GGUF" + header + b"\0" * 64)
    with pytest.raises(wb.ModelLoadError) as caught:
        load_model(str(path), on_event=quiet)
    assert str(caught.value).startswith(f"{path} is not a readable GGUF file (it claims {claim}, ")
    assert "damaged, cut short or not a GGUF model" in str(caught.value)


def test_a_gguf_header_of_arrays_nested_thousands_deep_is_refused(tmp_path):
    path = tmp_path / "nested.gguf"
    nested = struct.pack("<IQ", 9, 1) * 5000 + struct.pack("<IQ", 0, 0)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 2) + _ARCH + _gguf_kv(b"deep", 9, nested))
    with pytest.raises(wb.ModelLoadError, match=r"\(arrays nested in arrays thousands deep\)\.$"):
        load_model(str(path), on_event=quiet)


def test_a_gguf_error_shows_the_files_bytes_escaped(tmp_path):
    key = b"general.\x00\x1b[2Jname"  # a NUL and a terminal's clear-screen
    path = tmp_path / "odd-key.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _gguf_kv(key, 8, _gguf_string(2**60)))
    with pytest.raises(wb.ModelLoadError) as caught:
        load_model(str(path), on_event=quiet)
    message = str(caught.value)
    assert "\x00" not in message and "\x1b" not in message
    assert r"the value of 'general.\x00\x1b[2Jname' of 1,152,921,504,606,846,976 bytes" in message


def test_gguf_of_an_architecture_transformers_cannot_read(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), arch="rwkv-odd")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(wb.ModelLoadError, match="'rwkv-odd' model, which transformers can't read"):
        load_model(str(path), on_event=quiet)


def test_missing_gguf_file(tmp_path):
    with pytest.raises(wb.ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "absent.gguf"), on_event=quiet)


def test_a_gguf_export_folder_loads_its_model_gguf(tmp_path, tiny_model_dir):
    # load_model("export/gguf") said "has no config.json, so it is not a transformers model
    # folder"; a folder named "x.gguf" (a model folder) said "GGUF file ... does not exist".
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    folder = s.export("export/gguf", format="gguf")
    said: list[str] = []
    loaded = load_model(str(folder), on_event=said.append)
    assert loaded.source.kind == "gguf" and loaded.source.spec == str(folder / "model.gguf")
    assert any("one GGUF file: loading model.gguf" in line for line in said)
    plain = shutil.copytree(tiny_model_dir, tmp_path / "named.gguf")  # a model folder
    assert load_model(str(plain), on_event=quiet).source.kind == "folder"


@pytest.mark.parametrize("word", ["4-bit", "int4", "nf4", "16bit"])
def test_unknown_quantization_word(tiny_model_dir, word):
    with pytest.raises(wb.SpecError, match=f"quantization='{word}' is not one of"):
        load_model(str(tiny_model_dir), quantization=word, on_event=quiet)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_is_refused_on_cpu(tiny_model_dir, dtype):
    with pytest.raises(wb.SpecError, match="400x slower"):
        load_model(str(tiny_model_dir), dtype=dtype, device="cpu", on_event=quiet)


def test_bad_dtype_and_device(tiny_model_dir):
    with pytest.raises(wb.SpecError, match="dtype='fp8'"):
        load_model(str(tiny_model_dir), dtype="fp8", on_event=quiet)
    with pytest.raises(wb.SpecError, match="device='gpu0'"):
        load_model(str(tiny_model_dir), device="gpu0", on_event=quiet)


def test_4bit_without_bitsandbytes_names_the_fix(tiny_model_dir):
    # A None entry in sys.modules makes `import bitsandbytes` fail exactly as if the package
    # were not installed; a subprocess keeps it away from the other tests.
    code = (
        "import sys; sys.modules['bitsandbytes'] = None\n"
        "import workbench as wb\n"
        "try:\n"
        f"    wb.Session({str(tiny_model_dir)!r} + '-run', verbose=False)"
        f".load_model({str(tiny_model_dir)!r}, quantization='4bit')\n"
        "except wb.DependencyError as err:\n"
        "    print('DependencyError:', err)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "DependencyError: quantization='4bit' needs bitsandbytes" in result.stdout, result.stderr
    assert "pip install bitsandbytes" in result.stdout


class _Answers(http.server.BaseHTTPRequestHandler):
    """Answers every request with the status in the server's ``status`` (a proxy saying no)."""

    def do_HEAD(self):
        self.send_response(self.server.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def answering_server():
    """``start(status)``: a local HTTP server answering ``status``; its port."""
    servers = []

    def start(status: int) -> int:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
        server.status = status
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.server_address[1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "why",
    ["HF_HUB_OFFLINE", "no answer", "hung", "proxy", "proxy wants credentials", "bad gateway"],
)
def test_hub_id_without_network_explains(monkeypatch, answering_server, why):
    import socket

    from huggingface_hub import constants

    from workbench.models.hub import PROXY_VARIABLES

    for name in (*PROXY_VARIABLES, "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    if why == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        reason = "HF_HUB_OFFLINE is set"
    elif why == "no answer":  # nothing listens there: what a machine without the hub sees
        monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
        reason = "127.0.0.1:9 does not answer (Connection refused)"
    elif why == "hung":  # takes the connection, never replies (the hub client would retry)
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
        reason = f"127.0.0.1:{port} does not answer (no reply within 3 s)"
    elif why == "proxy":  # the proxy the environment names is the way out, and it is down
        monkeypatch.setattr(constants, "ENDPOINT", "http://hub.example")
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
        reason = "hub.example:80 does not answer (Connection refused, through the proxy in "
    elif why == "proxy wants credentials":  # the proxy answers in the hub's place
        monkeypatch.setattr(constants, "ENDPOINT", "http://hub.example")
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{answering_server(407)}")
        reason = (
            "hub.example:80 does not answer (the proxy in HTTP_PROXY answered "
            "407 Proxy Authentication Required)"
        )
    else:  # a gateway in front of a hub mirror cannot reach it
        port = answering_server(502)
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
        reason = f"127.0.0.1:{port} does not answer (a gateway in front of it answered 502 Bad"
    assert resolve_source("someone/some-model", quiet).kind == "hub"
    messages: list[str] = []
    with pytest.raises(wb.ModelLoadError, match="no model hub is reachable here") as caught:
        load_model("someone/some-model", on_event=messages.append)
    assert reason in str(caught.value)
    assert "has no usable copy of it" in str(caught.value)
    assert "pass its folder" in str(caught.value)
    assert messages[-1].startswith(f"no model hub here ({reason}")


@pytest.mark.parametrize("status", [200, 401, 404, 500])
def test_any_answer_of_the_hub_itself_counts_as_reachable(monkeypatch, answering_server, status):
    """What the hub says about a model is the hub client's to report, not a missing network."""
    from huggingface_hub import constants

    from workbench.models.hub import PROXY_VARIABLES, hub_unreachable

    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{answering_server(status)}")
    assert hub_unreachable() is None


HUB_SCRIPT = """
import sys
from workbench.models.loading import load_model
messages = []
try:
    loaded = load_model(sys.argv[1], on_event=messages.append)
    print("loaded", type(loaded.model).__name__)
except Exception as err:
    print(type(err).__name__, err)
print("\\n".join(messages))
"""


def hub_cache_with(tmp_path: Path, repo_id: str, folder: Path) -> Path:
    """A hub cache (``HF_HOME``) holding ``folder`` as ``repo_id``'s main revision."""
    home = tmp_path / "hf-home"
    repo = home / "hub" / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return home


def run_without_hub(tmp_path: Path, home: Path, spec: str) -> str:
    # A hub address where nothing listens: what a machine without the hub sees, at once.
    env = {**os.environ, "HF_HOME": str(home), "HF_ENDPOINT": "http://127.0.0.1:9"}
    env.pop("HF_HUB_OFFLINE", None)
    done = subprocess.run(
        [sys.executable, "-c", HUB_SCRIPT, spec],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Retrying" not in done.stderr  # not the hub client's five retries (~45 s)
    return done.stdout


def test_a_hub_id_in_the_hub_cache_loads_without_the_hub(tmp_path, tiny_model_dir):
    home = hub_cache_with(tmp_path, "someone/tiny", tiny_model_dir)
    out = run_without_hub(tmp_path, home, "someone/tiny")
    assert "loaded LlamaForCausalLM" in out, out
    assert "no model hub here (127.0.0.1:9 does not answer" in out, out


def test_a_hub_id_not_in_the_hub_cache_says_so_without_the_hub(tmp_path, tiny_model_dir):
    home = hub_cache_with(tmp_path, "someone/tiny", tiny_model_dir)
    out = run_without_hub(tmp_path, home, "someone/other")
    assert out.startswith("ModelLoadError could not load 'someone/other': no model hub"), out
    assert f"the hub cache ({home / 'hub'}) has no usable copy of it" in out, out


def test_remote_code_stays_off_by_default(tiny_model_dir, tmp_path):
    import json

    folder = tmp_path / "remote"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "ran"
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    loaded = load_model(str(folder), on_event=quiet)
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    assert not marker.exists()


def test_path_is_a_file(tmp_path):
    text_file = tmp_path / "weights.txt"
    text_file.write_text("x")
    with pytest.raises(wb.ModelLoadError, match="is a file"):
        load_model(str(text_file), on_event=quiet)


@pytest.mark.parametrize("architecture", ["gpt2", "qwen2", "gemma3"])
def test_other_architectures_load_and_generate(tmp_path, architecture):
    folder = wb.build_tiny_model(tmp_path / architecture, architecture)
    session = wb.Session(tmp_path / "run", verbose=False)
    info = session.load_model(str(folder))
    assert info.model_type.startswith(architecture)
    assert isinstance(session.generate("Hello", max_new_tokens=3), str)


def test_empty_spec():
    with pytest.raises(wb.ModelLoadError, match="empty"):
        load_model("  ", on_event=quiet)
    assert Path  # keep the import used when tests are trimmed
