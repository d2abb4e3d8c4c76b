"""The Session: one object that carries the work; every panel is a view of it.

The Session decides and holds state (model, tokenizer, data, runs) and the run folder on
disk. It publishes events that widgets and tests subscribe to, and it never imports a widget.
Each method delegates to a component in ``models/``, ``data/``, ``train/``...

Examples:
    >>> import workbench as wb
    >>> from workbench.models.tiny import build_tiny_model
    >>> s = wb.Session("/tmp/wb-doc-run", verbose=False)
    >>> info = s.load_model(str(build_tiny_model("/tmp/tiny-session-doc")))
    >>> info.architecture
    'LlamaForCausalLM'
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
import warnings
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench._display import print_line
from workbench._io import expand_home, process_alive
from workbench._numbers import plain_number
from workbench.errors import (
    EvaluationError,
    ModelLoadError,
    NoDataError,
    NoModelError,
    ServeError,
    SessionStateError,
    SpecError,
    WorkbenchError,
    WorkbenchWarning,
    WriteError,
    refuse_unknown,
    warn_user,
)
from workbench.events import DATA_LOADED, MODEL_LOADED, PROGRESS, EventHub
from workbench.models.generation import generate_text
from workbench.models.info import ModelInfo, model_info
from workbench.models.loading import DType, LoadedModel, Quantization, load_model
from workbench.models.strength import reset_adapter_strength
from workbench.session_folder import SessionFolder
from workbench.train.status import RunState

if TYPE_CHECKING:
    from workbench.data import DataReport, Example, PreparedData

__all__ = ["NoDataError", "NoModelError", "Session"]


class Session:
    """The stateful object of a tuning session, rooted in a run folder.

    Args:
        run_dir: Folder for everything the session writes (created if missing).
        verbose: Print progress messages (model conversion, loading) as they happen, and a
            line per step while ``train(wait=True)`` blocks.

    Events (subscribe with :meth:`on`; names and payload types in :mod:`workbench.events`):
    ``progress`` (a message), ``model_loaded`` (:class:`ModelInfo`), ``data_loaded``
    (:class:`~workbench.data.DataReport`), the run's ``train_log``, ``train_state``,
    ``train_probes``, ``train_checkpoint`` and ``train_layer_norms``, and an evaluation's
    ``eval_progress`` and ``eval_done``.

    While a training run is running or stopping, every call that uses the model or changes
    the session is refused with a :class:`~workbench.errors.SessionStateError` naming the run
    and the way out; while it is paused, read-only calls (``generate``, ``evaluate``,
    ``export``, ``quantize``, ``serve``) work and the run resumes unharmed. The full table is
    in ``docs/session_states.md``.

    Examples:
        >>> s = Session("/tmp/wb-doc-run", verbose=False)
        >>> s.run_dir.name
        'wb-doc-run'
    """

    def __init__(self, run_dir: str | Path = "runs/default", verbose: bool = True) -> None:
        self.folder = SessionFolder(run_dir)
        self.run_dir = self.folder.root
        self._verbose = verbose  # also: a blocking train() prints a line per step
        self.events = EventHub()
        self._loaded: LoadedModel | None = None
        self._data: PreparedData | None = None
        self._adapted: Any = None  # the peft model once an adapter is trained or loaded
        self._adapter_folder: tuple[Any, Path] | None = None  # load_adapter's (model, folder)
        self._exported: Path | None = None
        self._exported_version: tuple = ()
        self._servers: list = []
        self._run: Any = None
        self._run_of_model: Any = None  # the run whose weights the model holds (None: none)
        # how this object loaded its model (a run's run.json records it): its own, never read
        # back from session.json, which another kernel on the same folder may have rewritten
        self._model_record: dict | None = None
        self._runs_held: weakref.WeakSet = weakref.WeakSet()  # trained, resumed, forked here
        self._let_go_deferred: list | None = None  # runs to let go once a resume is taken
        self._merged = False  # an adapter (trained or loaded) is merged into the model
        self._merged_from: list[str] = []  # whose adapters were merged: "run-001", a folder
        self._data_of_run: Any = None  # the data the run of the model trained on
        self._training_summary: dict = {}
        self._evaluation: Any = None  # the latest evaluation, for diagnose()
        self._evaluated_weights: tuple | None = None  # what it measured (_model_version)
        self._evaluation_run: Any = None  # a background evaluate(wait=False), while it runs
        # answers of an evaluation whose scoring failed: (what they answer, the model, answers)
        self._kept_answers: tuple[str, Any, dict] | None = None
        self._unsubscribers: list[Callable[[], None]] = []
        # find_lr's suggestion for this model and data, and the method it was measured for
        self._measured_lr: tuple[float, str] | None = None
        if verbose:
            self._unsubscribers.append(self.events.on(PROGRESS, print_line))

    def on(self, event: str, fn: Callable[[Any], Any]) -> Callable[[], None]:
        """Call ``fn(payload)`` on each ``event``; returns a function that unsubscribes.

        Examples:
            >>> s = Session("/tmp/wb-doc-run", verbose=False)
            >>> messages = []
            >>> off = s.on("progress", messages.append)
            >>> off()
        """
        return self.events.on(event, fn)

    def _progress(self, message: str) -> None:
        self.events.emit(PROGRESS, message)

    def _check_run_allows(self, call: str) -> None:
        """Refuse ``call`` while the session's run would be harmed by it (see the class doc)."""
        evaluating = self._evaluation_run  # evaluate(wait=False)'s handle
        if evaluating is not None and not evaluating.done:
            raise SessionStateError(
                f"{call}() is refused: an evaluation is running on the session's model "
                f"({evaluating.progress_text()}): ev.wait() or ev.cancel() first."
            )
        run = self._run
        if run is None:
            return
        status = run.status
        state = status.state
        # resume() just called: the worker wakes a moment later, and trains (read again
        # after: a worker that woke between the two reads says running by then)
        resuming = state is RunState.PAUSED and (
            getattr(run, "resuming", False) or run.status.state is not RunState.PAUSED
        )
        if not status.active or (
            state is RunState.PAUSED and not resuming and call in _READ_ONLY_CALLS
        ):
            return
        said = "resuming" if resuming else state.value
        where = f"{run.run_dir.name} is {said} (step {status.step}/{status.total_steps})"
        if state is RunState.STOPPING:
            fix = f"call run.wait() until it has stopped, then {call}()."
        elif call in _READ_ONLY_CALLS:
            fix = (
                f"call run.pause() and then {call}() (the run resumes unharmed with "
                f"run.resume()), or run.stop() and run.wait() first."
            )
        else:
            fix = (
                f"{call}() would change what the run is training: call run.stop() and "
                "run.wait() first, or wait for the run to end with run.wait()."
            )
        raise SessionStateError(f"{call}() is refused while {where}: {fix}")

    def load_model(
        self,
        spec: str = "gemma-3-270m",
        quantization: Quantization | None = None,
        dtype: DType = "auto",
        device: str = "auto",
        trust_remote_code: bool = False,
    ) -> ModelInfo:
        """Load a model and tokenizer; returns its :class:`ModelInfo` (a table in a notebook).

        Args:
            spec: ``"gemma-3-270m"`` (built in, no download), a ``.gguf`` file, a local
                model folder, or a hub id.
            quantization: ``None``, ``"4bit"`` (NF4 with double quantization) or ``"8bit"``.
            dtype: ``"auto"``: bfloat16 on a GPU that supports it, float32 elsewhere.
            device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
            trust_remote_code: Allow code shipped with a checkpoint to run.

        Examples:
            >>> from workbench.models.tiny import build_tiny_model
            >>> folder = str(build_tiny_model("/tmp/tiny-session-doc"))
            >>> s = Session("/tmp/wb-doc-run", verbose=False)
            >>> s.load_model(folder, quantization="4bit").quantization
            '4bit'
        """
        self._check_run_allows("load_model")
        start = time.monotonic()
        self._progress(f"loading {spec}")
        loaded = load_model(spec, quantization, dtype, device, trust_remote_code, self._progress)
        self._forget_the_earlier_model(loaded.tokenizer)
        self._loaded, self._adapted, self._exported = loaded, None, None
        info = model_info(loaded)
        self._progress(f"loaded {info.architecture} in {time.monotonic() - start:.1f}s")
        self._model_record = {
            "spec": loaded.source.lasting_spec,
            "quantization": quantization,
            "dtype": loaded.dtype,
            "device": loaded.device,
            "trust_remote_code": trust_remote_code,
        }
        self._record({"model": self._model_record})
        self.events.emit(MODEL_LOADED, info)
        return info

    def _forget_the_earlier_model(self, tokenizer: Any) -> None:
        """What described the earlier model does not describe a new one: its run, training
        settings, evaluation and scores (no longer credited to it in evaluations and model
        cards), and data tokenized by another tokenizer (dropped, saying so). Its ended run
        lets go of the earlier model and optimizer (a monitor left open in the notebook kept
        them alive, a model per run)."""
        earlier = list(self._runs_held)  # the latest, forks' parents, runs before a merge
        if self._let_go_deferred is not None:  # a resume, which may yet be refused
            self._let_go_deferred.extend(earlier)
        else:
            _let_go_of(earlier)
        self._run_of_model, self._merged, self._merged_from = None, False, []
        self._training_summary, self._evaluation = {}, None
        self._measured_lr = None
        if self._data is not None and not _tokenizes_alike(self._data, tokenizer):
            self._data = None
            warnings.warn(
                "the loaded data was tokenized for the earlier model's tokenizer, which this "
                "model's differs from: load_data(...) again to use it with this model.",
                WorkbenchWarning,
                stacklevel=3,
            )

    @property
    def loaded(self) -> LoadedModel:
        """The loaded model with its settings; raises :class:`NoModelError` if none.

        Examples:
            >>> Session("/tmp/wb-doc-empty", verbose=False).loaded
            Traceback (most recent call last):
            workbench.errors.NoModelError: no model is loaded: call session.load_model(...) first.
        """
        if self._loaded is None:
            raise NoModelError("no model is loaded: call session.load_model(...) first.")
        return self._loaded

    @property
    def model(self):
        """The loaded transformers model.

        Examples:
            >>> from workbench.models.tiny import build_tiny_model
            >>> s = Session("/tmp/wb-doc-session-model", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-session-tiny")))
            >>> type(s.model).__name__
            'LlamaForCausalLM'
        """
        self.loaded  # noqa: B018 - raises NoModelError when nothing is loaded
        return self._adapted if self._adapted is not None else self._loaded.model

    @property
    def tokenizer(self):
        """The loaded tokenizer.

        Examples:
            >>> from workbench.models.tiny import build_tiny_model
            >>> s = Session("/tmp/wb-doc-session-tokenizer", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-session-tiny")))
            >>> s.tokenizer.eos_token
            '</s>'
        """
        return self.loaded.tokenizer

    def model_info(self) -> ModelInfo:
        """Facts about the loaded model (a table in a notebook, text when printed).

        Examples:
            >>> from workbench.models.tiny import build_tiny_model
            >>> s = Session("/tmp/wb-doc-session-model-info", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-session-tiny")))
            >>> s.model_info().lora_targets
            ('down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj')
        """
        return model_info(self.loaded)

    def generate(
        self,
        prompt: str | list[str] | list[dict[str, str]],
        max_new_tokens: int = 64,
        chat: bool = False,
        tools: list[dict[str, Any]] | None = None,
        **generation: Any,
    ):
        """Complete a prompt (or a list of prompts) with the model as it is now.

        Greedy unless ``do_sample=True`` or a ``temperature`` above 0 is passed (as the
        server samples). ``max_new_tokens`` counts the new tokens (``max_length``, which
        counts the prompt too, is refused). Returns the new text only, as the model
        wrote it (special tokens included; it ends before its end token and padding).
        ``stop_strings`` (a text or a list) end the answer early.

        The prompt reaches the model as training's tokens did (:mod:`workbench.data.prompts`).
        A text prompt is read the way the loaded data was: with chat data, as a prompt the
        template rendered (``s.example(i).prompt``; no ``bos`` added to what the template
        writes), and the answer ends at the template's end of turn, as probes and
        evaluations end; with raw-text data, with the tokenizer's ``bos`` in front; with no
        data, as the tokenizer does by default. A prompt longer than the model's context, or
        one that leaves no room for ``max_new_tokens``, is refused.

        With ``chat=True`` each prompt is one user turn (a list of ``{"role", "content"}``
        turns is one conversation) rendered with the template the data was loaded with (else
        the tokenizer's chat template), and the answer ends at the template's stop string,
        as in :meth:`chat` (see :mod:`workbench.chat`). ``tools=`` offers tools (OpenAI's
        function schemas) as tool-calling training data does; the answer holds the calls as
        the template writes them (:func:`~workbench.data.tool_calls.parse_tool_calls` reads
        the built-in templates' ``<tool_call>`` blocks), and a conversation may go on with
        the calls and a ``tool`` turn holding their result.

        Examples:
            >>> from workbench.models.tiny import build_tiny_model
            >>> s = Session("/tmp/wb-doc-session-generate", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-session-tiny")))
            >>> text = s.generate("Hello", max_new_tokens=5)
            >>> isinstance(text, str), len(s.generate(["Hello", "Bye"], max_new_tokens=5))
            (True, 2)
            >>> "<|im_end|>" in s.generate("Hello", max_new_tokens=5, chat=True)
            False
        """
        self._check_run_allows("generate")
        if tools and not chat:
            raise SpecError("tools= needs chat=True: tools are offered in a chat template.")
        stops = _stop_list(generation.pop("stop_strings", None))
        _refuse_broken_text(prompt)
        if chat:
            from workbench.chat import chat_inputs

            template = self._data.template if self._data is not None else None
            mode = self._data.spec.special_tokens_in_text if self._data is not None else "split"
            inputs = chat_inputs(prompt, self.tokenizer, template, tools, mode)
            ids, single, stops = inputs.prompt_ids, inputs.single, [*stops, *inputs.stop_strings]
        else:
            texts, single = _text_prompts(prompt)
            ids = self._text_prompt_ids(texts)
            stops = [*stops, *(self._answer_stops() or [])]
        from workbench.data.context import check_room

        check_room(ids, max_new_tokens, self.loaded.model.config)
        outputs = generate_text(
            self.model, self.tokenizer, ids, max_new_tokens, stops or None, **generation
        )
        return outputs[0] if single else outputs

    def _text_prompt_ids(self, texts: list[str]) -> list[list[int]]:
        """Text prompts as ids tokenized the way the loaded data was (with no data, as
        :func:`~workbench.models.generation.encode_prompts` does)."""
        if self._data is None:
            from workbench.models.generation import encode_prompts

            return [list(ids) for ids in encode_prompts(self.tokenizer, texts)["input_ids"]]
        from workbench.data.prompts import text_prompt_ids

        return text_prompt_ids(self.tokenizer, texts, rendered=not self._data.is_text)

    @property
    def adapter_strength(self) -> float | None:
        """How strongly the adapter acts (0 base, 1 tuned); ``None`` without an adapter.

        Examples:
            >>> Session("/tmp/wb-doc-empty", verbose=False).adapter_strength is None
            True
        """
        from workbench.models.strength import adapter_strength

        return adapter_strength(self.model) if self._loaded is not None else None

    def set_adapter_strength(self, strength: float) -> float:
        """Scale the adapter live, on the same weights: 0 is the base model, 1 the tuned one.

        Values between blend, values above 1 (such as 1.5) exaggerate the update; 1 gives the
        tuned model back exactly. Refused while a run is running or paused (it would change
        what the run trains); training always starts at strength 1. ``merge()`` and merged
        exports fold the adapter in at the strength it has; an ``adapter`` export saves the
        tuned weights, which load at strength 1 (see :mod:`workbench.models.strength`).

        Raises:
            SpecError: no adapter, or a negative strength.
            SessionStateError: a run is running or paused.

        Examples:
            >>> import shutil
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-session-strength", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-session-strength", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-session-tiny")))
            >>> s.set_adapter_strength(0.5)
            Traceback (most recent call last):
            workbench.errors.SpecError: no adapter to scale: train() or load_adapter() first
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> s.train(max_steps=2, wait=False).wait().state
            <RunState.FINISHED: 'finished'>
            >>> s.set_adapter_strength(0.5), s.adapter_strength
            (0.5, 0.5)
        """
        from workbench.errors import SpecError
        from workbench.models.strength import set_adapter_strength

        self._check_run_allows("set_adapter_strength")
        if self.adapter_strength is None:
            raise SpecError("no adapter to scale: train() or load_adapter() first")
        strength = set_adapter_strength(self.model, strength)
        return strength

    def chat(self, tools: list[dict[str, Any]] | None = None, **options: Any):
        """The chat panel: messages in the tuned template, a strength dial, base vs tuned.

        Sends go through :meth:`generate` with ``chat=True`` (and ``tools``, OpenAI's
        function schemas, offered with every message: the panel then also shows the calls an
        answer makes), the dial through :meth:`set_adapter_strength`. Keywords go to
        :class:`~workbench.widgets.chat_panel.ChatPanel` (``max_new_tokens``,
        ``side_by_side``, ``remember``). Shows the conversation as text outside a notebook.

        Examples:
            >>> from workbench.models.tiny import build_tiny_model
            >>> s = Session("/tmp/wb-doc-session-chat", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-session-tiny")))
            >>> panel = s.chat(max_new_tokens=4)
            >>> panel.send("Hello").answer == s.generate("Hello", 4, chat=True)
            True
            >>> print(panel.text().splitlines()[0])
            Chat: template 'tokenizer' (tokenizer), answers stop at '<|im_end|>' (side by side off)
        """
        self._check_run_allows("chat")
        from workbench.chat import chat_inputs, chat_template, describe_chat
        from workbench.widgets.chat_panel import ChatPanel

        refuse_unknown("chat()", options, _keywords(ChatPanel, ("reply", "about", "tools")))
        template = self._data.template if self._data is not None else None
        template = chat_template(template, self.tokenizer)
        about = describe_chat(template, self.tokenizer)
        _refuse_a_message_as_tools(tools)
        if tools is not None:  # a template that drops tools is refused now, not at a send
            from workbench.data.call_formats import function_of

            chat_inputs("Hello", self.tokenizer, template, tools)
            names = ", ".join(function_of(t)["name"] for t in tools)
            about += f"; tools offered: {names}"
        scalable = self.adapter_strength is not None
        return ChatPanel(
            lambda messages, max_new_tokens: self.generate(
                messages, max_new_tokens, chat=True, tools=tools
            ),
            self.set_adapter_strength if scalable else None,
            get_strength=lambda: self.adapter_strength,
            about=about,
            tools=tools,
            **options,
        )

    def load_data(self, source: Any, **options: Any) -> DataReport:
        """Read, template and tokenize a data set; returns its :class:`DataReport`.

        Takes the keywords of :meth:`workbench.data.PreparedData.load`: ``format``,
        ``validation``, ``max_length``, ``template``, ``on_error``, ``columns``, ``seed``,
        ``sheet`` (an Excel workbook's sheet to train on), ``encoding`` (a text file's when
        not UTF-8: ``"cp1252"`` for a CSV Excel saved on Windows), ``special_tokens_in_text``
        (``"split"``, the default: control tokens written as text
        in the data, such as ``<|im_end|>``, are tokenized as plain text; ``"keep"``: they
        become real control tokens). The model's context length (from its config) caps
        ``max_length``: rows longer than it are reported as ``too_long`` and cut to it.
        The tokenized data is cached under the run folder. ``batched`` (default ``True``)
        templates and tokenizes in batches, checking a sample of each conversation shape
        against the row-by-row way; ``False`` renders every row alone (the earlier way, the
        same output, about 3x slower).

        Examples:
            >>> from workbench.models.tiny import build_tiny_model
            >>> s = Session("/tmp/wb-doc-session-load-data", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-session-tiny")))
            >>> rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(20)]
            >>> s.load_data(rows, validation=0.2).train
            16
        """
        self._check_run_allows("load_data")
        from datasets.utils.logging import disable_progress_bar

        from workbench.data import PreparedData
        from workbench.data.context import model_context
        from workbench.data.vocabulary import refuse_ids_beyond

        disable_progress_bar()  # progress bars would print into whatever cell is current
        known = _keywords(PreparedData.load, ("source", "tokenizer"))
        refuse_unknown("load_data()", options, known)
        given = dict(options)
        options.setdefault("cache_dir", str(self.run_dir / "data-cache"))
        options.setdefault("context", model_context(self.loaded.model.config))
        data = PreparedData.load(source, self.tokenizer, **options)
        rows = self.loaded.model.get_input_embeddings().num_embeddings
        refuse_ids_beyond(data, rows, self.tokenizer)
        self._data, self._measured_lr = data, None
        stop = data.text_only_stop
        if stop is not None:
            warn_user(
                f"template {data.template.name!r} ends each answer with {stop!r}, which is no "
                "token of this tokenizer: generate() and s.serve() stop at it by searching the "
                "text, but an export (transformers, llama.cpp, another server) stops only at "
                "an end token and writes on; use template='tokenizer' (its own) or "
                "template='alpaca'"
            )
        report = self._data.report()
        self._record(
            {
                "data": {
                    "source": _describe(source),
                    **_recorded_options(given),
                    "format": self._data.format,
                    "template": self._data.template.name,
                }
            }
        )
        self.events.emit(DATA_LOADED, report)
        return report

    @property
    def data(self) -> PreparedData:
        """The loaded data (train and validation splits, template, report).

        Examples:
            >>> Session("/tmp/wb-doc-empty", verbose=False).data  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            workbench.errors.NoDataError: no model or data is loaded: call session.load_model...
        """
        if self._data is None:
            raise NoDataError(self._no_data_message())
        return self._data

    def _no_data_message(self) -> str:
        """Why there is no data, and, where ``session.json`` says what this folder loaded last
        (a session opened again after a restart), the call that loads it again; with no
        model either, the model first (loading data needs its tokenizer)."""
        again = self._how_to_load_data_again()
        if self._loaded is None:
            if again is None:
                return (
                    "no model or data is loaded: call session.load_model(...), then "
                    "session.load_data(...)."
                )
            return f"no model is loaded: call session.load_model(...) first; then: {again}"
        return again or "no data is loaded: call session.load_data(...) first."

    def _how_to_load_data_again(self) -> str | None:
        """The call that loads again what ``session.json`` says this folder loaded last;
        ``None`` where it says nothing readable."""
        try:
            last = self._state().get("data")
        except (OSError, WorkbenchError):
            return None
        if not isinstance(last, dict) or not isinstance(last.get("source"), str):
            return None
        source, template = last["source"], last.get("template")
        given = last.get("options")
        if not isinstance(given, dict):  # written before options were recorded
            given = {key: last[key] for key in ("sheet", "encoding") if last.get(key)}
        if "template" not in given and isinstance(template, str) and template != "tokenizer":
            given = {**given, "template": template}
        unwritten = last.get("options_in_code")
        unwritten = unwritten if isinstance(unwritten, dict) else {}
        options = "".join(f", {key}={value!r}" for key, value in given.items())
        options += "".join(f", {key}=..." for key in unwritten)
        in_code = [f"{key} {value}" for key, value in unwritten.items()]
        if source.startswith("<"):  # rows given in code: only the notebook has them
            in_code.insert(0, f"rows {source}")
            call = f"s.load_data(rows{options})"
        else:
            call = f"s.load_data({source!r}{options})"
        if in_code:
            call += f" with the {', '.join(in_code)} given then"
        return (
            f"no data is loaded in this session object; {self.run_dir / 'session.json'} says "
            f"this folder last loaded {source}: {call} loads it again."
        )

    def example(self, i: int, split: str = "train") -> Example:
        """Example ``i`` as the model sees it: tokens with text, id and trained flag.

        Examples:
            >>> from workbench.models.tiny import build_tiny_model
            >>> s = Session("/tmp/wb-doc-session-example", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-session-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(20)],
            ...                 validation=0.2)
            >>> example = s.example(0)
            >>> [t.trained for t in example.tokens][:3]
            [False, False, False]
            >>> [t.text for t in example.tokens if t.trained][:4]  # the answer and its end token
            ['a', '1', '3', '<|im_end|>']
        """
        return self.data.example(i, split)

    def data_report(self) -> DataReport:
        """Counts, token lengths, trained share and problems of the loaded data.

        Examples:
            >>> from workbench.models.tiny import build_tiny_model
            >>> s = Session("/tmp/wb-doc-session-data-report", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-session-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(20)],
            ...                 validation=0.2)
            >>> report = s.data_report()
            >>> report.train, report.validation, [problem.kind for problem in report.problems]
            (16, 4, ['small_dataset'])
            >>> print(str(report).splitlines()[1])
            rows: 20 read, 0 skipped; train 16, validation 4
        """
        return self.data.report()

    def set_max_length(self, max_length: int | None) -> DataReport:
        """Re-tokenize the data with a new cutoff; returns the new report.

        ``None`` means the model's context; a cutoff past it is capped to it (with a
        :class:`~workbench.errors.WorkbenchWarning`).

        Examples:
            >>> from workbench.models.tiny import build_tiny_model
            >>> s = Session("/tmp/wb-doc-session-max-length", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-session-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> s.set_max_length(128).max_length
            128
            >>> s.set_max_length(None).max_length  # the model's context
            1024
        """
        self._check_run_allows("set_max_length")
        self._data, self._measured_lr = self.data.with_max_length(max_length), None
        self.events.emit(DATA_LOADED, self._data.report())
        return self._data.report()

    def inspect_data(self):
        """The DataInspector panel: rows, token view, length histogram, problems.

        In a front end without widgets, it shows the report as text.

        Examples:
            >>> from workbench.models.tiny import build_tiny_model
            >>> s = Session("/tmp/wb-doc-session-inspect-data", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-session-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(20)],
            ...                 validation=0.2)
            >>> panel = s.inspect_data()
            >>> panel.page_label.value, panel.split_toggle.options
            ('page 1 of 1 (16 rows)', ('train', 'validation'))

            The panel keeps the data it was made with; newer data makes it stale:

            >>> _ = s.set_max_length(12)
            >>> panel.stale, panel.apply_button.disabled, s.inspect_data().stale
            (True, True, False)
        """
        from workbench.widgets.data_inspector import DataInspector

        def apply(max_length: int) -> PreparedData:
            self.set_max_length(max_length)
            return self.data

        # The panel stays bound to this data: once load_data/set_max_length replace it, the
        # panel says it is stale and its Apply is off (it never acts on newer data).
        return DataInspector(
            self.data,
            on_apply_max_length=apply,
            current=lambda: self._data,
            events=self.events,
            memory=lambda seq_len: self.estimate_memory(seq_len=seq_len),
        )

    def estimate_memory(self, spec: Any = None, **settings: Any):
        """Estimate peak training memory for ``spec`` (default: the loaded model's config).

        Takes the keywords of :func:`workbench.estimate_memory`; with no spec and a loaded
        model, its quantization is used unless given.

        Examples:
            >>> s = Session("/tmp/wb-doc-session-memory", verbose=False)
            >>> s.estimate_memory("gemma-3-270m", seq_len=256).total > 0
            True
        """
        from workbench.models.memory import estimate_memory

        if spec is None:
            spec = self.model.config
            settings.setdefault("quantization", self.loaded.quantization)
        return estimate_memory(spec, **settings)

    @property
    def has_data(self) -> bool:
        """True once data is loaded.

        Examples:
            >>> Session("/tmp/wb-doc-empty", verbose=False).has_data
            False
        """
        return self._data is not None

    @property
    def holds_tuned_weights(self) -> bool:
        """Whether the model's weights were tuned: by a run, or an adapter loaded, merged or
        not (``False``: a base model as loaded, which evaluations call ``base``).

        Examples:
            >>> Session("/tmp/wb-doc-empty", verbose=False).holds_tuned_weights
            False
        """
        return self._adapted is not None or self._run_of_model is not None or self._merged

    def trained_data_summary(self) -> str:
        """The report of the data the model's run trained on, for model cards (``""``: not
        known here, e.g. a run resumed in a new process, an adapter loaded, no training).

        Data loaded after the run is not the run's: a card must not describe it.

        Examples:
            >>> Session("/tmp/wb-doc-empty", verbose=False).trained_data_summary()
            ''
        """
        if self._run_of_model is None or self._data_of_run is None:
            return ""
        return str(self._data_of_run.report())

    def training_summary(self) -> dict:
        """Settings of the last training run, for model cards (empty before training).

        When early stopping put back an earlier step's weights, ``weights_from_step`` says
        which, with the steps the run trained (``steps_trained``).

        Examples:
            >>> Session("/tmp/wb-doc-empty", verbose=False).training_summary()
            {}
        """
        summary = dict(self._training_summary)
        run = self._model_run()
        if summary and run is not None and run.weights_step != run.loop.step:
            summary["weights_from_step"] = run.weights_step  # the lowest eval loss's
            summary["steps_trained"] = run.loop.step
        return summary

    def scores_summary(self) -> dict:
        """Base and tuned scores of the last evaluation, while the model holds the weights it
        measured (empty before evaluating, and once training, a fork, another adapter
        strength or another model changed them: a model card must not claim them).

        Examples:
            >>> Session("/tmp/wb-doc-empty", verbose=False).scores_summary()
            {}
        """
        evaluation = self._latest_evaluation()
        if evaluation is None:
            return {}
        return {
            name: {k: v for k, v in score.items() if k in ("base", "tuned")}
            for name, score in evaluation.scores.items()
        }

    def _latest_evaluation(self) -> Any:
        """The last evaluation, if the model still holds the weights it measured."""
        if self._evaluation is None or self._evaluated_weights != self._model_version():
            return None
        return self._evaluation

    def load_adapter(self, path: str | Path) -> ModelInfo:
        """Put a saved peft adapter (e.g. an ``adapter`` export) on the loaded base model.

        Raises:
            SpecError: the model already carries an adapter (a second one would mix with it).
            ModelLoadError: ``path`` is not an adapter folder or its adapter does not fit
                this model; the model is left as it was.

        Examples:
            >>> import shutil
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-session-adapter", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-session-adapter", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-session-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> s.train(max_steps=2, wait=False).wait().state
            <RunState.FINISHED: 'finished'>
            >>> adapter = s.export("export/adapter", format="adapter")
            >>> new = Session("/tmp/wb-doc-session-adapter-new", verbose=False)
            >>> _ = new.load_model(str(build_tiny_model("/tmp/wb-doc-session-tiny")))
            >>> _ = new.load_adapter(adapter)
            >>> type(new.model).__name__
            'PeftModelForCausalLM'
        """
        self._check_run_allows("load_adapter")
        from workbench.models.adapters import attach_adapter
        from workbench.models.strength import has_adapter

        if self._adapted is not None or has_adapter(self.loaded.model):
            raise SpecError(
                "the model already carries an adapter (from a run or an earlier "
                "load_adapter): load_model(...) again, then load_adapter(...), to use another."
            )
        self._adapted = attach_adapter(self.loaded.model, path)
        self._adapter_folder = (self._adapted, Path(expand_home(path)).resolve())
        self._progress(f"loaded adapter {path}")
        return self.model_info()

    # --- training ---------------------------------------------------------------------

    def train(self, wait: bool | None = None, probes: list[str] | None = None, **settings: Any):
        """Train an adapter (or the full model) on the loaded data; returns the :class:`Run`.

        Keywords build a :class:`~workbench.train.TrainSpec` (``epochs``, ``lr``,
        ``lora=wb.LoRA(r=8)``, ``method``...). In a notebook it returns at once and shows the
        TrainingMonitor; elsewhere it blocks and prints progress (``wait`` overrides). An
        interrupt while it blocks (Ctrl-C, the notebook's stop button) stops the run as
        ``run.stop()`` does, saving the step it reached (``s.resume`` goes on from it), then
        raises ``KeyboardInterrupt``.

        Scale-out keywords start the same run under ``accelerate launch`` as a child process
        group, followed live by the same monitor and controls (see
        :class:`~workbench.train.launch.LaunchSpec`): ``processes=N`` per machine (one per
        GPU; any number on CPU, over gloo), ``machines=M`` with ``main_address=`` and
        ``main_port=`` (the other machines' commands are printed), ``fsdp=True`` to shard a
        model too big for one GPU, or ``accelerate_config=`` a file of your own. The global
        batch, the data order and the checkpoints are the same as in one process, so the
        loss curve matches one process's (exactly with ``LoRA(dropout=0)``), and either kind
        of run resumes the other (:meth:`resume` takes the same keywords).

        Examples:
            >>> import shutil
            >>> import workbench as wb
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-session-train", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-session-train", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-session-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> run = s.train(max_steps=100, lr=2e-4, lora=wb.LoRA(r=8), wait=False)
            >>> run.pause().state
            <RunState.PAUSED: 'paused'>
            >>> isinstance(s.generate("Hi", max_new_tokens=3), str)  # allowed while paused
            True
            >>> s.load_data([{"question": "q", "answer": "a"}])  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            workbench.errors.SessionStateError: load_data() is refused while run-001 is paused ...
            >>> run.resume().done
            False
            >>> run.stop().state, run.wait().state
            (<RunState.STOPPING: 'stopping'>, <RunState.STOPPED: 'stopped'>)
        """
        from workbench.errors import SpecError
        from workbench.train import start_run
        from workbench.train.launch.spec import LAUNCH_OPTIONS, launch_from_settings
        from workbench.train.run import block_until_ended, stopped_if_interrupted
        from workbench.train.spec import train_spec_from_settings

        self._check_run_allows("train")
        launch = launch_from_settings(settings)
        also = ("wait", "probes", *LAUNCH_OPTIONS)
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            spec = train_spec_from_settings("train()", settings, also)
        for warning in said:  # said again at the caller's line, not the spec's
            measured = "is far above" in str(warning.message) and self._measured_lr == (
                spec.lr,
                spec.method,
            )
            if not measured:  # find_lr measured that rate on this model and data
                warnings.warn(warning.message, warning.category, stacklevel=2)
        if self._adapted is not None:
            raise SpecError(
                "the model already carries an adapter from an earlier run: call "
                "load_model(...) again to train a fresh one, or merge() first."
            )
        data, model = self.data, self.loaded.model
        self._stop_runs_left_paused()  # once nothing refuses this train()
        reset_adapter_strength(model)  # a run never starts from a scaled adapter

        def adopt(run) -> None:
            self._hold_run(run, run.spec.to_dict())  # batch_size="auto" resolved
            self._data_of_run = data_of_run

        data_of_run = self._data
        with stopped_if_interrupted(adopt):  # a Ctrl-C once it started stops it, held here
            with self.folder.reserved("runs") as run_dir:
                run = start_run(
                    model,
                    self.tokenizer,
                    _training_columns(data.train),
                    _training_columns(data.validation),
                    spec,
                    run_dir,
                    self.events,
                    self._run_model_record(),
                    wait=False,  # blocked on below, once the session knows its run
                    probes=probes,
                    launch=launch,
                    probe_stops=self._answer_stops(),
                    probe_ids=self._probe_ids(probes),
                )
            adopt(run)
            return block_until_ended(run, self._verbose) if _blocking(wait) else run

    def _hold_run(self, run, summary: dict) -> None:
        """Make ``run`` the session's run (``s.run``) and its model the adapted one."""
        self._run, self._adapted, self._run_of_model = run, run.model, run
        self._runs_held.add(run)
        self._training_summary = summary
        run.fork_hooks = self._fork_hooks()

    def _probe_ids(self, probes: Any) -> list[list[int]] | None:
        """The probes tokenized as the data's prompts (left to ``start_run`` to refuse when
        they are not a list of texts)."""
        if not (isinstance(probes, (list, tuple)) and all(isinstance(p, str) for p in probes)):
            return None
        return self._text_prompt_ids(list(probes)) if probes else None

    def _answer_stops(self) -> list[str] | None:
        """Where the tuned model's answers end (the data template's end of turn), for
        probes and evaluations alike, as for the chat (:func:`workbench.chat.chat_stop_strings`)."""
        if self._data is None:
            return None
        from workbench.chat import chat_stop_strings

        return chat_stop_strings(self._data.template, self.tokenizer) or None

    def resume(
        self,
        run_dir: str | Path,
        wait: bool | None = None,
        model: str | Path | None = None,
        trust_remote_code: bool = False,
        **launch: Any,
    ):
        """Continue a run from its last complete checkpoint (also in a new process).

        ``run_dir`` is a run folder (``runs/demo/runs/run-001``) or a session folder, whose
        latest run is then resumed (and named in a progress message). The base model is the
        one the run's ``run.json`` names; where that folder has moved, ``model=`` names it
        now (and ``run.json`` keeps the new place for later resumes). A base that was loaded
        with ``trust_remote_code=True`` runs its shipped code again only when this call says
        ``trust_remote_code=True`` too: a run folder can come from anyone. The run goes on with
        the tokens its folder keeps; the session's data is not loaded again (evaluating needs
        it: what needs data and finds none names the call that loads what the folder loaded).

        Examples:
            >>> import shutil
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-session-resume", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-session-resume", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-session-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> run = s.train(max_steps=40, wait=False)
            >>> run.stop().state, run.wait().state
            (<RunState.STOPPING: 'stopping'>, <RunState.STOPPED: 'stopped'>)
            >>> later = Session("/tmp/wb-doc-session-resume", verbose=False)  # e.g. after a restart
            >>> messages = []
            >>> off = later.on("progress", messages.append)
            >>> run = later.resume("/tmp/wb-doc-session-resume", wait=False)
            >>> print(messages[0])  # doctest: +NORMALIZE_WHITESPACE
            resuming the latest run in /tmp/wb-doc-session-resume:
            /tmp/wb-doc-session-resume/runs/run-001
            >>> run.wait().state, run.status.step
            (<RunState.FINISHED: 'finished'>, 40)

        ``processes=``, ``machines=``, ``fsdp=``... (as for :meth:`train`) go on with the run
        on other processes: a one-process run resumes on several, and the other way round.
        """
        from workbench.train import check_resumable, resume_run
        from workbench.train.launch.spec import resume_launch
        from workbench.train.run import block_until_ended, stopped_if_interrupted
        from workbench.train.store import read_meta, write_meta

        self._check_run_allows("resume")
        run_dir = self._run_folder(expand_home(run_dir))
        launch = resume_launch(launch)  # refused before anything changes
        read_meta(run_dir)  # a damaged run.json too
        self._stop_paused_run_of(run_dir)
        check_resumable(run_dir)  # a refusal must not cost the session its model
        meta = read_meta(run_dir)
        with stopped_if_interrupted(
            lambda run: self._hold_run(run, meta.get("spec", {}))
        ) as started:
            with self._model_kept_if_refused(started):
                self._load_base_of(run_dir, meta, model, trust_remote_code)
                reset_adapter_strength(self.loaded.model)  # never resumed from a scaled adapter
                try:
                    run = resume_run(
                        run_dir,
                        self.events,
                        wait=False,
                        model=self.loaded.model,
                        tokenizer=self.tokenizer,
                        launch=launch,
                        trust_remote_code=trust_remote_code,
                    )
                except BaseException:
                    if model is not None and not started:  # run.json named the given model:
                        # the run never went on
                        with contextlib.suppress(OSError, WorkbenchError):  # the refusal matters
                            write_meta(run_dir, meta)
                    raise
            self._hold_run(run, meta.get("spec", {}))
            return block_until_ended(run, self._verbose) if _blocking(wait) else run

    def _stop_paused_run_of(self, run_dir: Path) -> None:
        """Stop a run of this process paused on ``run_dir`` (an earlier Session object's, a
        notebook run again), saving its step, so the folder goes on here: it waited for a
        resume nobody could send, holding its model and the folder's lock."""
        folder = run_dir.resolve()
        self._stop_paused_runs(
            lambda run: Path(run.run_dir).resolve() == folder,
            lambda run: (
                f"stopping {run_dir.name}, paused in this kernel, to go on with its folder here"
            ),
        )

    def _stop_runs_left_paused(self) -> None:
        """Stop the runs that other Session objects of this process left paused in this
        folder (a notebook run again from the top while a run was paused), saving their
        step: each waited for a resume nobody could send any more, holding a training
        thread, the run's lock and, through its Session, a model."""
        runs = (self.folder.root / "runs").resolve()
        self._stop_paused_runs(
            lambda run: (
                run.events is not self.events and Path(run.run_dir).resolve().parent == runs
            ),
            lambda run: (
                f"stopping {run.run_dir.name}, left paused by an earlier Session on "
                f"this folder (its step is saved; Session.resume({str(run.run_dir)!r}) goes on)"
            ),
        )

    def _stop_paused_runs(self, picked: Callable[[Any], bool], say: Callable[[Any], str]) -> None:
        """Stop each run of this process paused now that ``picked`` picks, saying
        ``say(run)`` first; its step is saved, as ``run.stop()`` saves it."""
        from workbench.train.worker import runs_training

        for run in runs_training():
            if run.status.state is RunState.PAUSED and picked(run):
                self._progress(say(run))
                run.stop()
                run.wait()

    def _run_model_record(self) -> dict | None:
        """How a run's base was loaded; after ``merge()``, also whose adapters are merged
        in (``merged_from``): a resume, a script or a launch cannot rebuild it by name."""
        if self._model_record is None or not self._merged:
            return self._model_record
        return {**self._model_record, "merged_from": list(self._merged_from)}

    @contextlib.contextmanager
    def _model_kept_if_refused(self, started: list):
        """A resume refused once its base model is loaded (another model than the run's: its
        fingerprint or its checkpoint says so) gives the session back the model, adapter,
        data and records it had: a refusal must not cost the session its model. Once the
        run has ``started`` (an interrupt right after), the session keeps what it trains."""
        kept = dict(vars(self))  # what load_model replaces or forgets; nothing is mutated
        record = self._model_record
        self._let_go_deferred = []  # the earlier runs keep their model until it is taken
        try:
            yield
        except BaseException:
            if not started:
                vars(self).update(kept)
                if record is not None:
                    self._record({"model": record})
                raise
            self._let_go_of_deferred()
            raise
        self._let_go_of_deferred()

    def _let_go_of_deferred(self) -> None:
        deferred, self._let_go_deferred = self._let_go_deferred, None
        _let_go_of(deferred)

    def _load_base_of(
        self, run_dir: Path, meta: dict, model: str | Path | None, trust_remote_code: bool
    ) -> None:
        """Load the base model a resumed run trains: ``model``, else the one run.json names
        (its shipped code run only when the caller allows it, whatever run.json says)."""
        from workbench.train import check_remote_code_allowed
        from workbench.train.start import merged_base
        from workbench.train.store import write_meta

        settings = {k: v for k, v in (meta.get("model_spec") or {}).items() if v}
        recorded = settings.pop("spec", None)
        settings.pop("trust_remote_code", None)
        settings.pop("merged_from", None)
        if model is None and recorded is None:
            return  # a run of a model built in memory: the loaded model goes on with it
        merged = merged_base(meta.get("model_spec"))
        if model is None and merged:
            raise SpecError(
                f"{run_dir.name} started from {merged}: pass that model, exported "
                "(Session.resume(folder, model='<the merged export>')); to make it again: "
                "load_model, load_adapter each merged run, merge(), export."
            )
        check_remote_code_allowed(meta, run_dir, trust_remote_code)
        if trust_remote_code:
            settings["trust_remote_code"] = True
        try:
            self.load_model(str(model or recorded), **settings)
        except ModelLoadError as err:
            if model is not None:
                raise
            msg = (
                f"{err} It is the base model {run_dir / 'run.json'} names; if it has moved, "
                "pass where it is now: Session.resume(folder, model='<its folder>')."
            )
            raise ModelLoadError(msg) from err
        if model is not None:  # the base from now on: whatever was merged, it holds
            spec = self.loaded.source.lasting_spec
            model_spec = {**meta.get("model_spec", {}), "spec": spec, "merged_from": None}
            write_meta(run_dir, {**meta, "model_spec": model_spec})

    def find_lr(self, **settings: Any):
        """Sweep the learning rate on the loaded data and suggest one (a panel in a notebook).

        Takes :meth:`train`'s keywords (``method``, ``lora=wb.LoRA(r=8)``, ``batch_size``...)
        and the sweep's own (``start_lr=1e-7``, ``end_lr=1.0``, ``num_steps=60``,
        ``smoothing``, ``diverge_factor``): see :func:`workbench.train.lr_finder.find_lr`.
        ``suggested_lr`` is where the smoothed loss falls fastest; pass it as ``lr=`` to
        :meth:`train`. The model is left exactly as it was: before training, a temporary
        adapter is attached and removed; after it, a copy of the adapter trains and is put
        back. Refused while a run is running or paused.

        Examples:
            >>> from workbench.models.tiny import build_tiny_model
            >>> s = Session("/tmp/wb-doc-session-find-lr", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-session-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> result = s.find_lr(num_steps=12, batch_size=2)
            >>> result.start_lr <= result.suggested_lr <= 1.0, type(s.model).__name__
            (True, 'LlamaForCausalLM')
        """
        self._check_run_allows("find_lr")
        from workbench.train.lr_finder import SWEEP_OPTIONS, find_lr

        model, train = self.model, _training_columns(self.data.train)
        sweep = {k: settings.pop(k) for k in SWEEP_OPTIONS if k in settings}
        method = settings.get("method", "lora")
        result = find_lr(model, self.tokenizer, train, settings, on_event=self._progress, **sweep)
        self._measured_lr = (result.suggested_lr, method)
        return result

    def _fork_hooks(self):
        """What ``run.fork(...)`` asks of the session: checks, re-cut data, adopting the fork.

        The fork becomes the current run (``s.run``); a fork is refused when the session's
        model is no longer the one the run trained, or another of its runs is active.
        """
        from workbench.train.fork import ForkHooks

        def check(parent) -> None:
            if self._adapted is not parent.model:
                msg = (
                    f"fork() of {parent.run_dir.name} is refused: the session's model is no "
                    "longer the one it trained (load_model, merge or resume since). "
                    f"Session.resume({str(parent.run_dir)!r}) first, then fork."
                )
                raise SessionStateError(msg)
            evaluating = self._evaluation_run is not None and not self._evaluation_run.done
            if self._run is not parent or evaluating:
                self._check_run_allows("fork")  # another active run, or an evaluation

        def data(max_length):
            prepared = self.data.with_max_length(max_length)
            return _training_columns(prepared.train), _training_columns(prepared.validation)

        def adopt(fork) -> None:
            self._hold_run(fork, fork.spec.to_dict())

        return ForkHooks(check=check, data=data, adopt=adopt, progress=self._verbose)

    def _run_folder(self, folder: Path) -> Path:
        """``folder`` itself when it holds a run, else the latest run of a session folder."""
        from workbench.errors import SpecError
        from workbench.train.store import RUN_FILE

        if (folder / RUN_FILE).is_file():
            return folder
        latest = SessionFolder(folder).latest_run() if folder.is_dir() else None
        if latest is None:
            msg = (
                f"{folder} holds no training run: give a run folder (one holding run.json, "
                "such as runs/demo/runs/run-001) or a session folder with runs/run-NNN in it."
            )
            raise SpecError(msg)
        self._progress(f"resuming the latest run in {folder}: {latest}")
        return latest

    @property
    def run(self):
        """The latest training run, or None.

        Examples:
            >>> Session("/tmp/wb-doc-empty", verbose=False).run is None
            True
        """
        return self._run

    # --- evaluation -------------------------------------------------------------------

    def evaluate(
        self,
        data: Any = None,
        metrics: Any = ("rouge", "bleu", "exact_match"),
        compare_base: bool = True,
        max_new_tokens: int = 64,
        generation: dict | None = None,
        limit: int | None = None,
        batch_size: int = 8,
        checkpoints: str | list[int] | None = None,
        correct: Any = None,
        wait: bool | None = None,
    ):
        """Generate for the validation split (or ``data``) with the tuned and the base model.

        The base model is the same weights with the adapter switched off: no second copy.
        Returns an :class:`~workbench.evaluation.Evaluation` (its panel in a notebook), saved
        under ``evaluations/`` in the session folder, naming the run it evaluated (so
        ``wb.compare([run.run_dir])`` shows its scores).

        In a notebook it returns at once (``wait=False``; ``wait=True`` blocks, as it always
        does elsewhere) an :class:`~workbench.evaluation.background.EvaluationRun`: it shows a
        progress panel whose rows appear as they are generated, then the finished panel;
        ``ev.wait()`` gives the Evaluation (and any of its attributes read on the handle
        waits for it), ``ev.progress`` the answers per column, ``ev.cancel()`` stops before
        the next batch and saves nothing. While it runs, every call that uses the model is
        refused (``docs/session_states.md``). While a run is paused the evaluation blocks
        (the run could be resumed under it); ``checkpoints=`` evaluations always block.

        With ``checkpoints="all"`` (or a list of steps) each complete checkpoint of the latest
        run is evaluated in turn (the base once) and a
        :class:`~workbench.evaluation.checkpoints.CheckpointEvaluation` is returned: a grid of
        examples x checkpoints saying where each row is right (``correct``: a score name, right
        at 1.0, ``(score, threshold)`` or ``function(prediction, reference) -> bool``), when it
        first became right and whether it broke again. The model's weights are the same
        afterwards; ``result.export(step)`` exports one checkpoint.

        Examples:
            >>> import shutil
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-session-evaluate", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-session-evaluate", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-session-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> s.train(max_steps=2, wait=False).wait().state
            <RunState.FINISHED: 'finished'>
            >>> ev = s.evaluate(metrics=["exact_match"], limit=2, max_new_tokens=8)
            >>> sorted(ev.scores), ev.scores["exact_match"]["tuned"]  # the tiny model knows nothing
            (['exact_match'], 0.0)
            >>> running = s.evaluate(metrics=["exact_match"], limit=2, max_new_tokens=8,
            ...                      wait=False)
            >>> running.wait().scores == ev.scores, running.progress
            (True, {'base': (1, 1), 'tuned': (1, 1)})
            >>> grid = s.evaluate(checkpoints="all", metrics=["exact_match"], limit=2,
            ...                   max_new_tokens=4, correct=lambda prediction, reference: True)
            >>> grid.steps, grid.grid, grid.first_right, grid.best_step  # one validation row
            ((1, 2), ((True, True),), (1,), 1)
            >>> grid.export(1, "export/step-1", format="adapter").name
            'step-1'
        """
        from workbench.evaluation import run_evaluation

        self._check_run_allows("evaluate")
        rows = self._evaluation_rows(data, metrics)
        stops = self._answer_stops()
        if checkpoints is not None or correct is not None:  # what each checkpoint fixed, broke
            from workbench.evaluation.checkpoints import evaluate_checkpoints

            with self.folder.reserved("evaluations") as folder:
                return evaluate_checkpoints(
                    self.model,
                    self.tokenizer,
                    rows,
                    self._checkpoints(),
                    checkpoints,
                    correct,
                    metrics=metrics,
                    compare_base=compare_base,
                    max_new_tokens=max_new_tokens,
                    generation=generation,
                    limit=limit,
                    out_dir=folder,
                    stop_strings=stops,
                    batch_size=batch_size,
                    events=self.events,
                    exporter=self.export,
                )
        model, run_dir = self.model, self._last_run_dir()
        about = self._evaluation_about(data, model, compare_base)
        tuned = self.holds_tuned_weights
        if self._merged and compare_base:
            self._say_what_base_is(about)
        asked = (rows, compare_base, max_new_tokens, generation, limit, batch_size, stops)
        answers_of = self._answers_key(*asked)

        def work(events: Any = self.events, cancelled: Any = None):
            kept = self._answers_kept_for(answers_of)
            with self.folder.reserved("evaluations") as folder, self._keeping_answers(answers_of):
                evaluation = run_evaluation(
                    model,
                    self.tokenizer,
                    rows,
                    metrics=metrics,
                    compare_base=compare_base,
                    max_new_tokens=max_new_tokens,
                    generation=generation,
                    limit=limit,
                    out_dir=folder,
                    stop_strings=stops,
                    batch_size=batch_size,
                    events=events,
                    run_dir=run_dir,
                    cancelled=cancelled,
                    about=about,
                    plain_model_role="tuned" if tuned else "base",  # an untrained model
                    generated=kept,
                )
            self._evaluation = evaluation  # the latest, for diagnose() and model cards
            self._evaluated_weights = self._model_version()
            return evaluation

        if _blocking(wait) or (self._run is not None and self._run.status.active):
            if wait is False:  # a paused run (a running one was refused above)
                raise SessionStateError(
                    f"evaluate(wait=False) is refused while {self._run.run_dir.name} is paused: "
                    "run.resume() would train the model it generates with. Call evaluate() "
                    "with wait=True, or run.stop() and run.wait() first."
                )
            try:
                return work()
            except KeyboardInterrupt:  # the cell's `ev = s.evaluate(...)` got nothing: say so
                msg = (
                    "interrupted: the evaluation stopped before it finished and saved nothing "
                    "(its folder under evaluations/ was removed); evaluate(...) again starts "
                    "over, evaluate(..., wait=False) runs in the background with a Cancel button"
                )
                raise KeyboardInterrupt(msg) from None
        from workbench.evaluation import EvalSpec
        from workbench.evaluation.background import EvaluationRun, evaluation_columns
        from workbench.evaluation.metrics import resolve_metrics

        resolve_metrics(metrics)  # a bad metric or setting fails here, not on the worker
        EvalSpec(compare_base, max_new_tokens, limit=limit, batch_size=batch_size)
        columns = evaluation_columns(model, compare_base, "tuned" if tuned else "base")
        self._evaluation_run = EvaluationRun(work, rows, columns, limit, self.events)
        return self._evaluation_run

    def _answers_key(self, *asked: Any) -> str:
        """What an evaluation's answers depend on: the model's weights as they are now, the
        rows and the generation settings (not the metrics)."""
        import hashlib

        weights = (*self._model_version(), self._merged)
        text = json.dumps([weights, *asked], default=repr, sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def _answers_kept_for(self, key: str) -> dict | None:
        """The answers kept from an evaluation whose scoring failed, when they answer ``key``
        with this very model (held weakly: a model loaded since is another one)."""
        if self._kept_answers is None:
            return None
        kept_key, model, answers = self._kept_answers
        if kept_key != key or model() is not self.model:
            return None
        self._progress("scoring the answers kept from the evaluation whose scoring failed")
        return answers

    @contextlib.contextmanager
    def _keeping_answers(self, key: str):
        """Keep the answers of an evaluation whose metric fails after generating (a user's
        function raising on one row): the same call, the metric fixed, scores them instead of
        generating them all again."""
        import weakref

        try:
            yield
        except EvaluationError as err:
            answers = getattr(err, "generated", None)
            if answers is None:
                raise
            self._kept_answers = (key, weakref.ref(self.model), answers)
            msg = (
                f"{err}. The generated answers are kept: evaluate again with the same data "
                "and settings (the metric fixed) to score them without generating them again."
            )
            raise EvaluationError(msg) from err
        self._kept_answers = None

    def report(self, path: str | Path = "report.html", title: str | None = None) -> Path:
        """Write a self-contained HTML page of the session: the data the model trained on,
        the run's loss curves, the latest evaluation's scores (base vs tuned, 95% intervals)
        and examples. It opens offline (plotly is inlined) and escapes every text it shows.

        Args:
            path: Where to write it (a folder: ``report.html`` in it); a relative path lives
                in the session folder.
            title: The page's heading (default: the session folder's name).

        Returns:
            The page's path.

        Examples:
            >>> import shutil
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-session-report", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-session-report", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-session-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> _ = s.train(max_steps=2, wait=False).wait()
            >>> page = s.report()
            >>> page.name, "Loss" in page.read_text() or "loss" in page.read_text()
            ('report.html', True)
        """
        from workbench._io import make_folder
        from workbench.deploy import export_target
        from workbench.report import write_report

        target = export_target(self.run_dir, path)
        if target.is_dir():  # a folder: the page goes in it
            target = target / "report.html"
        else:  # a link named as the page is replaced by it, never written through
            given = expand_home(path)
            target = export_target(self.run_dir, given.parent) / given.name
        make_folder(target.parent)
        run = self._model_run()
        data = self._data_of_run if run is not None else self._data
        summary = [f"model: {self._loaded.source.spec}"] if self._loaded is not None else []
        if run is not None:
            status = run.status
            summary.append(
                f"run: {run.run_dir.name}, {status.state.value} at step {status.step} of "
                f"{status.total_steps}; the model holds step {run.weights_step}'s weights"
            )
            if status.error:  # a failed run: why, as its status says it
                summary.append(f"why it failed: {status.error}")
        return write_report(
            target,
            title or f"Tuning Workbench: {self.run_dir.name}",
            data_report=data.report() if data is not None else None,
            history=run.history if run is not None else (),
            evaluation=self._evaluation,  # whatever it measured: the page says what
            summary=summary,
            template=data.template if data is not None else None,
        )

    def diagnose(self):
        """Findings in words about the latest run, the loaded data and the latest evaluation.

        Each :class:`~workbench.diagnostics.Finding` has a ``kind`` (``run_failed``,
        ``overfitting``, ``flat_loss``, ``grad_spikes``, ``end_of_turn_untrained``,
        ``answers_cut``, ``validation_leak``, ``worse_than_base``), a ``severity``, the
        ``evidence`` (steps, losses, counts, rows) and one ``suggestion``; the rules and their
        thresholds are in :mod:`workbench.diagnostics.rules`. Returns a
        :class:`~workbench.widgets._findings.Diagnosis`: a list that prints as text and shows
        as a coloured list in a notebook.

        Examples:
            >>> import shutil
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-session-diagnose", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-session-diagnose", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-session-tiny")))
            >>> rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)]
            >>> _ = s.load_data(rows, validation=rows[:2])  # validation copied from training
            >>> d = s.diagnose()
            >>> d.kinds, d[0].severity
            (['validation_leak'], 'warning')
            >>> print(d[0].evidence)  # doctest: +NORMALIZE_WHITESPACE
            2 of 2 validation rows repeat training rows: validation row 0 (same text as train
            row 0 (after normalising whitespace and case)): “q0 a0”, validation row 1 (same
            text as train row 1 (after normalising whitespace and case)): “q1 a1”
        """
        from workbench.diagnostics import diagnose
        from workbench.widgets._findings import Diagnosis

        run = self._model_run()
        history = run.history if run is not None else None
        total = run.status.total_steps if run is not None else None
        patience = run.spec.early_stopping if run is not None else None
        failed = run.status.error if run is not None and run.state is RunState.FAILED else None
        held = run.weights_step if run is not None else None
        evaluation = self._latest_evaluation()
        found = diagnose(history, self._data, evaluation, total, patience, failed, held)
        present = {"run": run, "data": self._data, "evaluation": evaluation}
        return Diagnosis(found, tuple(what for what, it in present.items() if it is not None))

    def _adapter_source(self) -> str:
        """Whose adapter the model carries: its run's folder name, or the folder it was
        loaded from."""
        if self._run_of_model is not None:
            return self._run_of_model.run_dir.name
        if self._adapter_folder is not None and self._adapter_folder[0] is self._adapted:
            return str(self._adapter_folder[1])
        return "an adapter"

    def _say_what_base_is(self, about: dict[str, Any]) -> None:
        """After a merge the base weights are gone: with no adapter on the merged model
        there is no base column; with one trained or loaded on it, its base column is the
        merged model (``about["base"]``, from :meth:`_evaluation_about`)."""
        if "base" not in about:
            self._progress("the adapter is merged: one column, no base (its weights are gone)")
            return
        self._progress(
            f"base: {about['base']} (what {self._adapter_source()} started from), not the "
            "model as loaded"
        )

    def _evaluation_about(
        self, data: Any, model: Any = None, compare_base: bool = False
    ) -> dict[str, Any]:
        """What an evaluation's settings say it measured, for ``compare``: the rows, the
        adapter's strength where it is not as trained, the run (``None``: none), and after a
        merge with an adapter on top, what its base column holds (``base``)."""
        from workbench.evaluation.run import is_peft_model

        if data is None:
            about: dict[str, Any] = {"data": "validation split"}
        elif isinstance(data, (str, Path)):
            about = {"data": str(data)}
        else:
            about = {"data": f"data= ({type(data).__name__})"}
        strength = self.adapter_strength
        if strength is not None and strength != 1:
            about["adapter_strength"] = strength
        about["run"] = None  # the run that trained the weights, where one did (run_evaluation)
        run = self._model_run()
        if run is not None:  # a paused run, or early stopping's best step
            about["step"] = run.weights_step
        if self._merged and compare_base and is_peft_model(model):
            about["base"] = f"the loaded model with {' and '.join(self._merged_from)} merged in"
        return about

    def _evaluation_rows(self, data: Any, metrics: Any = ()) -> list[dict]:
        from workbench.errors import SpecError

        if data is None:
            prepared, split = self.data, "validation"
            if prepared.validation is None or len(prepared.validation) == 0:
                raise SpecError(
                    "no validation split to evaluate on: load_data(..., "
                    "validation=0.1) or pass data= to evaluate()."
                )
        else:
            from workbench.data import PreparedData
            from workbench.data.context import model_context

            prepared = PreparedData.load(
                data,
                self.tokenizer,
                validation=None,
                template=self._data.template if self._data else None,
                context=model_context(self.loaded.model.config),
            )
            split = "train"
        if prepared.is_text:
            raise SpecError("evaluation needs prompt/answer rows; this data is raw text.")
        # with the tokens training saw, not the texts to tokenize again
        rows = [prepared.inference_row(i, split) for i in range(len(prepared.split(split)))]
        if "tool_calls" in _metric_names(metrics):
            _check_calls_readable(prepared, split, rows)
        return rows

    def _last_run_dir(self) -> Path | None:
        """The folder of the run whose weights the model holds (``None`` after a
        ``load_model`` or ``load_adapter`` since: that run did not train this model)."""
        run = self._model_run()
        return None if run is None else run.run_dir

    def _model_run(self) -> Any:
        return self._run if self._run is not None and self._run is self._run_of_model else None

    def _checkpoints(self, purpose: str = "evaluate") -> dict[int, Callable[[], dict]]:
        """Readers of the trained weights of each complete checkpoint of the latest run."""
        from workbench.train import checkpoint as ckpt

        run_dir = self._last_run_dir()
        if run_dir is None and self._run is not None:
            msg = (
                f"the model loaded now is not the one {self._run.run_dir.name} trained "
                "(load_model or load_adapter came after it), so its checkpoints do not fit "
                f"it: s.resume('{self._run.run_dir}') brings that run's model back first."
            )
            raise SpecError(msg)
        if run_dir is not None and not run_dir.is_dir():
            raise SpecError(f"{run_dir} was deleted, with its checkpoints: none to {purpose}.")
        found = ckpt.list_checkpoints(run_dir) if run_dir is not None else []
        valid = []
        for path in found:
            problem = ckpt.checkpoint_problem(path)
            if problem is None:
                valid.append(path)
            else:  # named, not left out in silence (it would read as pruned)
                warnings.warn(f"{path} is damaged ({problem}); it is left out",
                              WorkbenchWarning, stacklevel=3)  # fmt: skip
        return {ckpt.checkpoint_step(p): (lambda p=p: ckpt.load_trained_weights(p)) for p in valid}

    # --- deployment -------------------------------------------------------------------

    def merge(self) -> ModelInfo:
        """Fold the adapter into the base weights (also for a 4-bit base: dequantize, merge).

        Afterwards the session holds the merged plain model.

        Examples:
            >>> import shutil
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-session-merge", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-session-merge", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-session-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> s.train(max_steps=2, wait=False).wait().state
            <RunState.FINISHED: 'finished'>
            >>> type(s.model).__name__
            'PeftModelForCausalLM'
            >>> s.merge().quantization, type(s.model).__name__
            (None, 'LlamaForCausalLM')
        """
        self._check_run_allows("merge")
        from dataclasses import replace

        from workbench.deploy import merge_adapter
        from workbench.train.core import remove_training_hooks

        merged_from = self._adapter_source()
        evaluated = self._latest_evaluation()  # the merged model computes what it measured
        merged = merge_adapter(self._adapted if self._adapted is not None else self.model)
        remove_training_hooks(merged)  # the run's NEFTune noise and checkpointing
        self._loaded = replace(self.loaded, model=merged.eval(), quantization=None)
        self._adapted, self._merged = None, True
        self._merged_from.append(merged_from)
        if evaluated is not None:
            self._evaluated_weights = self._model_version()
        self._progress("merged the adapter into the base weights")
        return model_info(self._loaded)

    def export(
        self,
        path: str | Path = "export/merged",
        format: str = "safetensors",
        overwrite: bool = False,
        gguf_type: str = "f32",
        checkpoint: int | None = None,
    ) -> Path:
        """Write the model as a standard folder; relative paths live in the run folder.

        ``checkpoint=step`` exports that checkpoint of the latest run instead of the model as it
        is: its trained weights are loaded for the export and the model's own put back after
        (``evaluate(checkpoints=...)`` has an example); an unknown step lists the known ones.

        ``safetensors`` and ``gguf`` write the adapter merged into a copy of the model;
        ``adapter`` writes only the adapter. The session's model is never changed: it keeps
        its adapter (call :meth:`merge` for that). The target is checked first (empty or
        ``overwrite=True``, writable, room for the estimated size); on any failure nothing
        is left at the target.

        Running a notebook again writes to the same paths: a folder that this session folder
        exported before (``session.json`` remembers it) and that nobody changed since is
        replaced without ``overwrite=True``, saying so ("replacing the export written by
        run-001"). The new export is written completely before the old one is removed. Any
        other non-empty folder still needs ``overwrite=True``.

        ``gguf`` writes ``model.gguf`` (``gguf_type``: ``f32``, ``f16``, ``q8_0`` or ``q4_0``,
        quantized by the gguf package, or llama.cpp's K-quants ``q6_k``, ``q5_k_m``,
        ``q4_k_m``, ``q3_k_m``, ``q2_k``, which need llama-cpp-python) with the training chat
        template and end-of-turn token,
        and an Ollama ``Modelfile``. When llama-cpp-python is installed, the export is then run
        in llama.cpp and compared with the session's model (:meth:`check_export`); the result
        is saved as ``export_check.json`` and its summary printed.

        Raises:
            SpecError: unknown format, or a non-empty target without ``overwrite``.
            DependencyError: a K-quant ``gguf_type`` without llama-cpp-python.
            WriteError: a read-only target, or no space left on its disk.

        Examples:
            >>> import shutil
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-session-export", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-session-export", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-session-tiny")))
            >>> s.export("export/merged")
            PosixPath('/tmp/wb-doc-session-export/export/merged')
            >>> s.export("export/merged").name  # written by this session folder: replaced
            'merged'
            >>> _ = (s.run_dir / "export" / "merged" / "notes.txt").write_text("mine")
            >>> s.export("export/merged")  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            workbench.errors.SpecError: /tmp/.../merged exists and is not empty; pass overwrite=...
            >>> s.export("export/merged", overwrite=True).name
            'merged'
        """
        self._check_run_allows("export")
        if isinstance(gguf_type, str):
            gguf_type = gguf_type.lower()  # llama.cpp writes its types as Q8_0, Q4_K_M
        if checkpoint is not None:  # that checkpoint's trained weights, for this export only
            from workbench.evaluation.checkpoints import choose_steps, weights_loaded

            readers = self._checkpoints("export")
            (step,) = choose_steps([checkpoint], list(readers), "export")
            exported = self._exported, self._exported_version
            with weights_loaded(self.model, readers[step](), f"the checkpoint at step {step}"):
                folder = self.export(path, format, overwrite, gguf_type)
            self._exported, self._exported_version = exported  # the live model is not that one
            return folder
        from workbench.deploy import check_export, export_model, export_target
        from workbench.deploy.paths import check_overwrite, refuse_session_folders
        from workbench.deploy.session_glue import card_for, raw_text_tokenizer, ship_tokenizer

        check_overwrite(overwrite)
        target = export_target(self.run_dir, path)
        refuse_session_folders(self.run_dir, target)
        earlier = self.folder.written_earlier(target)  # this folder's own, from an earlier run
        other = self.folder.written_by_another_kernel(earlier)
        if other is not None and not overwrite:
            raise SpecError(
                f"{target} holds the export {earlier.get('by')} wrote in another kernel still "
                f"working in this session folder (process {other}): export elsewhere, or pass "
                "overwrite=True to replace it."
            )
        replace = overwrite or earlier is not None
        check_export(self.model, target, format, replace, gguf_type)  # before anything changes
        self._say_replacing(target, earlier)
        ship_tokenizer(self.tokenizer, self._loaded.model, self._data and self._data.template)
        card = card_for(self, format)
        raw_text = self._data is not None and self._data.is_text
        tokenizer = raw_text_tokenizer(self.tokenizer) if raw_text else self.tokenizer
        before_placing = self._recorder(target, f"{format} export")
        folder = export_model(
            self.model, tokenizer, target, format, card, replace, gguf_type, before_placing
        )
        if format == "safetensors":
            self._exported, self._exported_version = folder, self._model_version()
        self._record({"exports": {**self._state().get("exports", {}), format: str(folder)}})
        self._progress(f"exported {format} to {folder}")
        if card.strength_note():
            warnings.warn(card.strength_note(), WorkbenchWarning, stacklevel=2)
        # remembered before the check: an export whose check is interrupted is still this
        # session's, for the same call run again to replace
        self._remember(folder, self._writer(), f"{format} export")
        if format == "gguf" and _llama_cpp_available():
            try:
                self.check_export(folder)
            except WorkbenchError as err:  # the export stands; say why it was not checked
                self._progress(f"export check not run: {err}")
                warnings.warn(f"export check not run: {err}", WorkbenchWarning, stacklevel=2)
        return folder

    def _writer(self) -> str:
        """Who writes an export now, as :meth:`_say_replacing` names it later."""
        run = self._model_run()
        return run.run_dir.name if run is not None else _NO_RUN

    def _recorder(self, target: Path, what: str) -> Callable[[Path], None]:
        """A ``before_placing`` for :func:`~workbench.deploy.paths.staged_write`: the new
        folder is recorded in ``session.json`` before it is renamed into place, so a process
        killed just after the rename leaves an export the same call replaces again (it was
        refused without ``overwrite=True``). Until the rename, the folder standing there keeps
        its record too (:meth:`SessionFolder.remember`)."""
        return lambda staged: self._remember(target, self._writer(), what, staged)

    def _say_replacing(self, target: Path, earlier: dict | None) -> None:
        """Say that ``target``, written by this session folder before (``earlier``, from
        :meth:`SessionFolder.written_earlier`), is about to be replaced."""
        if earlier is not None:
            self._progress(f"replacing the export written by {earlier.get('by')}: {target}")

    def check_export(
        self, path: str | Path = "export/gguf", limit: int = 4, max_new_tokens: int = 32
    ):
        """Check that an export answers like the session's model, in the program that runs it.

        A GGUF (a file, or a folder holding one) runs in llama.cpp itself; a merged folder
        (``format="safetensors"``) in plain transformers, an adapter folder
        (``format="adapter"``) in peft on its base model, each in a separate process that does
        not import the workbench. The first ``limit`` validation conversations (cut before their
        answer) go through the session's model with its training template and through the
        export with the chat template stored in it, as Ollama, a llama.cpp server or a
        transformers script would run it (a conversation with tools offers them on both
        sides, so a tuned call is compared too); the run's probe prompts go to both as plain
        text.
        Greedy answers are compared token by token, and the report (a table in a notebook) is
        saved as ``export_check.json`` beside the file. Where an answer first differs, the
        tuned model's own logits say whether it was a near tie there (the export's token within
        0.1 standard deviations of its best: rounding picks either, common in random or barely
        trained models) or a real difference.
        ``export(..., format="gguf")`` runs this check itself when llama-cpp-python is installed.

        Examples:
            >>> from workbench.models.tiny import build_tiny_model
            >>> s = Session("/tmp/wb-doc-session-check", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-session-check-tiny")))
            >>> _ = s.export("export/merged", overwrite=True)
            >>> report = s.check_export("export/merged", limit=1, max_new_tokens=4)
            >>> report.all_same, report.runtime
            (True, 'transformers')
            >>> s.check_export("export/gguf")  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            workbench.errors.SpecError: /tmp/wb-doc-session-check/export/gguf is not an export ...
        """
        from workbench.deploy import export_target
        from workbench.deploy.merged_check import (
            check_adapter,
            check_merged,
            is_adapter_export,
            is_merged_export,
        )
        from workbench.deploy.parity import check_gguf, conversations_of, gguf_path_of

        self._check_run_allows("check_export")
        limit, max_new_tokens = plain_number(limit), plain_number(max_new_tokens)
        for name, value in (("limit", limit), ("max_new_tokens", max_new_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpecError(f"{name}={value!r} must be an integer of 1 or more.")
        target = export_target(self.run_dir, path)
        if is_merged_export(target):
            check, exported = check_merged, target
        elif is_adapter_export(target):
            check, exported = check_adapter, target
        else:
            try:
                check, exported = check_gguf, gguf_path_of(target)
            except SpecError:
                msg = (
                    f"{target} is not an export to check: a GGUF file, a folder holding one, "
                    "a merged model folder (config.json and model.safetensors) or an adapter "
                    "folder (adapter_config.json and adapter_model.safetensors)."
                )
                raise SpecError(msg) from None
        probes = list(self._run.probes if self._run is not None else [])[:limit]
        conversations = conversations_of(self._data, limit)
        if not conversations and self.tokenizer.chat_template:
            conversations = [
                (f"message {i + 1}", [{"role": "user", "content": text}])
                for i, text in enumerate(_DEFAULT_MESSAGES)
            ]
        elif not conversations:  # a base model without a chat template: plain completions
            probes = probes or list(_DEFAULT_MESSAGES)
        # with the ids the session's generate gives the model (a raw-text model's bos too)
        ids = self._text_prompt_ids(probes) if probes else []
        raw = [(f"probe {i + 1}", text, ids[i]) for i, text in enumerate(probes)]
        template = self._data.template if self._data is not None else None
        report = check(
            exported, self.model, self.tokenizer, template, conversations, raw, max_new_tokens
        )
        folder = exported.parent if check is check_gguf else target
        earlier = self.folder.written_earlier(folder)
        note = self._other_writer_note(earlier, folder)
        if note:
            report = dataclasses.replace(report, note=note)
        report.save(folder)
        if earlier is not None:  # still the session's export, with its check beside it
            self._remember(folder, earlier.get("by", ""), earlier.get("what", ""))
        self._progress(report.summary())
        return report

    def _other_writer_note(self, earlier: dict | None, folder: Path) -> str:
        """What a check must say when the export holds other weights than the session's
        model (written by another run, as ``session.json`` records): its answers differ where
        the two models do, which is no fault of the export. Not when the session's model is
        that export, put on the base by ``load_adapter(folder)`` and not trained since."""
        by, now = (earlier or {}).get("by"), self._writer()
        if not by or by == now or self._holds_adapter_of(folder):
            return ""

        def weights(writer: str) -> str:
            return "weights no run trained" if writer == _NO_RUN else f"{writer}'s weights"

        return (
            f"The export holds {weights(by)}, the session's model {weights(now)}: answers "
            "differ where the two models do. Export again to check the model the session holds."
        )

    def _holds_adapter_of(self, folder: Path) -> bool:
        loaded = self._adapter_folder
        return (
            loaded is not None
            and loaded[0] is self._adapted
            and self._model_run() is None
            and loaded[1] == folder.resolve()
        )

    def to_script(self, path: str | Path, fsdp: bool = False) -> Path:
        """Write the latest run as a standalone ``accelerate`` folder (several GPUs, no workbench).

        Relative paths live in the session folder, as exports do. See
        :func:`workbench.deploy.script.write_training_script` for the folder's contents.

        Raises:
            SessionStateError: there is no run yet.

        Examples:
            >>> Session("/tmp/wb-doc-empty", verbose=False).to_script("s")  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            workbench.errors.SessionStateError: no run to write as a script: train first, ...
        """
        from workbench.deploy import export_target
        from workbench.deploy.script import write_training_script

        if self.run is None:
            msg = "no run to write as a script: train first, or s.resume(folder)."
            raise SessionStateError(msg)
        target = export_target(self.run_dir, path)
        trusted = self.run.trust_remote_code  # as the caller loaded or resumed it
        return write_training_script(self.run.run_dir, target, fsdp, trusted)

    def _exported_folder(self) -> Path:
        """The latest safetensors export, made anew when missing or older than the model."""
        current = self._exported is not None and (self._exported / "config.json").is_file()
        if current:  # and not since replaced by another kernel working in this folder
            record = self.folder.written_earlier(self._exported)
            current = record is None or record.get("pid") in (None, os.getpid())
        if not current or self._exported_version != self._model_version():
            try:  # replaces only this session's own unchanged export: never a user's files
                self.export("export/merged")
            except SpecError as err:
                msg = (
                    f"quantize() and serve() first export the model as it is now to "
                    f"export/merged: {err} Move your files out of it, or export there "
                    "yourself first (export('export/merged', overwrite=True))."
                )
                raise SpecError(msg) from None
        return self._exported

    def _model_version(self) -> tuple:
        """Changes whenever the model's weights may have: another model, adapter or step."""
        step = self._run.status.step if self._run is not None else None
        return id(self.model), id(self._run), step, self.adapter_strength

    def quantize(
        self,
        quantization: str = "4bit",
        path: str | Path | None = None,
        probes: list[str] | None = None,
        overwrite: bool = False,
    ):
        """Quantize the exported model with bitsandbytes; returns a before/after table.

        The quantized model goes to ``path`` (default ``export/quantized-4bit`` or ``-8bit``
        in the session folder); like :meth:`export`, a folder this session folder wrote
        before, unchanged since, is replaced without ``overwrite=True``. The model as it is
        now is exported to ``export/merged`` first unless the latest export there is of it;
        a folder there that holds anything else (files of yours, another checkpoint's export
        changed since) is refused, never replaced.

        Examples:
            >>> import shutil
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-session-quantize", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-session-quantize", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-session-tiny")))
            >>> report = s.quantize("4bit", probes=["Hello"])
            >>> report.quantization, report.folder.name, [row[0] for row in report.rows()]
            ('4bit', 'quantized-4bit', ['size on disk', 'memory', 'latency per answer', 'tokens/s'])
        """
        self._check_run_allows("quantize")
        from workbench.deploy import export_target, quantize_export
        from workbench.deploy.paths import check_overwrite, refuse_session_folders
        from workbench.deploy.quantize import check_quantizable, check_quantize_target
        from workbench.train.start import check_probes

        check_overwrite(overwrite)
        target = export_target(self.run_dir, path or f"export/quantized-{quantization}")
        refuse_session_folders(self.run_dir, target)
        earlier = self.folder.written_earlier(target)  # this folder's own, from an earlier run
        replace = overwrite or earlier is not None
        check_quantize_target(target, quantization, replace)  # before exporting anything
        check_quantizable(self.model, quantization)
        check_probes(probes)
        source = self._exported_folder()
        probes = self._text_prompt_ids(list(probes or self._probe_prompts()))
        self._say_replacing(target, earlier)
        what = f"{quantization} quantized model"
        recorder = self._recorder(target, what)
        report = quantize_export(
            source, target, quantization, probes, self._scorer(), replace, recorder
        )
        self._remember(report.folder, self._writer(), what)
        self._progress(f"quantized to {report.folder}")
        return report

    def serve(self, port: int = 8000, path: str | Path | None = None):
        """Serve the exported model over an OpenAI-compatible API on loopback.

        A server that an earlier session on this session folder started on ``port`` and that
        is still running (a notebook run again before its ``server.stop()`` cell, in the same
        kernel or after the kernel died) is stopped first, saying so; ``session.json``
        remembers the servers' process ids. A port that this session's own server or any
        other program holds is refused.

        Raises:
            SpecError: ``port`` is not an int from 1 to 65535 (checked first), or is in use.

        Examples:
            Serving starts ``transformers serve`` in a subprocess, on a free port, and waits
            until it answers, so it is described rather than run here: ``server =
            s.serve(port=8000)`` serves at ``http://127.0.0.1:8000/v1`` (``server.usage()`` shows
            how to call it) until ``server.stop()``. A bad port is refused before anything is
            exported:

            >>> Session("/tmp/wb-doc-session-serve", verbose=False).serve(port=0)
            ... # doctest: +ELLIPSIS
            Traceback (most recent call last):
            workbench.errors.SpecError: port=0 is not a valid port: give an int from 1 to 65535...
        """
        self._check_run_allows("serve")
        from workbench.deploy import check_port, export_target, serve_model

        check_port(port)  # before exporting anything: a bad port must not cost an export
        mine = [server for server in self._servers if server.running and server.port == port]
        if mine:
            raise SpecError(
                f"port {port} is in use by this session's own server (an earlier "
                f"s.serve(port={port}), serving {mine[0].folder}): stop it first "
                "(server.stop(), or s.close() for all), or serve on another port."
            )
        # a relative path lives in the session folder, as for export() and check_export()
        folder = export_target(self.run_dir, path) if path else self._exported_folder()
        self._stop_earlier_server(port)
        data = self._data_of_run or self._data  # what the served weights were trained on
        trained = data.spec.special_tokens_in_text if data is not None else "split"
        turn_end = data.text_only_stop if data is not None else None
        server = serve_model(folder, port, control_text=trained, turn_end=turn_end)
        self._servers = [*(kept for kept in self._servers if kept.running), server]
        started = {"pid": server.process.pid, "starter": os.getpid()}
        self._record({"servers": {**self._state().get("servers", {}), str(port): started}})
        self._progress(server.usage())
        return server

    def _stop_earlier_server(self, port: int) -> None:
        """Stop the server this session folder started on ``port``, if it still holds it:
        one an earlier run of the notebook left (its Session object replaced, or its kernel
        gone); another kernel's, still running, is refused, not stopped under it."""
        from workbench.deploy.serve import port_is_free, serves_on, stop_serving_process

        entry = self._state().get("servers", {}).get(str(port))
        pid = entry.get("pid") if isinstance(entry, dict) else None
        if port_is_free(port) or not isinstance(pid, int) or not serves_on(pid, port):
            return  # free, or held by another program: serve_model says which port is in use
        if any(server.process.pid == pid for server in self._servers):
            return  # this session's own server: the caller holds it, and stops it
        starter = entry.get("starter")
        if isinstance(starter, int) and starter != os.getpid() and process_alive(starter):
            raise ServeError(
                f"port {port} is served by another kernel working in this session folder "
                f"(process {starter} started the server, process {pid}): stop it there "
                "(server.stop()), or serve on another port."
            )
        self._progress(
            f"stopping the server this session folder started on port {port} (process {pid}), "
            "still running from an earlier run"
        )
        stop_serving_process(pid, port)

    def close(self) -> None:
        """Stop the run (saving its checkpoint), the servers, and the session's listeners.

        Examples:
            >>> Session("/tmp/wb-doc-empty", verbose=False).close()
        """
        if self._evaluation_run is not None and not self._evaluation_run.done:
            self._evaluation_run.cancel()
        if self._run is not None and self._run.status.active:
            self._run.stop()
            self._run.wait()
        for server in self._servers:
            server.stop()
        self._servers.clear()
        for unsubscribe in self._unsubscribers:
            unsubscribe()
        self._unsubscribers.clear()

    def _probe_prompts(self) -> list[str]:
        if self._data is None:
            return list(_DEFAULT_MESSAGES)
        rows = [self._data.example(i, "train") for i in range(min(4, len(self._data.train)))]
        return [row.prompt for row in rows]

    def _scorer(self, limit: int = 8):
        """Score a model on a few validation rows, to show what quantization costs."""
        if self._data is None or not self._data.validation or self._data.is_text:
            return None
        from workbench.evaluation.run import answer_scorer

        return answer_scorer(self._evaluation_rows(None)[:limit], self._answer_stops())

    def _state(self) -> dict:
        return self.folder.state()

    def _record(self, facts: dict) -> None:
        """Merge ``facts`` into ``session.json`` in the run folder, atomically."""
        self._kept_on_record_failure(self.folder.record, facts)

    def _remember(self, *args: Any) -> None:
        """:meth:`SessionFolder.remember`, which a full disk must not fail either."""
        self._kept_on_record_failure(self.folder.remember, *args)

    def _kept_on_record_failure(self, write: Callable[..., None], *args: Any) -> None:
        """Write a record to ``session.json``; a full or read-only disk warns instead of
        failing the work the record is about (an export written to another disk, a loaded
        model): it is done, only the session folder's note of it is missing."""
        try:
            write(*args)
        except WriteError as err:
            warn_user(f"session.json was not updated ({err}); what was done stands")

    def __repr__(self) -> str:
        model = self._loaded.source.spec if self._loaded else None
        return f"Session(run_dir={str(self.run_dir)!r}, model={model!r})"


_NO_RUN = "this session folder"  # who wrote an export no run's weights are in (session.json)


def _stop_list(stops: Any) -> list[str]:
    """``stop_strings`` as a list: one text is one stop, not one stop per character."""
    if stops is None:
        return []
    if isinstance(stops, str):
        return [stops]
    if isinstance(stops, (list, tuple)) and all(isinstance(x, str) for x in stops):
        return list(stops)
    raise SpecError(f"stop_strings={stops!r} must be a text or a list of texts.")


def _refuse_broken_text(prompt: Any) -> None:
    """Refuse a prompt holding a lone surrogate (half of an emoji's UTF-16 pair, as a bad
    JSON escape leaves it): no tokenizer can encode it."""
    try:
        json.dumps(prompt, ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError as err:
        bad = err.object[err.start : err.end]
        msg = (
            f"the prompt holds {bad!r}, half of a UTF-16 surrogate pair, which is not text: "
            "mend the string it came from (often a JSON escape of half an emoji)."
        )
        raise SpecError(msg) from None


def _text_prompts(prompt: Any) -> tuple[list[str], bool]:
    """The texts of ``generate``'s prompt (``chat=False``), and whether it was one text."""
    if isinstance(prompt, str):
        return [prompt], True
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt), False
    row = prompt if isinstance(prompt, dict) else None
    if row is not None and "role" not in row and "content" not in row:
        fields = ", ".join(map(repr, list(row)[:4]))
        first = next((k for k, v in row.items() if isinstance(v, str)), None)
        example = f"generate(row[{first!r}])" if first else "generate(text)"
        msg = (
            f"prompt is a dict with the fields {fields}, which looks like a data row, not a "
            f"chat turn: give the text to complete, e.g. {example}; s.example(i).prompt is "
            "a loaded row's prompt as the model reads it"
        )
        raise SpecError(msg)
    if isinstance(prompt, dict) or (
        isinstance(prompt, (list, tuple)) and any(isinstance(p, dict) for p in prompt)
    ):
        raise SpecError(
            "messages ({'role': ..., 'content': ...}) need chat=True: generate(messages, "
            "chat=True) renders them with the chat template."
        )
    raise SpecError(f"prompt={prompt!r} must be a text or a non-empty list of texts.")


# Calls that leave the live model and the session's data as they were: allowed while the run
# is paused (docs/session_states.md).
_READ_ONLY_CALLS = frozenset(
    {"generate", "evaluate", "export", "quantize", "serve", "check_export", "chat"}
)
# Asked when there is no data to take conversations from.
_DEFAULT_MESSAGES = ("Hello!", "Write one sentence about the sea.")


def _llama_cpp_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def _keywords(fn: Callable[..., Any], leave: tuple[str, ...]) -> list[str]:
    """The keyword names ``fn`` takes, less ``leave`` (those the session passes itself)."""
    import inspect

    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    parameters = inspect.signature(fn).parameters.values()
    return [p.name for p in parameters if p.kind in named and p.name not in {"self", *leave}]


def _training_columns(dataset: Any) -> Any:
    """Only the columns training reads (the data keeps texts and metadata besides)."""
    if dataset is None or len(dataset) == 0:
        return None
    keep = [c for c in ("input_ids", "labels", "attention_mask") if c in dataset.column_names]
    return dataset.select_columns(keep)


def _tokenizes_alike(data: Any, tokenizer: Any) -> bool:
    """Whether ``tokenizer`` gives ``data``'s texts the ids its own tokenizer gave: the same
    vocabulary and special tokens, and the same chat template when the data was rendered
    with the tokenizer's own."""
    before = data.tokenizer
    if before is tokenizer:
        return True
    same = before.get_vocab() == tokenizer.get_vocab() and (
        before.special_tokens_map == tokenizer.special_tokens_map
    )
    if data.template.origin == "tokenizer":
        same = same and before.chat_template == tokenizer.chat_template
    return same


def _blocking(wait: bool | None) -> bool:
    """Block outside notebooks, return at once inside one (unless told)."""
    from workbench._display import in_notebook

    return wait if wait is not None else not in_notebook()


def _describe(source: Any) -> str:
    """A short, JSON-safe description of a data source for session.json."""
    if isinstance(source, (str, Path)):
        return str(source)
    return (
        f"<{type(source).__name__} of {len(source)} rows>"
        if hasattr(source, "__len__")
        else (f"<{type(source).__name__}>")
    )


def _recorded_options(options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``load_data``'s ``options`` as ``session.json`` keeps them, to say how to load the
    data again: values JSON writes as they are (``columns``, ``validation=0.1``, a file's
    path) under ``options``, others (rows, a DataFrame, a template object) described under
    ``options_in_code``.

    Examples:
        >>> _recorded_options({"validation": 0.1, "columns": {"answer": "Antwort"}})
        {'options': {'validation': 0.1, 'columns': {'answer': 'Antwort'}}}
        >>> _recorded_options({"validation": [{"text": "a"}, {"text": "b"}]})["options_in_code"]
        {'validation': '<list of 2 rows>'}
    """
    plain, in_code = {}, {}
    for key, given in options.items():
        value = str(given) if isinstance(given, Path) else given
        if _written_as_json(value) and not (key == "validation" and isinstance(value, list)):
            plain[key] = value
        else:
            in_code[key] = _describe(value)
    return {"options": plain, **({"options_in_code": in_code} if in_code else {})}


def _written_as_json(value: Any) -> bool:
    """Whether JSON writes ``value`` and reads it back the same (a tuple as a list)."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return len(text) <= 2_000 and json.loads(text) == (
        list(value) if isinstance(value, tuple) else value
    )


def _let_go_of(runs: list) -> None:
    """Each ended run of ``runs`` lets go of its model, optimizer and data (the session
    loaded another model; a run still going keeps them)."""
    for run in runs:
        run.let_go("the session loaded another model")


def _metric_names(metrics: Any) -> set[str]:
    """The built-in metric names asked for (by name, as a mapping key, or alone)."""
    if isinstance(metrics, str):
        return {metrics}
    if metrics is None or not isinstance(metrics, Iterable):  # one function or module
        return set()
    return {m for m in metrics if isinstance(m, str)}


def _check_calls_readable(prepared: Any, split: str, rows: list[dict]) -> None:
    """Refuse the ``tool_calls`` metric when the template writes calls it cannot read (every
    answer would then score as "no call wanted, none made") or reads only some of them;
    warn when rows without stored calls have no answer it reads as a call (the same
    vacuous score, but such rows may rightly want none)."""
    from workbench.data.tool_calls import TOOL_CALLING, answer_calls, parse_tool_calls
    from workbench.errors import EvaluationError

    table = prepared.split(split)
    stored_cells = table[TOOL_CALLING] if TOOL_CALLING in table.column_names else []
    if not any(stored_cells):  # plain prompt/answer rows: the answers are the only record
        if not any(parse_tool_calls(row["reference"]) for row in rows):
            warnings.warn(
                f"metric 'tool_calls': none of the {len(rows)} reference answers of the "
                f"{split} rows makes a call it can read, so each row scores 1.0 exactly when "
                "the answer makes no call either. If the answers do call tools, they are "
                "written in a form it does not read (see parse_tool_calls); store them as "
                "tool_calls in the rows' messages, or score with a metric of your own.",
                WorkbenchWarning,
                stacklevel=4,
            )
        return
    for i, (stored, row) in enumerate(zip(stored_cells, rows, strict=True)):
        calls = answer_calls(table[i]["messages"], stored) if stored else []
        wanted = sorted(c["function"]["name"] for c in calls)
        read = sorted(c["function"]["name"] for c in parse_tool_calls(row["reference"]))
        if wanted and read != wanted:
            raise EvaluationError(
                f"metric 'tool_calls' cannot read the calls template "
                f"{prepared.template.name!r} writes ({split} row {i + 1} calls {wanted}, its "
                f"answer {row['reference'][:80]!r} reads as {read}): it reads calls written "
                'as JSON ({"name": ..., "arguments": ...}, as Hermes, Qwen, Mistral and Llama 3 '
                "write them), pythonic lists ([f(a=1)]) and tool_code fences, FunctionGemma's "
                "and Gemma 4's calls "
                "and Qwen3-Coder's <function=f> tags. Train with template='chatml', or score "
                "with a metric of your own."
            )


def _refuse_a_message_as_tools(tools: Any) -> None:
    """``chat("Hello")`` or ``chat(messages)``: a message given where ``chat()`` takes the
    tools it offers; said as such, not as tools that are not JSON."""
    first = tools[0] if isinstance(tools, list) and tools else None
    is_text = isinstance(tools, str) and not tools.lstrip().startswith("[")
    if is_text or (isinstance(first, dict) and "role" in first):
        raise SpecError(
            "chat() opens the chat panel; its argument is tools= (OpenAI function schemas "
            "the model may call), not a message. Type the message in the panel, or send it "
            "from code: s.chat().send('Hello'), or s.generate('Hello', chat=True)."
        )
