"""Resolve a model spec and load it with transformers: built-in, GGUF, folder or hub id.

Examples:
    >>> from workbench.models.tiny import build_tiny_model
    >>> loaded = load_model(str(build_tiny_model("/tmp/wb-doc-loading")), on_event=lambda m: None)
    >>> loaded.source.kind, loaded.dtype
    ('folder', 'float32')
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from workbench._io import expand_home, sha256_file
from workbench._quiet import no_transformers_bars, quiet_third_party
from workbench.errors import DependencyError, ModelLoadError, SpecError, WorkbenchWarning
from workbench.models.builtin import BUILTIN_MODELS, builtin_gguf
from workbench.models.cache import (
    cache_root,
    cached_folder,
    entries_built_from,
    remove_superseded,
    verify_entry,
)
from workbench.models.gguf import convert_gguf, gguf_architecture
from workbench.models.hub import cached_hub_snapshot, hub_unreachable
from workbench.types import DType, Quantization

__all__ = [
    "DType",
    "LoadedModel",
    "ModelSource",
    "Quantization",
    "expandable_cuda_segments",
    "load_model",
    "resolve_source",
]

SourceKind = Literal["builtin", "gguf", "folder", "hub"]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from, after resolving the user's spec.

    Attributes:
        spec: What the user passed.
        kind: ``builtin``, ``gguf``, ``folder`` or ``hub``.
        location: The folder (or hub id) that ``from_pretrained`` reads; for ``builtin`` and
            ``gguf`` it is the converted copy in the cache.

    Examples:
        >>> ModelSource("org/model", "hub", "org/model").kind
        'hub'
    """

    spec: str
    kind: SourceKind
    location: str

    @property
    def lasting_spec(self) -> str:
        """The spec as a record keeps it: a folder or ``.gguf`` file as an absolute path, so
        the run, its resume and its script find the same model from any working folder.

        Examples:
            >>> ModelSource("org/model", "hub", "org/model").lasting_spec
            'org/model'
            >>> ModelSource("models/tiny", "folder", "models/tiny").lasting_spec.startswith("/")
            True
        """
        if self.kind in ("folder", "gguf"):
            return str(expand_home(self.spec).resolve())
        return self.spec


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model with its tokenizer and the settings it was loaded with.

    Examples:
        >>> from workbench.models.tiny import build_tiny_model
        >>> folder = str(build_tiny_model("/tmp/wb-doc-loading-cls"))
        >>> loaded = load_model(folder, on_event=lambda m: None)
        >>> loaded.model.config.model_type, loaded.tokenizer.pad_token
        ('llama', '<pad>')
        >>> loaded.quantization is None, loaded.dtype, loaded.device
        (True, 'float32', 'cpu')
    """

    model: Any
    tokenizer: Any
    source: ModelSource
    quantization: Quantization | None
    dtype: str
    device: str


def _gguf_source(spec: str, path: Path, on_event: Callable[[str], None]) -> ModelSource:
    gguf_architecture(path)
    stat = path.stat()
    # Hashing a multi-gigabyte file at each load would cost seconds; the inode and the
    # change time (which a write always moves and `touch`, `cp -p` or `rsync -t` cannot set
    # back) tell an edited file apart even when its size and mtime are kept.
    fingerprint = (
        f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}:{stat.st_ctime_ns}"
    )
    key = f"gguf-{path.stem}-{hashlib.sha256(fingerprint.encode()).hexdigest()[:12]}"
    on_event(f"looking for a converted copy of {path.name} in the cache")
    source = {"gguf": str(path.resolve()), "size": stat.st_size}
    if not (cache_root() / key).is_dir():
        same = _conversion_of_same_bytes(source, path, on_event)
        if same is not None:
            return ModelSource(spec, "gguf", str(same))

    def build(tmp: Path) -> None:
        source["sha256"] = sha256_file(path)  # what was converted: see the lookup above
        convert_gguf(path, tmp, on_event)

    folder = cached_folder(key, build, source, on_event)
    for old in remove_superseded(folder, "gguf", source["gguf"]):
        on_event(f"removed {old.name}, the converted copy of an earlier {path.name}")
    return ModelSource(spec, "gguf", str(folder))


def _conversion_of_same_bytes(
    source: dict, path: Path, on_event: Callable[[str], None]
) -> Path | None:
    """A complete conversion of ``path`` made when the file held the bytes it holds now, found
    when its fingerprint changed (``chmod``, ``chown``: the change time moves, not a byte),
    else ``None``. A course file protected after its cache was prepared then loads from that
    cache, read-only too, instead of being converted again; the file is read once to tell."""
    candidates = {
        entry: built["sha256"]
        for entry, built in entries_built_from(cache_root(), "gguf", source["gguf"])
        if built.get("size") == source["size"] and isinstance(built.get("sha256"), str)
    }
    if not candidates:
        return None
    digest = sha256_file(path)
    for entry, converted in candidates.items():
        if converted == digest and verify_entry(entry) is None:
            on_event(f"{path.name} has the bytes {entry.name} was converted from: using it")
            return entry
    return None


def _builtin_source(spec: str, on_event: Callable[[str], None]) -> ModelSource:
    model = BUILTIN_MODELS[spec]

    def build(tmp: Path) -> None:
        on_event(f"first use of {spec}: converting it once to safetensors (about 2 minutes)")
        # Earlier versions assembled it in the cache root, where a killed build left it for
        # good; holding this entry's lock, any such scratch of this model is a dead build's.
        for old in cache_root().glob(".gguf-*"):
            if (old / f"{model.name}.gguf").exists():
                shutil.rmtree(old, ignore_errors=True)
        # The assembled GGUF is scratch inside the entry's staging folder: removed here when
        # done, and with the staging folder (by the next build) if this one is killed.
        with tempfile.TemporaryDirectory(dir=tmp, prefix=".gguf-") as scratch:
            convert_gguf(builtin_gguf(model, Path(scratch), on_event), tmp, on_event)

    folder = cached_folder(
        f"{spec}-{model.sha256[:12]}", build, {"builtin": spec, "sha256": model.sha256}, on_event
    )
    return ModelSource(spec, "builtin", str(folder))


def _lone_gguf_in(folder: Path) -> Path | None:
    """The one ``.gguf`` file of a folder without ``config.json`` (an ``export(...,
    format="gguf")`` folder), else ``None``."""
    if (folder / "config.json").exists():
        return None
    found = [p for p in folder.glob("*.gguf") if p.is_file() and not p.name.startswith(".")]
    return found[0] if len(found) == 1 else None


def _check_folder(path: Path) -> None:
    """Refuse a folder transformers would not load safely, naming the file that is wrong."""
    if not (path / "config.json").is_file():
        msg = f"folder {path} has no config.json, so it is not a transformers model folder."
        raise ModelLoadError(msg)
    names = sorted(p.name for p in path.iterdir())
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    weights = [n for n in names if n.endswith(".safetensors")]
    indexes = [n for n in names if n.endswith(".safetensors.index.json")]
    for index in indexes:
        _check_index(path / index, pickles)
    if not weights and not indexes:
        if pickles:
            msg = f"folder {path} holds only {_pickle_advice(pickles)}"
            raise ModelLoadError(msg)
        raise ModelLoadError(f"folder {path} has a config.json but no *.safetensors weights.")
    for name in weights:
        _check_safetensors(path / name)


def _pickle_advice(pickles: list[str]) -> str:
    return (
        f"pickle weights ({', '.join(sorted(pickles)[:3])}). The workbench loads safetensors "
        "only, because unpickling a file can run any code it contains. Convert the "
        "checkpoint to safetensors with a tool you trust, then load the converted folder."
    )


def _check_index(index: Path, pickles: list[str]) -> None:
    """Every shard a ``*.safetensors.index.json`` names must be a .safetensors file beside it.

    Otherwise transformers falls back to the pickle weights next to it, and unpickles them.
    """
    try:
        shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        msg = (
            f"{index} is damaged: it is not a safetensors index with a weight_map ({err}). "
            "Copy or download the model folder again."
        )
        raise ModelLoadError(msg) from err
    missing = sorted(
        str(s)
        for s in shards
        if not (isinstance(s, str) and s.endswith(".safetensors") and (index.parent / s).is_file())
    )
    if missing:
        msg = (
            f"{index} names shards that are not in {index.parent}: "
            f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}."
        )
        advice = (
            f"The folder holds {_pickle_advice(pickles)}"
            if pickles
            else "Copy the missing shards next to it."
        )
        raise ModelLoadError(f"{msg} {advice}")


def _check_safetensors(path: Path) -> None:
    """Read a .safetensors file's header and check the file holds all the bytes it describes.

    A truncated download or a file of random bytes is found here, before transformers reads
    it (its SafetensorError names neither the file nor the cause).
    """
    if not path.is_file():  # a link whose target is gone (a hub cache's blob deleted), a folder
        msg = f"{path} is not a readable file (a broken link, or a folder): copy the model again."
        raise ModelLoadError(msg)
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little") if size >= 8 else -1
            if not 2 <= length <= size - 8:
                problem = "its header is cut off or is not a safetensors header"
            else:
                header = json.loads(handle.read(length))
                ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
                expected = 8 + length + max(ends, default=0)
                problem = (
                    f"it has {size} bytes, its header describes {expected}"
                    if (expected > size)
                    else None
                )
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
        problem = f"its header is not valid ({type(err).__name__}: {err})"
    if problem:
        msg = (
            f"{path} is damaged or truncated: {problem}. Copy or download it again; the "
            "workbench did not load it."
        )
        raise ModelLoadError(msg)


def resolve_source(spec: str, on_event: Callable[[str], None] = print) -> ModelSource:
    """Turn a user's model spec into a :class:`ModelSource`, converting GGUF files once.

    Raises:
        ModelLoadError: the spec names nothing loadable; the message lists what is accepted.

    Examples:
        >>> resolve_source("Qwen/Qwen2.5-0.5B").kind
        'hub'
    """
    if not isinstance(spec, (str, Path)) or not str(spec).strip():
        raise ModelLoadError(f"model spec {spec!r} is empty or not a string or path.")
    text = str(spec)
    if text in BUILTIN_MODELS:
        return _builtin_source(text, on_event)
    path = expand_home(text)  # "~backup-model" names no user: a relative folder
    if path.is_dir():
        inside = _lone_gguf_in(path)
        if inside is not None:  # a GGUF export's folder: model.gguf, Modelfile, README.md
            on_event(f"{path} holds no config.json but one GGUF file: loading {inside.name}")
            return _gguf_source(str(inside), inside, on_event)
        _check_folder(path)
        return ModelSource(text, "folder", str(path))
    if text.lower().endswith(".gguf"):
        return _gguf_source(text, path, on_event)
    if path.exists():
        msg = f"{path} is a file; give a model folder, a .gguf file, a hub id or a built-in name."
        raise ModelLoadError(msg)
    if HUB_ID.match(text) and not text.startswith("."):
        return ModelSource(text, "hub", text)
    looks_like_path = text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1
    what = f"path {path} does not exist" if looks_like_path else f"unknown model spec {text!r}"
    msg = (
        f"{what}. Expected a built-in name ({', '.join(sorted(BUILTIN_MODELS))}), a local "
        "model folder, a .gguf file, or a hub id like 'org/name'."
    )
    raise ModelLoadError(msg)


def expandable_cuda_segments() -> bool:
    """Let PyTorch's CUDA allocator grow segments instead of caching one per shape.

    Training batches change shape every step (packed rows, padded widths), and the default
    allocator keeps blocks of each size it has served: on one H200 a QLoRA run's reserved
    memory peaked at 1.7x what its tensors ever held at once
    (benchmarks/gpu-runs/2026-12-04-h200), and a GPU runs out of memory on the reserved
    figure. Expandable segments (PyTorch's documented remedy for varying shapes) map memory
    into one growing segment. Turned on through the allocator's own setting, so it works
    whether or not CUDA has started; a user's ``expandable_segments`` in
    ``PYTORCH_ALLOC_CONF`` or ``PYTORCH_CUDA_ALLOC_CONF`` is left as set. Returns whether
    it was turned on here.

    Examples:
        >>> import torch
        >>> expandable_cuda_segments() is torch.cuda.is_available()  # nothing to do on CPU
        True
    """
    import os

    import torch

    settings = ",".join(
        os.environ.get(name, "") for name in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")
    )
    if "expandable_segments" in settings or not torch.cuda.is_available():
        return False
    # torch 2.11 deprecated (with a FutureWarning per call) the torch.cuda spelling
    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None) or getattr(
        torch.cuda.memory, "_set_allocator_settings", None
    )
    try:
        setter("expandable_segments:True")
    except (TypeError, RuntimeError):  # a torch without either call, or a platform without it
        return False
    return True


def _resolve_device_dtype(device: str, dtype: str) -> tuple[str, str]:
    import torch

    if dtype not in get_args(DType):
        raise SpecError(f"dtype={dtype!r} is not one of {get_args(DType)}.")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif not re.fullmatch(r"cpu|cuda(:\d+)?|mps", device):
        raise SpecError(f"device={device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'.")
    _check_device_exists(device)
    on_gpu = device.startswith("cuda")
    if dtype == "auto":
        dtype = "bfloat16" if on_gpu and torch.cuda.is_bf16_supported() else "float32"
    if device == "cpu" and dtype != "float32":
        msg = (
            f"dtype={dtype!r} on CPU: half-precision matmuls ran about 400x slower than float32 "
            "on CPUs without native bf16, so the workbench computes in float32 there. Use "
            "dtype='auto' or 'float32' on CPU, or quantization='4bit' to save memory."
        )
        raise SpecError(msg)
    return device, dtype


def _check_device_exists(device: str) -> None:
    """Refuse a device torch does not see here, before loading onto it."""
    import torch

    if device == "mps" and not torch.backends.mps.is_available():
        raise SpecError("device='mps': this torch sees no Apple GPU; use device='auto' or 'cpu'.")
    if not device.startswith("cuda"):
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        build = "" if torch.version.cuda else f" (torch {torch.__version__} is a CPU build)"
        seen = f"{count} CUDA GPU{'s' if count != 1 else ''}"
        msg = f"device={device!r}: torch sees {seen} here{build}; use device='auto' or 'cpu'."
        raise SpecError(msg)


def _quantization_config(quantization: str | None, dtype: str):
    if quantization is None:
        return None
    if quantization not in get_args(Quantization):
        msg = f"quantization={quantization!r} is not one of None, '4bit', '8bit'."
        raise SpecError(msg)
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        msg = (
            f"quantization={quantization!r} needs bitsandbytes, which is not installed: "
            "pip install bitsandbytes (or load without quantization)."
        )
        raise DependencyError(msg) from err
    import torch
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    # The QLoRA recipe (Dettmers et al. 2023, arXiv:2305.14314): NF4 with double quantization.
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=getattr(torch, dtype),
    )


def load_model(
    spec: str,
    quantization: Quantization | None = None,
    dtype: DType = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    on_event: Callable[[str], None] = print,
) -> LoadedModel:
    """Load a causal LM and its tokenizer from a built-in name, GGUF, folder or hub id.

    Args:
        spec: ``"gemma-3-270m"``, a ``.gguf`` path, a model folder, or a hub id.
        quantization: ``None``, ``"4bit"`` (NF4, double quantization) or ``"8bit"``.
        dtype: ``"auto"`` is bfloat16 on a GPU that supports it and float32 elsewhere.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        trust_remote_code: Let transformers run model code shipped with the checkpoint.
        on_event: Receives progress messages.

    Raises:
        ModelLoadError: The spec can't be resolved or the weights can't be read.
        SpecError: A setting has a value the workbench can't use.
        DependencyError: quantization was asked but bitsandbytes is missing.

    Examples:
        >>> from workbench.models.tiny import build_tiny_model
        >>> folder = str(build_tiny_model("/tmp/wb-doc-loading-fn"))
        >>> loaded = load_model(folder, quantization="4bit", on_event=lambda m: None)
        >>> loaded.quantization, loaded.device
        ('4bit', 'cpu')
        >>> load_model(folder, dtype="float16", device="cpu")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.errors.SpecError: dtype='float16' on CPU: half-precision matmuls ran ...
    """
    quiet_third_party()  # bitsandbytes' "pip install kernels" note is not the user's to act on
    device, dtype = _resolve_device_dtype(device, dtype)
    if device.startswith("cuda"):
        expandable_cuda_segments()
    quant_config = _quantization_config(quantization, dtype)
    with no_transformers_bars():  # "\r" bars in the user's cell, whatever the verbosity
        source = resolve_source(spec, on_event)  # a GGUF's conversion writes weights
        model, tokenizer = _from_pretrained(
            source, quant_config, dtype, device, trust_remote_code, on_event
        )
    if quant_config is not None:
        _check_quantized(model, quantization, source.spec)
    if quantization == "8bit" and device == "cpu":
        _check_8bit_forward(model, source.spec)
    _give_pad_token(tokenizer)
    quantization = quantization or _saved_quantization(model)
    if quantization is not None:
        keep_4bit_layout_trainable(model)
    return LoadedModel(model.eval(), tokenizer, source, quantization, dtype, device)


def _check_quantized(model: Any, quantization: str, spec: str) -> None:
    """Say so when bitsandbytes left linear layers of the blocks unquantized.

    transformers converts ``torch.nn.Linear`` itself (and GPT-2's ``Conv1D``), not its
    subclasses: Falcon's ``FalconLinear`` layers all stay float, and the model would be
    trained as QLoRA while holding full-precision weights.

    Raises:
        ModelLoadError: Not one linear layer was quantized.
    """
    import warnings

    import bitsandbytes as bnb
    import torch

    from workbench.train.core import linear_routers

    output, routers = model.get_output_embeddings(), set(linear_routers(model))
    kept_float = _READ_AS_WEIGHTS.get(model.config.model_type, ())
    quantized, left = 0, {}
    for name, module in model.named_modules():
        meant = module is output or name in routers or name.rpartition(".")[2] in kept_float
        if isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)):
            quantized += 1
        elif isinstance(module, torch.nn.Linear) and not meant:
            left.setdefault(type(module).__name__, []).append(name)
    if not left:
        return
    kinds = ", ".join(
        f"{len(names)} {kind} layers ({names[0]}, ...)" for kind, names in left.items()
    )
    if not quantized:
        msg = (
            f"quantization={quantization!r} quantized none of the linear layers of {spec!r}: "
            f"bitsandbytes' conversion in transformers takes torch.nn.Linear itself, and its "
            f"{kinds} are a subclass. Load it without quantization (LoRA on full-precision "
            "weights)."
        )
        raise ModelLoadError(msg)
    msg = f"quantization={quantization!r} left {kinds} of {spec!r} unquantized (float)"
    warnings.warn(msg, WorkbenchWarning, stacklevel=3)


def _check_8bit_forward(model: Any, spec: str) -> None:
    """Refuse at load a model whose 8-bit forward fails on CPU, rather than at its first
    evaluation or ``generate``.

    bitsandbytes 0.50's CPU 8-bit layer fails in eval mode on an input of more than three
    dimensions (a shape error in its row quantization), which DeepSeek-V3's attention hands
    its ``kv_b_proj``; training mode takes another path and works. Three tokens through the
    model in eval mode find any such family.

    Raises:
        ModelLoadError: The forward fails.
    """
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(input_ids=torch.zeros((1, 3), dtype=torch.long), use_cache=False)
    except RuntimeError as err:
        msg = (
            f"quantization='8bit' loaded {spec!r}, but its forward fails in bitsandbytes' "
            f"8-bit layers on CPU ({err}); load it with quantization='4bit' (QLoRA) or "
            "without quantization."
        )
        raise ModelLoadError(msg) from None
    finally:
        model.train(was_training)


def _give_pad_token(tokenizer: Any) -> None:
    """Batches need a pad token: the end-of-sequence one, else the unknown one, else token 0.

    Padding is masked out wherever it is used, so which token pads changes no result; a
    tokenizer with none of them (a bare BPE) could not batch at all.
    """
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        tokenizer.pad_token = fallback or tokenizer.convert_ids_to_tokens(0)


def keep_4bit_layout_trainable(model: Any) -> int:
    """Stop bitsandbytes repacking 4-bit weights for its CPU inference kernel; how many layers.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 converts a ``Linear4bit`` weight to the
    packed layout of its inference kernel on the first eval-mode forward without gradients
    (an evaluation, a probe, a ``generate``) and never converts it back. Training
    forwards then take that kernel, through which no gradient reaches the earlier layers:
    measured on the tiny model, the gradient norm of the step after one evaluation fell from
    2.97 to 0.48 and the run took another path. A model that trains keeps the training
    layout (its evaluations are a little slower on such CPUs); :func:`load_model` applies this
    to every quantized model it loads, since converting back is not exact.

    Examples:
        >>> from workbench.models.tiny import build_tiny_model
        >>> folder = build_tiny_model("/tmp/wb-doc-prepare-tiny")
        >>> model = load_model(folder, quantization="4bit", on_event=lambda m: None).model
        >>> keep_4bit_layout_trainable(model) > 0
        True
    """
    count = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            _unpack(module.weight)  # packed already by a generate() before training
            count += 1
    return count


def _unpack(weight: Any) -> None:
    state = getattr(weight, "quant_state", None)
    if state is None or not getattr(state, "packing_format_for_cpu", False):
        return
    from bitsandbytes.nn.modules import _convert_weight_packed_for_cpu_inverse

    weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, state)


def _saved_quantization(model) -> Quantization | None:
    """The bitsandbytes mode of a checkpoint that was saved already quantized."""
    config = getattr(model.config, "quantization_config", None)
    if config is None:
        return None
    facts = config if isinstance(config, dict) else config.to_dict()
    if facts.get("load_in_4bit"):
        return "4bit"
    return "8bit" if facts.get("load_in_8bit") else None


def _from_pretrained(source, quant_config, dtype, device, trust_remote_code, on_event=None):
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    options = dict(trust_remote_code=trust_remote_code)
    if quant_config is not None:  # passing None would override a pre-quantized checkpoint's own
        options["quantization_config"] = quant_config
    location = source.location
    offline = hub_unreachable() if source.kind == "hub" else None
    if offline and on_event is not None:
        on_event(f"no model hub here ({offline}): looking for {source.spec} in the hub cache")
    try:
        if offline:  # the cached snapshot's folder: the hub client would retry for ~45 s first
            location = cached_hub_snapshot(source.location)
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
        if quant_config is not None:
            _keep_read_weights_float(quant_config, location, trust_remote_code)
        model, loading = AutoModelForCausalLM.from_pretrained(
            location,
            dtype=getattr(torch, dtype),
            device_map={"": device},
            use_safetensors=True,
            output_loading_info=True,
            **options,
        )
    except SafetensorError as err:
        msg = (
            f"could not read the weights of {source.spec!r} in {source.location}: {err}. A "
            ".safetensors file there is damaged or truncated: copy or download it again."
        )
        raise ModelLoadError(msg) from err
    # A config.json that is not an object, a shard index without a weight map, weights of
    # other shapes than the config's: transformers raises these as they come.
    except (OSError, ValueError, KeyError, TypeError, IndexError, RuntimeError) as err:
        raise ModelLoadError(_load_failure(source, err, offline)) from err
    _turn_off_inference_rescaling(model, on_event)  # before the encoder check's forward
    _refuse_missing_weights(source, loading.get("missing_keys") or [])
    _refuse_encoder(source, model)
    return model, tokenizer


# Linear layers whose weight a family's transformers code reads as a plain tensor (Mamba's
# scan computes `dt_proj.weight @ x`): quantized, every forward fails on the packed weight
# (Falcon-Mamba and Jamba call the layer when quantized). Kept in float, with the output
# layer that bitsandbytes' default list keeps (a list given replaces the default).
_READ_AS_WEIGHTS = {"mamba": ("dt_proj", "lm_head")}


def _keep_read_weights_float(quant_config: Any, location: str, trust_remote_code: bool) -> None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
    kept = _READ_AS_WEIGHTS.get(getattr(config, "model_type", ""))
    if kept:
        quant_config.llm_int8_skip_modules = list(kept)


def _turn_off_inference_rescaling(model: Any, on_event: Callable[[str], None] | None) -> None:
    """Set RWKV's ``rescale_every`` to 0 before the model's first forward.

    transformers' RWKV divides the ``attention.output`` and ``feed_forward.value`` weights of
    block ``b`` by ``2 ** (b // rescale_every)`` in place on an eval-mode forward, halving
    the hidden states to match (a guard against float16 overflow), and multiplies them back
    on a training forward. A ``generate`` before ``export`` left the export with the divided
    weights (0.73 in the logits of a 2-block model), LoRA's update on those layers was not
    divided with them (evaluation computed another model than the one trained), and 4-bit
    weights failed to be re-quantized (a ``KeyError``). Without it, an eval forward computes
    what a training forward does: the same logits up to the final LayerNorm's epsilon on a
    smaller residual (8.6e-5 on the tiny RWKV, float64).
    """
    rescale_every = getattr(model.config, "rescale_every", None)
    if not isinstance(rescale_every, int) or rescale_every <= 0:
        return
    model.config.rescale_every = 0  # the blocks read the same config object at each forward
    if on_event is not None:
        on_event(
            f"set rescale_every={rescale_every} to 0: transformers would divide weights in "
            "place on each evaluation (same outputs without it)"
        )


def _refuse_encoder(source: ModelSource, model: Any) -> None:
    """Refuse an encoder (BERT, RoBERTa, ELECTRA...) that transformers would load as a causal
    LM: its attention is bidirectional, so each token would see the answer after it.

    Configs with ``is_decoder=False`` are such encoders, or decoders that use the flag for
    something else (GPT-NeoX): a forward pass tells them apart, by whether the first token's
    logits change when a later token does.
    """
    config = model.config
    if getattr(config, "is_decoder", None) is not False or config.is_encoder_decoder:
        return
    if not _first_token_sees_later_ones(model):
        return
    msg = (
        f"{source.spec!r} is a {config.model_type} encoder: its attention lets every "
        "token see the tokens after it, so it cannot learn to write an answer it is "
        "shown. Tune a decoder (a causal language model such as Gemma, Llama, Qwen)."
    )
    raise ModelLoadError(msg)


def _first_token_sees_later_ones(model: Any) -> bool:
    import torch

    device = next(model.parameters()).device
    ids = torch.tensor([[1, 2, 3], [1, 2, 4]], device=device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, 0].float()
    return not torch.allclose(logits[0], logits[1], atol=1e-4)


def _refuse_missing_weights(source: ModelSource, missing: list[str]) -> None:
    """Refuse a model whose checkpoint lacks weights its config has: transformers would
    leave them random (a config with more layers, tensors under other names)."""
    if not missing:
        return
    shown = ", ".join(sorted(missing)[:4]) + (", ..." if len(missing) > 4 else "")
    msg = (
        f"could not load {source.spec!r} from {source.location}: its weights lack "
        f"{len(missing)} tensor(s) that its config.json builds ({shown}), which would be "
        "left random. The weights belong to another model or config: copy or download the "
        "folder again."
    )
    raise ModelLoadError(msg)


def _load_failure(source: ModelSource, err: Exception, offline: str | None) -> str:
    if offline:
        from huggingface_hub import constants

        return (
            f"could not load {source.spec!r}: no model hub is reachable here ({offline}) and "
            f"the hub cache ({constants.HF_HUB_CACHE}) has no usable copy of it "
            f"({str(err).splitlines()[0][:200]}). Download it on a machine with the hub and "
            "pass its folder (or copy that hub cache here)."
        )
    if "Unrecognized configuration class" in str(err):
        return _no_causal_model(source, err)
    return f"could not load {source.spec!r} from {source.location}: {err}."


def _no_causal_model(source: ModelSource, err: Exception) -> str:
    """Say what kind of model transformers has no causal language model for (its own
    message lists some 300 config classes)."""
    try:
        config = json.loads((Path(source.location) / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    config = config if isinstance(config, dict) else {}
    kind = config.get("model_type", "this")
    if config.get("is_encoder_decoder"):
        what = (
            f"a {kind} encoder-decoder (sequence-to-sequence) model: the workbench tunes "
            "decoder-only causal language models"
        )
    else:
        what = f"a {kind} model, for which transformers has no causal language model"
    return (
        f"could not load {source.spec!r} from {source.location}: it is {what}. Tune a "
        f"decoder such as Gemma, Llama or Qwen. ({str(err).splitlines()[0][:160]})"
    )
