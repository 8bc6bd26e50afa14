"""``python -m tests.ppo_steps BASE_MODEL OUT``: two PPO steps on the same eight logged samples, each
process of the launch stepping on its share (``Team.shard``); the main process writes the trained
weights and every process's digest of them to ``OUT`` (a ``torch.save`` file). One process steps on
all eight: how a test compares a step on one process with the same step on two."""

from __future__ import annotations

import hashlib
import sys
import time

import torch


def logged_samples(n: int = 8) -> list:
    """``n`` logged turns of one prompt and reply length, with spread rewards and behaviour log-probs."""
    from trainer.samples import LoggedSample

    generator = torch.Generator().manual_seed(7)
    samples = []
    for i in range(n):
        prompt = torch.randint(5, 60, (6,), generator=generator).tolist()
        reply = torch.randint(5, 60, (5,), generator=generator).tolist()
        logprobs = (-torch.rand(5, generator=generator) * 3).tolist()
        samples.append(LoggedSample(prompt, reply, logprobs, float(i % 4) - 1.5, "base", time.time()))
    return samples


def main(base_model: str, out: str) -> None:
    from transformers import AutoModelForCausalLM

    from loopdesk.causal_lm import load_tokenizer
    from trainer.config import PPOConfig
    from trainer.policy import PolicyWithValueHead
    from trainer.ppo import PPOTrainer
    from trainer.round_config import RoundConfig
    from trainer.team import Team

    torch.set_num_threads(1)
    team = Team.launched()
    # one minibatch per epoch: each process's minibatch is its share of the one the single process takes
    config = PPOConfig(batch_size=8, mini_batch_size=8, ppo_epochs=2, ptx_coef=0.0, stop_kl=100.0, seed=3)
    tokenizer = load_tokenizer(base_model)
    policy = PolicyWithValueHead.with_new_adapter(AutoModelForCausalLM.from_pretrained(base_model), config)
    ppo = PPOTrainer(policy, team.share_of(RoundConfig(ppo=config)).ppo, tokenizer.eos_token_id, tokenizer.pad_token_id)
    stats = [ppo.step_on_logged(team.shard(logged_samples())) for _ in range(2)]
    weights = {k: v.detach().clone() for k, v in ppo.unwrapped.named_parameters() if v.requires_grad}
    digest = hashlib.sha256(b"".join(w.numpy().tobytes() for w in weights.values())).hexdigest()
    digests = team.gather(digest)
    if team.is_main:
        torch.save({"weights": weights, "digests": digests, "stats": stats}, out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
