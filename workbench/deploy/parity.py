"""Does the exported GGUF answer like the tuned model? A greedy check through llama.cpp itself.

Exports that behave differently from the model that was tuned (a chat template that renders
the prompt differently, a missing end-of-turn stop) are among the most reported problems of
tuning tools. This check runs the same conversations through both sides, greedily:

- the session's model, with the template it was trained with and its stop string;
- the exported file in llama.cpp (through ``llama-cpp-python``), with the chat template and
  stop tokens stored in the file itself, as Ollama or a llama.cpp server would use them.

It compares the prompt tokens (do the two templates and tokenizers agree?) and the answer
tokens, and says where the first token differs. The result is a table in a notebook, text when
printed, and ``export_check.json`` beside the export.

Examples:
    >>> case = ParityCase("probe 1", [1, 2], [1, 2], "yes", "yes", [5, 6], [5, 7])
    >>> case.same, case.first_difference
    (False, 'answer token 2')
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from workbench._display import html_table, text_table
from workbench._io import atomic_write_text
from workbench.data.tool_calls import TOOL_CALLING, with_tool_calling
from workbench.deploy.llama_interrupts import keeping_interrupts
from workbench.errors import ModelLoadError, SpecError
from workbench.train.core import pad_id

__all__ = [
    "CHECK_FILE",
    "NEAR_TIE",
    "ParityCase",
    "ParityReport",
    "PromptCase",
    "check_gguf",
    "conversations_of",
    "gguf_path_of",
]

CHECK_FILE = "export_check.json"
Messages = list[dict[str, Any]]
Tools = list[dict[str, Any]]
Conversation = tuple[str, Messages] | tuple[str, Messages, Tools | None]
"""``(name, messages)``, or ``(name, messages, tools)`` for a conversation with tools on offer."""
# A difference where llama.cpp's token is within this many standard deviations of the tuned
# model's logits below its best is a near tie: Q8_0's rounding moved picks by up to 0.03
# (tests/test_gguf_llama_cpp.py), an F32 file's arithmetic by far less.
NEAR_TIE = 0.1


@dataclass(frozen=True)
class ParityCase:
    """One conversation run through the tuned model and the exported file.

    Attributes:
        name: Where it came from (``probe 1``, ``validation row 3``).
        prompt_ids: The session's prompt tokens (its template and tokenizer).
        exported_prompt_ids: The export's prompt tokens (the file's template and tokenizer).
        answer: The session model's greedy answer.
        exported_answer: The exported file's greedy answer in llama.cpp.
        answer_ids: The session's answer tokens.
        exported_answer_ids: The export's answer tokens.
        tie_gap: Where the answers first differ, how far the token llama.cpp picked was below
            the tuned model's best there, in the tuned model's logits (in standard deviations
            of those logits); ``None`` where they do not differ or it was not measured.

    Examples:
        >>> ParityCase("p", [1], [1], "a", "a", [3], [3]).same
        True
    """

    name: str
    prompt_ids: list[int]
    exported_prompt_ids: list[int]
    answer: str
    exported_answer: str
    answer_ids: list[int]
    exported_answer_ids: list[int]
    tie_gap: float | None = None

    @property
    def near_tie(self) -> bool:
        """The answers differ first where the tuned model itself nearly tied: llama.cpp's
        token was within :data:`NEAR_TIE` standard deviations of its best (numerical noise of
        another runtime, or of rounded weights, picks either).

        Examples:
            >>> ParityCase("p", [1], [1], "a", "b", [3], [4], tie_gap=0.002).near_tie
            True
        """
        return self.tie_gap is not None and self.tie_gap < NEAR_TIE

    @property
    def same(self) -> bool:
        """Same prompt tokens and same answer tokens.

        Examples:
            >>> ParityCase("p", [1], [2], "a", "a", [3], [3]).same
            False
        """
        return self.first_difference is None

    @property
    def first_difference(self) -> str | None:
        """Where the two sides first differ (``prompt token 4``, ``answer token 2``), or None.

        Examples:
            >>> ParityCase("p", [1, 2], [1], "a", "a", [3], [3]).first_difference
            'prompt token 2'
        """
        for part, mine, theirs in (
            ("prompt", self.prompt_ids, self.exported_prompt_ids),
            ("answer", self.answer_ids, self.exported_answer_ids),
        ):
            index = _first_mismatch(mine, theirs)
            if index is not None:
                return f"{part} token {index + 1}"
        return None


@dataclass(frozen=True)
class ParityReport:
    """The result of :func:`check_gguf` (or of
    :func:`~workbench.deploy.merged_check.check_merged`): one :class:`ParityCase` per
    conversation.

    Attributes:
        export: The exported file (or merged folder).
        cases: The compared conversations.
        runtime: What ran the export: ``"llama.cpp"`` or ``"transformers"``.
        note: What the reader must know to read the counts (the export holds another run's
            weights than the model it was compared with); ``""`` when nothing.

    Examples:
        >>> report = ParityReport("m.gguf", (ParityCase("p", [1], [1], "a", "a", [3], [3]),))
        >>> report.all_same, str(report).splitlines()[0]
        (True, 'Export check of m.gguf: 1 of 1 answers the same.')
    """

    export: str
    cases: tuple[ParityCase, ...]
    runtime: str = "llama.cpp"
    note: str = ""

    @property
    def same_count(self) -> int:
        """How many cases gave the same prompt and answer tokens.

        Examples:
            >>> ParityReport("m.gguf", ()).same_count
            0
        """
        return sum(case.same for case in self.cases)

    @property
    def near_tie_count(self) -> int:
        """How many cases differ first at a near tie of the tuned model (see
        :attr:`ParityCase.near_tie`).

        Examples:
            >>> ParityReport("m.gguf", ()).near_tie_count
            0
        """
        return sum(case.near_tie for case in self.cases)

    @property
    def all_same(self) -> bool:
        """Every case the same (and at least one case).

        Examples:
            >>> ParityReport("m.gguf", ()).all_same
            False
        """
        return bool(self.cases) and self.same_count == len(self.cases)

    def summary(self) -> str:
        """One line: how many answers are the same (and how many differ only at near ties).

        Examples:
            >>> ParityReport("m.gguf", ()).summary()
            'Export check of m.gguf: 0 of 0 answers the same.'
        """
        total = len(self.cases)
        line = f"Export check of {self.export}: {self.same_count} of {total} answers the same"
        ties = self.near_tie_count
        if ties:
            line += f"; {ties} more differ{'s' if ties == 1 else ''} only at a near tie of the "
            line += "tuned model (rounding picks either token)"
        return f"{line}. {self.note}" if self.note else line + "."

    def rows(self) -> list[tuple[str, str, str, str]]:
        """Table rows: case, same or where it first differs, tuned answer, exported answer.

        Examples:
            >>> ParityReport("m", (ParityCase("p", [1], [1], "a", "b", [3], [4]),)).rows()
            [('p', 'differs at answer token 1', 'a', 'b')]
        """
        return [
            (case.name, _result(case), case.answer, case.exported_answer) for case in self.cases
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready contents (``export_check.json``).

        Examples:
            >>> ParityReport("m.gguf", ()).to_dict()["same"]
            0
        """
        return {
            "export": self.export,
            "runtime": self.runtime,
            "same": self.same_count,
            "total": len(self.cases),
            "note": self.note,
            "cases": [
                {
                    **asdict(case),
                    "same": case.same,
                    "first_difference": case.first_difference,
                    "near_tie": case.near_tie,
                }
                for case in self.cases
            ],
        }

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` to ``path`` (a file, or a folder to hold ``export_check.json``).

        Examples:
            >>> import tempfile
            >>> ParityReport("m.gguf", ()).save(tempfile.mkdtemp()).name
            'export_check.json'
        """
        target = Path(path)
        if target.is_dir():
            target = target / CHECK_FILE
        return atomic_write_text(target, json.dumps(self.to_dict(), indent=1))

    def _header(self) -> tuple[str, str, str, str]:
        return ("case", "result", "tuned model", f"export in {self.runtime}")

    def table(self) -> str:
        """The cases as a text table (answers shortened), without the summary line.

        Examples:
            >>> report = ParityReport("m", (ParityCase("p", [1], [1], "a", "a", [3], [3]),))
            >>> print(report.table())
            case  result  tuned model  export in llama.cpp
            p     same    a            a
        """
        rows = [(a, b, _short(c), _short(d)) for a, b, c, d in self.rows()]
        return text_table(rows, self._header())

    def __str__(self) -> str:
        return self.summary() + "\n" + self.table()

    def _repr_html_(self) -> str:
        return html_table(self.rows(), self._header(), title=self.summary())


def _result(case: ParityCase) -> str:
    if case.same:
        return "same"
    if case.near_tie:
        return f"differs at {case.first_difference} (a near tie: {case.tie_gap:.3f} std apart)"
    return f"differs at {case.first_difference}"


def _first_mismatch(a: Sequence[int], b: Sequence[int]) -> int | None:
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return None if len(a) == len(b) else min(len(a), len(b))


def _short(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def gguf_path_of(path: str | Path) -> Path:
    """The GGUF file of an export: ``path`` itself, or the one ``.gguf`` file in a folder.

    Raises:
        SpecError: no such file, or a folder without exactly one ``.gguf`` file.

    Examples:
        >>> gguf_path_of("/nonexistent/m.gguf")
        Traceback (most recent call last):
        workbench.errors.SpecError: /nonexistent/m.gguf is not a GGUF file or a folder holding one.
    """
    given = Path(path)
    found = sorted(given.glob("*.gguf")) if given.is_dir() else [given]
    if len(found) != 1 or not found[0].is_file() or found[0].suffix != ".gguf":
        raise SpecError(f"{given} is not a GGUF file or a folder holding one.")
    return found[0]


def conversations_of(prepared: Any, limit: int = 4) -> list[Conversation]:
    """The first ``limit`` validation conversations, each cut before its last answer.

    Falls back to the training split when there is no validation split; raw-text data has
    no conversations (``[]``). A row with tools comes as ``(name, messages, tools)``, its
    messages holding their calls and tool results, so the check sends the export what a
    client with ``tools=`` would, and the answer compared may be a call.

    Examples:
        >>> conversations_of(None)
        []
    """
    if prepared is None or prepared.is_text:
        return []
    split = (
        "validation" if prepared.validation is not None and len(prepared.validation) else ("train")
    )
    rows = prepared.split(split)
    found: list[Conversation] = []
    for i in range(min(len(rows), limit)):
        row = rows[i]
        messages, tools = with_tool_calling(row["messages"], row.get(TOOL_CALLING))
        answers = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
        cut = messages[: answers[-1]] if answers else messages
        name = f"{split} row {i + 1}"
        found.append((name, cut, tools) if tools else (name, cut))
    return found


def _llama(path: Path, context: int) -> Any:
    from workbench.deploy.llama_quantize import require_llama_cpp

    require_llama_cpp("the export check runs the file in llama.cpp")
    from llama_cpp import Llama

    try:
        with keeping_interrupts():  # llama.cpp logs every step of a load
            return Llama(model_path=str(path), n_ctx=context, n_threads=2, verbose=False, seed=0)
    except ValueError as err:  # llama-cpp-python's words for any file llama.cpp refuses
        msg = (
            f"llama.cpp could not load {path}: the file is damaged or describes a model "
            f"llama.cpp cannot build ({llama_cpp_load_error(path) or 'it gives no reason'})."
        )
        raise ModelLoadError(msg) from err


def llama_cpp_load_error(path: str | Path) -> str | None:
    """Why llama.cpp refuses to load the GGUF at ``path`` in its own words, or ``None`` when
    it loads (or llama-cpp-python is not installed to ask).

    Examples:
        >>> from pathlib import Path
        >>> bad = Path("/tmp/wb-doc-not.gguf")
        >>> _ = bad.write_bytes(b"GGUF" + bytes(20))
        >>> "error" in llama_cpp_load_error(bad)
        True
    """
    import contextlib
    import io

    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    log = io.StringIO()  # verbose=True sends llama.cpp's log to sys.stderr (False: /dev/null)
    try:
        with contextlib.redirect_stderr(log), keeping_interrupts():
            Llama(model_path=str(path), n_ctx=16, n_threads=1, verbose=True).close()
    except ValueError:
        lines = [line.strip() for line in log.getvalue().splitlines()]
        errors = [line for line in lines if "error" in line.lower() or "failed" in line.lower()]
        return "; ".join(errors[:3]) or "llama.cpp gave no reason"
    return None


def _exported_side(
    llm: Any, case: PromptCase, max_new_tokens: int
) -> tuple[list[int], list[int], str, int | None]:
    """Prompt ids, answer ids, answer text and the end token it stopped at (``None``: none)
    from llama.cpp, with the file's own template."""
    if case.messages is not None:
        prompt, stops = _render_with_file_template(llm, case.messages, case.tools)
    else:
        prompt, stops = case.prompt, []
    prompt_ids = list(llm.tokenize(prompt.encode("utf-8"), add_bos=case.bos_added, special=True))
    ends = {llm.token_eos(), *_end_of_turn_ids(llm)}
    answer: list[int] = []
    ended_at = None
    for token in llm.generate(
        prompt_ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True
    ):
        if len(answer) >= max_new_tokens:
            break
        if token in ends:
            ended_at = int(token)
            break
        answer.append(int(token))
        text = llm.detokenize(answer, special=True).decode("utf-8", errors="replace")
        if any(stop and stop in text for stop in stops):
            break
    text = llm.detokenize(answer, special=True).decode("utf-8", errors="replace")
    for stop in stops:
        text = text.split(stop)[0] if stop else text
    return prompt_ids, answer, text, ended_at


def _tie_gap(
    model: Any, prompt_ids: list[int], answer: list[int], theirs: list[int], ended_at: int | None
) -> float | None:
    """Where the answers first differ: how far below the tuned model's best logit the token
    llama.cpp picked was, in standard deviations of those logits (``None``: they do not
    differ, or llama.cpp's token there is unknown)."""
    import torch

    index = _first_mismatch(answer, theirs)
    if index is None:
        return None
    picked = theirs[index] if index < len(theirs) else ended_at
    if picked is None:
        return None
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ids = torch.tensor([prompt_ids + answer[:index]], device=device)
            logits = model(input_ids=ids).logits[0, -1].float()
    finally:
        model.train(was_training)
    if picked >= logits.numel():
        return None
    if index >= len(answer) and int(logits.argmax()) == picked:
        return None  # the same token, on which one side ended and the other went on: no tie
    return float((logits.max() - logits[picked]) / logits.std())


def _render_with_file_template(
    llm: Any, messages: Messages, tools: Tools | None = None
) -> tuple[str, list[str]]:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    meta = llm.metadata
    template = meta.get("tokenizer.chat_template")
    if not template:
        raise SpecError(
            "the GGUF file carries no chat template (tokenizer.chat_template), so "
            "chat prompts cannot be rendered as a server would: export again."
        )
    vocab = [
        llm.detokenize([i], special=True).decode("utf-8", errors="replace")
        for i in (llm.token_bos(), llm.token_eos())
    ]
    formatter = Jinja2ChatFormatter(
        template, eos_token=vocab[1], bos_token=vocab[0], add_generation_prompt=True
    )
    rendered = formatter(messages=messages, tools=tools)
    stops = rendered.stop if isinstance(rendered.stop, list) else [rendered.stop or ""]
    return rendered.prompt, [s for s in stops if s]


def _end_of_turn_ids(llm: Any) -> list[int]:
    eot = llm.metadata.get("tokenizer.ggml.eot_token_id")
    return [int(eot)] if eot not in (None, "") else []


def _session_side(
    model: Any, tokenizer: Any, case: PromptCase, stop: str | None, max_new_tokens: int
) -> tuple[list[int], list[int], str]:
    """Prompt ids, answer ids and answer text from the tuned model, greedily."""
    import torch

    prompt_ids = case.prompt_ids or tokenizer(case.prompt, add_special_tokens=False).input_ids
    ends = [tokenizer.eos_token_id]
    stop_id = tokenizer.convert_tokens_to_ids(stop) if stop else None
    if stop_id is not None and stop_id != tokenizer.unk_token_id:
        ends.append(stop_id)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            output = model.generate(
                torch.tensor([prompt_ids], device=device),
                attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long, device=device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=[e for e in ends if e is not None] or None,  # none: no stop
                pad_token_id=pad_id(tokenizer),
            )
    finally:
        model.train(was_training)
    answer = [int(t) for t in output[0, len(prompt_ids) :].tolist() if t not in ends]
    text = tokenizer.decode(answer)  # special tokens the model wrote (a call's) stay
    if stop and stop in text:  # a stop that is text, not a token: the answer ends before it
        text = text.split(stop)[0]
        answer = answer[: _tokens_before(tokenizer, answer, text)]
    return prompt_ids, answer, text


def _tokens_before(tokenizer: Any, answer: list[int], text: str) -> int:
    """How many of ``answer``'s tokens decode to (a prefix of) ``text``: where the session
    cut an answer at its stop text. An export stops only at end tokens, so when it writes
    the stop text and goes on, its answer differs from there. (The longest such prefix: a
    character split over byte tokens decodes to U+FFFD until its last token.)"""
    return max(k for k in range(len(answer) + 1) if text.startswith(tokenizer.decode(answer[:k])))


@dataclass(frozen=True)
class PromptCase:
    """One case to run on both sides: the session's prompt, and what the export renders.

    Attributes:
        name: Where it came from (``validation row 3``, ``probe 1``).
        prompt: The prompt as the session renders it (its training template).
        messages: The conversation the export renders with its own template (``None``: a
            raw prompt, sent as it is).
        tools: The tools on offer (``None``: none).
        prompt_ids: The session's prompt tokens, as its chat and ``generate`` give them to
            the model (a control token typed in a message stays plain text, as in training);
            ``None``: the prompt text tokenized.
        bos_added: The session put ``bos`` before this raw prompt itself (a model tuned on
            raw text): the export's side adds it too, as its tokenizer does for a plain
            ``tokenizer(text)`` (``session_glue.raw_text_tokenizer``).

    Examples:
        >>> PromptCase("probe 1", "Once upon", None).tools is None
        True
    """

    name: str
    prompt: str
    messages: Messages | None
    tools: Tools | None = None
    prompt_ids: list[int] | None = None
    bos_added: bool = False


def _prompts(
    tokenizer: Any,
    template: Any,
    conversations: Sequence[Conversation],
    raw_prompts: Sequence[tuple[str, str]],
) -> tuple[str | None, list[PromptCase]]:
    """Where the session's answers stop, and each case: the conversations rendered with the
    training template (with their tools), the raw prompts as they are."""
    from workbench.chat import chat_stop_strings
    from workbench.data.prompts import chat_prompt_ids
    from workbench.data.templates import render_prompt, resolve_template

    if not conversations and not raw_prompts:
        raise SpecError("nothing to compare: give conversations or raw_prompts.")
    resolved = resolve_template(template, tokenizer)
    stops = chat_stop_strings(resolved, tokenizer)  # as the session's chat and probes stop
    cases = []
    for name, messages, *offered in conversations:
        tools = offered[0] if offered else None
        prompt = render_prompt(resolved, tokenizer, messages, True, tools)
        [ids] = chat_prompt_ids(resolved, tokenizer, [messages], [tools])
        cases.append(PromptCase(name, prompt, messages, tools, list(ids)))
    bos = getattr(tokenizer, "bos_token", None)
    for name, text, *given in raw_prompts:  # (name, text) or (name, text, the session's ids)
        ids = list(given[0]) if given else None
        added = (
            bool(bos) and (ids or [])[:1] == [tokenizer.bos_token_id] and not text.startswith(bos)
        )
        cases.append(PromptCase(name, text, None, None, ids, added))
    return (stops[0] if stops else None), cases


def _compared(
    case: PromptCase,
    model: Any,
    tokenizer: Any,
    stop: str | None,
    max_new_tokens: int,
    *theirs: Any,
) -> ParityCase:
    """One case: the session's greedy answer to its prompt against the export's, ``theirs``
    being its prompt ids, answer ids, answer text and the end token it stopped at."""
    prompt_ids, answer_ids, text, ended_at = theirs
    mine = _session_side(model, tokenizer, case, stop, max_new_tokens)
    gap = None
    if mine[0] == prompt_ids:  # same prompt: compare where the answers part
        gap = _tie_gap(model, mine[0], mine[1], answer_ids, ended_at)
    return ParityCase(case.name, mine[0], prompt_ids, mine[2], text, mine[1], answer_ids, gap)


def check_gguf(
    path: str | Path,
    model: Any,
    tokenizer: Any,
    template: Any = None,
    conversations: Sequence[Conversation] = (),
    raw_prompts: Sequence[tuple[str, str]] = (),
    max_new_tokens: int = 32,
) -> ParityReport:
    """Run conversations greedily through ``model`` and through the GGUF in llama.cpp; compare.

    Args:
        path: The exported ``.gguf`` file, or its export folder.
        model: The tuned model (with its adapter: the export is its merged copy).
        tokenizer: Its tokenizer.
        template: The training template (a :class:`~workbench.data.templates.Template`, a
            name, or ``None`` for the tokenizer's own): renders ``conversations`` on the
            session's side; the file's stored chat template renders them on the other.
        conversations: ``(name, messages)`` pairs, or ``(name, messages, tools)`` with the
            tools on offer; the messages end before the answer compared.
        raw_prompts: ``(name, text)`` pairs sent as they are (no template) to both sides.
        max_new_tokens: Longest answer compared.

    Raises:
        DependencyError: llama-cpp-python is not installed.
        SpecError: no GGUF at ``path``, nothing to compare, or no template in the file.

    Examples:
        The tiny model and its F32 GGUF, run in llama.cpp, answer one conversation alike:

        >>> from workbench.deploy.gguf_writer import write_gguf
        >>> from workbench.models.loading import load_model
        >>> from workbench.models.tiny import build_tiny_model
        >>> loaded = load_model(str(build_tiny_model("/tmp/wb-doc-deploy-parity-tiny")),
        ...                     on_event=len)
        >>> model, tok = loaded.model, loaded.tokenizer
        >>> path = write_gguf(model, tok, Path("/tmp/wb-doc-deploy-parity-model.gguf"))
        >>> report = check_gguf(path, model, tok, "chatml",
        ...                     [("q1", [{"role": "user", "content": "Hi"}])], max_new_tokens=8)
        >>> report.summary()
        'Export check of /tmp/wb-doc-deploy-parity-model.gguf: 1 of 1 answers the same.'
        >>> check_gguf(path, model, tok)
        Traceback (most recent call last):
        workbench.errors.SpecError: nothing to compare: give conversations or raw_prompts.
    """
    gguf = gguf_path_of(path)
    stop, prompts = _prompts(tokenizer, template, conversations, raw_prompts)
    longest = max(
        len(p.prompt_ids or tokenizer(p.prompt, add_special_tokens=False).input_ids)
        for p in prompts
    )
    llm = _llama(gguf, context=longest + max_new_tokens + 64)
    cases = []
    try:
        for case in prompts:
            with keeping_interrupts():
                theirs = _exported_side(llm, case, max_new_tokens)
            cases.append(_compared(case, model, tokenizer, stop, max_new_tokens, *theirs))
    finally:
        with keeping_interrupts():  # freeing logs too
            llm.close()
    return ParityReport(str(gguf), tuple(cases))
