"""One training round, end to end, as one readable sequence (``run_round``):

lock → recover from killed runs → run record → verify the active adapter the update starts from
(``release.released_dir``) → export feedback after the training watermark → rewards → what the round
trains on (``Round.prepare``) → reward model → policy update (``trainer.round_update``: PPO on logged
turns + fresh rollouts scored by the reward model plus the expert-reference reward, optionally after an
SFT warm start on the demonstrations; or an SFT / KTO baseline on the logged turns with PPO's budget) →
gate (reward model, expert view, KL) → release → finish the run.

Under a multi-process launch this is the main process's part: it sends what the round trains on to the
others, which train the reward model and update the policy with it (``trainer.team``); the rest is its
own. The lock is extended by a background thread while the round works; every stage checks it is
still held. Any exception marks the run failed (the watermark stays, so the data is used again)
and leaves no candidate; a killed process leaves a ``running`` run, maybe a candidate and a temp
directory, which the next round cleans up once the lock has expired. Progress events go to the
run's stream in Redis and to a tqdm bar.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from feedback_store import FeedbackStore
from feedback_store.records import TrainingRun, TurnWithFeedback
from feedback_store.errors import LockHeldError
from feedback_store.runs import RunLock

from loopdesk.adapter_format import write_manifest
from trainer.round_config import RoundConfig, run_config
from trainer.release import reject_orphans, release_adapter, released_dir, remove_temp_dirs
from trainer.rewards import FeedbackTurn, build_rewards
from trainer.round_update import TrainingInputs

if TYPE_CHECKING:  # the model libraries load when a round trains
    from trainer.references import ExpertReferences
    from trainer.reward_model import PreferencePair
    from trainer.team import Team

RUNS_DIR = "runs"
INTERRUPTED = "interrupted: the process running it stopped and its lock expired"


class LockLostError(RuntimeError):
    """The run lock expired or was taken while the round worked (the round stops)."""


class NotEnoughFeedback(RuntimeError):
    """Too little new feedback to train on; the run fails and the data waits for the next one."""


class LockKeeper:
    """Extends a held lock every ``ttl / 3`` seconds from a daemon thread; ``check`` raises once lost."""

    def __init__(self, lock: RunLock) -> None:
        self._lock = lock
        self._stop = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._run, name="run-lock-keeper", daemon=True)

    def _run(self) -> None:
        interval = max(0.05, self._lock.ttl_ms / 3000)
        while not self._stop.wait(interval):
            try:
                self.lost = self.lost or not self._lock.extend()
            except Exception:  # a Redis blip: the next tick retries while the TTL lasts
                continue

    def __enter__(self) -> "LockKeeper":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def check(self) -> None:
        if self.lost:
            raise LockLostError("the training lock expired while this run worked; another run may have started")


def hash_position(conv_id: str) -> float:
    """A conversation's stable place in [0, 1]: below the hold-out share, every round keeps it out."""
    return int(hashlib.sha256(conv_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def held_out(conversation_ids: set[str], share: float) -> set[str]:
    """Conversations kept out of training: a stable hash below ``share`` (at least one of two or more)."""
    ranked = sorted(conversation_ids, key=hash_position)
    chosen = {c for c in ranked if hash_position(c) < share}
    if not chosen and share > 0 and len(ranked) >= 2:
        chosen = {ranked[0]}
    return chosen


def never_trained(turns: list[TurnWithFeedback], holdout: set[str], share: float) -> list[TurnWithFeedback]:
    """The turns no round trained on: of this round's ``holdout`` conversations, or hashed below ``share``
    (every round held those out)."""
    return [t for t in turns if t.conversation_id in holdout or hash_position(t.conversation_id) < share]


def newest_contexts(turns: list[TurnWithFeedback]) -> list[list[int]]:
    """The turns' distinct prompts, newest first: the gate's contexts in the order it takes them."""
    return [list(p) for p in {tuple(t.turn.prompt_token_ids): None for t in reversed(turns)}]


def feedback_turn(feedback: TurnWithFeedback) -> FeedbackTurn:
    """The reward builder's view of one exported turn."""
    return FeedbackTurn(feedback.conversation_id, feedback.turn.index, csat=feedback.csat,
                        expert_scores=[a.score for a in feedback.annotations],
                        tags=[tag for a in feedback.annotations for tag in a.tags],
                        rater=feedback.rater, csat_weight=feedback.csat_weight,
                        handoff=feedback.handoff.reason if feedback.handoff else "")


def recover(store: FeedbackStore, adapters_dir: Path, current_run: str | None = None) -> dict[str, Any]:
    """Clean up after killed runs (hold the lock): fail stale runs, reject orphans, drop temp dirs."""
    stale = [r.id for r in store.runs.list(limit=200) if r.status == "running" and r.id != current_run]
    for run_id in stale:
        store.runs.finish(run_id, "failed", error=INTERRUPTED)
    return {"stale_runs": stale, "orphan_adapters": reject_orphans(store),
            "temp_dirs": [str(p) for p in remove_temp_dirs(adapters_dir)]}


@dataclass
class Prepared:
    """What the main process keeps from the export for after the update: the reward model's held-out
    pairs and the gate's held-out turns and expert view."""

    watermark_to: int
    eval_pairs: list[PreferencePair]
    pairs: int  # all the reward model's pairs, held-out ones included
    reference_contexts: int  # contexts with an expert reference among the training turns
    gate_turns: list[TurnWithFeedback]
    gate_references: ExpertReferences


class Round:
    """The state of one round in progress: where it reports and where it writes."""

    def __init__(self, settings, store: FeedbackStore, config: RoundConfig, run: TrainingRun,
                 keeper: LockKeeper, bar: tqdm, team: Team) -> None:
        self.settings, self.store, self.config, self.run = settings, store, config, run
        self.keeper, self.bar, self.team = keeper, bar, team
        self.step = 0  # counted here: a disabled bar (worker) does not count
        self.dir = Path(settings.data_dir) / RUNS_DIR / run.id
        self.metrics: dict[str, Any] = {}

    def report(self, stage: str, **fields: Any) -> None:
        """One progress event (Redis stream and bar); stops the round if the lock was lost."""
        self.keeper.check()
        self.bar.set_description(stage)
        self.bar.update(1)
        self.step += 1
        self.store.runs.report(self.run.id, stage=stage, step=self.step, total=self.bar.total, **fields)

    def prepare(self, active_dir: Path | None) -> tuple[TrainingInputs, Prepared]:
        """Export → rewards → the reward model's pairs, the expert view, the logged samples and the
        demonstrations: what every process trains on, and what the main process keeps for the gate."""
        from loopdesk.causal_lm import load_tokenizer
        from trainer import baselines
        from trainer.figures import swapped_demonstrations, swapped_references
        from trainer.references import ExpertReferences, reference_map
        from trainer.reward_model import build_pairs, split_pairs
        from trainer.samples import LoggedSample

        cfg, store, base_ref = self.config, self.store, self.settings.base_model_ref
        self.team.share_of(cfg)  # batch sizes the processes cannot share fail the round before any work
        turns, watermark_to = store.feedback.export(after=self.run.watermark_from, limit=cfg.max_episodes)
        holdout = held_out({t.conversation_id for t in turns}, cfg.holdout_share)
        train_turns = [t for t in turns if t.conversation_id not in holdout and t.turn.reply_token_ids]
        self.report("export", episodes=len(turns), watermark_to=watermark_to, held_out=len(holdout))

        rewards = {(r.conversation_id, r.turn_index): r.reward
                   for r in build_rewards(map(feedback_turn, train_turns), cfg.reward_builder)}
        self.metrics |= {"episodes": len(turns), "rewarded": len(rewards), "held_out_conversations": len(holdout)}
        if len(rewards) < cfg.min_episodes:
            raise NotEnoughFeedback(f"{len(rewards)} rewarded turns after watermark {self.run.watermark_from}; "
                                    f"a round needs {cfg.min_episodes}")
        self.report("rewards", rewarded=len(rewards))

        tokenizer = load_tokenizer(base_ref)
        history: list[TurnWithFeedback] = []  # all feedback so far: every round held out the same conversations
        if self.run.watermark_from > 0 and (cfg.reward_model_history or cfg.gate_history):
            history, _ = store.feedback.export(after=0, until=watermark_to, limit=cfg.max_episodes)
        kept_out = held_out({t.conversation_id for t in history}, cfg.holdout_share) | holdout  # never trained on
        rm_turns, rm_rewards = train_turns, rewards
        if cfg.reward_model_history and history:
            rm_turns = [t for t in history if t.turn.reply_token_ids and t.conversation_id not in kept_out]
            rm_rewards = {(r.conversation_id, r.turn_index): r.reward
                          for r in build_rewards(map(feedback_turn, rm_turns), cfg.reward_builder)}
        pairs = build_pairs(rm_turns, rm_rewards, tokenizer, cfg.reward_model)
        train_pairs, eval_pairs = split_pairs(pairs, cfg.reward_model.eval_share, cfg.reward_model.seed)
        if not train_pairs:
            raise NotEnoughFeedback("no preference pairs: no corrections and no reward gaps on one customer message")

        # the expert view by context: training contexts for PPO's rollouts (with figure-swapped copies of
        # some), held-out ones for the gate
        references = reference_map(rm_turns)
        swaps = (swapped_references(references, tokenizer, cfg.figure_swap_share, cfg.ppo.seed)
                 if cfg.method == "ppo" else {})
        self.metrics["figure_swapped_contexts"] = len(swaps)
        # this round's held-out conversations, and with gate_history the earlier rounds' too
        gate_turns = never_trained(history if cfg.gate_history and history else turns, holdout, cfg.holdout_share)
        if cfg.method == "ppo":
            # the demonstrations, for the warm start and for PPO-ptx's term
            examples = (baselines.sft_examples(train_turns, rewards, tokenizer, cfg.baseline)
                        if cfg.warm_start_steps > 0 or cfg.ppo.ptx_coef > 0 else [])
            copies = swapped_demonstrations(examples, tokenizer, cfg.figure_swap_demonstrations, cfg.ppo.seed)
            self.metrics["figure_swapped_demonstrations"] = len(copies)
            examples += copies
        else:
            select = {"sft": baselines.sft_examples, "kto": baselines.kto_examples}[cfg.method]
            examples = select(train_turns, rewards, tokenizer, cfg.baseline)
            if not examples:
                b = cfg.baseline
                wanted = (f"reward >= {b.sft_min_reward}" if cfg.method == "sft"
                          else f"reward >= {b.kto_up} or <= {b.kto_down}")
                raise NotEnoughFeedback(f"no {cfg.method} examples: none of {len(rewards)} rewarded turns has an "
                                        f"expert correction, an agent's reply after a handoff or {wanted} "
                                        "(baseline thresholds)")
        logged = [LoggedSample(t.turn.prompt_token_ids, t.turn.reply_token_ids, t.turn.logprobs,
                               rewards[(t.conversation_id, t.turn.index)], t.turn.adapter_version,
                               t.turn.created_at)
                  for t in train_turns if (t.conversation_id, t.turn.index) in rewards]
        rollout_references = references | swaps
        contexts = ExpertReferences(tokenizer, rollout_references).contexts()
        prompts = list({tuple(p): None for p in [t.turn.prompt_token_ids for t in train_turns] + contexts})
        inputs = TrainingInputs(cfg, base_ref, train_pairs, logged, [list(p) for p in prompts], rollout_references,
                                examples,
                                start_files=TrainingInputs.adapter_files(active_dir) if self.team.size > 1 else {})
        self.metrics |= {"pairs_train": len(train_pairs), "pairs_eval": len(eval_pairs),
                         "pairs_correction": sum(p.source == "correction" for p in pairs),
                         "pairs_handoff": sum(p.source == "handoff" for p in pairs)}
        kept = Prepared(watermark_to, eval_pairs, len(pairs), len(references), gate_turns,
                        ExpertReferences.from_turns(gate_turns, tokenizer))
        return inputs, kept

    def train(self) -> tuple[str, str | None, int]:
        """Stages after the run started; returns (run status, adapter version, watermark reached)."""
        import torch

        from trainer import gate
        from trainer.round_update import train_reward_model, update_policy

        cfg, store, base_ref = self.config, self.store, self.settings.base_model_ref
        active = store.adapters.active()
        # what this round starts from and the gate measures against: inside adapters_dir, checksums verified
        active_dir = released_dir(store, self.settings.adapters_dir, active, base_ref)
        inputs, kept = self.prepare(active_dir)
        self.team.send(inputs)  # from here on, every process of the launch trains with this one

        reward_model = train_reward_model(inputs, self.team, self.dir)
        reward_model.save(self.dir / "reward_model")
        shutil.rmtree(self.dir / "reward_model" / "trainer", ignore_errors=True)
        rm_accuracy = reward_model.pairwise_accuracy(kept.eval_pairs) if kept.eval_pairs else None
        self.metrics["rm_eval_accuracy"] = rm_accuracy
        self.report("reward_model", pairs=kept.pairs, rm_eval_accuracy=rm_accuracy)
        self.metrics |= {"reference_contexts": kept.reference_contexts,
                         "gate_reference_contexts": len(kept.gate_references),
                         "gate_conversations": len({t.conversation_id for t in kept.gate_turns})}

        self.metrics |= update_policy(inputs, self.team, active_dir, reward_model, self.dir, self.report)
        torch.manual_seed(cfg.gate.seed)

        version = store.adapters.next_version()
        write_manifest(self.dir / "candidate", version, base_ref, active)  # the gate's external evaluator reads it
        verdict = gate.evaluate(base_ref, self.dir / "candidate", active_dir, active,
                                newest_contexts(kept.gate_turns), reward_model, cfg.gate,
                                kept.gate_references, cfg.reference_weight)
        self.metrics |= verdict.metrics()
        self.report("gate", passed=verdict.passed, reasons=verdict.reasons)

        status = cfg.gate.pass_status if verdict.passed else "rejected"
        self.keeper.check()
        release_adapter(store, self.settings.adapters_dir, self.dir / "candidate", version=version,
                        base_model=base_ref, parent=active, metrics=self.metrics, data_watermark=kept.watermark_to,
                        status=status, reason="passed the gate" if verdict.passed else "; ".join(verdict.reasons))
        self.report("release", version=version, status=status)
        return ("succeeded" if verdict.passed else "rejected"), version, kept.watermark_to


def run_round(settings, store: FeedbackStore, run_id: str | None = None, config: RoundConfig | None = None,
              trigger: str = "manual", show_progress: bool = True, team: Team | None = None) -> TrainingRun:
    """Run one training round under the run lock; returns the finished run record.

    ``config`` is this process's own round config (default: the defaults). ``run_id`` names a queued
    run (``store.training.enqueue_round``) whose recorded overrides go over it (``run_config``); without
    it a run is created from ``config``. Either way rollouts and the gate sample at the serving
    temperature and reply length of ``settings``. ``team`` is this process's place among the processes
    of a launch (``trainer.team``; default: a process of its own), whose main process runs this.

    Raises:
        LockHeldError: another round holds the lock (a queued run is marked failed).
        WorkerOnlyFieldError: the queued run's recorded config sets the gate (``run_config``; it is marked failed).
        TypeError, ValueError: the queued run's config is not a RoundConfig (it is marked failed).
        Exception: whatever failed the round, after the run was recorded as failed.
    """
    from trainer.team import Team

    team = team if team is not None else Team()
    lock = store.runs.lock()
    try:
        config = config if config is not None else RoundConfig()
        if run_id:
            config = run_config(config, store.runs.get(run_id).config)
        config = config.serving(settings.temperature, settings.max_reply_tokens)
        lock.acquire()
    except (LockHeldError, TypeError, ValueError) as exc:
        if run_id:
            store.runs.finish(run_id, "failed", error=f"{type(exc).__name__}: {exc}")
        raise
    try:
        with LockKeeper(lock) as keeper:
            recovered = recover(store, settings.adapters_dir, current_run=run_id)
            run_id = run_id or store.runs.create(config.to_dict(), trigger=trigger).id
            run = store.runs.start(run_id, store.runs.training_watermark())
            steps = 6 + config.update_events
            with tqdm(total=steps, desc="start", disable=not show_progress, unit="stage") as bar:
                state = Round(settings, store, config, run, keeper, bar, team)
                state.metrics |= {"recovered": recovered, "config": config.to_dict()}
                started = time.monotonic()
                try:
                    status, version, watermark_to = state.train()
                except BaseException as exc:
                    store.runs.finish(run.id, "failed", metrics=state.metrics,
                                      error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}")
                    raise
                state.metrics["duration_s"] = round(time.monotonic() - started, 2)
                run = store.runs.finish(run.id, status, metrics=state.metrics, adapter_version=version,
                                        watermark_to=watermark_to)
                bar.update(1)
                store.runs.report(run.id, stage="done", step=state.step + 1, total=bar.total, status=status,
                                  version=version)
            return run
    finally:
        lock.release()
