"""The generation worker: the one thread that owns the model and runs every forward pass.

Requests queue to it; each loop it runs pending commands (adapter installs), prefills waiting requests
together and merges them into the running batch (up to ``max_batch_size`` rows: continuous batching),
then runs one decode step for the whole batch.

- Rows of different adapter versions share the batch and every forward pass (``MultiLora.route`` gives
  each row its version's LoRA update), so a canary, a new adapter's probe, or replies still finishing
  under the version just replaced cost no extra pass.
- A prompt takes the keys and values of the tokens it shares with a prompt or finished reply read earlier
  under its version (``PrefixStore``: a chat's earlier turns, however many other chats came in between, or
  the system prompt); its prefill runs over the rest alone.
- While replies stream from the batch, a newcomer with little left to read (``FEED_TOKENS``) joins it
  without a prefill pass and reads its prompt one token per decode step: a prefill pass between two
  steps would hold each streaming reply up for about a step; the newcomer's first token comes that many
  steps later instead. Requests that do not stream are prefilled at once.

Adapters no longer wanted are deleted once no request uses them.

Backpressure: a request leaves the queue (its ``slot`` released, see ``bot.runtime.admission``) when its
row enters the batch. A request past its ``deadline``, or ``cancelled`` (its client went away), fails at
the next loop: its row leaves the batch and its cache rows are freed. An exception that escapes the loop
fails every request in flight and queued with a clean error and ends the thread; the engine notices and
``restart``s it.
"""

from __future__ import annotations

import logging
import math
import queue
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from transformers import PreTrainedModel

from bot.runtime.adapters import VerifiedAdapter
from bot.runtime.admission import Slot
from bot.runtime.batching import Batch, Row, shared_tokens
from bot.runtime.errors import GenerationError, ReplyCancelledError, ReplyTimeoutError
from bot.runtime.kv_cache import CachedPrompt
from bot.runtime.lora import MultiLora, prepare
from bot.runtime.prefix_store import PrefixStore
from bot.runtime.routing import Routing
from feedback_store.records import BASE_VERSION

log = logging.getLogger(__name__)

SWITCH_INTERVAL_S = 0.0005
FEED_TOKENS = 16  # at most this many prompt tokens left to run: a newcomer may join without a prefill pass


@dataclass(eq=False)
class Request:
    """One reply asked of the worker; ``events`` receives ``"token"`` after each token if
    ``stream``, then ``"done"`` (with ``failure`` set if it failed)."""

    version: str
    row: Row
    strict: bool = False  # serve exactly ``version`` even before it is routable (adapter probes)
    feed: bool = False  # join by running the prompt through decode steps, however long (in no hurry: probes)
    stream: bool = False
    events: "queue.SimpleQueue[str]" = field(default_factory=queue.SimpleQueue)
    submitted_at: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    served_version: str = ""
    deadline: float = math.inf  # time.monotonic() by which the reply must be done
    cancelled: threading.Event = field(default_factory=threading.Event)  # set: nobody waits for it any more
    slot: Slot | None = None  # its place among the waiting replies, released when it starts decoding
    failure: GenerationError | None = None
    prefix: CachedPrompt | None = None  # the stored prompt its row started from, or that now holds its prompt
    reused_tokens: int = 0  # prompt tokens whose keys and values came from ``prefix`` (not run again)

    def stop(self, error: GenerationError) -> None:
        """Mark the reply failed with ``error`` (the first reason wins)."""
        if self.failure is None:
            self.failure = error
            self.row.error = self.row.error or str(error)

    def overdue(self, now: float) -> GenerationError | None:
        """Why the reply must stop now (its client went away, or its deadline passed), if it must."""
        if self.cancelled.is_set():
            return ReplyCancelledError("the client went away")
        if now > self.deadline:
            return ReplyTimeoutError("the reply was not done within its deadline")
        return None


class GenerationWorker:
    """Owns the model; serves requests in one continuous batch, each row under its adapter version."""

    def __init__(self, model: PreTrainedModel, pad_id: int, eos_id: int, temperature: float,
                 max_batch_size: int, *, prefix_cache_bytes: int):
        self.model = model
        self.lora = MultiLora(model)
        self.pad_id, self.eos_id = pad_id, eos_id
        self.temperature = temperature
        self.max_batch_size = max_batch_size
        self._requests: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self._commands: queue.SimpleQueue[tuple[Callable[[], Any], Future]] = queue.SimpleQueue()
        self._waiting: deque[Request] = deque()
        self._batch: Batch | None = None
        self._prefixes = PrefixStore(prefix_cache_bytes)  # prompts and replies read, for the next turns
        self.routing = Routing()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loopdesk-generation", daemon=True)
        self.restarts = 0

    # called from other threads ------------------------------------------------------------
    def start(self) -> None:
        # Every torch op lets go of the GIL; while another thread runs Python (an adapter being read,
        # replies being decoded for streaming) taking it back waited up to CPython's 5 ms switch interval,
        # a decode step's worth, each time. Process-wide, like torch's thread count.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stopped(self) -> bool:
        return self._stop.is_set()

    def restart(self) -> bool:
        """Start the loop again if its thread ended without being stopped (a crash); whether it did."""
        if self._stop.is_set() or self._thread.is_alive():
            return False
        self._thread = threading.Thread(target=self._run, name="loopdesk-generation", daemon=True)
        self._thread.start()
        self.restarts += 1
        return True

    def submit(self, request: Request) -> None:
        if self._stop.is_set():
            raise GenerationError("the generation worker is stopped")
        self._requests.put(request)

    def between_steps(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn`` on the worker thread between two steps; its result comes back in the future (a
        ``GenerationError`` once the worker is stopped)."""
        future: Future = Future()
        if self._stop.is_set():
            future.set_exception(GenerationError("the generation worker is stopped"))
        else:
            self._commands.put((fn, future))
        return future

    def install(self, adapter: VerifiedAdapter) -> Future:
        """Match a verified adapter to the model's layers and add it, on the worker thread between two steps.

        That is about a third of a millisecond of Python on the default model, once; on the caller's thread
        the same work slowed the steps it overlapped by several milliseconds (each torch op of a step gives up
        the interpreter's lock and then waited for this thread to hand it back)."""
        return self.between_steps(lambda: self._install(adapter))

    def uninstall(self, version: str) -> Future:
        """Delete an adapter that failed its probe (on the worker thread, between steps)."""
        return self.between_steps(lambda: self._delete(version))

    def queue_depth(self) -> int:
        """Requests submitted but not yet decoding (approximate: read without stopping the worker)."""
        return self._requests.qsize() + len(self._waiting)

    def batch_rows(self) -> int:
        """Replies decoding now (approximate, as ``queue_depth``)."""
        batch = self._batch
        return len(batch.rows) if batch is not None else 0

    # the worker thread ----------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        try:
            with torch.inference_mode():
                while not self._stop.is_set():
                    self._run_commands()
                    self._admit(block=self._batch is None and not self._waiting)
                    self._expire()
                    self._prefill()
                    self._step()
                    self._unload_idle()
        except Exception:
            log.exception("the generation worker crashed; its requests fail and the engine restarts it")
            self._fail_all(GenerationError("the generation worker crashed and is restarting; retry"))
            return
        self._fail_all(GenerationError("the generation worker stopped"))
        for _, future in _drain(self._commands):  # nothing will run them: their callers hear so
            future.set_exception(GenerationError("the generation worker stopped"))

    def _run_commands(self) -> None:
        while True:
            try:
                fn, future = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                future.set_result(fn())
            except Exception as exc:  # handed to the caller, who logs it
                future.set_exception(exc)

    def _admit(self, block: bool) -> None:
        try:
            first = self._requests.get(timeout=0.05) if block else self._requests.get_nowait()
        except queue.Empty:
            return
        for request in [first, *_drain(self._requests)]:
            request.served_version = self.routing.serve(request.version, request.strict)
            self._waiting.append(request)

    def _expire(self) -> None:
        """Fail the requests whose client went away or whose deadline passed; their rows leave the batch."""
        now = time.monotonic()
        waiting = list(self._waiting)
        self._waiting.clear()
        for request in waiting:
            error = request.overdue(now)
            if error is None:
                self._waiting.append(request)
            else:
                self._fail([request], error)
        if self._batch is None:
            return
        overdue = [(row.owner, error) for row in self._batch.rows if (error := row.owner.overdue(now))]
        for request, error in overdue:
            request.stop(error)
        if overdue:
            self._drop_done()

    def _prefill(self) -> None:
        room = self.max_batch_size - (len(self._batch) if self._batch else 0)
        newcomers = [self._waiting.popleft() for _ in range(min(len(self._waiting), room))]
        if not newcomers:
            return
        for request in newcomers:  # decoding from here on: no longer among the waiting
            if request.slot is not None:
                request.slot.release()
        earlier = [self._prefixes.match(r.served_version, r.row.prompt_ids) for r in newcomers]
        for request, prefix in zip(newcomers, earlier):
            request.prefix, request.reused_tokens = prefix, shared_tokens(prefix, request.row.prompt_ids)
        streaming = self._batch is not None and any(row.owner.stream for row in self._batch.rows)
        joining = [self._joins(r, p, streaming) for r, p in zip(newcomers, earlier)]
        prefilled = self._prefill_now([(r, p) for r, p, j in zip(newcomers, earlier, joining) if not j])
        fed = [(r, p) for r, p, j in zip(newcomers, earlier, joining) if j]
        joined = Batch.join([r.row for r, _ in fed], [p for _, p in fed]) if fed else None
        for batch in (prefilled, joined):
            if batch is not None and self._batch is None:
                batch.cache.reserve_rows(min(self.max_batch_size, 2 * len(batch)))  # room to grow without a move
                self._batch = batch
            elif batch is not None:
                self._batch.merge(batch)
        if prefilled is not None:
            self._emit(prefilled.rows)

    @staticmethod
    def _joins(request: Request, earlier: CachedPrompt | None, streaming: bool) -> bool:
        """Whether ``request`` joins by running its prompt through decode steps rather than a prefill pass:
        asked to (a probe), nothing left to prefill, or a short rest while replies stream from the batch
        (a prefill pass would hold each of them up for about a step)."""
        rest = len(request.row.prompt_ids) - shared_tokens(earlier, request.row.prompt_ids)
        return request.feed or rest == 1 or (streaming and rest <= FEED_TOKENS)

    def _prefill_now(self, newcomers: list[tuple[Request, CachedPrompt | None]]) -> Batch | None:
        """Prefill ``newcomers`` in one forward pass; None when there are none or it failed (they fail)."""
        if not newcomers:
            return None
        requests = [r for r, _ in newcomers]
        try:
            self._route(requests)
            batch = Batch.prefill(self.model, [r.row for r in requests], self.pad_id, self.eos_id,
                                  self.temperature, [p for _, p in newcomers])
        except Exception:
            log.exception("prefill under adapters %s failed", _versions(requests))
            self._fail(requests, GenerationError(f"generation under adapter {'/'.join(_versions(requests))} failed"))
            return None
        for i, request in {r.served_version: (i, r) for i, r in enumerate(requests)}.values():
            self._keep(request, batch, i, request.row.prompt_ids)  # one per version: the next prompts' start
        return batch

    def _step(self) -> None:
        if self._batch is None:
            return
        requests = [row.owner for row in self._batch.rows]
        try:
            self._route(requests)
            self._batch.step(self.model, self.eos_id, self.temperature)
        except Exception:
            log.exception("decode step under adapters %s failed", _versions(requests))
            self._batch = None
            self._fail(requests, GenerationError(f"generation under adapter {'/'.join(_versions(requests))} failed"))
            return
        read = {r.served_version: (i, r) for i, r in enumerate(requests) if len(r.row.reply_ids) == 1}
        for i, request in read.values():  # a joined row just read its prompt: one per version for the next ones
            self._keep(request, self._batch, i, request.row.prompt_ids)
        self._emit(self._batch.rows)

    def _keep(self, request: Request, batch: Batch, index: int, token_ids: list[int]) -> None:
        """Store what row ``index`` of ``batch`` (``request``'s) has read, ``token_ids``, for the prompts to come."""
        kept = self._prefixes.keep(request.served_version, batch.cache, index, token_ids, request.prefix)
        request.prefix = kept or request.prefix

    def _emit(self, rows: list[Row]) -> None:
        """``token`` to the streaming requests of ``rows`` (just sampled), ``done`` to every finished row."""
        sampled_at = time.perf_counter()
        for row in rows:
            if not row.reply_ids:  # still reading its prompt
                continue
            if row.owner.first_token_at is None:
                row.owner.first_token_at = sampled_at
            if row.owner.stream:
                row.owner.events.put("token")
        self._drop_done()
        self.routing.used({row.owner.served_version for row in rows})

    def _drop_done(self) -> None:
        """Take the finished (or failed) rows out of the batch, freeing their cache rows; tell their requests.
        A reply that finished is stored with its prompt first: the chat's next turn starts with both."""
        batch = self._batch
        for i, row in enumerate(batch.rows):
            if row.done and row.reply_ids and not row.error:
                self._keep(row.owner, batch, i, row.prompt_ids + row.reply_ids[:-1])  # the last is not in the cache
        for row in batch.drop_done():
            row.owner.events.put("done")
        if not batch.rows:
            self._batch = None

    def _fail_all(self, error: GenerationError) -> None:
        """Fail every request queued, waiting or decoding, and forget the batch and the cached prompts."""
        pending = [*_drain(self._requests), *self._waiting]
        decoding = [row.owner for row in self._batch.rows] if self._batch else []
        self._waiting.clear()
        self._batch = None
        self._prefixes.clear()
        self._fail(pending + decoding, error)

    @staticmethod
    def _fail(requests: list[Request], error: GenerationError) -> None:
        for request in requests:
            request.stop(error)
            if request.slot is not None:
                request.slot.release()
            request.events.put("done")

    # adapters (worker thread only) -------------------------------------------------------------
    def _route(self, requests: list[Request]) -> None:
        """Run each request's row of the next forward pass under its served version."""
        self.lora.route([None if r.served_version == BASE_VERSION else r.served_version for r in requests])

    def _install(self, adapter: VerifiedAdapter) -> None:
        # A version loaded again (a rollback) may still be retiring from before: it must not be unloaded
        # between now and the moment it becomes routable. Both happen on this thread, so in this order.
        self.routing.keep(adapter.version)
        self.lora.add(adapter.version, prepare(self.model, adapter))

    def _delete(self, version: str) -> None:
        self._prefixes.drop(version)
        if version in self.lora:
            self.lora.remove(version)
            log.info("adapter %s unloaded", version)

    def _unload_idle(self) -> None:
        in_use = {r.served_version for r in self._waiting}
        if self._batch is not None:
            in_use |= {row.owner.served_version for row in self._batch.rows}
        for version in self.routing.take_idle(in_use):
            if version != BASE_VERSION:
                self._delete(version)


def _versions(requests: list[Request]) -> list[str]:
    return sorted({r.served_version for r in requests})


def _drain(q: "queue.SimpleQueue[Any]") -> list[Any]:
    items = []
    while True:
        try:
            items.append(q.get_nowait())
        except queue.Empty:
            return items
