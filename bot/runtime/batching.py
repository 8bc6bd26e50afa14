"""Token-level continuous batching: sequences that decode together under one adapter.

A ``Batch`` holds a left-padded KV cache, its 2-D attention mask and, per row, the token that
was sampled last and is not yet in the cache ("pending"). Newcomers are prefilled as a batch
of their own and merged in between steps (the shorter cache is padded on the left); rows that
finished are dropped and all-padding columns trimmed. Position ids count real tokens only,
as ``generate`` and the trainer's scoring do, so logged log-probs match the policy's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel


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
    """Sample one token per row at ``temperature``; return tokens, their log-probs, finite-row flags."""
    logits = logits.float()
    ok = torch.isfinite(logits).all(dim=-1)
    logits = torch.where(ok.unsqueeze(-1), logits, torch.zeros_like(logits))
    logp = torch.log_softmax(logits / temperature, dim=-1)  # log π(a|s) at the serving temperature
    tokens = torch.multinomial(logp.exp(), 1).squeeze(-1)
    return tokens, logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), ok


class Batch:
    """Rows sharing one KV cache; every forward pass runs them all under the same adapter."""

    def __init__(self, rows: list[Row], cache: DynamicCache, mask: torch.Tensor,
                 positions: torch.Tensor, pending: torch.Tensor):
        self.rows = rows
        self.cache = cache
        self.mask = mask
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
        cache = DynamicCache()
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                    use_cache=True, logits_to_keep=1)
        batch = cls(rows, cache, mask, mask.sum(-1), ids[:, -1])
        batch._accept(out.logits[:, -1], eos_id, temperature)
        return batch

    def step(self, model: PreTrainedModel, eos_id: int, temperature: float) -> None:
        """Feed every row's pending token and sample the next one."""
        self.mask = torch.cat([self.mask, torch.ones((len(self), 1), dtype=self.mask.dtype)], dim=1)
        out = model(input_ids=self.pending.unsqueeze(-1), attention_mask=self.mask,
                    position_ids=self.positions.unsqueeze(-1), cache=self.cache, use_cache=True)
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
        """Append ``other``'s rows, left-padding whichever cache is shorter."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        layers = []
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            keys = torch.cat([_pad_left(mine.keys, width, 2), _pad_left(theirs.keys, width, 2)])
            values = torch.cat([_pad_left(mine.values, width, 2), _pad_left(theirs.values, width, 2)])
            layers.append((keys, values))
        self.cache = DynamicCache(layers)
        self.mask = torch.cat([_pad_left(self.mask, width, 1), _pad_left(other.mask, width, 1)])
        self.positions = torch.cat([self.positions, other.positions])
        self.pending = torch.cat([self.pending, other.pending])
        self.rows = self.rows + other.rows

    def drop_done(self) -> list[Row]:
        """Remove finished rows (and cache columns that are padding for every row left); return them."""
        done = [r for r in self.rows if r.done]
        if not done:
            return []
        keep = torch.tensor([i for i, r in enumerate(self.rows) if not r.done], dtype=torch.long)
        self.rows = [r for r in self.rows if not r.done]
        if self.rows:
            used = self.mask[keep].any(dim=0).nonzero()
            start = int(used[0]) if len(used) else self.mask.shape[1]
            self.mask = self.mask[keep, start:]
            self.cache = DynamicCache([(layer.keys[keep, :, start:], layer.values[keep, :, start:])
                                       for layer in self.cache.layers])
            self.positions = self.positions[keep]
            self.pending = self.pending[keep]
        return done


def _pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """Zero-pad ``tensor`` on the left of ``dim`` up to ``width``."""
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
