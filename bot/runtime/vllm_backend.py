"""Optional generation backend: a vLLM OpenAI-compatible server instead of the in-process model.

Enabled by ``LOOPDESK_VLLM_URL`` (off by default). The bot still builds prompts with the base
model's tokenizer, sends them as token ids to ``/v1/completions`` (streamed, ``logprobs=1``,
``return_tokens_as_token_ids``) and returns the same ``Generation`` as ``Engine``: reply token
ids with their log-probs, so logged turns stay valid PPO samples. Adapters follow the registry as
with ``Engine``: each active/canary version is verified locally, then loaded into vLLM with
``/v1/load_lora_adapter`` (its directory must be readable at the same path on the vLLM host) and
requested by name; versions no longer named are unloaded once idle.

The vLLM server must run with ``--enable-lora --max-lora-rank R``, ``--logprobs-mode
processed_logprobs`` (log-probs at the sampling temperature, as PPO needs; vLLM's default is
the raw model's) and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` in its environment.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import requests

from bot.runtime.adapters import AdapterRefused, read_verified
from bot.runtime.engine import Generation, GenerationError
from bot.runtime.prompts import PromptBuilder, system_prompt
from feedback_store import FeedbackStore, NotFoundError
from feedback_store.records import BASE_VERSION
from loopdesk.config import Settings

log = logging.getLogger(__name__)

TOKEN_ID_PREFIX = "token_id:"
TIMEOUT_S = (5.0, 120.0)  # (connect, read) per request to vLLM


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
    """The ``Engine`` interface served by a vLLM server; adapters are loaded into it by name."""

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
        self._max_positions = 0
        self._loaded: dict[str, float] = {}  # version -> last used (monotonic)
        self._refused: dict[str, str] = {}
        self._fallback, self._canary = BASE_VERSION, None
        self._waiting = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Load the tokenizer, check the server, load the registry's adapters, then follow changes."""
        from transformers import AutoConfig, AutoTokenizer

        ref = self.settings.base_model_ref
        self.tokenizer = AutoTokenizer.from_pretrained(ref)
        self._max_positions = AutoConfig.from_pretrained(ref).max_position_embeddings
        self._builder = PromptBuilder(self.tokenizer, self._max_positions - self.settings.max_reply_tokens,
                                      system_prompt(ref) if Path(ref).is_dir() else None)
        if not self.ready():
            raise GenerationError(f"no vLLM server answers at {self.url}")
        self.sync()
        self._threads = [threading.Thread(target=self._listen, name="loopdesk-vllm-listener", daemon=True),
                         threading.Thread(target=self._follow, name="loopdesk-vllm-sync", daemon=True)]
        for thread in self._threads:
            thread.start()
        log.info("vLLM backend at %s serving %s", self.url, self.loaded_versions())

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def ready(self) -> bool:
        try:
            return self.http.get(f"{self.url}/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def loaded_versions(self) -> list[str]:
        with self._lock:
            return sorted({BASE_VERSION, *self._loaded})

    def refused_versions(self) -> dict[str, str]:
        return dict(self._refused)

    def queue_depth(self) -> int:
        """Replies sent to vLLM that have no first token yet."""
        return self._waiting

    def choose_version(self) -> str:
        canary = self._canary
        if canary and random.random() < self.store.adapters.canary_share():
            return canary
        return self._fallback

    def generate(self, messages: list[dict], adapter_version: str,
                 on_text: Callable[[str], None] | None = None) -> Generation:
        """Stream a reply from vLLM under ``adapter_version`` (or the active one if it is not loaded)."""
        if self._builder is None or self._stop.is_set():
            raise GenerationError("the engine is not running")
        started = time.perf_counter()
        prompt = self._builder.build(messages)
        with self._lock:
            version = adapter_version if adapter_version in self._loaded or adapter_version == BASE_VERSION \
                else self._fallback
            if version in self._loaded:
                self._loaded[version] = time.monotonic()
        model = self.base_name if version == BASE_VERSION else version
        max_new = min(self.settings.max_reply_tokens, self._max_positions - len(prompt.token_ids))
        body = completion_request(model, prompt.token_ids, max_new, self.settings.temperature)
        completion, first_token_at = Completion(), None
        self._count_waiting(+1)
        try:
            with self.http.post(f"{self.url}/v1/completions", json=body, stream=True, timeout=TIMEOUT_S) as response:
                if response.status_code != 200:
                    raise GenerationError(f"vLLM answered {response.status_code}: {response.text[:300]}")
                for chunk in sse_chunks(response.iter_lines(decode_unicode=True)):
                    text = completion.add(chunk)
                    if first_token_at is None and completion.token_ids:
                        first_token_at = time.perf_counter()
                        self._count_waiting(-1)
                    if text and on_text is not None:
                        on_text(text)
        except requests.RequestException as exc:
            raise GenerationError(f"vLLM request failed: {exc}") from exc
        finally:
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

    # adapters ------------------------------------------------------------------------------
    def sync(self) -> None:
        """Load what the registry names active/canary into vLLM; unload idle versions it no longer names."""
        active, canary = self.store.adapters.active(), self.store.adapters.canary()
        for version in (active, canary):
            if version and version != BASE_VERSION and version not in self._loaded and version not in self._refused:
                self._load(version)
        with self._lock:
            if active == BASE_VERSION or active in self._loaded:
                self._fallback = active
            self._canary = canary if canary in self._loaded else None
            now = time.monotonic()
            idle = [v for v, used in self._loaded.items() if v not in (self._fallback, self._canary)
                    and now - used >= self.idle_unload_s]
        for version in idle:
            self._post("unload_lora_adapter", {"lora_name": version})
            with self._lock:
                self._loaded.pop(version, None)

    def _load(self, version: str) -> None:
        try:
            record = self.store.adapters.get(version)
            read_verified(record.path, version, self.settings.base_model_ref, expected_sha256=record.sha256)
            self._post("load_lora_adapter", load_adapter_request(version, record.path))
        except (AdapterRefused, NotFoundError) as exc:
            self._refused[version] = str(exc)
            log.error("adapter refused, still serving %s: %s", self._fallback, exc)
            return
        except GenerationError as exc:  # vLLM unreachable or busy: try again on the next sync
            log.warning("adapter %s not loaded into vLLM yet: %s", version, exc)
            return
        with self._lock:
            self._loaded[version] = time.monotonic()
        log.info("adapter %s loaded into vLLM", version)

    def _post(self, endpoint: str, body: dict[str, str]) -> None:
        try:
            response = self.http.post(f"{self.url}/v1/{endpoint}", json=body, timeout=TIMEOUT_S)
        except requests.RequestException as exc:
            raise GenerationError(f"vLLM {endpoint} failed: {exc}") from exc
        if response.status_code != 200 and "already been loaded" not in response.text:
            raise GenerationError(f"vLLM {endpoint} answered {response.status_code}: {response.text[:300]}")

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                for _ in self.store.adapters.listen(self._stop.is_set):
                    self._wake.set()
            except Exception:
                log.exception("adapter announcements interrupted; resubscribing")
                time.sleep(1.0)

    def _follow(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=self.resync_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.sync()
            except Exception:
                log.exception("adapter sync with vLLM failed; retrying on the next announcement")
