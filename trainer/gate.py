"""The evaluation gate: a candidate adapter must beat the active one on held-out logged prompts.

Both adapters answer the same held-out prompts (logged contexts of conversations kept out of
training) at the serving temperature, ``samples_per_context`` replies each. Measured per adapter:
mean reward-model score, KL to the reference (the base, adapter disabled; over each sampled reply
Σ_t (r_t − 1) − log r_t with r_t = π_ref(y_t)/π(y_t), averaged over replies: an unbiased estimate of
the reply's KL(π‖π_ref) that, unlike Σ_t log π(y_t) − log π_ref(y_t), is never below 0 and varies
less), mean reply length in tokens, and the share of replies cut off without EOS.

A context's score is the mean over its replies of the reward model's score plus
``reference_weight`` × the expert-reference score (``trainer.references``) where an expert reviewed
that held-out context: the same reward PPO's rollouts get. The expert view is also measured on its
own: mean agreement with the experts' corrections on the reviewed contexts.

Pass rule (``GateConfig``): candidate score ≥ active score + ``margin`` and, with ``alpha`` < 1,
a one-sided paired test on the per-context score differences (both adapters answer the same
contexts) shows the candidate ahead by more than ``margin`` at level ``alpha``; candidate KL ≤
``kl_budget``, candidate unfinished share ≤ ``max_unfinished_share``; where reviewed contexts
exist, the candidate's expert-reference agreement ≥ the active's − ``reference_tolerance``
(the expert view never gets worse); and — when an external
evaluator command is configured — its verdict ``pass``. The evaluator runs as a subprocess (the
trainer never imports the simulator) with ``--candidate DIR --active VERSION`` appended and prints
``{"pass": bool, "candidate_score": float, "active_score": float, "details": {...}}`` as the last
line of its stdout.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer.config import GateConfig
from trainer.samples import Sample, collate, left_pad
from trainer.references import ExpertReferences, with_references
from trainer.reward_model import RewardModel

CANDIDATE, ACTIVE = "candidate", "active"


class EvaluatorError(RuntimeError):
    """The external evaluator failed, timed out or printed no verdict."""


@dataclass
class PolicyStats:
    """How one adapter answered the held-out prompts."""

    rm_score: float
    kl: float
    reply_length: float
    unfinished_share: float
    replies: int
    reference_score: float | None = None
    reference_replies: int = 0


@dataclass
class GateVerdict:
    """The gate's decision with everything it measured; ``reasons`` explain a failure."""

    passed: bool
    reasons: list[str]
    candidate: PolicyStats
    active: PolicyStats
    external: dict[str, Any] | None = None
    contexts: int = 0
    checks: dict[str, bool] = field(default_factory=dict)
    p_value: float = 1.0

    def metrics(self) -> dict[str, Any]:
        """Flat metrics for the adapter record and the run."""
        out: dict[str, Any] = {"gate_passed": self.passed, "gate_contexts": self.contexts,
                               "gate_p_value": self.p_value}
        for side, stats in ((CANDIDATE, self.candidate), (ACTIVE, self.active)):
            out |= {f"gate_{side}_{k}": v for k, v in asdict(stats).items()}
        if self.external is not None:
            out["gate_external"] = self.external
        if self.reasons:
            out["gate_reasons"] = self.reasons
        return out


@torch.no_grad()
def _reply_logprobs(model, samples: list[Sample], pad_id: int, eos_id: int, temperature: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs [B, R] of each sample's reply tokens under ``model`` as currently set, and their mask."""
    batch = collate(samples, pad_id, eos_id, next(model.parameters()).device)
    position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   position_ids=position_ids, use_cache=False).logits
    start, end = batch.prompt_width - 1, batch.input_ids.shape[1] - 1  # logits at t predict t+1
    logp = torch.log_softmax(logits[:, start:end].float() / temperature, dim=-1)
    picked = logp.gather(-1, batch.reply_ids.unsqueeze(-1)).squeeze(-1)
    return picked.cpu(), batch.reply_mask.cpu()


def reply_kl(policy: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per reply [B], Σ_t (r_t − 1) − log r_t with r_t = π_ref/π at each reply token (``policy``,
    ``reference``: log-probs [B, R]; ``mask``: the reply's tokens): the k3 estimate of KL(π‖π_ref)."""
    log_ratio = (reference - policy) * mask
    return ((log_ratio.exp() - 1.0 - log_ratio) * mask).sum(1)


def paired_p_value(candidate: list[float], active: list[float], margin: float = 0.0) -> float:
    """One-sided p-value of "the candidate scores more than ``margin`` above the active adapter" from
    per-context pairs: the paired t statistic of the differences, normal approximation (≥ 30 pairs
    in a default gate)."""
    diffs = [c - a - margin for c, a in zip(candidate, active, strict=True)]
    n = len(diffs)
    if n == 0:
        return 1.0
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1) if n > 1 else 0.0
    if var == 0.0:
        return 0.0 if mean > 0 else 1.0
    return 0.5 * math.erfc(mean / math.sqrt(var / n) / math.sqrt(2))


@torch.no_grad()
def measure(model, adapter: str | None, prompts: list[list[int]], reward_model: RewardModel,
            config: GateConfig, pad_id: int, eos_id: int, batch_size: int = 64,
            references: ExpertReferences | None = None, reference_weight: float = 0.0
            ) -> tuple[PolicyStats, list[float]]:
    """Sample ``config.samples_per_context`` replies per prompt with ``adapter`` (None: the base) and
    measure them (module docstring); also returns each context's score: the mean over its replies of
    the reward model's score plus ``reference_weight`` × the expert-reference score where an expert
    reviewed the context."""
    torch.manual_seed(config.seed)
    k = config.samples_per_context
    contexts, prompts = len(prompts), [p for p in prompts for _ in range(k)]
    samples: list[Sample] = []
    kls: list[float] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        ids, mask = left_pad(chunk, pad_id)
        device = next(model.parameters()).device
        if adapter is not None:
            model.set_adapter(adapter)
        with model.disable_adapter() if adapter is None else nullcontext():
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True,
                                 temperature=config.temperature, top_k=0, top_p=1.0,
                                 max_new_tokens=config.max_new_tokens, eos_token_id=eos_id, pad_token_id=pad_id)
        batch_samples = []
        for prompt, reply in zip(chunk, out[:, ids.shape[1]:].tolist()):
            n = reply.index(eos_id) + 1 if eos_id in reply else len(reply)
            batch_samples.append(Sample(list(prompt), reply[:n], [0.0] * n))
        if adapter is None:
            kls.extend([0.0] * len(batch_samples))
        else:
            policy, mask = _reply_logprobs(model, batch_samples, pad_id, eos_id, config.temperature)
            with model.disable_adapter():
                reference, _ = _reply_logprobs(model, batch_samples, pad_id, eos_id, config.temperature)
            kls.extend(reply_kl(policy, reference, mask).tolist())
        samples.extend(batch_samples)
    pairs = [(s.prompt_ids, s.reply_ids) for s in samples]
    rm_scores = reward_model.score_ids(pairs)
    scores, refs = with_references(rm_scores, pairs, references, reference_weight)
    found = [r for r in refs if r is not None]
    n = len(samples)
    stats = PolicyStats(
        rm_score=sum(rm_scores) / n,
        kl=sum(kls) / n,
        reply_length=sum(len(s.reply_ids) for s in samples) / n,
        unfinished_share=sum(s.reply_ids[-1] != eos_id for s in samples) / n,
        replies=n,
        reference_score=sum(found) / len(found) if found else None,
        reference_replies=len(found),
    )
    return stats, [sum(scores[i * k:(i + 1) * k]) / k for i in range(contexts)]


def run_evaluator(command: str, candidate_dir: Path, active_version: str, timeout_s: float) -> dict[str, Any]:
    """Run the external evaluator and parse the JSON verdict on its last stdout line."""
    argv = shlex.split(command) + ["--candidate", str(candidate_dir), "--active", active_version]
    env = {**os.environ, "LOOPDESK_GATE_CANDIDATE_DIR": str(candidate_dir),
           "LOOPDESK_GATE_ACTIVE_VERSION": active_version}
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EvaluatorError(f"external evaluator {argv[0]!r} did not finish: {exc}") from exc
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip()[-500:]
        raise EvaluatorError(f"external evaluator exited {done.returncode} without a verdict: {tail}")
    try:
        verdict = json.loads(lines[-1])
        if not isinstance(verdict, dict) or not isinstance(verdict.get("pass"), bool):
            raise ValueError("no boolean 'pass'")
    except ValueError as exc:
        raise EvaluatorError(f"external evaluator's last line is not a verdict ({exc}): {lines[-1][:200]}") from exc
    return verdict


def evaluate(base_model_ref: str, candidate_dir: Path, active_dir: Path | None, active_version: str,
             prompts: list[list[int]], reward_model: RewardModel, config: GateConfig,
             references: ExpertReferences | None = None, reference_weight: float = 0.0) -> GateVerdict:
    """Load the base with both adapters, measure each on ``prompts`` and apply the pass rule;
    ``references`` (experts' corrections of the held-out contexts) add the expert view.

    ``candidate_dir`` is the round's own; ``active_dir`` the active version's as ``release.released_dir``
    confined to the adapters directory and verified against the registry (the gate reads no path from
    Redis itself)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if not prompts:
        raise ValueError("the gate needs held-out prompts; no conversation was held out")
    prompts = prompts[: config.contexts]
    tokenizer = reward_model.tokenizer
    base = AutoModelForCausalLM.from_pretrained(base_model_ref)
    model = PeftModel.from_pretrained(base, str(candidate_dir), adapter_name=CANDIDATE).eval()
    if active_dir is not None:
        model.load_adapter(str(active_dir), adapter_name=ACTIVE)
    ids = (tokenizer.pad_token_id, tokenizer.eos_token_id)
    scoring = dict(references=references, reference_weight=reference_weight)
    candidate, candidate_scores = measure(model, CANDIDATE, prompts, reward_model, config, *ids, **scoring)
    active, active_scores = measure(model, ACTIVE if active_dir is not None else None, prompts, reward_model,
                                    config, *ids, **scoring)
    p_value = paired_p_value(candidate_scores, active_scores, config.margin)
    mean_gain = (sum(candidate_scores) - sum(active_scores)) / len(prompts)
    checks = {
        "reward": mean_gain >= config.margin and (config.alpha >= 1 or p_value <= config.alpha),
        "kl": candidate.kl <= config.kl_budget,
        "unfinished": candidate.unfinished_share <= config.max_unfinished_share,
    }
    expert_view = candidate.reference_score is not None and active.reference_score is not None
    if expert_view:
        checks["expert_view"] = candidate.reference_score >= active.reference_score - config.reference_tolerance
    reasons = []
    if not checks["reward"]:
        reasons.append(f"score {mean_gain:+.4f} against the active adapter (reward model {candidate.rm_score:.4f} vs "
                       f"{active.rm_score:.4f}): not ahead by more than margin {config.margin} "
                       f"(paired p = {p_value:.3f}, alpha {config.alpha})")
    if expert_view and not checks["expert_view"]:
        reasons.append(f"expert view worse: reference agreement {candidate.reference_score:.4f} vs active "
                       f"{active.reference_score:.4f} on {candidate.reference_replies} replies to reviewed contexts "
                       f"(tolerance {config.reference_tolerance})")
    if not checks["kl"]:
        reasons.append(f"KL to base {candidate.kl:.3f} nats > budget {config.kl_budget}")
    if not checks["unfinished"]:
        reasons.append(f"unfinished replies {candidate.unfinished_share:.0%} > limit "
                       f"{config.max_unfinished_share:.0%}")
    external = None
    if config.evaluator:
        try:
            external = run_evaluator(config.evaluator, candidate_dir, active_version, config.evaluator_timeout_s)
            checks["external"] = external["pass"]
            if not external["pass"]:
                reasons.append(f"external evaluator: candidate {external.get('candidate_score')} vs "
                               f"active {external.get('active_score')}")
        except EvaluatorError as exc:
            checks["external"] = False
            reasons.append(str(exc))
    return GateVerdict(passed=all(checks.values()), reasons=reasons, candidate=candidate, active=active,
                       external=external, contexts=len(prompts), checks=checks, p_value=p_value)
