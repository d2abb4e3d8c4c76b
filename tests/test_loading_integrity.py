"""Damaged model folders and cache entries give clear errors naming the file, or are rebuilt."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

import workbench as wb
from workbench.models import loading
from workbench.models.cache import MANIFEST, cached_folder, verify_entry
from workbench.models.loading import load_model


def quiet(message: str) -> None:
    pass


@pytest.fixture(params=["llama", "gpt2"])
def model_dir(request, tiny_model_dir, tiny_gpt2_dir):
    return {"llama": tiny_model_dir, "gpt2": tiny_gpt2_dir}[request.param]


def copy_of(model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    return folder


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGE = {
    "truncated": truncate,
    "random bytes": lambda p: p.write_bytes(os.urandom(p.stat().st_size)),
    "empty": lambda p: p.write_bytes(b""),
    "header only": lambda p: p.write_bytes(
        p.read_bytes()[: 8 + int.from_bytes(p.read_bytes()[:8], "little")]
    ),
    "not json header": lambda p: p.write_bytes((20).to_bytes(8, "little") + b"x" * 40),
}


# --- (a) a damaged model.safetensors ------------------------------------------------------


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_safetensors_names_the_file(tmp_path, model_dir, damage):
    folder = copy_of(model_dir, tmp_path)
    weights = folder / "model.safetensors"
    DAMAGE[damage](weights)
    s = wb.Session(tmp_path / "run", verbose=False)
    with pytest.raises(wb.ModelLoadError, match=f"{weights} is damaged or truncated"):
        s.load_model(str(folder))
    with pytest.raises(wb.ModelLoadError, match="download it again"):
        load_model(str(folder), on_event=quiet)


def test_truncated_file_says_how_many_bytes_are_missing(tmp_path, tiny_model_dir):
    folder = copy_of(tiny_model_dir, tmp_path)
    weights = folder / "model.safetensors"
    full = weights.stat().st_size
    truncate(weights)
    with pytest.raises(
        wb.ModelLoadError, match=f"has {full // 2} bytes, its header describes {full}"
    ):
        load_model(str(folder), on_event=quiet)


def test_safetensors_error_from_transformers_is_translated(tmp_path, tiny_model_dir, monkeypatch):
    # Damage the checks cannot see (they read only the header) still gives a ModelLoadError.
    folder = copy_of(tiny_model_dir, tmp_path)
    truncate(folder / "model.safetensors")
    monkeypatch.setattr(loading, "_check_safetensors", lambda path: None)
    with pytest.raises(wb.ModelLoadError, match=f"{folder}.*damaged or truncated"):
        load_model(str(folder), on_event=quiet)


def test_intact_folder_still_loads(tmp_path, model_dir):
    loaded = load_model(str(copy_of(model_dir, tmp_path)), on_event=quiet)
    assert loaded.source.kind == "folder"


# --- (c) an index next to a pickle-only checkpoint -------------------------------------------


def pickle_checkpoint_with_index(model_dir, tmp_path, shards=("model-00001-of-00001.safetensors",)):
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model_dir / name, folder / name)
    state = load_file(model_dir / "model.safetensors")
    torch.save(state, folder / "pytorch_model.bin")
    index = {
        "metadata": {},
        "weight_map": {k: shards[i % len(shards)] for i, k in enumerate(state)},
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


def test_index_next_to_pickle_weights_is_refused_before_unpickling(
    tmp_path, model_dir, monkeypatch
):
    folder = pickle_checkpoint_with_index(model_dir, tmp_path)
    unpickled = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: unpickled.append(a))
    expected = (
        r"model.safetensors.index.json names shards that are not in .*"
        r"model-00001-of-00001.safetensors.*pickle weights \(pytorch_model.bin\)"
    )
    with pytest.raises(wb.ModelLoadError, match=expected):
        load_model(str(folder), on_event=quiet)
    assert unpickled == []


def test_index_with_one_shard_missing_names_it(tmp_path, tiny_model_dir):
    folder = pickle_checkpoint_with_index(
        tiny_model_dir, tmp_path, ("a.safetensors", "b.safetensors")
    )
    shutil.copy(tiny_model_dir / "model.safetensors", folder / "a.safetensors")
    (folder / "pytorch_model.bin").unlink()
    with pytest.raises(
        wb.ModelLoadError,
        match=r"names shards that are not in .*: "
        r"b\.safetensors\. Copy the missing shards",
    ):
        load_model(str(folder), on_event=quiet)


@pytest.mark.parametrize("text", ["{not json", "[]", '{"weight_map": 3}', '{"other": {}}'])
def test_damaged_index_is_refused(tmp_path, tiny_model_dir, text):
    folder = copy_of(tiny_model_dir, tmp_path)
    (folder / "model.safetensors.index.json").write_text(text)
    with pytest.raises(wb.ModelLoadError, match="index.json is damaged"):
        load_model(str(folder), on_event=quiet)


def test_real_sharded_checkpoint_loads(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    folder = copy_of(tiny_model_dir, tmp_path)
    (folder / "model.safetensors").unlink()
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(
        folder, max_shard_size="100KB"
    )
    assert (folder / "model.safetensors.index.json").is_file()
    assert len(list(folder.glob("*.safetensors"))) > 1
    assert load_model(str(folder), on_event=quiet).model.config.model_type == "llama"


# --- (b) a cache manifest of the wrong shape ----------------------------------------------


def write_files(tmp):
    (tmp / "model.safetensors").write_bytes(os.urandom(4096))
    (tmp / "config.json").write_text("{}")


@pytest.mark.parametrize(
    "manifest",
    [
        [],
        3,
        "text",
        None,
        {"files": 3},
        {"files": []},
        {"files": {"a": "x"}},
        {"files": {}},
        {"files": {"config.json": {"size": "2", "sha256": "x"}}},
        {"files": {"config.json": {"size": 2}}},
        {"files": {"../outside": {"size": 1, "sha256": "x"}}},
    ],
)
def test_manifest_of_the_wrong_shape_is_rebuilt(tmp_path, monkeypatch, manifest):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    builds = []

    def build(tmp):
        builds.append(tmp)
        write_files(tmp)

    folder = cached_folder("m", build, {})
    (folder / MANIFEST).write_text(json.dumps(manifest))
    assert verify_entry(folder).startswith("unreadable manifest")
    messages = []
    again = cached_folder("m", build, {}, messages.append)
    assert again == folder and len(builds) == 2
    assert "rebuilding" in messages[0] and "unreadable manifest" in messages[0]
    assert verify_entry(again) is None


def _rewrite_weights(folder, change):
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    save_file(change(load_file(path)), path, metadata={"format": "pt"})


def test_weights_under_other_names_are_refused_not_left_random(tmp_path, model_dir):
    folder = copy_of(model_dir, tmp_path)
    _rewrite_weights(folder, lambda weights: {f"zz.{k}": v for k, v in weights.items()})
    with pytest.raises(wb.ModelLoadError, match=r"its weights lack \d+ tensor\(s\) .*left random"):
        load_model(str(folder), on_event=quiet)


def test_a_config_with_more_layers_than_the_weights_is_refused(tmp_path, tiny_model_dir):
    folder = copy_of(tiny_model_dir, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 4}))
    with pytest.raises(wb.ModelLoadError, match=r"lack \d+ tensor\(s\) .*model\.layers\.[23]\."):
        load_model(str(folder), on_event=quiet)


def test_weights_of_other_shapes_or_a_config_that_is_not_an_object_name_the_folder(
    tmp_path, tiny_model_dir
):
    folder = copy_of(tiny_model_dir, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": 40}))
    with pytest.raises(wb.ModelLoadError, match=f"could not load .* from {folder}"):
        load_model(str(folder), on_event=quiet)
    (folder / "config.json").write_text("[1]")
    with pytest.raises(wb.ModelLoadError, match=f"could not load .* from {folder}"):
        load_model(str(folder), on_event=quiet)


def test_weights_that_are_a_broken_link_name_the_folder(tmp_path, tiny_model_dir):
    folder = copy_of(tiny_model_dir, tmp_path)
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to(tmp_path / "deleted-blob")  # a hub cache's blob gone
    with pytest.raises(wb.ModelLoadError, match=str(folder)):
        load_model(str(folder), on_event=quiet)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_gpu_this_machine_lacks_is_refused_before_loading(tiny_model_dir, device):
    with pytest.raises(wb.SpecError, match=rf"device='{device}': torch sees 0 CUDA GPUs here"):
        load_model(str(tiny_model_dir), device=device, on_event=quiet)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_an_encoder_is_refused_not_trained_as_a_causal_model(tmp_path, tiny_model_dir, kind):
    """transformers loads BERT as BertLMHeadModel, whose tokens see the ones after them."""
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    config = AutoConfig.for_model(
        kind, vocab_size=512, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64,
    )  # fmt: skip
    AutoModelForMaskedLM.from_config(config).save_pretrained(tmp_path / kind)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / kind)
    with pytest.raises(wb.ModelLoadError, match=f"is a {kind} encoder: .*see the tokens after it"):
        load_model(str(tmp_path / kind), on_event=quiet)


def test_an_encoder_decoder_is_refused_saying_what_it_is(tmp_path, tiny_model_dir):
    # transformers' own message listed some 300 config classes the causal LM could be.
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    config = T5Config(d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16, vocab_size=512)
    T5ForConditionalGeneration(config).save_pretrained(tmp_path / "t5")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "t5")
    with pytest.raises(wb.ModelLoadError) as refused:
        load_model(str(tmp_path / "t5"), on_event=quiet)
    message = str(refused.value)
    assert "it is a t5 encoder-decoder (sequence-to-sequence) model: the workbench" in message
    assert "tunes decoder-only causal language models. Tune a decoder" in message
    assert len(message) < 600
