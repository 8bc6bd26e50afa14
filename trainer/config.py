"""Configuration dataclasses of the trainer, one per stage (TRL style).

Each class's docstring ``Parameters:`` block is the reference for its fields: type, default,
meaning. Defaults follow DESIGN.md ("What a feasibility run showed").
"""

from __future__ import annotations

from dataclasses import dataclass, field


def _default_tag_penalties() -> dict[str, float]:
    return {
        "wrong_info": -0.5,
        "rude": -0.3,
        "off_topic": -0.3,
        "too_long": -0.2,
        "unhelpful": -0.2,
        "great": 0.2,
    }


@dataclass
class RewardBuilderConfig:
    """How human feedback on a bot turn becomes one scalar reward (see ``trainer.rewards``).

    Parameters:
        expert_weight (float, default 0.8): weight of the mean expert score when a turn has
            both an expert score and a conversation CSAT; CSAT gets ``1 - expert_weight``.
            A turn with only one of the two uses that one alone.
        tag_penalties (dict[str, float], default wrong_info -0.5, rude -0.3, off_topic -0.3,
            too_long -0.2, unhelpful -0.2, great +0.2): added to the blended reward once per
            distinct tag on the turn; tags not listed add nothing.
        whiten (bool, default False): normalise the batch's rewards to mean 0, std 1 after
            clamping (PPO whitens again per step; the reward model wants the raw scale).
    """

    expert_weight: float = 0.8
    tag_penalties: dict[str, float] = field(default_factory=_default_tag_penalties)
    whiten: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.expert_weight <= 1.0:
            raise ValueError(f"expert_weight must lie in [0, 1], got {self.expert_weight}")


@dataclass
class PPOConfig:
    """LoRA PPO on the policy (see ``trainer.ppo``).

    Parameters:
        lora_r (int, default 4): LoRA rank (rank 1 did as well as 8 in the feasibility run).
        lora_alpha (int, default 8): LoRA scaling numerator (scale = alpha / r).
        lora_dropout (float, default 0.0): dropout on the LoRA input; 0 keeps the on-policy
            ratio exactly 1 at the first minibatch.
        lora_target_modules (list[str] | None, default None): module names to adapt; None uses
            peft's default for the architecture (attention q/v projections for Llama).
        learning_rate (float, default 1e-3): AdamW learning rate of the LoRA and value head.
        batch_size (int, default 32): episodes per PPO step (prompts rolled out per step).
        mini_batch_size (int, default 8): episodes per gradient update.
        ppo_epochs (int, default 1): passes over a step's episodes (one is nearly as good as
            four and stable, per the feasibility run and DeepSpeed-Chat).
        max_new_tokens (int, default 64): longest reply sampled in a rollout.
        temperature (float, default 1.0): sampling temperature of rollouts and of every
            log-prob; must equal the serving temperature so logged log-probs are comparable.
        init_kl_coef (float, default 0.05): initial coefficient of the per-token KL penalty
            to the reference (the base model, adapter disabled).
        adaptive_kl (bool, default True): adjust the coefficient toward ``kl_target``
            (Ziegler et al. proportional controller); False keeps it fixed.
        kl_target (float, default 1.0): target KL to the reference, nats per reply.
        kl_horizon (int, default 10000): controller horizon in episodes; larger adapts slower.
        cliprange (float, default 0.2): PPO ratio clip epsilon.
        cliprange_value (float, default 0.2): clip of the value update around the old values.
        vf_coef (float, default 0.1): weight of the value loss in the total loss.
        gamma (float, default 1.0): discount over reply tokens.
        lam (float, default 0.95): GAE lambda.
        whiten_rewards (bool, default True): normalise the step's scalar rewards to mean 0,
            std 1 before the penalties below are applied.
        missing_eos_penalty (float, default 1.0): subtracted from the (whitened) reward of a
            reply with no EOS, i.e. one cut off at ``max_new_tokens``.
        max_grad_norm (float, default 1.0): gradient-norm clip per update.
        stop_kl (float, default 0.1): stop the step's remaining updates once the approximate
            KL (per token) between the policy and the policy at the start of the step
            exceeds this bound.
        max_episode_age_s (float, default 604800): logged episodes older than this many
            seconds (7 days) are skipped: their behaviour policy is too far from the current.
        seed (int, default 0): seed of rollout sampling and minibatch shuffling.
    """

    lora_r: int = 4
    lora_alpha: int = 8
    lora_dropout: float = 0.0
    lora_target_modules: list[str] | None = None
    learning_rate: float = 1e-3
    batch_size: int = 32
    mini_batch_size: int = 8
    ppo_epochs: int = 1
    max_new_tokens: int = 64
    temperature: float = 1.0
    init_kl_coef: float = 0.05
    adaptive_kl: bool = True
    kl_target: float = 1.0
    kl_horizon: int = 10000
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    whiten_rewards: bool = True
    missing_eos_penalty: float = 1.0
    max_grad_norm: float = 1.0
    stop_kl: float = 0.1
    max_episode_age_s: float = 7 * 24 * 3600.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mini_batch_size < 1 or self.batch_size < 1:
            raise ValueError("batch_size and mini_batch_size must be at least 1")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
