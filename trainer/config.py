"""Configuration dataclasses of the trainer, one per stage (TRL style).

Each class's docstring ``Parameters:`` block is the reference for its fields: type, default,
meaning. What the measured runs showed behind the defaults is in docs/tuning.md. The round that
holds one of each, and where its values come from, is ``trainer.round_config``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from loopdesk.config import Settings


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
        max_csat_per_client (int, default 1): of one client's rated conversations in a round's
            feedback (client: the rating's ``rater``, the hashed address; none: the conversation
            alone), the CSAT of at most this many counts, those whose ids hash lowest (a stable
            choice the rater cannot steer); the others' turns keep only their expert feedback.
            Ratings stored beyond the per-client cap (``Settings.rating_client_cap``) never count.
            1: each client is one customer's worth, as in the canary decision; 0: no cap. Worked
            case: 30 ratings of 5 from one client and 10 customers rating 1 once each: 11 CSAT
            rewards, one +1 and ten -1 (see docs/tuning.md#ratings).
        handoff_penalty (float, default -0.5): added (with the tag penalties, before the clamp) to
            the reward of every bot turn before a handoff to a person, back to the previous handoff
            or the start: the customer asked for a person (button or words), re-asked until the bot
            handed off, or no help article fitted. Every such turn gets the same penalty, as every
            turn gets its conversation's CSAT; a turn with no other feedback starts from 0. A rating
            after a handoff rates the person's help too, so without it a chat an agent rescued
            rewards the bot turns that failed. 0 turns it off; it must lie in [-2, 0]. Worked case: two bot
            turns, then the customer asks for a person and rates 5; the second turn has an expert
            score of -1: rewards 1 - 0.5 = 0.5 and 0.8 * -0.5 + 0.2 * 1 - 0.5 = -0.7 (see
            docs/tuning.md#reward-builder).
    """

    expert_weight: float = 0.8
    tag_penalties: dict[str, float] = field(default_factory=_default_tag_penalties)
    whiten: bool = False
    max_csat_per_client: int = 1
    handoff_penalty: float = -0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.expert_weight <= 1.0:
            raise ValueError(f"expert_weight must lie in [0, 1], got {self.expert_weight}")
        if self.max_csat_per_client < 0:
            raise ValueError(f"max_csat_per_client must be >= 0, got {self.max_csat_per_client}")
        if not -2.0 <= self.handoff_penalty <= 0.0:
            raise ValueError(f"handoff_penalty is added to the reward: it must lie in [-2, 0], "
                             f"got {self.handoff_penalty}")


@dataclass
class PPOConfig:
    """LoRA PPO on the policy (see ``trainer.ppo``).

    Parameters:
        lora_r (int, default 4): LoRA rank (see docs/tuning.md#ppo).
        lora_alpha (int, default 8): LoRA scaling numerator (scale = alpha / r).
        lora_dropout (float, default 0.0): dropout on the LoRA input; 0 keeps the on-policy
            ratio exactly 1 at the first minibatch.
        lora_target_modules (list[str] | str | None, default "all-linear"): module names to
            adapt (peft's ``target_modules``); "all-linear" adapts every linear layer but the
            output head; None uses peft's default (attention q/v only for Llama).
        learning_rate (float, default 5e-4): AdamW learning rate of the LoRA and value head
            (see docs/tuning.md#ppo).
        batch_size (int, default 32): episodes per PPO step (prompts rolled out per step).
        mini_batch_size (int, default 8): episodes per gradient update.
        ppo_epochs (int, default 4): passes over a step's episodes (each pass is one more update
            compute of the step; see docs/tuning.md#ppo).
        max_new_tokens (int, default 64): longest reply sampled in a rollout (the bot's
            ``LOOPDESK_MAX_REPLY_TOKENS``, set by ``RoundConfig.serving``).
        temperature (float, default ``Settings.temperature``, 0.7): the serving temperature, at which the
            logged turns were sampled and their log-probs recorded (``RoundConfig.serving`` sets it from
            ``LOOPDESK_TEMPERATURE``).
        train_temperature (float | None, default 1.0): the temperature of the policy PPO trains: its
            rollouts sample at it and every log-prob it optimises (policy, reference, demonstrations) is
            taken at it; None trains at ``temperature``. Where it differs from ``temperature`` a logged
            step's behaviour log-probs are recomputed at it with the policy before the step, so the
            clip bounds the step from there (see docs/tuning.md#ppo).
        init_kl_coef (float, default 0.03): initial coefficient of the per-token KL penalty to the
            reference (``RoundConfig.kl_reference``); the gate's ``kl_budget`` bounds total drift
            (see docs/tuning.md#ppo).
        adaptive_kl (bool, default True): adjust the coefficient toward ``kl_target``
            (Ziegler et al. proportional controller); False keeps it fixed.
        kl_target (float, default 1.0): target KL to the reference, nats per reply.
        kl_horizon (int, default 1000): controller horizon in episodes; larger adapts slower
            (each step moves the coefficient by at most 20% · batch_size / kl_horizon).
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
        ptx_coef (float, default 1.0): weight of the demonstrations' mean negative log-likelihood per
            reply token added to every minibatch's loss (InstructGPT's PPO-ptx, with the round's
            demonstrations, ``trainer.baselines.sft_examples``, in place of pretraining text); 0 turns
            it off (see docs/tuning.md#ppo).
        ptx_batch_size (int, default 8): demonstrations per minibatch update when ``ptx_coef`` > 0.
        max_episode_age_s (float, default 604800): logged episodes older than this many
            seconds (7 days) are skipped: their behaviour policy is too far from the current.
        seed (int, default 0): seed of rollout sampling and minibatch shuffling.
    """

    lora_r: int = 4
    lora_alpha: int = 8
    lora_dropout: float = 0.0
    lora_target_modules: list[str] | str | None = "all-linear"
    learning_rate: float = 5e-4
    batch_size: int = 32
    mini_batch_size: int = 8
    ppo_epochs: int = 4
    max_new_tokens: int = 64
    temperature: float = Settings.temperature  # the serving default; serving() sets the actual one
    train_temperature: float | None = 1.0
    init_kl_coef: float = 0.03
    adaptive_kl: bool = True
    kl_target: float = 1.0
    kl_horizon: int = 1000
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    whiten_rewards: bool = True
    missing_eos_penalty: float = 1.0
    max_grad_norm: float = 1.0
    stop_kl: float = 0.1
    ptx_coef: float = 1.0
    ptx_batch_size: int = 8
    max_episode_age_s: float = 7 * 24 * 3600.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mini_batch_size < 1 or self.batch_size < 1 or self.ptx_batch_size < 1:
            raise ValueError("batch_size, mini_batch_size and ptx_batch_size must be at least 1")
        if not (self.ptx_coef >= 0 and math.isfinite(self.ptx_coef)):
            raise ValueError(f"ptx_coef must be a finite number >= 0, got {self.ptx_coef}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        train = self.train_temperature
        if train is not None and not (train > 0 and math.isfinite(train)):
            raise ValueError(f"train_temperature must be a positive number or None, got {self.train_temperature}")

    @property
    def policy_temperature(self) -> float:
        """The temperature PPO samples and scores at: ``train_temperature``, or the serving one."""
        return self.temperature if self.train_temperature is None else self.train_temperature


@dataclass
class RewardModelConfig:
    """The reward model: base model + scalar head + its own LoRA, trained on preference pairs.

    Parameters:
        lora_r (int, default 8): LoRA rank of the reward model's adapter.
        lora_alpha (int, default 16): LoRA scaling numerator (scale = alpha / r).
        lora_target_modules (list[str] | str | None, default "all-linear"): layers the adapter
            adapts (peft's ``target_modules``; None: peft's default, attention q/v only).
        learning_rate (float, default 1e-3): AdamW learning rate (TRL's RewardTrainer).
        epochs (float, default 2.0): passes over the training pairs.
        batch_size (int, default 8): pairs per gradient step.
        eval_share (float, default 0.2): share of pairs held out to report pairwise accuracy
            (at least one pair once there are two).
        min_reward_gap (float, default 0.25): two replies to the same customer message form a
            pair only when their rewards differ by at least this much.
        max_pairs_per_message (int, default 16): cap on reward-ranked pairs per customer
            message, so one frequent question does not dominate.
        max_length (int, default 512): longest prompt + reply in tokens; longer prompts lose
            their oldest tokens.
        cross_negatives (int, default 2): other turns' corrections each correction is preferred
            to after its own prompt (0 turns the rule off; see ``trainer.reward_model``).
        rated_pairs (int, default 2): pairs each rewarded turn forms with turns of any other
            message whose reward differs by at least ``rated_gap`` (rule 4; 0 turns it off).
        rated_gap (float, default 1.0): smallest reward difference of such a pair (1.0 is two
            CSAT stars on the reward builder's scale).
        max_pairs (int, default 1000): most pairs a round trains on (a seeded random subset
            beyond it), so the growing history keeps a round's reward-model time bounded
            (see docs/tuning.md#reward-model).
        seed (int, default 0): seed of the pair split, head initialisation and shuffling.
    """

    lora_r: int = 8
    lora_alpha: int = 16
    lora_target_modules: list[str] | str | None = "all-linear"
    learning_rate: float = 1e-3
    epochs: float = 2.0
    batch_size: int = 8
    eval_share: float = 0.2
    min_reward_gap: float = 0.25
    max_pairs_per_message: int = 16
    rated_pairs: int = 2
    rated_gap: float = 1.0
    max_pairs: int = 1000
    max_length: int = 512
    cross_negatives: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.cross_negatives < 0 or self.rated_pairs < 0:
            raise ValueError(f"cross_negatives and rated_pairs must be >= 0, got {self.cross_negatives}, "
                             f"{self.rated_pairs}")
        if self.max_pairs < 1:
            raise ValueError(f"max_pairs must be at least 1, got {self.max_pairs}")
        if self.rated_gap <= 0:
            raise ValueError(f"rated_gap must be positive, got {self.rated_gap}")


@dataclass
class GateConfig:
    """The evaluation gate before releasing, and the live canary decision after it.

    Parameters:
        contexts (int, default 128): most held-out logged prompts each adapter answers (newest first;
            ``RoundConfig.gate_history``; see docs/tuning.md#gate).
        samples_per_context (int, default 4): replies each adapter samples per context; a context's
            score is their mean (see docs/tuning.md#gate).
        max_new_tokens (int, default 64): longest reply sampled (the bot's ``LOOPDESK_MAX_REPLY_TOKENS``,
            set by ``RoundConfig.serving``).
        temperature (float, default ``Settings.temperature``, 0.7): sampling temperature (the serving
            temperature, set by ``RoundConfig.serving``).
        margin (float, default 0.0): the candidate's mean score (reward model, plus the weighted
            expert-reference reward on reviewed contexts: ``RoundConfig.reference_weight``) must be
            at least the active adapter's plus this.
        alpha (float, default 0.05): and a one-sided paired test of the per-context score
            differences must put the candidate more than ``margin`` ahead at this level (1.0: no
            test; see docs/tuning.md#gate).
        kl_budget (float, default 20.0): largest allowed KL of the candidate to the base model,
            nats per reply (total drift across all rounds; see docs/tuning.md#gate).
        max_unfinished_share (float, default 0.25): largest allowed share of replies cut off
            without an end-of-sequence token.
        reference_tolerance (float, default 0.0): the expert view: on held-out contexts an expert
            reviewed, the candidate's mean agreement with the experts' corrections
            (``trainer.references``, in [-1, 1]) must be at least the active adapter's minus this.
        evaluator (str, default ""): optional external evaluator command line; it gets
            ``--candidate DIR --active VERSION`` appended (and ``LOOPDESK_GATE_CANDIDATE_DIR``,
            ``LOOPDESK_GATE_ACTIVE_VERSION`` in its environment) and prints one JSON object
            ``{"pass", "candidate_score", "active_score", "details"}`` on its last stdout line.
        evaluator_timeout_s (float, default 900): the evaluator is killed and the gate fails
            after this many seconds.
        pass_status (str, default "canary"): what a passing candidate becomes: ``canary``
            (live CSAT then decides) or ``active``.
        canary_alpha (float, default 0.05): significance level of the live canary test: one-sided
            z-tests of the difference of the arms' weighted mean CSAT, ``z = (m_c - m_a) /
            sqrt(sd_c² / n_c + sd_a² / n_a)`` with each arm's weighted standard deviation and Kish
            effective sample size (``trainer.canary``). The weights (``feedback_store.rating_weights``):
            0 beyond the per-client cap, 1/n for each of a client's n ratings, and burst windows of
            ``Settings.csat_burst_window_s`` capped at ``Settings.csat_burst_share`` of an arm's weight.
        canary_min_samples (int, default 30): effective ratings (Kish's n_eff over clients:
            (Σ W_c)² / Σ W_c², W_c a client's summed weight) needed on each side before the canary
            test decides anything; the arms' ratings must also span ``1 / csat_burst_share`` burst
            windows each. Worked cases: 30 ratings from one client: n_eff 1 (wait); 30 clients
            rating once: n_eff 30; 29 clients once and one client 10 times: n_eff 30.
        canary_max_samples (int, default 300): effective canary ratings (Kish, as above) after which
            a canary not shown worse is promoted; a flood from a few clients cannot reach it.
        seed (int, default 0): seed of the gate's reply sampling.
    """

    contexts: int = 128
    samples_per_context: int = 4
    max_new_tokens: int = 64
    temperature: float = Settings.temperature  # the serving default; serving() sets the actual one
    margin: float = 0.0
    alpha: float = 0.05
    kl_budget: float = 20.0
    max_unfinished_share: float = 0.25
    reference_tolerance: float = 0.0
    evaluator: str = ""
    evaluator_timeout_s: float = 900.0
    pass_status: str = "canary"
    canary_alpha: float = 0.05
    canary_min_samples: int = 30
    canary_max_samples: int = 300
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in (0, 1], got {self.alpha}")
        if self.contexts < 1 or self.samples_per_context < 1:
            raise ValueError(f"contexts and samples_per_context must be >= 1, got {self.contexts} and "
                             f"{self.samples_per_context}")
        if self.pass_status not in ("canary", "active"):
            raise ValueError(f"pass_status must be 'canary' or 'active', got {self.pass_status!r}")


@dataclass
class BaselineConfig:
    """The baseline policy updates a round can run instead of PPO (see ``trainer.baselines``): SFT on
    well-rated replies and expert corrections, or KTO on thumbs derived from the rewards. Both train
    the policy's LoRA (rank, alpha, targets from ``PPOConfig``) with TRL, starting from the active
    adapter, on the round's logged turns only (no rollouts: the reward model serves only the gate).

    Parameters:
        learning_rate (float, default 1e-3): AdamW learning rate of the LoRA, decayed linearly to 0
            over the update (TRL's default schedule; see docs/tuning.md#baselines).
        epochs (float, default 3.0): passes over the examples, unless the method's step cap ends
            the update first.
        sft_max_steps (int, default 50): most SFT optimizer steps per round (0: no cap), when
            ``match_ppo_compute`` is off.
        kto_max_steps (int, default 24): most KTO optimizer steps per round (0: no cap), when
            ``match_ppo_compute`` is off.
        match_ppo_compute (bool, default True): give the baseline PPO's update budget instead of
            the caps above: as many example gradient passes as PPO's round makes ((``logged_steps``
            + ``rollout_steps``) · ``ppo.batch_size`` · ``ppo.ppo_epochs``, plus ``ppo.ptx_batch_size``
            per minibatch update with ``ppo.ptx_coef`` > 0, plus ``warm_start_steps`` · ``batch_size``),
            i.e. that number over
            ``batch_size`` optimizer steps (``RoundConfig.baseline_steps``; 1280 by default). TRL's
            ``max_steps`` overrides ``epochs``. PPO's forward passes without gradients (rollout
            sampling, the reference and old log-probs) are not counted for it.
        batch_size (int, default 8): examples per optimizer step; KTO needs at least 2 (its KL
            estimate pairs each prompt with another example's reply in the same batch).
        max_length (int, default 512): longest prompt + reply in tokens; longer prompts lose their
            oldest tokens, the reply is kept.
        sft_min_reward (float, default 0.5): SFT trains on logged replies whose built reward is at
            least this (CSAT ≥ 4 where no expert scored the turn), plus every expert correction.
        kto_up (float, default 0.5): KTO labels a logged reply desirable when its reward is at
            least this; expert corrections are desirable too.
        kto_down (float, default -0.5): KTO labels a logged reply undesirable when its reward is at
            most this; a reply an expert corrected is undesirable whatever its reward.
        kto_beta (float, default 0.1): KTO's β, the strength of the pull toward the reference (the
            base model, adapter disabled, as PPO's KL penalty).
        kto_balance (bool, default True): down-weight the more numerous of the desirable and
            undesirable examples by the ratio of the counts, so both sides weigh the same (the KTO
            paper's eq. 8 range); False weighs every example 1.
        seed (int, default 0): seed of the trainer (TRL ``set_seed``) and of the example order; a
            new adapter is initialised from ``PPOConfig.seed``, as PPO's.
    """

    learning_rate: float = 1e-3
    epochs: float = 3.0
    sft_max_steps: int = 50
    kto_max_steps: int = 24
    match_ppo_compute: bool = True
    batch_size: int = 8
    max_length: int = 512
    sft_min_reward: float = 0.5
    kto_up: float = 0.5
    kto_down: float = -0.5
    kto_beta: float = 0.1
    kto_balance: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.learning_rate <= 0 or self.epochs <= 0:
            raise ValueError("learning_rate and epochs must be positive")
        if min(self.sft_max_steps, self.kto_max_steps) < 0:
            raise ValueError("sft_max_steps and kto_max_steps must be 0 (no cap) or positive")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be at least 2 (KTO's KL estimate needs two), got {self.batch_size}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {self.max_length}")
        if self.kto_down >= self.kto_up:
            raise ValueError(f"kto_down ({self.kto_down}) must lie below kto_up ({self.kto_up})")
        if self.kto_beta <= 0:
            raise ValueError(f"kto_beta must be positive, got {self.kto_beta}")
