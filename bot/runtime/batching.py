"""Token-level continuous batching: sequences that decode together under one adapter.

A ``Batch`` holds its rows' KV cache (``kv_cache.RowCache``: left-padded rows in buffers with spare room,
and their 2-D attention mask) and, per row, the token that was sampled last and is not yet in the cache
("pending"). Newcomers are prefilled as a batch of their own and merged in between steps, or ``join``
without a prefill pass and run their prompt through the next decode steps one token a step; the tokens a
prompt shares with an earlier one are not run again. Rows that finished are dropped. Position ids count
real tokens only, as ``generate`` and the trainer's scoring do, so logged log-probs match the policy's
(renormalised over the tokens a row's figure guard allows, ``bot.runtime.figure_guard``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel

from bot.runtime.figure_guard import FigureGuard
from bot.runtime.kv_cache import CachedPrompt, RowCache

SLACK_COLUMNS = 64  # decode steps a new batch's cache has room for before it grows


@dataclass
class Row:
    """One reply being generated: its prompt, what was sampled so far, and why it stopped."""

    prompt_ids: list[int]
    max_new_tokens: int
    owner: Any = None
    reply_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finished: bool = False
    error: str = ""
    feed: list[int] = field(default_factory=list)  # prompt tokens still to run through decode steps (``join``)
    guard: FigureGuard | None = None  # the figures the reply may state (``bot.runtime.figure_guard``)

    @property
    def done(self) -> bool:
        return self.finished or bool(self.error) or len(self.reply_ids) >= self.max_new_tokens


def sample(logits: torch.Tensor, temperature: float, banned: list[torch.Tensor | None] | None = None,
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample one token per row at ``temperature``; return tokens, their log-probs, finite-row flags.

    A row whose logits sum to a non-finite value holds a NaN or an infinity. ``banned[i]``, token ids row
    ``i`` may not take, get probability 0; the log-probs are those of the distribution sampled from.
    Sampling inverts each row's cumulative distribution at a uniform draw in (0, 1]: the distribution of
    ``torch.multinomial`` at a tenth of its cost, and no token of probability 0 can come out.
    """
    logits = logits.float()
    ok = torch.isfinite(logits.sum(dim=-1))
    if not bool(ok.all()):
        logits = torch.where(ok.unsqueeze(-1), logits, torch.zeros_like(logits))
    rows = [(i, ids) for i, ids in enumerate(banned or []) if ids is not None and len(ids)]
    if rows:  # one indexed write for every banned token of every row
        logits = logits.clone()
        logits[torch.cat([torch.full((len(ids),), i, dtype=torch.long) for i, ids in rows]),
               torch.cat([ids for _, ids in rows])] = -math.inf
    logp = torch.log_softmax(logits / temperature, dim=-1)  # log π(a|s) at the serving temperature
    cdf = logp.exp().cumsum(dim=-1)
    draw = (1.0 - torch.rand((len(cdf), 1))) * cdf[:, -1:]
    tokens = torch.searchsorted(cdf, draw).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)
    return tokens, logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), ok


def shared_tokens(earlier: CachedPrompt | None, prompt_ids: list[int]) -> int:
    """Leading tokens of ``prompt_ids`` whose keys and values ``earlier`` has (0 without one)."""
    return earlier.shared(prompt_ids) if earlier is not None else 0


class Batch:
    """Rows sharing one KV cache; every forward pass runs them all under the same adapter."""

    def __init__(self, rows: list[Row], cache: RowCache, positions: torch.Tensor, pending: torch.Tensor):
        self.rows = rows
        self.cache = cache
        self.positions = positions
        self.pending = pending

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def prefill(cls, model: PreTrainedModel, rows: list[Row], pad_id: int, eos_id: int, temperature: float,
                earlier: list[CachedPrompt | None] | None = None) -> "Batch":
        """Run the prompts of ``rows`` (left-padded) and sample each row's first reply token.

        ``earlier[i]``, a prompt cached under the same adapter, gives row ``i`` the keys and values of the
        leading tokens their prompts share; the forward pass runs over the rest.
        """
        earlier = earlier or [None] * len(rows)
        shared = [shared_tokens(p, r.prompt_ids) for p, r in zip(earlier, rows, strict=True)]
        rest = [r.prompt_ids[n:] for r, n in zip(rows, shared)]
        width = max(map(len, rest))
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, tokens in enumerate(rest):
            ids[i, width - len(tokens):] = torch.tensor(tokens)
            mask[i, width - len(tokens):] = 1
        positions = torch.tensor(shared).unsqueeze(-1) + (mask.cumsum(-1) - 1).clamp(min=0)
        cache = RowCache(len(rows), max(shared) + width + SLACK_COLUMNS)
        if any(shared):
            cache.preload(earlier, shared)
        out = model(input_ids=ids, attention_mask=cache.attention_mask(mask), position_ids=positions, cache=cache,
                    use_cache=True, logits_to_keep=1)
        cache.advance(width)
        batch = cls(rows, cache, torch.tensor([len(r.prompt_ids) for r in rows]), ids[:, -1])
        batch._accept(out.logits[:, -1], eos_id, temperature)
        return batch

    @classmethod
    def join(cls, rows: list[Row], earlier: list[CachedPrompt | None] | None = None) -> "Batch":
        """Rows that join a running batch with no prefill pass: the next steps run their prompts one token a
        step (after the tokens ``earlier`` prompts share with theirs), then sample their replies."""
        earlier = earlier or [None] * len(rows)
        shared = [shared_tokens(p, r.prompt_ids) for p, r in zip(earlier, rows, strict=True)]
        cache = RowCache(len(rows), max(shared) + SLACK_COLUMNS)
        if any(shared):
            cache.preload(earlier, shared)
        for row, n in zip(rows, shared):
            row.feed = row.prompt_ids[n + 1:]
        return cls(rows, cache, torch.tensor(shared), torch.tensor([r.prompt_ids[n] for r, n in zip(rows, shared)]))

    def step(self, model: PreTrainedModel, eos_id: int, temperature: float) -> None:
        """Feed every row's pending token and sample the next one."""
        mask = self.cache.attention_mask(torch.ones((len(self), 1), dtype=torch.long))
        out = model(input_ids=self.pending.unsqueeze(-1), attention_mask=mask,
                    position_ids=self.positions.unsqueeze(-1), cache=self.cache, use_cache=True)
        self.cache.advance(1)
        self.positions = self.positions + 1
        self._accept(out.logits[:, -1], eos_id, temperature)

    def _accept(self, logits: torch.Tensor, eos_id: int, temperature: float) -> None:
        banned = [row.guard.banned(final=len(row.reply_ids) == row.max_new_tokens - 1)
                  if row.guard is not None and not row.feed else None for row in self.rows]
        tokens, logprobs, ok = sample(logits, temperature, banned)
        pending = tokens.tolist()
        for i, (row, logprob, finite) in enumerate(zip(self.rows, logprobs.tolist(), ok.tolist())):
            if not finite:
                row.error = "the model produced non-finite logits"
            elif row.feed:  # still reading its prompt: the next prompt token goes in, the sample is dropped
                pending[i] = row.feed.pop(0)
            else:
                row.reply_ids.append(pending[i])
                row.logprobs.append(logprob)
                if row.guard is not None:
                    row.guard.advance(pending[i])
                row.finished = pending[i] == eos_id
        self.pending = torch.tensor(pending)

    def merge(self, other: "Batch") -> None:
        """Append ``other``'s rows (their cache is copied into free rows of this one)."""
        self.cache.append(other.cache)
        self.positions = torch.cat([self.positions, other.positions])
        self.pending = torch.cat([self.pending, other.pending])
        self.rows = self.rows + other.rows

    def drop_done(self) -> list[Row]:
        """Remove finished rows (the last rows move into their places); return them."""
        done = [i for i, r in enumerate(self.rows) if r.done]
        if not done:
            return []
        finished = [self.rows[i] for i in done]
        order = self.cache.remove(done)
        index = torch.tensor(order, dtype=torch.long)
        self.rows = [self.rows[i] for i in order]
        self.positions = self.positions[index]
        self.pending = self.pending[index]
        return finished
