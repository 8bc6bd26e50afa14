"""Overload benchmark over real HTTP: a real ``loopdesk serve`` (gunicorn) on 127.0.0.1 with the test-size
tiny model, driven past what it can serve.

1. Sustainable load (the baseline): closed loops of C customers (C = 1, 2, 4, ...), each starting a
   conversation and sending one streamed message, again and again, for ``--probe-seconds``. The
   sustainable load is the most replies/s of a level with every message answered and p99 reply time
   under ``--reply-target-s``; C doubles until a level is not clean or two levels in a row add less than
   10% to the best.
2. Overload: new customers arrive at ``--factor`` (2) × that rate, evenly spaced (an open loop: arrivals
   do not wait for answers), for ``--seconds`` or ``--requests``, whichever ends first. Each answer counts
   as answered (a ``done`` event), refused (503 with ``Retry-After`` and a JSON error before the stream, or
   an SSE ``error`` event that says why: a clean refusal), an error (anything else) or a hang (nothing
   within ``--client-timeout``).
Throughout, ``/healthz`` is fetched every 100 ms from a process of its own: p50/p99, against its idle p99
measured first; the worker's event loop answers them (``bot.health_worker``), and for a bot it started the
access log says how many reached the app instead.

    python bench/load.py                                  # the test-size model, built once into bench/out
    python bench/load.py --seconds 30 --factor 2 --model var/base-model
    python bench/load.py --url http://127.0.0.1:8000/     # an already running bot (its own settings)

The clients run on the same machine as the bot and take CPU from it; the figures say so with the load
average before and after.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# bench/feedback_store.py would shadow the package of that name: the repository root, not bench/, goes on the path.
sys.path = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import requests  # noqa: E402

from bench.bot_process import import_knowledge, loopdesk_serve, serve_env, tiny_model  # noqa: E402

QUESTIONS = ["How do I track my order?", "How do I return a damaged tent?", "Can I change my shipping address?",
             "I was charged twice, please help.", "How long does a refund take?", "I forgot my password."]
HEALTH_EVERY_S = 0.1
OUTCOMES = ("answered", "refused", "error", "hang")


@dataclass
class Outcome:
    """One customer message: how it ended, after how long, and why (the error code, or the failure)."""

    kind: str
    seconds: float
    why: str = ""


def ask(url: str, seed: int, timeout_s: float) -> Outcome:
    """Start a conversation and send one streamed message; never raises."""
    sent = time.perf_counter()
    http = requests.Session()
    try:
        started = http.post(url + "api/conversations", json={"meta": {"source": "bench"}}, timeout=timeout_s)
        if started.status_code != 201:
            return _refusal(started, sent)
        conv, token = started.json()["conversation_id"], started.json()["token"]
        headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
        with http.post(f"{url}api/conversations/{conv}/messages", json={"text": QUESTIONS[seed % len(QUESTIONS)]},
                       headers=headers, stream=True, timeout=timeout_s) as response:
            if response.status_code != 200:
                return _refusal(response, sent)
            return _read_stream(response, sent)
    except requests.Timeout:
        return Outcome("hang", time.perf_counter() - sent, "no answer within the client timeout")
    except Exception as exc:  # a bench counts failures instead of stopping at the first
        return Outcome("error", time.perf_counter() - sent, f"{type(exc).__name__}: {exc}"[:200])
    finally:
        http.close()


def _refusal(response: requests.Response, sent: float) -> Outcome:
    """A non-2xx answer: clean if a 503 with Retry-After and a JSON error code, else an error."""
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = ""
    clean = response.status_code == 503 and code and response.headers.get("Retry-After", "").isdigit()
    return Outcome("refused" if clean else "error", time.perf_counter() - sent, code or f"HTTP {response.status_code}")


def _read_stream(response: requests.Response, sent: float) -> Outcome:
    """Read the stream as it arrives up to its ``done`` or ``error`` event (a byte search, not a parse of
    every delta: the clients share the bot's cores)."""
    received = b""
    for chunk in response.iter_content(chunk_size=None):
        received += chunk
        for event in (b"done", b"error"):
            start = received.find(b"event: " + event + b"\ndata: ")
            end = received.find(b"\n\n", start)
            if start >= 0 and end >= 0:
                return _last_event(event.decode(), json.loads(received[start + len(event) + 14:end]), sent)
    return Outcome("error", time.perf_counter() - sent, "the stream ended without a done event")


def _last_event(event: str, data: dict, sent: float) -> Outcome:
    if event == "error":
        code = data["error"]["code"]
        return Outcome("refused" if code in ("reply_timeout", "overloaded") else "error", time.perf_counter() - sent, code)
    if data.get("source") != "model":  # a decline generates nothing: it would flatter the figures
        return Outcome("error", time.perf_counter() - sent, f"declined ({data.get('source')}): no help article fitted")
    return Outcome("answered", time.perf_counter() - sent)


class HealthProbe:
    """GETs ``/healthz`` every ``HEALTH_EVERY_S`` while in use, from a process of its own (so the load's
    client threads do not hold up its clock); keeps each latency."""

    def __init__(self, url: str, timeout_s: float = 10.0):
        self.url, self.timeout_s = url + "healthz", timeout_s
        self.latencies: list[float] = []
        self.failures = 0
        context = multiprocessing.get_context("spawn")
        self._stop, self._results = context.Event(), context.Queue()
        self._process = context.Process(target=_probe, args=(self.url, self.timeout_s, self._stop, self._results),
                                        daemon=True)

    def __enter__(self) -> "HealthProbe":
        self._process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.latencies, self.failures = self._results.get(timeout=2 * self.timeout_s + 30)
        self._process.join(timeout=10)


def _probe(url: str, timeout_s: float, stop, results) -> None:
    """The probe process: one GET every ``HEALTH_EVERY_S`` until ``stop``; (latencies, failures) to ``results``."""
    http, latencies, failures = requests.Session(), [], 0
    while not stop.wait(HEALTH_EVERY_S):
        sent = time.perf_counter()
        try:
            ok = http.get(url, timeout=timeout_s).status_code == 200
        except requests.RequestException:
            ok = False
        latencies.append(time.perf_counter() - sent)
        failures += not ok
    results.put((latencies, failures))


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile (inclusive method), nan when empty."""
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


@dataclass
class Level:
    """What a closed loop of ``customers`` measured."""

    customers: int
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def replies_per_s(self) -> float:
        return sum(o.kind == "answered" for o in self.outcomes) / self.seconds if self.seconds else 0.0

    def clean(self, reply_target_s: float) -> bool:
        answered = [o.seconds for o in self.outcomes if o.kind == "answered"]
        return bool(answered) and len(answered) == len(self.outcomes) and percentile(answered, 99) < reply_target_s

    def line(self) -> str:
        answered = [o.seconds for o in self.outcomes if o.kind == "answered"]
        kinds = ", ".join(f"{k} {sum(o.kind == k for o in self.outcomes)}" for k in OUTCOMES[1:])
        return (f"C={self.customers:>3}: {self.replies_per_s:6.1f} replies/s, reply p50 {1000 * percentile(answered, 50):.0f}"
                f" ms p99 {1000 * percentile(answered, 99):.0f} ms ({kinds})")


def closed_loop(url: str, customers: int, seconds: float, timeout_s: float) -> Level:
    """``customers`` threads asking one message after another for ``seconds``."""
    level, lock, stop_at = Level(customers), threading.Lock(), time.monotonic() + seconds

    def customer(i: int) -> None:
        n = 0
        while time.monotonic() < stop_at:
            outcome = ask(url, i + n, timeout_s)
            n += customers
            with lock:
                level.outcomes.append(outcome)

    started = time.perf_counter()
    with ThreadPoolExecutor(customers) as pool:
        list(pool.map(customer, range(customers)))
    level.seconds = time.perf_counter() - started
    return level


def sustainable(url: str, seconds: float, reply_target_s: float, timeout_s: float,
                max_customers: int = 128) -> tuple[float, list[Level]]:
    """The most replies/s a clean closed-loop level reached, and every level measured."""
    levels: list[Level] = []
    customers, best, flat = 1, 0.0, 0
    while customers <= max_customers and flat < 2:
        level = closed_loop(url, customers, seconds, timeout_s)
        levels.append(level)
        print("  " + level.line(), flush=True)
        if not level.clean(reply_target_s):
            break
        flat = flat + 1 if level.replies_per_s < 1.1 * best else 0
        best = max(best, level.replies_per_s)
        customers *= 2
    clean = [lv.replies_per_s for lv in levels if lv.clean(reply_target_s)]
    if not clean:
        raise RuntimeError("no load level was served cleanly: " + "; ".join(lv.line() for lv in levels))
    return max(clean), levels


@dataclass
class Overload:
    """What an open loop at ``rate`` arrivals/s measured."""

    rate: float
    outcomes: list[Outcome]
    seconds: float
    health: HealthProbe

    def count(self, kind: str) -> int:
        return sum(o.kind == kind for o in self.outcomes)

    def share(self, kind: str) -> float:
        return self.count(kind) / len(self.outcomes) if self.outcomes else 0.0

    @property
    def answered_per_s(self) -> float:
        return self.count("answered") / self.seconds if self.seconds else 0.0

    def reasons(self, kind: str) -> dict[str, int]:
        whys = [o.why for o in self.outcomes if o.kind == kind and o.why]
        return {why: whys.count(why) for why in sorted(set(whys))}


def open_loop(url: str, rate: float, seconds: float, max_requests: int, timeout_s: float) -> Overload:
    """Customers arriving at ``rate`` a second, evenly spaced, for ``seconds`` or ``max_requests``, each
    asking one message whatever happened to the others; /healthz probed throughout."""
    count = max(1, min(max_requests, round(rate * seconds)))
    with HealthProbe(url) as health, ThreadPoolExecutor(max_workers=1024) as pool:
        started = time.monotonic()
        futures = []
        for i in range(count):
            time.sleep(max(0.0, started + i / rate - time.monotonic()))
            futures.append(pool.submit(ask, url, i, timeout_s))
        outcomes = [f.result() for f in futures]
        elapsed = time.monotonic() - started
    return Overload(rate, outcomes, elapsed, health)


def idle_health(url: str, seconds: float = 2.0) -> HealthProbe:
    with HealthProbe(url) as health:
        time.sleep(seconds)
    return health


def report(idle: HealthProbe, rate: float, levels: list[Level], factor: float, run: Overload) -> list[str]:
    """The printed figures."""
    lat = run.health.latencies
    lines = [f"baseline: sustainable load {rate:.1f} replies/s (closed loop, best clean level of "
             f"{', '.join(str(lv.customers) for lv in levels)} customers)",
             f"overload: {len(run.outcomes)} customers at {factor:g}× = {run.rate:.1f}/s offered over {run.seconds:.1f} s",
             *(f"  {kind:>8}: {run.count(kind):5d} ({100 * run.share(kind):5.1f}%) {run.reasons(kind) or ''}"
               for kind in OUTCOMES),
             f"  answered {run.answered_per_s:.1f} replies/s = ×{run.answered_per_s / rate:.2f} the sustainable load",
             f"  /healthz: p50 {1000 * percentile(lat, 50):.0f} ms, p99 {1000 * percentile(lat, 99):.0f} ms "
             f"(target < 1000 ms; idle p99 {1000 * percentile(idle.latencies, 99):.1f} ms, "
             f"×{percentile(lat, 99) / percentile(idle.latencies, 99):.1f}), {len(lat)} probes, "
             f"{run.health.failures} failed",
             f"  targets: errors {run.count('error')} (0), hangs {run.count('hang')} (0), /healthz p99 "
             f"{'<' if percentile(lat, 99) < 1 else '>='} 1 s"]
    return lines


def app_healthz_requests(log_path: Path) -> int:
    """How many ``/healthz`` requests reached the app (its JSON access log): the worker's event loop answers
    a plain ``GET /healthz`` itself (``bot.health_worker``), so none should."""
    return sum('"path": "/healthz"' in line for line in log_path.read_text(errors="replace").splitlines())


def measure(url: str, args: argparse.Namespace) -> Overload:
    print(f"machine: {os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} before")
    idle = idle_health(url)
    print("sustainable load, closed loops:")
    rate, levels = sustainable(url, args.probe_seconds, args.reply_target_s, args.client_timeout)
    run = open_loop(url, args.factor * rate, args.seconds, args.requests, args.client_timeout)
    print("\n".join(report(idle, rate, levels, args.factor, run)))
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} after")
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="load an already running bot instead of starting one")
    parser.add_argument("--model", type=Path, help="base model (default: the test-size model, built once)")
    parser.add_argument("--probe-seconds", type=float, default=5.0, help="seconds per closed-loop level")
    parser.add_argument("--reply-target-s", type=float, default=1.0, help="p99 reply time of a clean level")
    parser.add_argument("--factor", type=float, default=2.0, help="overload = factor × the sustainable load")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the overload lasts at most")
    parser.add_argument("--requests", type=int, default=5000, help="how many customers arrive at most")
    parser.add_argument("--client-timeout", type=float, default=60.0, help="seconds before an answer is a hang")
    args = parser.parse_args()
    if args.url:
        measure(args.url.rstrip("/") + "/", args)
        return
    with tempfile.TemporaryDirectory(prefix="loopdesk-load-") as data_dir:
        env = serve_env(str(args.model or tiny_model()), Path(data_dir))
        import_knowledge(env)
        log_path = Path(data_dir) / "serve.log"
        try:
            with loopdesk_serve(env, log_path=log_path) as url:
                print(f"serving on {url}: loopdesk serve (gunicorn, defaults), the model {env['LOOPDESK_BASE_MODEL']}")
                measure(url, args)
            print(f"  /healthz requests that reached the app (its access log): {app_healthz_requests(log_path)} "
                  "(the worker's event loop answers the rest, bot/health_worker.py)")
        finally:
            from feedback_store.server import stop_embedded_redis

            stop_embedded_redis(Path(data_dir))


if __name__ == "__main__":
    main()
