"""Samples PPO learns from, and their padding into one batch of tensors.

A sample is one reply to one prompt, as token ids, with the log-probs its behaviour policy gave
each reply token and a scalar reward. Fresh rollouts and logged bot turns both become samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Sample:
    """One reply with its behaviour log-probs and reward: the unit of a PPO step."""

    prompt_ids: list[int]
    reply_ids: list[int]
    behaviour_logprobs: list[float]
    reward: float = 0.0

    def __post_init__(self) -> None:
        if not self.prompt_ids or not self.reply_ids:
            raise ValueError("a sample needs a non-empty prompt and reply")
        if len(self.behaviour_logprobs) != len(self.reply_ids):
            raise ValueError(
                f"{len(self.behaviour_logprobs)} behaviour log-probs for {len(self.reply_ids)} reply tokens"
            )


@dataclass
class LoggedSample:
    """A bot turn as served: log-probs recorded by the serving adapter, reward from people.

    ``timestamp`` is when it was served (Unix seconds); too old ones are skipped by PPO.
    """

    prompt_ids: list[int]
    reply_ids: list[int]
    behaviour_logprobs: list[float]
    reward: float
    adapter_version: str
    timestamp: float

    def to_sample(self) -> Sample:
        """The sample PPO trains on."""
        return Sample(self.prompt_ids, self.reply_ids, self.behaviour_logprobs, self.reward)


@dataclass
class Batch:
    """Samples padded to [B, P + R]: prompts left-padded to P, replies right-padded to R."""

    input_ids: torch.Tensor  # [B, P + R]
    attention_mask: torch.Tensor  # [B, P + R]
    reply_mask: torch.Tensor  # [B, R], 1.0 on real reply tokens
    behaviour_logprobs: torch.Tensor  # [B, R]
    rewards: torch.Tensor  # [B]
    ended: torch.Tensor  # [B] bool, reply ends with EOS
    prompt_width: int

    @property
    def reply_ids(self) -> torch.Tensor:
        """Reply token ids [B, R] (pad where the mask is 0)."""
        return self.input_ids[:, self.prompt_width :]

    def select(self, index: torch.Tensor) -> "Batch":
        """The rows at ``index`` (a minibatch), with the same widths."""
        return Batch(
            self.input_ids[index],
            self.attention_mask[index],
            self.reply_mask[index],
            self.behaviour_logprobs[index],
            self.rewards[index],
            self.ended[index],
            self.prompt_width,
        )


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id rows left-padded to one width, and their attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return ids, mask


def collate(samples: list[Sample], pad_id: int, eos_id: int, device: torch.device) -> Batch:
    """Pad samples into one batch on ``device``."""
    prompt_ids, prompt_mask = left_pad([s.prompt_ids for s in samples], pad_id)
    width = max(len(s.reply_ids) for s in samples)
    reply_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    reply_mask = torch.zeros((len(samples), width))
    behaviour = torch.zeros((len(samples), width))
    for i, sample in enumerate(samples):
        n = len(sample.reply_ids)
        reply_ids[i, :n] = torch.tensor(sample.reply_ids)
        reply_mask[i, :n] = 1.0
        behaviour[i, :n] = torch.tensor(sample.behaviour_logprobs)
    return Batch(
        input_ids=torch.cat([prompt_ids, reply_ids], dim=1).to(device),
        attention_mask=torch.cat([prompt_mask, reply_mask.long()], dim=1).to(device),
        reply_mask=reply_mask.to(device),
        behaviour_logprobs=behaviour.to(device),
        rewards=torch.tensor([float(s.reward) for s in samples], device=device),
        ended=torch.tensor([s.reply_ids[-1] == eos_id for s in samples], device=device),
        prompt_width=prompt_ids.shape[1],
    )
