"""What operators watch: ``/healthz``, ``/readyz``, Prometheus ``/metrics`` and one JSON log line per request.

Each app has its own Prometheus registry (tests build several apps in one process). Request
counts and durations are labelled by endpoint (the Flask view, never the raw path, so the label
set stays bounded); CSAT per adapter version (weighted as the canary decision weighs it, with the
effective sample size and the plain mean beside it, and apart for bot-only and handed-off
conversations), the handoff and resolution rates per version with their 95% intervals
(``bot.charts.handoffs_by_version``), training runs by outcome and Redis's memory use against its
``maxmemory`` are read from the store at scrape time over a bounded window. Every response carries
an ``X-Request-ID``: the client's when it sent a sane one, else a fresh one; the JSON access log
line names it too. Every string a JSON log line holds is PII masked.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections import Counter as Tally
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterator

from flask import Blueprint, Flask, Response, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from bot.charts import handoffs_by_version
from bot.runtime.errors import GenerationError, QueueFullError, ReplyCancelledError, ReplyTimeoutError
from bot.services import services
from feedback_store import FeedbackStore
from feedback_store.errors import RedisError
from feedback_store.rating_weights import WeightRule, csat_stats, rating_weights
from feedback_store.records import Conversation
from loopdesk.pii import mask_pii

if TYPE_CHECKING:
    from bot.runtime import Engine, Generation

bp = Blueprint("observability", __name__)
access_log = logging.getLogger("bot.access")

REQUEST_ID_HEADER = "X-Request-ID"
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
CSAT_WINDOW_S = 7 * 86400  # CSAT gauges cover conversations started in the last week…
CSAT_MAX_CONVERSATIONS = 1000  # …at most this many per version (newest first)
RUNS_WINDOW = 200  # training-run outcomes are counted over the newest runs
RUN_STATUSES = ("queued", "running", "succeeded", "rejected", "failed")
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TOKENS_PER_S_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
UNSENT_REASONS = {QueueFullError: "queue_full", ReplyTimeoutError: "deadline", ReplyCancelledError: "client_gone"}


class StoreCollector:
    """CSAT, handoffs and resolutions by adapter version (active and canary), training runs by outcome and
    Redis's memory, read at scrape."""

    def __init__(self, store: FeedbackStore):
        self.store = store

    def describe(self) -> list[Metric]:
        return []  # nothing to read from Redis when the collector is registered

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("loopdesk_redis_up", "1 if the store answered this scrape, else 0")
        try:
            arms = self._arms()
            families = [self._csat(arms), self._handoffs(arms), self._runs(), self._memory()]
        except RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        for family in families:
            yield from family

    def _memory(self) -> list[Metric]:
        used, limit = self.store.memory()
        families = [GaugeMetricFamily("loopdesk_redis_memory_used_bytes", "bytes the Redis server uses", value=used),
                    GaugeMetricFamily("loopdesk_redis_memory_max_bytes", "the Redis server's maxmemory (0: no limit)",
                                      value=limit)]
        if limit:
            families.append(GaugeMetricFamily(
                "loopdesk_redis_memory_used_ratio", "used memory / maxmemory: at 1 Redis refuses writes (noeviction) "
                "and ratings, messages and annotations get 503; alert well before", value=used / limit))
        return families

    def _arms(self) -> dict[tuple[str, str], list[Conversation]]:
        """(role, version) → the version's conversations of the window, for the active and canary versions."""
        adapters, since = self.store.adapters, time.time() - CSAT_WINDOW_S
        return {(role, v): self.store.conversations.for_adapter(v, since=since, limit=CSAT_MAX_CONVERSATIONS)
                for role, v in (("active", adapters.active()), ("canary", adapters.canary())) if v}

    def _csat(self, arms: dict[tuple[str, str], list[Conversation]]) -> list[Metric]:
        labels = ["version", "role"]
        mean = GaugeMetricFamily("loopdesk_csat_mean", "weighted mean CSAT (1-5) of rated conversations of the "
                                 "last 7 days per adapter version and role, as the canary decision weighs them",
                                 labels=labels)
        unweighted = GaugeMetricFamily("loopdesk_csat_unweighted_mean", "plain mean CSAT of every stored rating "
                                       "behind loopdesk_csat_mean", labels=labels)
        rated = GaugeMetricFamily("loopdesk_csat_ratings", "rated conversations behind loopdesk_csat_mean",
                                  labels=labels)
        effective = GaugeMetricFamily("loopdesk_csat_effective_ratings", "Kish effective sample size over "
                                      "clients behind loopdesk_csat_mean", labels=labels)
        scored = {arm: [c for c in convs if c.csat is not None] for arm, convs in arms.items()}
        rule = WeightRule.of(self.store.settings)
        weights = rating_weights([c for convs in scored.values() for c in convs], rule)
        for (role, version), convs in scored.items():
            stats = csat_stats(convs, weights, rule)
            rated.add_metric([version, role], stats.ratings)
            effective.add_metric([version, role], stats.n_eff)
            if stats.mean is not None:
                mean.add_metric([version, role], stats.mean)
            if stats.unweighted_mean is not None:
                unweighted.add_metric([version, role], stats.unweighted_mean)
        return [mean, unweighted, rated, effective]

    def _handoffs(self, arms: dict[tuple[str, str], list[Conversation]]) -> list[Metric]:
        labels = ["version", "role"]
        window = "conversations of the last 7 days per adapter version and role"
        gauges = {name: GaugeMetricFamily(f"loopdesk_{name}", f"{doc} ({window})", labels=labels) for name, doc in (
            ("conversations", "conversations started"),
            ("handed_off_conversations", "conversations handed to a person or asking for one while nobody was"),
            ("handoff_rate", "share of conversations handed off"),
            ("handoff_rate_low", "lower end of the 95% Wilson interval of loopdesk_handoff_rate"),
            ("handoff_rate_high", "upper end of the 95% Wilson interval of loopdesk_handoff_rate"),
            ("resolution_rate", "share of rated conversations ended without a handoff and rated 4 or more, "
                                "weighted as CSAT"),
            ("resolution_rate_low", "lower end of the 95% Wilson interval of loopdesk_resolution_rate"),
            ("resolution_rate_high", "upper end of the 95% Wilson interval of loopdesk_resolution_rate"))}
        split = GaugeMetricFamily("loopdesk_csat_split_mean", f"weighted mean CSAT apart for bot_only and "
                                  f"handed_off conversations ({window})", labels=[*labels, "conversations"])
        rule = WeightRule.of(self.store.settings)
        every = [c for convs in arms.values() for c in convs]
        stats = handoffs_by_version(every, rule)
        for role, version in arms:
            numbers = stats.get(version)
            if numbers is None:
                continue
            gauges["conversations"].add_metric([version, role], numbers["conversations"])
            gauges["handed_off_conversations"].add_metric([version, role], numbers["handed_off"])
            for rate in ("handoff_rate", "resolution_rate"):
                if numbers[rate]["rate"] is not None:
                    for suffix, key in (("", "rate"), ("_low", "lo"), ("_high", "hi")):
                        gauges[rate + suffix].add_metric([version, role], numbers[rate][key])
            for part in ("bot_only", "handed_off"):
                if numbers[f"csat_{part}"]["mean"] is not None:
                    split.add_metric([version, role, part], numbers[f"csat_{part}"]["mean"])
        return [*gauges.values(), split]

    def _runs(self) -> list[Metric]:
        runs = GaugeMetricFamily("loopdesk_training_runs", f"training runs by status among the newest {RUNS_WINDOW}",
                                 labels=["status"])
        counts = Tally(run.status for run in self.store.runs.list(limit=RUNS_WINDOW))
        for status in RUN_STATUSES:
            runs.add_metric([status], counts.get(status, 0))
        return [runs]


class EngineCollector:
    """How often the generation thread crashed and was restarted, and how often the embedded Redis was, read
    at scrape."""

    def __init__(self, engine: "Engine", redis_restarts: Callable[[], int]):
        self.engine = engine
        self.redis_restarts = redis_restarts

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("loopdesk_generation_worker_restarts", "times the generation thread crashed "
                                  "(failing its requests) and the engine started it again",
                                  value=self.engine.worker_restarts())
        yield CounterMetricFamily("loopdesk_redis_restarts", "times this process found the embedded Redis dead "
                                  "and started it again", value=self.redis_restarts())


class Metrics:
    """One app's Prometheus registry and the series the web layer and the engine feed."""

    def __init__(self, store: FeedbackStore, engine: "Engine", redis_restarts: Callable[[], int] = lambda: 0):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("loopdesk_http_requests", "HTTP requests answered",
                                ["endpoint", "method", "status"], registry=r)
        self.errors = Counter("loopdesk_http_errors", "HTTP requests answered with a server error (5xx)",
                              ["endpoint", "status"], registry=r)
        self.duration = Histogram("loopdesk_http_request_duration_seconds",
                                  "time from request to the last byte of the response (streams included)",
                                  ["endpoint"], registry=r)
        self.ttft = Histogram("loopdesk_time_to_first_token_seconds", "time from a reply request to its first token",
                              buckets=TTFT_BUCKETS, registry=r)
        self.tokens_per_s = Histogram("loopdesk_reply_tokens_per_second", "reply tokens / reply latency",
                                      buckets=TOKENS_PER_S_BUCKETS, registry=r)
        self.replies = Counter("loopdesk_replies", "bot replies sent, by source: model (generated), fallback "
                               "(no help article fitted the question) or handoff (the notice of a handoff)",
                               ["source"], registry=r)
        self.handoffs = Counter("loopdesk_handoffs", "requests for a person, by reason and whether one was "
                                "available (no: the customer was told when the team is back)",
                                ["reason", "available"], registry=r)
        self.unsent = Counter("loopdesk_replies_unsent", "messages answered with no reply, by reason: queue_full "
                              "(refused before anything was stored), deadline (stopped past reply_deadline_s), "
                              "client_gone (the stream's client went away), failed (the model failed)",
                              ["reason"], registry=r)
        queue = Gauge("loopdesk_generation_queue_depth", "replies waiting for the generation worker", registry=r)
        queue.set_function(lambda: float(engine.queue_depth()))
        decoding = Gauge("loopdesk_generation_decoding", "replies in the generation worker's batch", registry=r)
        decoding.set_function(lambda: float(engine.decoding()))
        r.register(StoreCollector(store))
        r.register(EngineCollector(engine, redis_restarts))

    def observe_generation(self, generation: "Generation") -> None:
        """Record one generated reply: its time to first token and its tokens per second."""
        self.replies.labels("model").inc()
        self.ttft.observe(generation.ttft_ms / 1000)
        if generation.latency_ms > 0:
            self.tokens_per_s.observe(len(generation.reply_token_ids) / (generation.latency_ms / 1000))

    def observe_unsent(self, error: GenerationError) -> None:
        """Record one message that got no reply, by why (``UNSENT_REASONS``, else ``failed``)."""
        self.unsent.labels(next((r for kind, r in UNSENT_REASONS.items() if isinstance(error, kind)), "failed")).inc()

    def observe_handoff(self, reason: str, available: bool, source: str) -> None:
        """Record one handoff (or request for a person nobody could take) and the notice the bot sent."""
        self.replies.labels(source).inc()
        self.handoffs.labels(reason, "yes" if available else "no").inc()

    def observe_request(self, endpoint: str, method: str, status: int) -> None:
        self.requests.labels(endpoint, method, str(status)).inc()
        if status >= 500:
            self.errors.labels(endpoint, str(status)).inc()


@bp.get("/healthz")
def healthz() -> Response:
    """The process is alive and answering (no dependency is checked)."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """200 when Redis answers, the model is loaded, every adapter the registry names is settled and the
    knowledge index is built (its revision and size are shown)."""
    svc = services()
    missing: list[str] = []
    wanted: dict[str, str] = {}
    knowledge: dict[str, int] = {}
    try:
        svc.store.ping()
        redis_ok = True
        wanted = {role: v for role, v in (("active", svc.store.adapters.active()),
                                          ("canary", svc.store.adapters.canary())) if v}
        index = svc.knowledge.index
        knowledge = {"revision": index.revision, "articles": len(index)}
    except RedisError as exc:
        redis_ok = False
        missing.append(f"redis: {exc}")
    model_ok = svc.engine.ready()
    if not model_ok:
        missing.append("model: the generation worker is not running")
    loaded, refused = svc.engine.loaded_versions(), svc.engine.refused_versions()
    for role, version in wanted.items():
        if version not in loaded and version not in refused:
            missing.append(f"adapter: the {role} version {version} is not loaded yet")
    body = {
        "ready": not missing,
        "missing": missing,
        "checks": {"redis": redis_ok, "model": model_ok,
                   "adapters": {"wanted": wanted, "loaded": loaded, "refused": refused},
                   "knowledge": knowledge},
    }
    return jsonify(body), 200 if not missing else 503


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text exposition of this app's registry."""
    return Response(generate_latest(metrics_of_app().registry), mimetype=CONTENT_TYPE_LATEST)


def metrics_of_app() -> Metrics:
    """The current app's metrics."""
    return services().metrics


def _begin() -> None:
    offered = request.headers.get(REQUEST_ID_HEADER, "")
    g.request_id = offered if SANE_REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex
    g.started = time.perf_counter()


def _finish(response: Response) -> Response:
    """Count the answer, echo the request id, and log once the body is sent (streams included)."""
    request_id = g.get("request_id") or uuid.uuid4().hex
    started = g.get("started") or time.perf_counter()
    endpoint = request.url_rule.endpoint if request.url_rule else "unmatched"
    method, path, status = request.method, request.path, response.status_code
    metrics = metrics_of_app()
    metrics.observe_request(endpoint, method, status)
    response.headers[REQUEST_ID_HEADER] = request_id

    def done() -> None:
        elapsed = time.perf_counter() - started
        metrics.duration.labels(endpoint).observe(elapsed)
        access_log.info("request", extra={"fields": {
            "method": method, "path": path, "endpoint": endpoint, "status": status,
            "duration_ms": round(1000 * elapsed, 2), "request_id": request_id}})

    response.call_on_close(done)
    return response


def init_app(app: Flask) -> None:
    """Register the routes and the request hooks (call first, so the hooks run before any other)."""
    app.register_blueprint(bp)
    app.before_request(_begin)
    app.after_request(_finish)


IDENTIFIER_FIELDS = frozenset({"request_id", "conversation_id", "adapter_version"})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra={"fields": {...}}``; every
    string in it PII masked (``loopdesk.pii.mask_pii``), exception texts included, except the identifier
    fields (``IDENTIFIER_FIELDS``: ids the server made or checked, whose hex digits can look like a phone
    number)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": mask_pii(record.getMessage()),
        }
        entry.update({k: v if k in IDENTIFIER_FIELDS else mask_pii(v)
                      for k, v in getattr(record, "fields", {}).items()})
        if record.exc_info:
            entry["exception"] = mask_pii(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


def configure_json_logging(level: int = logging.INFO) -> None:
    """Send the ``bot`` and ``feedback_store`` loggers to stderr as JSON lines (for ``loopdesk serve``)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    for name in ("bot", "feedback_store"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the access log above replaces werkzeug's
