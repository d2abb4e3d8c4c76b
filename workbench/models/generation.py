"""Batched greedy or sampled generation from a loaded model.

Examples:
    >>> from workbench.models.tiny import build_tiny_model
    >>> from workbench.models.loading import load_model
    >>> loaded = load_model(str(build_tiny_model("/tmp/wb-doc-gen")), on_event=len)
    >>> outputs = generate_text(loaded.model, loaded.tokenizer, ["Hello", "Hi"], max_new_tokens=3)
    >>> len(outputs)
    2
"""

from __future__ import annotations

import ast
import contextlib
import re
from collections.abc import Iterator, Sequence
from typing import Any

from workbench._numbers import plain_number
from workbench.errors import SpecError

__all__ = [
    "cut_at_stop",
    "encode_prompts",
    "generate_text",
    "stop_token_ids",
    "without_a_cut_character",
]


def encode_prompts(tokenizer: Any, prompts: Sequence[str], **options: Any):
    """Tokenize prompts, adding special tokens only when the text doesn't carry them already.

    A chat template usually writes the BOS token itself (Gemma's ``<bos>``); tokenizing that
    text with ``add_special_tokens=True`` would put a second BOS in front, which the model
    never saw in training.

    Examples:
        >>> from transformers import AutoTokenizer
        >>> from workbench.models.tiny import build_tiny_model
        >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-gen-enc"))
        >>> tokenizer.bos_token, tokenizer.bos_token_id
        ('<s>', 1)
        >>> encode_prompts(tokenizer, ["<s>Hi"]).input_ids[0].count(1)
        1
    """
    bos = getattr(tokenizer, "bos_token", None)
    written = bool(bos) and all(p.startswith(bos) for p in prompts)
    return tokenizer(list(prompts), add_special_tokens=not written, **options)


# transformers' refusal of keywords no generation setting or model input takes
_UNUSED = re.compile(r"model_kwargs` are not used by the model: (\[[^\]]*\])")


def _refused(err: ValueError, asked: list[str]) -> list[str]:
    """The settings transformers refused: those it names as unused, else all the caller's.

    Examples:
        >>> err = ValueError("The following `model_kwargs` are not used by the model: ['sed']")
        >>> _refused(err, ["do_sample", "sed"]), _refused(ValueError("bad"), ["top_k"])
        (['sed'], ['top_k'])
    """
    found = _UNUSED.search(str(err))
    named = [str(k) for k in ast.literal_eval(found.group(1))] if found else []
    return named or asked


@contextlib.contextmanager
def _seeded(seed: int | None, device: Any) -> Iterator[None]:
    """Seed torch's generator of ``device`` (and the CPU's) for the block only.

    ``generate`` takes no ``torch.Generator`` and samples from the global one: seeding it
    inside ``fork_rng`` repeats the sample and leaves the caller's random state as it was.
    """
    if seed is None:
        yield
        return
    import torch

    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        for index in cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


def _generated(
    model: Any, batch: Any, max_new_tokens: int, generation: dict, asked: list[str]
) -> Any:
    """``model.generate``'s output; a ``ValueError`` (raised before any step) named as what
    it is: a setting the caller gave that transformers refuses, or the model's own limit."""
    import torch

    seed = generation.pop("seed", None)
    with torch.no_grad(), _seeded(seed, batch["input_ids"].device):
        try:
            return model.generate(**batch, max_new_tokens=max_new_tokens, **generation)
        except ValueError as err:
            if "Cache" in str(err) and "use_cache" not in generation:
                # a model of recurrent blocks only (RecurrentGemma with no attention block)
                # fails in transformers' cache; it generates without one
                try:
                    return model.generate(
                        **batch, max_new_tokens=max_new_tokens, use_cache=False, **generation
                    )
                except ValueError:
                    pass
            if asked:
                msg = f"generate refused these settings ({', '.join(_refused(err, asked))}): {err}"
            else:
                kind = getattr(getattr(model, "config", None), "model_type", "this model")
                msg = f"transformers' generate cannot run {kind} as it is: {err}"
            raise SpecError(msg) from None


def stop_token_ids(tokenizer: Any, stop_strings: Sequence[str]) -> list[int]:
    """Ids of the stop strings that are single tokens (``<|im_end|>``, ``<end_of_turn>``).

    Examples:
        >>> from transformers import AutoTokenizer
        >>> from workbench.models.tiny import build_tiny_model
        >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-gen-stop"))
        >>> stop_token_ids(tokenizer, ["<|im_end|>", "not one token"])
        [5]
    """
    ids = []
    for text in stop_strings:
        encoded = tokenizer.encode(text, add_special_tokens=False)
        if len(encoded) == 1 and tokenizer.decode(encoded) == text:
            ids.append(encoded[0])
    return ids


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """Cut ``text`` at the first stop string (the stop string itself is dropped).

    Examples:
        >>> cut_at_stop("Paris<|im_end|>\\nmore", ["<|im_end|>"])
        'Paris'
    """
    cuts = [text.find(s) for s in stop_strings if s and s in text]
    return text[: min(cuts)] if cuts else text


def _stop_settings(model: Any, tokenizer: Any, stops: Sequence[str], generation: dict) -> None:
    """Stop at single-token stops through extra eos ids, at longer ones through ``stop_strings``."""
    ids = stop_token_ids(tokenizer, stops)
    if ids:
        eos = generation.get("eos_token_id", model.generation_config.eos_token_id)
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        generation["eos_token_id"] = list(dict.fromkeys([*eos, *ids]))
    longer = [s for s in stops if s and not stop_token_ids(tokenizer, [s])]
    if longer:
        generation["stop_strings"] = longer
        generation["tokenizer"] = tokenizer


def generate_text(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str | Sequence[int]],
    max_new_tokens: int = 64,
    stop_strings: Sequence[str] | None = None,
    **generation: Any,
) -> list[str]:
    """Complete each prompt and return only the new text, as the model wrote it.

    A completion ends before its end token (eos, a one-token stop); ``generate`` pads only
    after one. Any other special token it wrote stays in the text, as a chat template would
    write it (a pad token it chose too: an exported model goes on after it): a tool-call
    marker such as Gemma 4's ``<|tool_call>`` or Mistral's ``[TOOL_CALLS]`` is part of the
    answer (:func:`~workbench.data.tool_calls.parse_tool_calls` needs it). A character the
    token limit cut in the middle (its bytes split over tokens) is left out, as a streamed
    answer leaves it out (:func:`without_a_cut_character`).

    A prompt is text (tokenized by :func:`encode_prompts`) or token ids, used as they are
    (:mod:`workbench.data.prompts` makes the ids training saw). Prompts are batched with
    left padding, so every completion starts right after its prompt.
    Greedy by default (``do_sample=False``); a ``temperature`` above 0 samples, as the
    server does (``do_sample=False`` keeps it greedy); any ``generate`` keyword passes
    through, but ``max_length`` (which counts the prompt's tokens too) is refused for
    ``max_new_tokens``: given both, transformers silently used ``max_new_tokens``.
    ``seed=`` makes sampling repeatable: torch's generator is seeded for this call only, and
    the caller's random state is left as it was.
    ``stop_strings`` (e.g. a template's end of turn ``"<|im_end|>"``) end a completion: a
    stop that is one token becomes an extra eos id, a longer one goes to ``generate``'s
    ``stop_strings``, and the returned text is cut before the first stop string.

    Raises:
        SpecError: ``max_new_tokens`` is not a positive integer, ``seed`` not an integer
            >= 0, ``prompts`` or one of them is empty, or ``generate`` refuses a setting (a
            negative temperature, say).

    Examples:
        >>> from workbench.models.loading import load_model
        >>> from workbench.models.tiny import build_tiny_model
        >>> loaded = load_model(str(build_tiny_model("/tmp/wb-doc-gen-text")), on_event=len)
        >>> texts = generate_text(loaded.model, loaded.tokenizer, ["Hello", "Hi"], max_new_tokens=2)
        >>> len(texts), all(isinstance(t, str) for t in texts)
        (2, True)
        >>> sample = dict(max_new_tokens=4, do_sample=True, seed=5)
        >>> generate_text(loaded.model, loaded.tokenizer, ["Hi"], **sample) == generate_text(
        ...     loaded.model, loaded.tokenizer, ["Hi"], **sample)
        True
        >>> generate_text(loaded.model, loaded.tokenizer, ["Hello"], max_new_tokens=0)
        Traceback (most recent call last):
        workbench.errors.SpecError: max_new_tokens=0 must be a positive integer.
        >>> generate_text(loaded.model, loaded.tokenizer, ["Hello"], max_new_tokens=True)
        Traceback (most recent call last):
        workbench.errors.SpecError: max_new_tokens=True must be a positive integer.
        >>> generate_text(loaded.model, loaded.tokenizer, ["Hello"], max_length=5)
        Traceback (most recent call last):
        workbench.errors.SpecError: max_length=5 counts the prompt's tokens too; give the ...
    """
    max_new_tokens = plain_number(max_new_tokens)
    if not _whole(max_new_tokens) or max_new_tokens <= 0:
        raise SpecError(f"max_new_tokens={max_new_tokens!r} must be a positive integer.")
    if generation.get("seed") is not None:
        generation["seed"] = seed = plain_number(generation["seed"])
        if not _whole(seed) or not 0 <= seed < 2**64:  # torch's seeds are 64-bit
            raise SpecError(f"seed={seed!r} must be an integer >= 0 (below 2**64).")
    if "max_length" in generation:
        length = generation["max_length"]
        msg = (
            f"max_length={length!r} counts the prompt's tokens too; give the new tokens as "
            f"max_new_tokens={length!r}."
        )
        raise SpecError(msg)
    if not prompts:
        raise SpecError("prompts is empty: give at least one prompt.")
    if generation.get("num_return_sequences", 1) != 1:
        msg = (
            f"num_return_sequences={generation['num_return_sequences']!r}: one answer comes "
            "back per prompt; give the prompt several times (with do_sample=True) for more."
        )
        raise SpecError(msg)
    rows = {"input_ids": _prompt_ids(tokenizer, prompts)}
    batch = tokenizer.pad(rows, padding=True, padding_side="left", return_tensors="pt")
    batch = batch.to(next(model.parameters()).device)
    # the caller's own generate settings, before the defaults join them
    asked = sorted(k for k in generation if k != "seed")
    generation.setdefault("do_sample", _asks_to_sample(generation.get("temperature")))
    generation.setdefault("pad_token_id", tokenizer.pad_token_id)
    stops = [s for s in (stop_strings or []) if s]
    _stop_settings(model, tokenizer, stops, generation)
    output = _generated(model, batch, max_new_tokens, generation, asked)
    new_tokens = output[:, batch["input_ids"].shape[1] :].tolist()
    ends = _end_ids(model, tokenizer, generation)
    texts = [tokenizer.decode(_until_end(row, ends)) for row in new_tokens]
    texts = [cut_at_stop(t, stops) for t in texts] if stops else texts
    return [without_a_cut_character(t) for t in texts]


def _asks_to_sample(temperature: Any) -> bool:
    """A temperature above 0 asks to sample (transformers ignored it, greedy, with a log line).

    Examples:
        >>> _asks_to_sample(0.7), _asks_to_sample(0), _asks_to_sample(None), _asks_to_sample("hot")
        (True, False, False, False)
    """
    temperature = plain_number(temperature)
    number = isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
    return number and temperature > 0


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def without_a_cut_character(text: str) -> str:
    """``text`` without the replacement characters (U+FFFD) that end it where its last
    tokens held only part of a character's bytes: the token limit cut the answer inside a
    Chinese character or an emoji. A streamed answer never shows them (the streamer holds
    such bytes back), so the same answer is the same text either way.

    Examples:
        >>> without_a_cut_character("我\ufffd"), without_a_cut_character("a\ufffdb")
        ('我', 'a\ufffdb')
    """
    return text.rstrip("\ufffd")


def _prompt_ids(tokenizer: Any, prompts: Sequence[str | Sequence[int]]) -> list[list[int]]:
    """Each prompt's ids (texts tokenized together, by :func:`encode_prompts`); an empty
    prompt is refused (the model has nothing to continue)."""
    texts = [p for p in prompts if isinstance(p, str)]
    encoded = iter(encode_prompts(tokenizer, texts)["input_ids"] if texts else [])
    ids = [list(next(encoded)) if isinstance(p, str) else list(p) for p in prompts]
    empty = [k for k, row in enumerate(ids) if not row]
    if empty:
        msg = f"prompt {empty[0]} is empty (no tokens): give the model some text to continue."
        raise SpecError(msg)
    return ids


def _end_ids(model: Any, tokenizer: Any, generation: dict) -> set[int]:
    """The ids that end a completion: eos (the model's, the tokenizer's, one-token stops).

    Not the pad id: ``generate`` writes padding only after an end, and a pad token the model
    chose itself does not stop ``generate`` (nor an exported model), so the text goes on."""
    eos = generation.get("eos_token_id", model.generation_config.eos_token_id)
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    found = {*eos, tokenizer.eos_token_id}
    return {int(i) for i in found if i is not None}


def _until_end(ids: list[int], ends: set[int]) -> list[int]:
    return next((ids[:i] for i, token in enumerate(ids) if token in ends), ids)
