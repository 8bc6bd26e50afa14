"""Token-level continuous batching: sequences that decode together under one adapter.

A ``Batch`` holds its rows' KV cache (``kv_cache.RowCache``: left-padded rows in buffers with spare room,
and their 2-D attention mask) and, per row, the token that was sampled last and is not yet in the cache
("pending"). Newcomers are prefilled as a batch of their own and merged in between steps; rows that
finished are dropped. Position ids count real tokens only, as ``generate`` and the trainer's scoring do,
so logged log-probs match the policy's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel

from bot.runtime.kv_cache import RowCache

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

    @property
    def done(self) -> bool:
        return self.finished or bool(self.error) or len(self.reply_ids) >= self.max_new_tokens


def sample(logits: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample one token per row at ``temperature``; return tokens, their log-probs, finite-row flags.

    A row whose logits sum to a non-finite value holds a NaN or an infinity. Sampling inverts each row's
    cumulative distribution at a uniform draw in (0, 1]: the distribution of ``torch.multinomial`` at a
    tenth of its cost, and no token of probability 0 can come out.
    """
    logits = logits.float()
    ok = torch.isfinite(logits.sum(dim=-1))
    if not bool(ok.all()):
        logits = torch.where(ok.unsqueeze(-1), logits, torch.zeros_like(logits))
    logp = torch.log_softmax(logits / temperature, dim=-1)  # log π(a|s) at the serving temperature
    cdf = logp.exp().cumsum(dim=-1)
    draw = (1.0 - torch.rand((len(cdf), 1))) * cdf[:, -1:]
    tokens = torch.searchsorted(cdf, draw).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)
    return tokens, logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), ok


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
    def prefill(cls, model: PreTrainedModel, rows: list[Row], pad_id: int, eos_id: int,
                temperature: float) -> "Batch":
        """Run the prompts of ``rows`` (left-padded) and sample each row's first reply token."""
        width = max(len(r.prompt_ids) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row.prompt_ids):] = torch.tensor(row.prompt_ids)
            mask[i, width - len(row.prompt_ids):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = RowCache(len(rows), width + SLACK_COLUMNS)
        out = model(input_ids=ids, attention_mask=cache.attention_mask(mask), position_ids=positions, cache=cache,
                    use_cache=True, logits_to_keep=1)
        cache.advance(width)
        batch = cls(rows, cache, mask.sum(-1), ids[:, -1])
        batch._accept(out.logits[:, -1], eos_id, temperature)
        return batch

    def step(self, model: PreTrainedModel, eos_id: int, temperature: float) -> None:
        """Feed every row's pending token and sample the next one."""
        mask = self.cache.attention_mask(torch.ones((len(self), 1), dtype=torch.long))
        out = model(input_ids=self.pending.unsqueeze(-1), attention_mask=mask,
                    position_ids=self.positions.unsqueeze(-1), cache=self.cache, use_cache=True)
        self.cache.advance(1)
        self.positions = self.positions + 1
        self._accept(out.logits[:, -1], eos_id, temperature)

    def _accept(self, logits: torch.Tensor, eos_id: int, temperature: float) -> None:
        tokens, logprobs, ok = sample(logits, temperature)
        self.pending = tokens
        for row, token, logprob, finite in zip(self.rows, tokens.tolist(), logprobs.tolist(), ok.tolist()):
            if not finite:
                row.error = "the model produced non-finite logits"
                continue
            row.reply_ids.append(token)
            row.logprobs.append(logprob)
            row.finished = token == eos_id

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
