"""Engines on the real test-size model, changed only where a backpressure test needs it.

``LongReplyEngine`` serves a subclass of the real Llama whose end-of-reply token is never sampled and
whose forward pass takes at least ``STEP_S``: a reply runs to ``max_reply_tokens`` at a steady pace, so
a deadline, a cancellation or a client going away lands while it decodes. ``CrashOnceEngine`` adds a
generation worker whose loop raises once after ``armed`` is set, as a bug in the batch bookkeeping
would: everything else is the real worker.
"""

from __future__ import annotations

import threading
import time

from transformers import LlamaForCausalLM, PreTrainedModel

from bot.runtime import Engine
from bot.runtime.worker import GenerationWorker

STEP_S = 0.01
NEVER = -1e4  # a logit no sample reaches (a finite one: -inf would flag the row as broken)


class LongReplies(LlamaForCausalLM):
    """The test model, never ending a reply by itself, at most one forward pass per ``STEP_S``."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits[..., self.config.eos_token_id] = NEVER
        time.sleep(STEP_S)
        return out


class LongReplyEngine(Engine):
    """The real engine serving ``LongReplies``."""

    def _load_model(self, ref: str) -> PreTrainedModel:
        return LongReplies.from_pretrained(ref).eval()


class CrashOnceWorker(GenerationWorker):
    """The real worker, whose loop raises once after ``armed`` is set (after a decode step)."""

    def __init__(self, *args, armed: threading.Event, **kwargs):
        super().__init__(*args, **kwargs)
        self.armed = armed
        self.crashed = False

    def _drop_done(self) -> None:
        if self.armed.is_set() and not self.crashed:
            self.crashed = True
            raise RuntimeError("injected: the batch bookkeeping failed")
        super()._drop_done()


class CrashOnceEngine(LongReplyEngine):
    """``LongReplyEngine`` with a ``CrashOnceWorker``; ``armed.set()`` makes it crash at its next step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.armed = threading.Event()

    def _new_worker(self, model: PreTrainedModel) -> GenerationWorker:
        return CrashOnceWorker(model, self.tokenizer.pad_token_id, self.tokenizer.eos_token_id,
                               self.settings.temperature, self.max_batch_size,
                               prefix_cache_bytes=self.settings.prefix_cache_mb * 2**20, armed=self.armed)


def wait_for(condition, timeout_s: float = 10.0, what: str = "the condition") -> float:
    """Poll ``condition()`` until true; return the seconds it took (AssertionError after ``timeout_s``)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"{what} did not hold within {timeout_s} s"
        time.sleep(0.01)
    return time.monotonic() - started
