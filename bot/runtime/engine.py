"""The model runtime the web layer calls: one engine per process, replies streamed and logged.

``Engine.start()`` loads the base model and tokenizer once, starts the generation worker
(dynamic batching by adapter version) and the adapter follower (``bot.runtime.follower``) with
the worker's hot-swap loader. ``generate`` blocks the calling thread until its reply is done,
handing text deltas to ``on_text`` on that same thread as tokens arrive, and returns everything a
logged ``BotTurn`` needs. The help articles retrieved for the reply go into its prompt
(``bot.runtime.prompts``, the same for the vLLM backend).

Backpressure: ``reserve`` hands out the slots that bound the replies waiting (``bot.runtime.admission``);
each reply has a deadline (``reply_deadline_s``) and may be cancelled by its caller, and the worker drops
its row for either. A watchdog thread restarts the generation thread if it crashed (``worker_restarts``).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from bot.runtime.admission import Admission, Slot
from bot.runtime.batching import Row
from bot.runtime.errors import GenerationError, ReplyTimeoutError
from bot.runtime.figure_guard import FigureGuard, FigureVocabulary, figures
from bot.runtime.follower import AdapterFollower
from bot.runtime.hotswap import WorkerLoader
from bot.runtime.prompts import PromptBuilder, prompt_builder
from bot.runtime.worker import GenerationWorker, Request
from feedback_store import FeedbackStore
from loopdesk.causal_lm import context_length, load_tokenizer
from loopdesk.config import Settings
from loopdesk.knowledge import PassageLike

log = logging.getLogger(__name__)

PROBE_MESSAGES = [{"role": "user", "content": "Hello"}]
WATCH_S = 0.1  # how often the watchdog checks that the generation thread runs
DEADLINE_GRACE_S = 5.0  # a caller stops waiting this long after its deadline, whether or not the worker answered

__all__ = ["Engine", "Generation", "GenerationError"]


@dataclass(frozen=True)
class Generation:
    """One reply and how it was made.

    ``reply_token_ids`` include the closing EOS when ``finished``; ``logprobs`` holds one entry
    per reply token, log π(token) at the serving temperature. ``text`` excludes special tokens.
    """

    text: str
    context: str
    prompt_token_ids: list[int]
    reply_token_ids: list[int]
    logprobs: list[float]
    adapter_version: str
    latency_ms: float
    ttft_ms: float
    finished: bool
    reused_prompt_tokens: int = 0  # leading prompt tokens whose keys and values an earlier prompt gave
    grounds: str = ""  # the prompt's text that is not the customer's: where the figures it may state come from


class Engine:
    """Serves chat replies from the base model plus hot-swapped LoRA adapters."""

    def __init__(self, settings: Settings, store: FeedbackStore, *, max_batch_size: int | None = None,
                 idle_unload_s: float = 120.0, resync_s: float = 30.0):
        if settings.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {settings.temperature}")
        self.settings = settings
        self.store = store
        self.max_batch_size = max_batch_size or settings.max_batch_size
        self.idle_unload_s, self.resync_s = idle_unload_s, resync_s
        self.tokenizer = None
        self._builder: PromptBuilder | None = None
        self._figures: FigureVocabulary | None = None  # with ``figure_guard``: the tokens that state figures
        self._worker: GenerationWorker | None = None
        self._adapters: AdapterFollower | None = None
        self._max_positions = 0
        self.admission = Admission(settings.max_queued_replies)
        self._halt = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="loopdesk-generation-watchdog", daemon=True)

    def start(self) -> None:
        """Load model and tokenizer, start the worker, load the active/canary adapters, follow changes."""
        ref = self.settings.base_model_ref
        started = time.perf_counter()
        if self.settings.torch_threads > 0:
            torch.set_num_threads(self.settings.torch_threads)  # process-wide: see Settings.torch_threads
        self.tokenizer = load_tokenizer(ref)
        model = self._load_model(ref)
        self._max_positions = context_length(model.config)
        self._builder = prompt_builder(self.tokenizer, self._max_positions, self.settings)
        if self.settings.figure_guard:
            self._figures = FigureVocabulary(self.tokenizer, model.get_output_embeddings().weight.shape[0],
                                             self.tokenizer.eos_token_id)
        self._worker = self._new_worker(model)
        self._worker.start()
        self._watchdog.start()
        loader = WorkerLoader(self._worker, self._builder.build(PROBE_MESSAGES).token_ids)
        self._adapters = AdapterFollower(self.store, loader, ref, self.idle_unload_s, self.resync_s)
        self._adapters.start()
        log.info("engine ready in %.1f s: %s, %d threads, serving %s", time.perf_counter() - started, ref,
                 torch.get_num_threads(), self.loaded_versions())

    def _load_model(self, ref: str) -> PreTrainedModel:
        """The model to serve (a test may load a subclass of the real one here)."""
        return AutoModelForCausalLM.from_pretrained(ref).eval()

    def _new_worker(self, model: PreTrainedModel) -> GenerationWorker:
        """The generation worker that owns ``model`` (a test may build a subclass here)."""
        return GenerationWorker(model, self.tokenizer.pad_token_id, self.tokenizer.eos_token_id,
                                self.settings.temperature, self.max_batch_size,
                                prefix_cache_bytes=self.settings.prefix_cache_mb * 2**20)

    def _watch(self) -> None:
        """Start the generation loop again whenever its thread ended without being stopped (it crashed)."""
        while not self._halt.wait(WATCH_S):
            if self._worker.restart():
                log.error("generation worker restarted (%d restarts so far)", self._worker.restarts)

    def stop(self) -> None:
        """Stop following adapters and stop the worker; requests still running fail."""
        self._halt.set()
        if self._watchdog.is_alive():
            self._watchdog.join(timeout=5)
        if self._adapters is not None:
            self._adapters.stop()
        if self._worker is not None:
            self._worker.stop()

    def ready(self) -> bool:
        return self._worker is not None and self._worker.alive()

    def reserve(self) -> Slot:
        """A place among the replies waiting for the model, for one message (``Admission.reserve``).

        Raises:
            QueueFullError: ``max_queued_replies`` replies are waiting already.
        """
        return self.admission.reserve()

    def worker_restarts(self) -> int:
        """How often the generation thread crashed and was started again."""
        return self._worker.restarts if self._worker else 0

    def decoding(self) -> int:
        """Replies in the generation worker's batch now."""
        return self._worker.batch_rows() if self._worker else 0

    def loaded_versions(self) -> list[str]:
        """Adapter versions requests can be served with now (``base`` is the adapter-free model)."""
        return self._worker.routing.loaded_versions() if self._worker else []

    def refused_versions(self) -> dict[str, str]:
        """Adapter versions this engine refused to serve, with the reason."""
        return dict(self._adapters.refused) if self._adapters else {}

    def queue_depth(self) -> int:
        """Replies waiting for the generation worker (not yet decoding)."""
        return self._worker.queue_depth() if self._worker else 0

    def choose_version(self) -> str:
        """The version a NEW conversation is pinned to: active, or canary with the canary share."""
        return self._running_adapters().choose_version()

    def generate(self, messages: list[dict], adapter_version: str, on_text: Callable[[str], None] | None = None,
                 passages: Sequence[PassageLike] | None = None, *, slot: Slot | None = None,
                 cancelled: threading.Event | None = None) -> Generation:
        """Reply to ``messages`` with ``adapter_version`` (or the active one if it is not loaded), with the
        retrieved help articles ``passages`` in the system message (``PromptBuilder.build``).

        Blocks until done; ``on_text`` gets each new piece of text on this thread. ``slot`` (from
        ``reserve``) is released when the reply starts decoding; setting ``cancelled`` drops the reply.

        Raises:
            GenerationError: the engine is not running, or generation failed; ``ReplyTimeoutError`` past
                the deadline, ``ReplyCancelledError`` once ``cancelled`` was set.
        """
        started = time.perf_counter()
        worker = self._running_worker()
        prompt = self._builder.build(messages, passages)
        max_new = min(self.settings.max_reply_tokens, self._max_positions - len(prompt.token_ids))
        deadline_s = self.settings.reply_deadline_s
        request = Request(adapter_version, Row(prompt.token_ids, max_new, guard=self.figure_guard(prompt.grounds)),
                          stream=on_text is not None, slot=slot,
                          deadline=time.monotonic() + deadline_s if deadline_s > 0 else math.inf)
        if cancelled is not None:
            request.cancelled = cancelled
        request.row.owner = request
        worker.submit(request)
        streamed = ""
        while True:
            event = _next_event(request)
            if on_text is not None and not request.row.error:
                streamed = self._stream(request.row, streamed, on_text, final=event == "done")
            if event == "done":
                break
        row = request.row
        if row.error:
            raise request.failure or GenerationError(row.error)
        done = time.perf_counter()
        return Generation(
            text=self.tokenizer.decode(row.reply_ids, skip_special_tokens=True),
            context=prompt.text,
            prompt_token_ids=list(prompt.token_ids),
            reply_token_ids=list(row.reply_ids),
            logprobs=list(row.logprobs),
            adapter_version=request.served_version,
            latency_ms=1000 * (done - started),
            ttft_ms=1000 * ((request.first_token_at or done) - started),
            finished=row.finished,
            reused_prompt_tokens=request.reused_tokens,
            grounds=prompt.grounds,
        )

    def figure_guard(self, grounds: str) -> FigureGuard | None:
        """A fresh guard of the figures a reply may state: those of ``grounds`` (a prompt's text that is not
        the customer's: a customer cannot make the bot state a figure by writing it) and of the contact line.
        None: ``figure_guard`` is off."""
        if self._figures is None:
            return None
        return self._figures.guard(figures(grounds, self.settings.contact_address))

    def _stream(self, row: Row, streamed: str, on_text: Callable[[str], None], final: bool) -> str:
        """Hand the text decoded since ``streamed`` to ``on_text`` (holding back a partial character)."""
        text = self.tokenizer.decode(list(row.reply_ids), skip_special_tokens=True)
        if (text.endswith("\ufffd") and not final) or not text.startswith(streamed) or text == streamed:
            return streamed
        on_text(text[len(streamed):])
        return text

    def _running_worker(self) -> GenerationWorker:
        """The worker, if started and not stopped (between a crash and its restart, requests wait for it)."""
        if self._worker is None or self._worker.stopped() or self._halt.is_set():
            raise GenerationError("the engine is not running")
        return self._worker

    def _running_adapters(self) -> AdapterFollower:
        if self._adapters is None:
            raise GenerationError("the engine is not running")
        return self._adapters


def _next_event(request: Request) -> str:
    """The worker's next event for ``request`` (``done`` if it is among those queued); past its deadline and
    grace, the request is cancelled.

    Raises:
        ReplyTimeoutError: the worker sent nothing until the deadline's grace ran out.
    """
    timeout = None if request.deadline == math.inf else request.deadline + DEADLINE_GRACE_S - time.monotonic()
    try:
        event = request.events.get(timeout=None if timeout is None else max(0.0, timeout))
    except queue.Empty:
        request.cancelled.set()  # the worker drops it whenever it gets to it
        raise ReplyTimeoutError("the generation worker did not answer within the reply deadline") from None
    while event == "token":  # tokens that arrived meanwhile are decoded and streamed in one go
        try:
            event = request.events.get_nowait()
        except queue.Empty:
            return "token"
    return event
