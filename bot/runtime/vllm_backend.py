"""Optional generation backend: a vLLM OpenAI-compatible server instead of the in-process model.

Enabled by ``LOOPDESK_VLLM_URL`` (off by default). The bot still builds prompts with the base
model's tokenizer, sends them as token ids to ``/v1/completions`` (streamed, ``logprobs=1``,
``return_tokens_as_token_ids``) and returns the same ``Generation`` as ``Engine``: reply token
ids with their log-probs, so logged turns stay valid PPO samples. Adapters follow the registry
through the same follower as ``Engine``'s (``bot.runtime.follower``), with this engine as its
loader: a verified version is loaded into vLLM with ``/v1/load_lora_adapter`` (its directory must
be readable at the same path on the vLLM host) and requested by name; one no longer named is
unloaded with ``/v1/unload_lora_adapter`` once idle and no reply under it is running.

The vLLM server must run with ``--enable-lora --max-lora-rank R``, ``--logprobs-mode
processed_logprobs`` (log-probs at the sampling temperature, as PPO needs; vLLM's default is
the raw model's) and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` in its environment.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import requests

from bot.runtime.adapters import VerifiedAdapter
from bot.runtime.admission import Admission, Slot
from bot.runtime.engine import Generation, GenerationError
from bot.runtime.errors import ReplyCancelledError, ReplyTimeoutError
from bot.runtime.follower import AdapterFollower
from bot.runtime.prompts import PromptBuilder, prompt_builder
from feedback_store import FeedbackStore
from feedback_store.records import BASE_VERSION
from loopdesk.causal_lm import context_length, load_tokenizer
from loopdesk.config import Settings
from loopdesk.knowledge import PassageLike

log = logging.getLogger(__name__)

TOKEN_ID_PREFIX = "token_id:"
TIMEOUT_S = (5.0, 120.0)  # (connect, read) per request to vLLM
T = TypeVar("T")


def completion_request(model: str, prompt_ids: list[int], max_tokens: int, temperature: float) -> dict[str, Any]:
    """The ``/v1/completions`` body for one streamed reply with the sampled tokens' ids and log-probs."""
    return {"model": model, "prompt": list(prompt_ids), "max_tokens": max_tokens, "temperature": temperature,
            "top_p": 1.0, "stream": True, "logprobs": 1, "return_tokens_as_token_ids": True,
            "skip_special_tokens": True}


def load_adapter_request(version: str, path: str) -> dict[str, str]:
    """The ``/v1/load_lora_adapter`` body: the adapter is requested later by ``version`` as model name."""
    return {"lora_name": version, "lora_path": str(Path(path).resolve())}


def token_id(token: str) -> int:
    """The id in a ``token_id:<id>`` entry (what ``return_tokens_as_token_ids`` makes vLLM send)."""
    if not token.startswith(TOKEN_ID_PREFIX):
        raise GenerationError(f"vLLM sent token {token!r} instead of 'token_id:<id>': it needs "
                              "return_tokens_as_token_ids support")
    return int(token[len(TOKEN_ID_PREFIX):])


def sse_chunks(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The JSON chunks of an OpenAI-style event stream, up to ``data: [DONE]``."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        chunk = json.loads(data)
        if "error" in chunk:
            raise GenerationError(f"vLLM: {chunk['error']}")
        yield chunk


@dataclass
class Completion:
    """A reply assembled from streamed chunks."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None

    def add(self, chunk: dict[str, Any]) -> str:
        """Fold one chunk in; return its new text."""
        choice = chunk["choices"][0]
        lp = choice.get("logprobs") or {}
        tokens, values = lp.get("tokens") or [], lp.get("token_logprobs") or []
        if len(tokens) != len(values):
            raise GenerationError("vLLM sent a different number of tokens and log-probs")
        self.token_ids += [token_id(t) for t in tokens]
        self.logprobs += [float(v) for v in values]
        self.finish_reason = choice.get("finish_reason") or self.finish_reason
        self.text += choice.get("text", "")
        return choice.get("text", "")


class VllmEngine:
    """The ``Engine`` interface served by a vLLM server, and the follower's loader of adapters into it."""

    def __init__(self, settings: Settings, store: FeedbackStore, *, idle_unload_s: float = 120.0,
                 resync_s: float = 30.0, http: requests.Session | None = None):
        self.settings = settings
        self.store = store
        self.url = settings.vllm_url.rstrip("/")
        self.base_name = settings.vllm_model or settings.base_model_ref
        self.idle_unload_s, self.resync_s = idle_unload_s, resync_s
        self.http = http or requests.Session()
        self.tokenizer = None
        self._builder: PromptBuilder | None = None
        self._follower: AdapterFollower | None = None
        self._max_positions = 0
        self._loaded: set[str] = set()  # in vLLM, taking requests
        self._draining: set[str] = set()  # in vLLM, no new requests, unloaded once none runs
        self._last_used: dict[str, float] = {}  # version -> when a reply under it last ended (monotonic)
        self._running: Counter[str] = Counter()
        self._fallback = BASE_VERSION
        self._waiting = 0
        self._lock = threading.Lock()
        self._stopped = False
        self.admission = Admission(settings.max_queued_replies)

    def start(self) -> None:
        """Load the tokenizer, check the server, load the registry's adapters, then follow changes."""
        from transformers import AutoConfig

        ref = self.settings.base_model_ref
        self.tokenizer = load_tokenizer(ref)
        self._max_positions = context_length(AutoConfig.from_pretrained(ref))
        self._builder = prompt_builder(self.tokenizer, self._max_positions, self.settings)
        if not self.ready():
            raise GenerationError(f"no vLLM server answers at {self.url}")
        self._follower = AdapterFollower(self.store, self, ref, self.idle_unload_s, self.resync_s)
        self._follower.start()
        log.info("vLLM backend at %s serving %s", self.url, self.loaded_versions())
        if self.settings.figure_guard:
            log.warning("the vLLM backend samples without the figure guard (bot.runtime.figure_guard): replies may "
                        "state figures their help articles do not give; LOOPDESK_FIGURE_GUARD=false silences this")

    def stop(self) -> None:
        self._stopped = True
        if self._follower is not None:
            self._follower.stop()

    def ready(self) -> bool:
        try:
            return self.http.get(f"{self.url}/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def loaded_versions(self) -> list[str]:
        with self._lock:
            return sorted({BASE_VERSION, *self._loaded})

    def refused_versions(self) -> dict[str, str]:
        return dict(self._follower.refused) if self._follower else {}

    def queue_depth(self) -> int:
        """Replies sent to vLLM that have no first token yet."""
        return self._waiting

    def reserve(self) -> Slot:
        """A place among the replies waiting for their first token (as ``Engine.reserve``)."""
        return self.admission.reserve()

    def worker_restarts(self) -> int:
        """Always 0: generation runs in the vLLM server, not in a thread of this process."""
        return 0

    def decoding(self) -> int:
        """Replies streaming from vLLM now."""
        with self._lock:
            return sum(self._running.values()) - self._waiting

    def choose_version(self) -> str:
        """The version a NEW conversation is pinned to: active, or canary with the canary share."""
        if self._follower is None:
            raise GenerationError("the engine is not running")
        return self._follower.choose_version()

    def generate(self, messages: list[dict], adapter_version: str, on_text: Callable[[str], None] | None = None,
                 passages: Sequence[PassageLike] | None = None, *, slot: Slot | None = None,
                 cancelled: threading.Event | None = None) -> Generation:
        """Stream a reply from vLLM under ``adapter_version`` (or the active one if it is not loaded), its
        prompt built as ``Engine``'s (``PromptBuilder.build`` with the retrieved ``passages``); ``slot`` is
        released at the first token; past the deadline, or once ``cancelled`` is set, the stream to vLLM is
        closed (which aborts the request there) and ``ReplyTimeoutError`` / ``ReplyCancelledError`` raised."""
        if self._builder is None or self._stopped:
            raise GenerationError("the engine is not running")
        started = time.perf_counter()
        prompt = self._builder.build(messages, passages)
        with self._lock:
            version = adapter_version if adapter_version in self._loaded or adapter_version == BASE_VERSION \
                else self._fallback
            self._running[version] += 1
        model = self.base_name if version == BASE_VERSION else version
        max_new = min(self.settings.max_reply_tokens, self._max_positions - len(prompt.token_ids))
        body = completion_request(model, prompt.token_ids, max_new, self.settings.temperature)
        completion, first_token_at = Completion(), None
        deadline = time.monotonic() + self.settings.reply_deadline_s if self.settings.reply_deadline_s > 0 else None
        self._count_waiting(+1)
        try:
            with self.http.post(f"{self.url}/v1/completions", json=body, stream=True, timeout=TIMEOUT_S) as response:
                if response.status_code != 200:
                    raise GenerationError(f"vLLM answered {response.status_code}: {response.text[:300]}")
                for chunk in sse_chunks(response.iter_lines(decode_unicode=True)):
                    if cancelled is not None and cancelled.is_set():
                        raise ReplyCancelledError("the client went away")
                    if deadline is not None and time.monotonic() > deadline:
                        raise ReplyTimeoutError("the reply was not done within its deadline")
                    text = completion.add(chunk)
                    if first_token_at is None and completion.token_ids:
                        first_token_at = time.perf_counter()
                        self._count_waiting(-1)
                        if slot is not None:
                            slot.release()
                    if text and on_text is not None:
                        on_text(text)
        except requests.RequestException as exc:
            raise GenerationError(f"vLLM request failed: {exc}") from exc
        finally:
            with self._lock:
                self._running[version] -= 1
                self._last_used[version] = time.monotonic()
            if first_token_at is None:
                self._count_waiting(-1)
        done = time.perf_counter()
        return Generation(
            text=self.tokenizer.decode(completion.token_ids, skip_special_tokens=True),
            context=prompt.text, prompt_token_ids=list(prompt.token_ids), reply_token_ids=completion.token_ids,
            logprobs=completion.logprobs, adapter_version=version, latency_ms=1000 * (done - started),
            ttft_ms=1000 * ((first_token_at or done) - started), finished=completion.finish_reason == "stop",
        )

    def _count_waiting(self, change: int) -> None:
        with self._lock:
            self._waiting += change

    # the follower's loader -------------------------------------------------------------------
    def read(self, read: Callable[[], T]) -> T:
        """``read`` on the follower's thread: vLLM serves from a process of its own."""
        return read()

    def load(self, adapter: VerifiedAdapter) -> None:
        """Load a verified adapter into vLLM under its version's name (raises ``GenerationError``
        while vLLM is out of reach or busy: the follower tries again at its next sync)."""
        self._post("load_lora_adapter", load_adapter_request(adapter.version, str(adapter.path)))
        with self._lock:
            self._draining.discard(adapter.version)
            self._loaded.add(adapter.version)
            self._last_used[adapter.version] = time.monotonic()
        log.info("adapter %s loaded into vLLM", adapter.version)

    def set_fallback(self, version: str) -> None:
        with self._lock:
            self._fallback = version

    def unload(self, version: str, idle_s: float) -> bool:
        """Unload ``version`` from vLLM if no reply used it for ``idle_s`` and none runs under it now;
        with ``idle_s`` 0 it takes no new requests from now on. False: not yet, ask again."""
        with self._lock:
            if version not in self._loaded and version not in self._draining:
                return True
            if idle_s > 0 and time.monotonic() - self._last_used.get(version, 0.0) < idle_s:
                return False
            self._loaded.discard(version)
            self._draining.add(version)
            if self._running[version]:
                return False
        try:
            self._post("unload_lora_adapter", {"lora_name": version})
        except GenerationError as exc:
            log.warning("adapter %s not unloaded from vLLM yet: %s", version, exc)
            return False
        with self._lock:
            self._draining.discard(version)
        log.info("adapter %s unloaded from vLLM", version)
        return True

    def _post(self, endpoint: str, body: dict[str, str]) -> None:
        try:
            response = self.http.post(f"{self.url}/v1/{endpoint}", json=body, timeout=TIMEOUT_S)
        except requests.RequestException as exc:
            raise GenerationError(f"vLLM {endpoint} failed: {exc}") from exc
        if response.status_code != 200 and "already been loaded" not in response.text:
            raise GenerationError(f"vLLM {endpoint} answered {response.status_code}: {response.text[:300]}")
