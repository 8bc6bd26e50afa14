"""The training half of a round, which every process of a launch runs (``trainer.team``): the reward
model, then the policy update (``RoundConfig.method``: PPO on logged turns + fresh rollouts scored by the
reward model plus the expert-reference reward less the figure check (``trainer.figures``), optionally
after an SFT warm start on the demonstrations; or an SFT / KTO baseline on the logged turns with PPO's
budget).

Its only input is ``TrainingInputs``, which the main process prepares from the export
(``trainer.round``) and sends to the others, who need neither Redis nor the data directory. Each process
takes an equal share of every batch: the same rollout prompts and logged turns are drawn on every
process from the same seed, and each steps on its slice; gradients are averaged across processes. Each
process writes into its own work directory; the candidate that counts is the main process's.
"""

from __future__ import annotations

import random
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from loopdesk.adapter_format import TRAINED_FILES
from trainer.round_config import RoundConfig

if TYPE_CHECKING:  # the model libraries load when a round trains, not when the CLI starts
    from trainer.baselines import Example
    from trainer.reward_model import PreferencePair, RewardModel
    from trainer.samples import LoggedSample
    from trainer.team import Team

Report = Callable[..., None]


def ignore(stage: str, **fields: Any) -> None:
    """The progress report of a process that reports nothing (not the main one)."""


@dataclass
class TrainingInputs:
    """What a round trains on: all that the training half needs, prepared by the main process."""

    config: RoundConfig
    base_model: str
    pairs: list[PreferencePair]  # the reward model's training pairs
    logged: list[LoggedSample]  # the rewarded logged turns PPO replays, in export order
    prompts: list[list[int]]  # PPO's rollout contexts: the logged prompts, then the expert-reviewed ones
    references: dict[tuple[int, ...], list[str]]  # the expert view by context (``trainer.references``)
    examples: list[Example]  # demonstrations (warm start, PPO-ptx) or the SFT / KTO baseline's examples
    start_files: dict[str, bytes] = field(default_factory=dict)  # the active adapter's; empty: the base

    @staticmethod
    def adapter_files(directory: Path | None) -> dict[str, bytes]:
        """The trained files of a (verified) adapter directory, as ``start_files`` holds them."""
        return {} if directory is None else {name: (directory / name).read_bytes() for name in TRAINED_FILES}

    def start_dir(self, directory: Path) -> Path | None:
        """Write the start adapter into ``directory`` (a process that has no adapters directory); None: the base."""
        if not self.start_files:
            return None
        directory.mkdir(parents=True)
        for name, data in self.start_files.items():
            (directory / name).write_bytes(data)
        return directory


def train_reward_model(inputs: TrainingInputs, team: Team, work_dir: Path) -> RewardModel:
    """The reward model on the inputs' pairs (TRL's RewardTrainer, checkpoints under ``work_dir``); under
    several processes they train it together, each on its share of every batch."""
    from trainer.reward_model import RewardModel

    config = team.share_of(inputs.config).reward_model
    return RewardModel.train(inputs.base_model, inputs.pairs, config, work_dir / "reward_model")


def update_policy(inputs: TrainingInputs, team: Team, start_dir: Path | None, reward_model: RewardModel,
                  work_dir: Path, report: Report) -> dict[str, Any]:
    """The policy update from the adapter in ``start_dir`` (None: a new one); the main process writes the
    candidate to ``work_dir / "candidate"``. Returns the update's metrics."""
    if inputs.config.method == "ppo":
        return update_ppo(inputs, team, start_dir, reward_model, work_dir, report)
    return update_baseline(inputs, team, start_dir, work_dir, report)


def update_ppo(inputs: TrainingInputs, team: Team, start_dir: Path | None, reward_model: RewardModel,
               work_dir: Path, report: Report) -> dict[str, Any]:
    """LoRA PPO from the start adapter: steps on logged turns, then on rollouts scored by the reward
    model plus the expert-reference reward (``trainer.references``) where an expert reviewed the context,
    less ``figure_weight`` × the share of the reply's figures its context does not state (``trainer.figures``)."""
    from transformers import AutoModelForCausalLM

    from loopdesk.causal_lm import load_tokenizer
    from trainer import baselines
    from trainer.figures import figure_penalties
    from trainer.policy import PolicyWithValueHead
    from trainer.ppo import PPOTrainer
    from trainer.references import ExpertReferences, with_references

    cfg, share, started = inputs.config, team.share_of(inputs.config), time.monotonic()
    tokenizer = load_tokenizer(inputs.base_model)
    references = ExpertReferences(tokenizer, inputs.references)
    examples, metrics = inputs.examples, {}
    if cfg.warm_start_steps > 0:  # demonstrations first (InstructGPT's SFT → PPO), then RL from there
        if examples:
            steps = replace(share.baseline, sft_max_steps=cfg.warm_start_steps)
            stats = baselines.sft_update(inputs.base_model, start_dir, examples, steps, cfg.ppo, work_dir / "warm_start")
            start_dir = work_dir / "warm_start"
        else:
            stats = {"examples": 0, "steps": 0}
        metrics["warm_start"] = stats
        report("sft_warm_start", **stats)
    base = AutoModelForCausalLM.from_pretrained(inputs.base_model)
    policy = (PolicyWithValueHead.with_new_adapter(base, cfg.ppo) if start_dir is None
              else PolicyWithValueHead.from_pretrained(base, start_dir))
    if cfg.kl_reference == "start" and start_dir is not None:
        policy.freeze_reference(start_dir)
    ppo = PPOTrainer(policy, share.ppo, tokenizer.eos_token_id, tokenizer.pad_token_id)
    if cfg.ppo.ptx_coef > 0:
        ppo.add_demonstrations([baselines.fit(e, cfg.baseline.max_length) for e in examples])
        metrics["ptx_demonstrations"] = len(examples)
    rng = random.Random(cfg.ppo.seed)  # the same draws on every process: each steps on its share of them
    logged = list(inputs.logged)
    history: list[dict[str, float]] = []
    reference_stats: dict[str, float] = {}
    trained = {"logged": 0, "rollout": 0}  # this process's episodes

    def rollout_rewards(pairs):
        scores, refs = with_references(reward_model.score_ids(pairs), pairs, references, cfg.reference_weight)
        found = [r for r in refs if r is not None]
        unsupported = figure_penalties(pairs, tokenizer)
        reference_stats.update(reference_share=len(found) / len(refs),
                               reference_score=sum(found) / len(found) if found else 0.0,
                               unsupported_figures=sum(unsupported) / len(unsupported))
        return [s - cfg.figure_weight * u for s, u in zip(scores, unsupported, strict=True)]

    rng.shuffle(logged)  # consecutive batches: every logged turn is used before any is used twice
    for step in range(cfg.logged_steps):
        start = step * cfg.ppo.batch_size
        stats = ppo.step_on_logged(team.shard([logged[(start + i) % len(logged)]
                                               for i in range(min(len(logged), cfg.ppo.batch_size))]))
        trained["logged"] += int(stats.get("process_episodes", 0))
        history.append(stats)
        report("ppo_logged", ppo_step=step, **stats)
    for step in range(cfg.rollout_steps):
        chosen = team.shard([list(p) for p in rng.choices(inputs.prompts, k=cfg.ppo.batch_size)])
        stats = ppo.step_on_prompts(chosen, rollout_rewards) | reference_stats
        trained["rollout"] += len(chosen)
        history.append(stats)
        report("ppo_rollout", ppo_step=step, **stats)
    ppo.save(str(work_dir / "candidate"))
    per_process = team.gather(trained)
    metrics["ppo_update_s"] = round(time.monotonic() - started, 2)
    metrics["processes"] = {"count": team.size, "logged_episodes": [p["logged"] for p in per_process],
                            "rollout_episodes": [p["rollout"] for p in per_process]}
    metrics["ppo"] = {k: sum(h.get(k, 0.0) for h in history) / max(1, len(history))
                      for k in ("kl", "reward_mean", "policy_loss", "eos_share", "reply_length")}
    if cfg.ppo.ptx_coef > 0:
        with_ptx = [h["ptx_loss"] for h in history if "ptx_loss" in h]
        metrics["ppo"]["ptx_loss"] = sum(with_ptx) / max(1, len(with_ptx))
    rollouts = history[cfg.logged_steps:]
    metrics["ppo"] |= {"reference_contexts": len(references),
                       **{k: sum(h.get(k, 0.0) for h in rollouts) / max(1, len(rollouts))
                          for k in ("reference_share", "reference_score", "unsupported_figures")}}
    return metrics


def update_baseline(inputs: TrainingInputs, team: Team, start_dir: Path | None, work_dir: Path,
                    report: Report) -> dict[str, Any]:
    """SFT or KTO from the start adapter on the inputs' examples (``trainer.baselines``)."""
    from trainer import baselines

    cfg, share = inputs.config, team.share_of(inputs.config)
    update = {"sft": baselines.sft_update, "kto": baselines.kto_update}[cfg.method]
    steps = cfg.baseline_steps()
    budget = replace(share.baseline, sft_max_steps=steps, kto_max_steps=steps)
    stats = update(inputs.base_model, start_dir, inputs.examples, budget, cfg.ppo, work_dir / "candidate")
    stats["max_steps"] = steps
    report(cfg.method, **stats)
    return {"baseline": stats, "processes": {"count": team.size}}


def follow_round(team: Team) -> bool:
    """A non-main process's round: the inputs from the main process, then the reward model and the policy
    update with it, in a work directory of its own. False when the main process stopped before training."""
    from trainer import baselines, ppo, reward_model  # noqa: F401  (loaded while the main process exports)

    inputs = team.receive()
    if inputs is None:
        return False
    with tempfile.TemporaryDirectory(prefix="loopdesk-round-") as work:
        work_dir = Path(work)
        reward_model = train_reward_model(inputs, team, work_dir)
        update_policy(inputs, team, inputs.start_dir(work_dir / "start"), reward_model, work_dir, ignore)
    return True
