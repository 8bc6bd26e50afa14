"""Replaying a served reply: its log-probs from one unbatched forward pass over prompt + reply, under the
figure guard the engine sampled it with (``bot.runtime.figure_guard``), or none."""

from __future__ import annotations

import math

import torch

from bot.runtime.figure_guard import FigureGuard


def replayed_logprobs(model: torch.nn.Module, prompt_ids: list[int], reply_ids: list[int], temperature: float,
                      guard: FigureGuard | None = None, budget: int = 0) -> list[float]:
    """log π(token) of each reply token at ``temperature``, renormalised over the tokens ``guard`` allows
    (at the ``budget``-th, the reply's last, those that finish a figure)."""
    ids = torch.tensor([prompt_ids + reply_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float() / temperature
    start = len(prompt_ids) - 1
    out = []
    for i, token in enumerate(reply_ids):
        step = logits[start + i].clone()
        if guard is not None:
            step[guard.banned(final=i == budget - 1)] = -math.inf
            guard.advance(token)
        out.append(torch.log_softmax(step, dim=-1)[token].item())
    return out
