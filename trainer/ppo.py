"""LoRA PPO: rollout → rewards → advantages → minibatch updates → stats, in ``PPOTrainer.step``.

Two sources of samples feed the same update: ``step_on_prompts`` samples fresh replies and scores
them with a reward function (classic RLHF); ``step_on_logged`` replays served bot turns with their
human rewards and their serving-time log-probs as the behaviour policy (off-policy, ratio-clipped);
trained at another temperature than served (``PPOConfig.train_temperature``), the policy before the
step is the behaviour policy instead.
With ``ptx_coef`` > 0 every update also imitates demonstrations (``add_demonstrations``: PPO-ptx).
The reference for the KL penalty is the policy's ``reference()``: the base model (adapter disabled),
or a frozen adapter it starts from; PPO's clip bounds each step.
Runs on CPU as one process and unchanged under ``accelerate launch``: each process steps on its own
equal share of the batch (``trainer.team``); gradients are averaged, and the reward whitening, advantage
whitening, KL coefficient, early stop and batch stats are the whole batch's (the per-minibatch losses
and ratios are this process's).
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from trainer.config import PPOConfig
from trainer.samples import Batch, LoggedSample, Sample, collate, left_pad
from trainer.policy import PolicyWithValueHead

RewardFn = Callable[[list[tuple[list[int], list[int]]]], Sequence[float]]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1."""
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8,
                  mean_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = masked_mean) -> torch.Tensor:
    """Shift and scale the masked entries of ``x`` to mean 0, std 1 (pads become 0); ``mean_of`` may take
    the means over more than ``x`` (every process's batch)."""
    mean = mean_of(x, mask)
    var = mean_of((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded replies; returns (advantages, returns)."""
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # δ_t = r_t + γV_{t+1} − V_t
        running = delta + gamma * lam * running  # A_t = δ_t + γλA_{t+1}
        advantages[:, t] = running
    return advantages * mask, (advantages + values) * mask


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var(returns − values) / Var(returns) over real tokens: 1 is a perfect value head."""
    var_returns = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    residual = returns - values
    var_residual = masked_mean((residual - masked_mean(residual, mask)) ** 2, mask)
    return float(1.0 - var_residual / var_returns.clamp(min=1e-8))


class AdaptiveKLController:
    """Ziegler et al. (2019): coef ← coef · (1 + clip(KL/target − 1, ±0.2) · n / horizon)."""

    def __init__(self, init_coef: float, target: float, horizon: int, adaptive: bool) -> None:
        self.value, self.target, self.horizon, self.adaptive = init_coef, target, horizon, adaptive

    def update(self, kl: float, n_samples: int) -> None:
        """Move the coefficient after a step whose replies drifted ``kl`` nats from the reference."""
        if self.adaptive:
            error = min(max(kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_samples / self.horizon


class PPOTrainer:
    """Trains a ``PolicyWithValueHead`` with PPO; see the module docstring for the two sources.

    Construction seeds Python, NumPy and torch with ``config.seed`` (+ the process index) so a
    round's sampling and shuffling are reproducible.
    """

    def __init__(
        self,
        policy: PolicyWithValueHead,
        config: PPOConfig,
        eos_token_id: int,
        pad_token_id: int,
        accelerator: Accelerator | None = None,
    ) -> None:
        self.config = config
        self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id
        self.accelerator = accelerator or Accelerator()
        set_seed(config.seed + self.accelerator.process_index)
        params = [p for p in policy.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate)
        self.policy, self.optimizer = self.accelerator.prepare(policy, optimizer)
        self.kl_ctl = AdaptiveKLController(
            config.init_kl_coef, config.kl_target, config.kl_horizon, config.adaptive_kl
        )
        self.demonstrations: list[Sample] = []
        self._demonstration_order: list[int] = []

    def add_demonstrations(self, demonstrations: Sequence[tuple[list[int], list[int]]]) -> None:
        """Replies to imitate in every update, (prompt ids, reply ids) each: PPO-ptx's term, weighted by
        ``config.ptx_coef`` (with 0 they are not used)."""
        self.demonstrations += [Sample(list(p), list(r), [0.0] * len(r)) for p, r in demonstrations]

    def _ptx_loss(self) -> torch.Tensor:
        """Mean negative log-likelihood per reply token of the next ``ptx_batch_size`` demonstrations
        (a reshuffled pass over all of them before any repeats)."""
        picked = []
        while len(picked) < self.config.ptx_batch_size:
            if not self._demonstration_order:
                self._demonstration_order = torch.randperm(len(self.demonstrations)).tolist()
            picked.append(self.demonstrations[self._demonstration_order.pop()])
        batch = collate(picked, self.pad_token_id, self.eos_token_id, self.accelerator.device)
        logprobs, _, _ = self._score(batch, grad=True)
        return -masked_mean(logprobs, batch.reply_mask)

    def _masked_mean_across(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``masked_mean`` over every process's rows (sums reduced across processes)."""
        total = self.accelerator.reduce((x * mask).sum(), reduction="sum")
        return total / self.accelerator.reduce(mask.sum(), reduction="sum").clamp(min=1.0)

    def _across(self, x: torch.Tensor) -> torch.Tensor:
        """The rows of ``x`` of every process, concatenated (equal shares; ``x`` itself in one process)."""
        return self.accelerator.gather(x)

    @property
    def unwrapped(self) -> PolicyWithValueHead:
        """The policy without accelerate's wrappers (for generation, the reference, saving)."""
        return self.accelerator.unwrap_model(self.policy)

    @torch.no_grad()
    def rollout(self, prompts: list[list[int]]) -> list[Sample]:
        """Sample one reply per prompt at the policy's temperature, recording its log-probs.

        Replies are cut after their first EOS; a reply without one hit ``max_new_tokens``.
        """
        self.policy.eval()
        ids, mask = left_pad(prompts, self.pad_token_id)
        out = self.unwrapped.lm.generate(
            input_ids=ids.to(self.accelerator.device),
            attention_mask=mask.to(self.accelerator.device),
            do_sample=True,
            temperature=self.config.policy_temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=self.config.max_new_tokens,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
            return_dict_in_generate=True,
            output_logits=True,
        )
        replies = out.sequences[:, ids.shape[1] :].cpu()
        logits = torch.stack(out.logits, dim=1).float().cpu() / self.config.policy_temperature
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, replies.unsqueeze(-1)).squeeze(-1)
        samples = []
        for prompt, reply, logp in zip(prompts, replies.tolist(), logprobs.tolist()):
            n = reply.index(self.eos_token_id) + 1 if self.eos_token_id in reply else len(reply)
            samples.append(Sample(list(prompt), reply[:n], logp[:n]))
        return samples

    def step_on_prompts(self, prompts: list[list[int]], reward_fn: RewardFn) -> dict[str, float]:
        """One PPO step on fresh replies to ``prompts`` scored by ``reward_fn`` (e.g. a reward model)."""
        samples = self.rollout(prompts)
        rewards = reward_fn([(s.prompt_ids, s.reply_ids) for s in samples])
        for sample, reward in zip(samples, rewards, strict=True):
            sample.reward = float(reward)
        return self.step(samples)

    def step_on_logged(self, logged: list[LoggedSample], now: float | None = None) -> dict[str, float]:
        """One PPO step on served turns; those older than ``max_episode_age_s`` are skipped.

        Their recorded log-probs are the serving temperature's; trained at another temperature
        (``PPOConfig.train_temperature``) the step recomputes them with the policy before it.
        """
        now = time.time() if now is None else now
        fresh = [e for e in logged if now - e.timestamp <= self.config.max_episode_age_s]
        stats = {"skipped_stale": float(len(logged) - len(fresh))}
        if self.accelerator.num_processes > 1:  # every process steps on as many: the fewest fresh of any
            fewest = int(self._across(torch.tensor([len(fresh)], device=self.accelerator.device)).min())
            stats["skipped_uneven"] = float(len(fresh) - fewest)
            fresh = fresh[:fewest]
        if fresh:
            rescore = self.config.policy_temperature != self.config.temperature
            stats |= self.step([e.to_sample() for e in fresh], behaviour_from_policy=rescore)
            stats["behaviour_rescored"] = float(rescore)
        return stats

    def _score(self, batch: Batch, *, grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probs, values and entropies [B, R] of the batch's reply tokens under the policy."""
        with torch.set_grad_enabled(grad):
            logits, values = self.policy(batch.input_ids, batch.attention_mask)
        start, end = batch.prompt_width - 1, batch.input_ids.shape[1] - 1  # logits at t predict t+1
        logp_all = torch.log_softmax(logits[:, start:end].float() / self.config.policy_temperature, dim=-1)
        logprobs = logp_all.gather(-1, batch.reply_ids.unsqueeze(-1)).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        return logprobs, values[:, start:end].float(), entropy

    @torch.no_grad()
    def _score_without_grad(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(policy log-probs, values, reference log-probs) [B, R], a minibatch at a time."""
        rows = torch.arange(len(batch.rewards), device=batch.rewards.device)
        policy_logprobs, values, reference_logprobs = [], [], []
        for index in rows.split(self.config.mini_batch_size):
            logprobs, value, _ = self._score(batch.select(index), grad=False)
            with self.unwrapped.reference():
                reference_logprobs.append(self._score(batch.select(index), grad=False)[0])
            policy_logprobs.append(logprobs)
            values.append(value)
        return torch.cat(policy_logprobs), torch.cat(values), torch.cat(reference_logprobs)

    def _minibatches(self, n: int) -> list[torch.Tensor]:
        perm = torch.randperm(n, device=self.accelerator.device)
        return list(perm.split(self.config.mini_batch_size))

    def step(self, samples: list[Sample], behaviour_from_policy: bool = False) -> dict[str, float]:
        """One PPO step on samples carrying rewards and behaviour log-probs; returns its stats.

        ``behaviour_from_policy`` replaces the samples' behaviour log-probs with the policy's before
        the step (the ratio then starts at 1, as for a fresh rollout).
        """
        cfg = self.config
        if not samples:
            raise ValueError("a PPO step needs at least one sample")
        counts = self._across(torch.tensor([len(samples)], device=self.accelerator.device)).tolist()
        if len(set(counts)) > 1:  # they would run different numbers of updates and wait on each other
            raise ValueError(f"every process must step on as many samples; they have {counts}")
        batch = collate(samples, self.pad_token_id, self.eos_token_id, self.accelerator.device)
        mask = batch.reply_mask

        # 1. Score: the policy now (old log-probs, values) and the reference, no gradients.
        self.policy.eval()
        old_logprobs, old_values, ref_logprobs = self._score_without_grad(batch)
        if behaviour_from_policy:
            batch.behaviour_logprobs = old_logprobs * mask

        # 2. Rewards: per-token KL penalty; whitened score (minus the no-EOS penalty) on the last token.
        kl = (old_logprobs - ref_logprobs) * mask  # k1 estimate of KL(π‖π_ref) per token
        scores = batch.rewards
        if cfg.whiten_rewards and sum(counts) > 1:
            every = self._across(scores)
            scores = (scores - every.mean()) / (every.std(unbiased=False) + 1e-8)
        scores = scores - cfg.missing_eos_penalty * (~batch.ended).float()
        token_rewards = -self.kl_ctl.value * kl
        last = mask.sum(1).long() - 1
        token_rewards[torch.arange(len(samples)), last] += scores

        # 3. Advantages: GAE, then whitened.
        advantages, returns = gae(token_rewards, old_values, mask, cfg.gamma, cfg.lam)
        advantages = masked_whiten(advantages, mask, mean_of=self._masked_mean_across)

        # 4. Minibatch updates, clipped against the behaviour policy; stop early on large drift.
        self.policy.train()
        logs: list[dict[str, float]] = []
        early_stopped = False
        ratio_min, ratio_max = float("inf"), float("-inf")
        for _ in range(cfg.ppo_epochs):
            for index in self._minibatches(len(samples)):
                mb, mb_mask = batch.select(index), mask[index]
                logprobs, values, entropy = self._score(mb, grad=True)
                adv, ret, old_v = advantages[index], returns[index], old_values[index]

                ratio = torch.exp(logprobs - mb.behaviour_logprobs)  # π_θ / π_behaviour
                pg_unclipped = -adv * ratio
                pg_clipped = -adv * ratio.clamp(1.0 - cfg.cliprange, 1.0 + cfg.cliprange)
                pg_loss = masked_mean(torch.max(pg_unclipped, pg_clipped), mb_mask)

                v_clipped = old_v + (values - old_v).clamp(-cfg.cliprange_value, cfg.cliprange_value)
                vf_loss = 0.5 * masked_mean(torch.max((values - ret) ** 2, (v_clipped - ret) ** 2), mb_mask)

                loss = pg_loss + cfg.vf_coef * vf_loss
                ptx_loss = self._ptx_loss() if cfg.ptx_coef > 0 and self.demonstrations else None
                if ptx_loss is not None:
                    loss = loss + cfg.ptx_coef * ptx_loss
                self.accelerator.backward(loss)
                self.accelerator.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad()

                with torch.no_grad():
                    drift = logprobs - old_logprobs[index]
                    approx_kl = masked_mean(0.5 * drift**2, mb_mask)  # k2 estimate of KL(π_old‖π_θ)
                    approx_kl = float(self.accelerator.reduce(approx_kl, reduction="mean"))
                    real_ratios = ratio[mb_mask.bool()]
                    ratio_min = min(ratio_min, float(real_ratios.min()))
                    ratio_max = max(ratio_max, float(real_ratios.max()))
                    logs.append({
                        "policy_loss": float(pg_loss),
                        "value_loss": float(vf_loss),
                        "clipfrac": float(masked_mean((pg_clipped > pg_unclipped).float(), mb_mask)),
                        "approx_kl": approx_kl,
                        "ratio_mean": float(masked_mean(ratio, mb_mask)),
                        "entropy": float(masked_mean(entropy, mb_mask)),
                    } | ({"ptx_loss": float(ptx_loss)} if ptx_loss is not None else {}))
                if approx_kl > cfg.stop_kl:
                    early_stopped = True
                    break
            if early_stopped:
                break
        self.policy.eval()

        # 5. Stats, and the KL coefficient follows the replies' drift from the reference.
        kl_per_reply = float(self.accelerator.reduce(kl.sum(1).mean(), reduction="mean"))
        stats = {k: sum(log[k] for log in logs) / len(logs) for k in logs[0]}
        stats |= {
            "ratio_min": ratio_min,
            "ratio_max": ratio_max,
            "reward_mean": float(self._across(batch.rewards).mean()),
            "kl": kl_per_reply,
            "kl_coef": self.kl_ctl.value,
            "explained_variance": explained_variance(old_values, returns, mask),
            "reply_length": float(self._across(mask.sum(1)).mean()),
            "eos_share": float(self._across(batch.ended.float()).mean()),
            "episodes": float(sum(counts)),
            "process_episodes": float(len(samples)),
            "updates": float(len(logs)),
            "early_stopped": float(early_stopped),
        }
        self.kl_ctl.update(kl_per_reply, sum(counts))
        return stats

    def save(self, path: str) -> None:
        """Write the LoRA adapter and value head (safetensors) from the main process."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self.unwrapped.save_pretrained(path)
