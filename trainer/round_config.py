"""A training round's config (``RoundConfig``: one config per stage) and where its values come from.

Sources, later over earlier (a section such as ``ppo`` or ``gate`` is merged field by field):

1. the defaults of the dataclasses (``trainer.config``);
2. a JSON file, ``--round-config FILE`` (``loopdesk train``, ``worker``, ``scheduler``, ``loop``,
   ``settings --round``): ``RoundConfig`` fields, each section an object of its fields;
3. ``LOOPDESK_ROUND_<FIELD>`` and ``LOOPDESK_ROUND_<SECTION>__<FIELD>`` environment variables
   (``LOOPDESK_ROUND_ROLLOUT_STEPS=30``, ``LOOPDESK_ROUND_GATE__PASS_STATUS=active``), which
   ``loopdesk.config.round_variables`` hands over: the environment adjusts a shared file;
4. command-line flags (``--rollout-steps``; ``--gate-evaluator``, ``--pass-status`` for ``train`` and ``worker``).

That is a process's own round config. A queued run's recorded overrides go over the worker's own
(``run_config``, the one place the two meet), and the bot's serving temperature and reply length
over everything (``RoundConfig.serving``); a file or variable that sets those four fields is refused.

A run's recorded overrides come from Redis, so they may change only how a round trains
(``RECORDABLE_FIELDS``, ``RECORDABLE_SECTIONS``: the method, step counts, episode limits, warm
start, KL reference, and the reward builder, reward model, PPO and baseline sections, seeds
included). The gate and what it judges by (the whole ``gate`` section: the external evaluator
command and its timeout, the thresholds, the pass status, the canary rule; and ``holdout_share``,
``gate_history``, ``reference_weight``) are the worker's own: a recorded override of one fails the
run (``WorkerOnlyFieldError``) rather than being ignored.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from types import UnionType
from typing import Any, Mapping, Union, get_args, get_origin, get_type_hints

from loopdesk.config import ROUND_PREFIX, SettingsError, convert
from loopdesk.settings_docs import documented_fields, markdown_table, shown
from trainer.config import BaselineConfig, GateConfig, PPOConfig, RewardBuilderConfig, RewardModelConfig

METHODS = ("ppo", "sft", "kto")
KL_REFERENCES = ("base", "start")
SECTIONS: dict[str, type] = {"reward_builder": RewardBuilderConfig, "reward_model": RewardModelConfig,
                             "ppo": PPOConfig, "baseline": BaselineConfig, "gate": GateConfig}
# (section, field) → the setting that decides it (``RoundConfig.serving``).
SERVING_FIELDS = {("ppo", "temperature"): "LOOPDESK_TEMPERATURE", ("ppo", "max_new_tokens"): "LOOPDESK_MAX_REPLY_TOKENS",
                  ("gate", "temperature"): "LOOPDESK_TEMPERATURE", ("gate", "max_new_tokens"): "LOOPDESK_MAX_REPLY_TOKENS"}
# What a queued run's recorded overrides may set (``run_config``): these round fields and whole sections.
RECORDABLE_FIELDS = ("method", "rollout_steps", "logged_steps", "min_episodes", "max_episodes",
                     "reward_model_history", "warm_start_steps", "kl_reference", "figure_swap_share", "figure_weight",
                     "figure_swap_demonstrations")
RECORDABLE_SECTIONS = ("reward_builder", "reward_model", "ppo", "baseline")


class WorkerOnlyFieldError(ValueError):
    """A queued run's recorded config sets a field only the worker's own config may set (the gate's)."""


@dataclass
class RoundConfig:
    """One training round: which data, which policy update, and the configs of every stage.

    Parameters:
        method (str, default "ppo"): the policy update: ``ppo`` (LoRA PPO on logged turns and
            rollouts), or a baseline on the same logged turns, ``sft`` or ``kto`` (``baseline``).
        reward_builder (RewardBuilderConfig): how feedback becomes rewards.
        reward_model (RewardModelConfig): the reward model's training.
        ppo (PPOConfig): the PPO update, and the LoRA shape every method uses.
        baseline (BaselineConfig): the SFT and KTO updates.
        gate (GateConfig): the evaluation gate and canary rule.
        rollout_steps (int, default 30): PPO steps on fresh replies to logged prompts, scored by
            the reward model (``ppo.batch_size`` prompts each).
        logged_steps (int, default 10): PPO steps on the logged turns with their human rewards,
            in consecutive batches (see docs/tuning.md#round).
        holdout_share (float, default 0.2): share of conversations (by a stable hash of their
            id) kept out of training; their prompts are the gate's held-out contexts.
        min_episodes (int, default 8): fewer rewarded turns than this fails the round without
            consuming the data.
        max_episodes (int, default 10000): most episodes exported per round.
        reward_model_history (bool, default True): the reward model learns from all feedback up to
            this round's watermark (held-out conversations still excluded), not only the new
            feedback PPO's logged steps use; preference data accumulates as in InstructGPT.
        gate_history (bool, default True): the gate's held-out contexts (and the expert view on them)
            come from the held-out conversations of all feedback so far, newest first up to
            ``gate.contexts``, not only this round's. No round trained on them: every round holds
            out the same hashed conversations (see docs/tuning.md#gate).
        reference_weight (float, default 2.0): weight of the expert-reference reward
            (``trainer.references``: word F1 against an expert's correction or approved reply,
            in [-1, 1]) added to the reward-model score of a rollout, and of a gate reply, whose
            context an expert reviewed; 0 scores with the reward model alone. PPO's rollouts draw
            from this round's logged contexts and every reviewed context so far (see
            docs/tuning.md#round).
        figure_swap_share (float, default 0.5): PPO only: the share of the reviewed contexts that are
            also rolled out as a copy with their figures changed (``trainer.figures``: every
            number the context and its reference share, scaled alike in both), so the reference
            reward pays for the passage's figure rather than the one the policy remembers; 0: none
            (see docs/tuning.md#round).
        figure_weight (float, default 1.0): PPO only: subtracted, times the share of a rollout reply's
            figures that its context does not state (``trainer.figures.unsupported_share``), from the
            rollout's reward: a figure should come from the passage or the customer, not from memory;
            0: no check (see docs/tuning.md#round).
        figure_swap_demonstrations (float, default 0.0): PPO only: the share of the demonstrations
            (the warm start's and PPO-ptx's) whose reply repeats a figure of its prompt that are also
            imitated as a copy with those figures scaled alike in both
            (``trainer.figures.swapped_demonstrations``); 0: none (see docs/tuning.md#round).
        warm_start_steps (int, default 0): PPO only: this many SFT steps (``baseline.batch_size``
            examples each, ``trainer.baselines.sft_examples``: expert corrections and replies
            rewarded ≥ ``baseline.sft_min_reward``) before the PPO steps, which start from that
            adapter: InstructGPT's order, demonstrations first, then RL against the reward. The KL
            reference is ``kl_reference``'s. Counted in the baselines' budget (``baseline_steps``;
            see docs/tuning.md#round).
        kl_reference (str, default "base"): PPO only: the model the per-token KL penalty pulls toward.
            ``base``: the base model (adapter disabled), so the penalty bounds the total drift across
            rounds. ``start``: the adapter this round's PPO starts from, frozen (the warm-started one
            with ``warm_start_steps``, as InstructGPT's KL to its SFT model; else the active adapter;
            the base when none is active), so it bounds this round's move and keeps what the
            demonstrations taught. The gate's ``kl_budget`` bounds the drift from the base either way
            (see docs/tuning.md#round).
    """

    method: str = "ppo"
    reward_builder: RewardBuilderConfig = field(default_factory=RewardBuilderConfig)
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    rollout_steps: int = 30
    logged_steps: int = 10
    holdout_share: float = 0.2
    min_episodes: int = 8
    max_episodes: int = 10_000
    reward_model_history: bool = True
    gate_history: bool = True
    reference_weight: float = 2.0
    figure_swap_share: float = 0.5
    figure_weight: float = 1.0
    figure_swap_demonstrations: float = 0.0
    warm_start_steps: int = 0
    kl_reference: str = "base"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if self.kl_reference not in KL_REFERENCES:
            raise ValueError(f"kl_reference must be one of {', '.join(KL_REFERENCES)}; got {self.kl_reference!r}")
        if self.warm_start_steps < 0:
            raise ValueError(f"warm_start_steps must be >= 0, got {self.warm_start_steps}")
        if not (self.reference_weight >= 0 and math.isfinite(self.reference_weight)):
            raise ValueError(f"reference_weight must be a finite number >= 0, got {self.reference_weight}")
        if not 0.0 <= self.figure_swap_share <= 1.0:
            raise ValueError(f"figure_swap_share must be within [0, 1], got {self.figure_swap_share}")
        if not 0.0 <= self.figure_swap_demonstrations <= 1.0:
            raise ValueError("figure_swap_demonstrations must be within [0, 1], "
                             f"got {self.figure_swap_demonstrations}")
        if not (self.figure_weight >= 0 and math.isfinite(self.figure_weight)):
            raise ValueError(f"figure_weight must be a finite number >= 0, got {self.figure_weight}")

    def baseline_steps(self) -> int:
        """The baseline's optimizer steps this round: PPO's example gradient passes over the baseline's
        batch size with ``baseline.match_ppo_compute``, else the method's cap (0: none)."""
        b = self.baseline
        if b.match_ppo_compute:
            ppo = self.ppo
            updates = (self.logged_steps + self.rollout_steps) * math.ceil(ppo.batch_size / ppo.mini_batch_size) * ppo.ppo_epochs
            passes = ((self.logged_steps + self.rollout_steps) * ppo.batch_size * ppo.ppo_epochs
                      + (updates * ppo.ptx_batch_size if ppo.ptx_coef > 0 else 0)
                      + self.warm_start_steps * b.batch_size)
            return max(1, math.ceil(passes / b.batch_size))
        return b.sft_max_steps if self.method == "sft" else b.kto_max_steps

    @property
    def update_events(self) -> int:
        """Progress events of the policy update: one per PPO step, one for a baseline."""
        return self.logged_steps + self.rollout_steps + (self.warm_start_steps > 0) if self.method == "ppo" else 1

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "RoundConfig":
        """Build from a plain dict (as stored in a run record or job); unknown keys are errors."""
        data = dict(data or {})
        for name, kind in SECTIONS.items():
            data[name] = kind(**data.get(name, {}))
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (recorded with the run)."""
        return asdict(self)

    def serving(self, temperature: float, max_new_tokens: int) -> "RoundConfig":
        """A copy whose logged log-probs, rollout length and gate are the bot's (PPO's own temperature,
        ``PPOConfig.train_temperature``, stays)."""
        ppo = replace(self.ppo, temperature=temperature, max_new_tokens=max_new_tokens)
        gate = replace(self.gate, temperature=temperature, max_new_tokens=max_new_tokens)
        return replace(self, ppo=ppo, gate=gate)


def variable(section: str | None, name: str) -> str:
    """The environment variable of a round field (``section`` None: a field of the round itself)."""
    return ROUND_PREFIX + (f"{section}__{name}" if section else name).upper()


def field_types(section: str | None) -> dict[str, Any]:
    """``{field: type}`` of a section (None: the round's own fields, sections left out)."""
    cls = SECTIONS[section] if section else RoundConfig
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls) if f.name not in SECTIONS}


def _type_name(kind: Any) -> str:
    return str(kind) if get_args(kind) else kind.__name__


def _checked(where: str, value: Any, kind: Any) -> Any:
    """``value`` (as JSON gives it) if it is a ``kind`` (an int passes for a float); else an error naming ``where``."""
    origin, args = get_origin(kind), get_args(kind)
    if origin in (Union, UnionType):
        for option in args:
            try:
                return _checked(where, value, option)
            except SettingsError:
                pass
    elif kind is type(None) and value is None:
        return None
    elif origin is list and isinstance(value, list):
        return [_checked(f"{where}[{i}]", v, args[0]) for i, v in enumerate(value)]
    elif origin is dict and isinstance(value, dict):
        return {k: _checked(f"{where}.{k}", v, args[1]) for k, v in value.items()}
    elif kind is float and type(value) in (int, float):
        return float(value)
    elif kind in (int, bool, str) and type(value) is kind:
        return value
    raise SettingsError(f"{where} must be of type {_type_name(kind)}, got {value!r}")


def _parsed(name: str, raw: str, kind: Any) -> Any:
    """The value of variable ``name`` as a ``kind``: ``none`` for None, JSON for a list or dict (a value
    that opens with ``[`` or ``{`` is JSON where the type allows a list or dict)."""
    origin, args = get_origin(kind), get_args(kind)
    if origin in (Union, UnionType):
        if type(None) in args and raw.strip().lower() in ("none", "null"):
            return None
        options = [a for a in args if a is not type(None)]
        containers = [a for a in options if get_origin(a) in (list, dict)]
        for option in (containers if containers and raw.lstrip()[:1] in ("[", "{") else options):
            try:
                return _parsed(name, raw, option)
            except SettingsError:
                pass
        raise SettingsError(f"{name}={raw!r} is not a valid {_type_name(kind)}")
    if origin in (list, dict):
        try:
            return _checked(name, json.loads(raw), kind)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not a valid {_type_name(kind)} (JSON)") from None
    return convert(name, raw, kind)


def _refuse_serving_field(section: str | None, name: str, where: str) -> None:
    if (section, name) in SERVING_FIELDS:
        raise SettingsError(f"{where}: {section}.{name} follows the bot's serving setting "
                            f"{SERVING_FIELDS[section, name]}; set that instead")


def env_overrides(variables: Mapping[str, str]) -> dict[str, Any]:
    """Nested overrides from ``LOOPDESK_ROUND_*`` variables, typed; an unknown variable is an error."""
    known = {variable(section, name): (section, name, kind)
             for section in (None, *SECTIONS) for name, kind in field_types(section).items()}
    overrides: dict[str, Any] = {}
    for name, raw in sorted(variables.items()):
        if name not in known:
            raise SettingsError(f"unknown variable {name}: a round field is {ROUND_PREFIX}<FIELD> or "
                                f"{ROUND_PREFIX}<SECTION>__<FIELD> (`loopdesk settings --round` lists them)")
        section, field_name, kind = known[name]
        _refuse_serving_field(section, field_name, name)
        (overrides.setdefault(section, {}) if section else overrides)[field_name] = _parsed(name, raw, kind)
    return overrides


def file_overrides(path: Path) -> dict[str, Any]:
    """Nested overrides from a JSON file of ``RoundConfig`` fields, type-checked; an unknown field is an error."""
    where = f"round config file {path}"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SettingsError(f"{where}: {exc}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{where} must hold a JSON object of RoundConfig fields")
    top = field_types(None)
    overrides: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise SettingsError(f"{where}: {key} must be an object of {SECTIONS[key].__name__} fields")
            kinds = field_types(key)
            for name in value:
                if name not in kinds:
                    raise SettingsError(f"{where}: unknown field {key}.{name}")
                _refuse_serving_field(key, name, where)
            overrides[key] = {name: _checked(f"{where}: {key}.{name}", v, kinds[name]) for name, v in value.items()}
        elif key in top:
            overrides[key] = _checked(f"{where}: {key}", value, top[key])
        else:
            raise SettingsError(f"{where}: unknown field {key}")
    return overrides


def merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on ``base``: a section field by field, any other key whole."""
    out = dict(base)
    for key, value in over.items():
        out[key] = {**base.get(key, {}), **value} if key in SECTIONS and isinstance(value, Mapping) else value
    return out


def round_overrides(variables: Mapping[str, str], file: Path | None = None,
                    flags: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A process's overrides of the round defaults: the file's, the variables' over them, the flags' over
    both. Raises SettingsError naming the source of a bad value, or the sources of a config out of range."""
    overrides = merged(merged(file_overrides(file) if file else {}, env_overrides(variables)), flags or {})
    try:
        RoundConfig.from_dict(overrides)
    except (TypeError, ValueError) as exc:
        sources = [*([f"file {file}"] if file else []), *sorted(variables), *(["command-line flags"] if flags else [])]
        raise SettingsError(f"round config from {', '.join(sources)}: {exc}") from None
    return overrides


def load_round_config(variables: Mapping[str, str], file: Path | None = None,
                      flags: Mapping[str, Any] | None = None) -> RoundConfig:
    """A process's own round config: the defaults with ``round_overrides`` over them."""
    return RoundConfig.from_dict(round_overrides(variables, file, flags))


def worker_only_fields(overrides: Mapping[str, Any]) -> list[str]:
    """The known fields in ``overrides`` a queued run may not record, as ``section.field`` (``RECORDABLE_*``)."""
    found = []
    for key, value in overrides.items():
        if key in SECTIONS and key not in RECORDABLE_SECTIONS:
            found += [f"{key}.{name}" for name in value] if isinstance(value, Mapping) else [key]
        elif key in field_types(None) and key not in RECORDABLE_FIELDS:
            found.append(key)
    return found


def recordable_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a process's overrides a queued run may record (the scheduler's: its gate section decides
    its own canary check, not the worker's gate)."""
    return {key: value for key, value in overrides.items() if key in RECORDABLE_FIELDS + RECORDABLE_SECTIONS}


def run_config(own: RoundConfig, recorded: Mapping[str, Any] | None) -> RoundConfig:
    """The config a queued run trains with: the worker's own, with the overrides recorded in the run (by the
    scheduler) over it. The one place the two meet.

    Raises:
        WorkerOnlyFieldError: the recorded overrides set the gate, or what it judges by (``RECORDABLE_*``).
        TypeError, ValueError: they are not ``RoundConfig`` fields, or out of range.
    """
    recorded = recorded or {}
    refused = worker_only_fields(recorded)
    if refused:
        raise WorkerOnlyFieldError(
            f"the run's recorded config sets {', '.join(refused)}: the gate (its evaluator command, thresholds, "
            "pass status, canary rule) and what it judges by come from the worker's own config (--round-config, "
            "LOOPDESK_ROUND_*, flags), never from a queued run; a run may record only how a round trains")
    return RoundConfig.from_dict(merged(own.to_dict(), recorded))


def round_table(config: RoundConfig) -> str:
    """Every round field as a Markdown table: its variable, its value in ``config``, default and meaning."""
    default = RoundConfig()
    rows = []
    for section in (None, *SECTIONS):
        meanings = documented_fields(SECTIONS[section] if section else RoundConfig)
        ours, theirs = (getattr(config, section), getattr(default, section)) if section else (config, default)
        for name in field_types(section):
            serving = SERVING_FIELDS.get((section, name))
            rows.append([f"`{serving}` (serving)" if serving else f"`{variable(section, name)}`",
                         f"`{shown(getattr(ours, name))}`", f"`{shown(getattr(theirs, name))}`", meanings[name][1]])
    return markdown_table(["environment variable", "effective value", "default", "meaning"], rows)
