"""The model runtime the web layer calls: one engine per process, replies streamed and logged.

``Engine.start()`` loads the base model and tokenizer once, starts the generation worker
(dynamic batching by adapter version) and the adapter follower (``bot.runtime.follower``) with
the worker's hot-swap loader. ``generate`` blocks the calling thread until its reply is done,
handing text deltas to ``on_text`` on that same thread as tokens arrive, and returns everything a
logged ``BotTurn`` needs. The help articles retrieved for the reply go into its prompt
(``bot.runtime.prompts``, the same for the vLLM backend).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from transformers import AutoModelForCausalLM

from bot.runtime.batching import Row
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


class GenerationError(RuntimeError):
    """No reply could be generated (engine stopped, or the model failed); the message says which."""


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
        self._worker: GenerationWorker | None = None
        self._adapters: AdapterFollower | None = None
        self._max_positions = 0

    def start(self) -> None:
        """Load model and tokenizer, start the worker, load the active/canary adapters, follow changes."""
        ref = self.settings.base_model_ref
        started = time.perf_counter()
        if self.settings.torch_threads > 0:
            torch.set_num_threads(self.settings.torch_threads)  # process-wide: see Settings.torch_threads
        self.tokenizer = load_tokenizer(ref)
        model = AutoModelForCausalLM.from_pretrained(ref).eval()
        self._max_positions = context_length(model.config)
        self._builder = prompt_builder(self.tokenizer, self._max_positions, self.settings)
        self._worker = GenerationWorker(model, self.tokenizer.pad_token_id, self.tokenizer.eos_token_id,
                                        self.settings.temperature, self.max_batch_size)
        self._worker.start()
        loader = WorkerLoader(self._worker, self._builder.build(PROBE_MESSAGES).token_ids)
        self._adapters = AdapterFollower(self.store, loader, ref, self.idle_unload_s, self.resync_s)
        self._adapters.start()
        log.info("engine ready in %.1f s: %s, %d threads, serving %s", time.perf_counter() - started, ref,
                 torch.get_num_threads(), self.loaded_versions())

    def stop(self) -> None:
        """Stop following adapters and stop the worker; requests still running fail."""
        if self._adapters is not None:
            self._adapters.stop()
        if self._worker is not None:
            self._worker.stop()

    def ready(self) -> bool:
        return self._worker is not None and self._worker.alive()

    def loaded_versions(self) -> list[str]:
        """Adapter versions requests can be served with now (``base`` is the adapter-free model)."""
        return self._worker.loaded_versions() if self._worker else []

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
                 passages: Sequence[PassageLike] | None = None) -> Generation:
        """Reply to ``messages`` with ``adapter_version`` (or the active one if it is not loaded), with the
        retrieved help articles ``passages`` in the system message (``PromptBuilder.build``).

        Blocks until done; ``on_text`` gets each new piece of text on this thread.

        Raises:
            GenerationError: the engine is not running, or generation failed.
        """
        started = time.perf_counter()
        worker = self._running_worker()
        prompt = self._builder.build(messages, passages)
        max_new = min(self.settings.max_reply_tokens, self._max_positions - len(prompt.token_ids))
        request = Request(adapter_version, Row(prompt.token_ids, max_new), stream=on_text is not None)
        request.row.owner = request
        worker.submit(request)
        streamed = ""
        while True:
            event = request.events.get()
            if on_text is not None and not request.row.error:
                streamed = self._stream(request.row, streamed, on_text, final=event == "done")
            if event == "done":
                break
        row = request.row
        if row.error:
            raise GenerationError(row.error)
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
        )

    def _stream(self, row: Row, streamed: str, on_text: Callable[[str], None], final: bool) -> str:
        """Hand the text decoded since ``streamed`` to ``on_text`` (holding back a partial character)."""
        text = self.tokenizer.decode(list(row.reply_ids), skip_special_tokens=True)
        if (text.endswith("\ufffd") and not final) or not text.startswith(streamed) or text == streamed:
            return streamed
        on_text(text[len(streamed):])
        return text

    def _running_worker(self) -> GenerationWorker:
        if self._worker is None or not self._worker.alive():
            raise GenerationError("the engine is not running")
        return self._worker

    def _running_adapters(self) -> AdapterFollower:
        if self._adapters is None:
            raise GenerationError("the engine is not running")
        return self._adapters
