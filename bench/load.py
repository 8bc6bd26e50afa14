"""Load benchmark over real HTTP: N concurrent widget sessions against a ``loopdesk serve`` subprocess.

Each simulated session starts a conversation, sends M messages with the reply streamed as
server-sent events, ends the conversation and rates it, like the widget. Printed: errors,
p50/p99 time to first token (client side: message sent → first ``delta`` event), replies/s and
sessions/s, each against the baseline of the same sessions run one at a time.

    python bench/load.py                                    # 200 sessions × 2 messages
    python bench/load.py --model /tmp/base-test --sessions 200 --messages 2 --workers 0
    python bench/load.py --url http://127.0.0.1:8000/       # an already running bot (no baseline server)

The server runs with its rate limits lifted (every session comes from 127.0.0.1), on the
embedded Redis of ``--data-dir`` (a fresh temporary one by default), with the demo shop's help
articles imported first (as ``scripts/run.sh`` does), so every question is answered from one.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

# bench/feedback_store.py would shadow the package of that name: keep bench/ off the import path.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import requests  # noqa: E402

LIFTED_LIMIT = "1000000/minute"
DEMO_KNOWLEDGE = Path(__file__).resolve().parent.parent / "sim" / "northwind" / "knowledge"
QUESTIONS = ["How do I track my order?", "How do I return a damaged tent?", "Can I change my shipping address?",
             "I was charged twice, please help.", "How long does a refund take?", "I forgot my password."]
REQUEST_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def loopdesk_serve(env: dict[str, str], workers: int = 0, threads: int = 16, port: int | None = None,
                   log_path: Path | None = None, ready_timeout_s: float = 180.0) -> Iterator[str]:
    """Run ``loopdesk serve`` with ``env`` added to this process's environment; yield its base URL once
    ``/readyz`` answers 200; stop it (SIGTERM, then SIGKILL) afterwards."""
    port = port or free_port()
    log_path = log_path or Path(tempfile.mkstemp(prefix="loopdesk-serve-", suffix=".log")[1])
    command = [sys.executable, "-c", "from loopdesk.cli import main; main()", "serve", "--host", "127.0.0.1",
               "--port", str(port), "--workers", str(workers), "--threads", str(threads)]
    url = f"http://127.0.0.1:{port}/"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while not _ready(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"loopdesk serve did not become ready (exit {process.poll()}):\n"
                                   + log_path.read_text(errors="replace")[-3000:])
            time.sleep(0.2)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _ready(url: str) -> bool:
    try:
        return requests.get(url + "readyz", timeout=5).status_code == 200
    except requests.RequestException:
        return False


@dataclass
class Session:
    """What one simulated widget session saw."""

    ttft_s: list[float] = field(default_factory=list)
    replies: int = 0
    error: str = ""


def stream_reply(http: requests.Session, url: str, conv: str, auth: dict[str, str], text: str) -> tuple[float, dict]:
    """Send a message asking for SSE; return (seconds to the first delta, the ``done`` event's data)."""
    sent = time.perf_counter()
    first = None
    with http.post(f"{url}api/conversations/{conv}/messages", json={"text": text}, stream=True,
                   headers={**auth, "Accept": "text/event-stream"}, timeout=REQUEST_TIMEOUT_S) as response:
        if response.status_code != 200:
            raise RuntimeError(f"message: HTTP {response.status_code} {response.text[:200]}")
        event = ""
        for line in response.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                event = line[7:]
                if event == "delta" and first is None:
                    first = time.perf_counter() - sent
            elif line.startswith("data: ") and event in ("done", "error"):
                data = json.loads(line[6:])
                if event == "error":
                    raise RuntimeError(f"message: error event {data['error']['code']}")
                return (first if first is not None else time.perf_counter() - sent), data
    raise RuntimeError("message: the stream ended without a done event")


def run_session(url: str, messages: int, seed: int) -> Session:
    """Start, chat ``messages`` times over SSE, end and rate; any failure is recorded, not raised."""
    session, http = Session(), requests.Session()
    try:
        started = http.post(url + "api/conversations", json={"meta": {"source": "bench"}}, timeout=REQUEST_TIMEOUT_S)
        started.raise_for_status()
        conv, token = started.json()["conversation_id"], started.json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        for m in range(messages):
            ttft, done = stream_reply(http, url, conv, auth, QUESTIONS[(seed + m) % len(QUESTIONS)])
            if done.get("source") != "model":  # a decline generates nothing: it would flatter the figures
                raise RuntimeError(f"message: the bot declined ({done.get('source')}): no help article fitted")
            session.ttft_s.append(ttft)
            session.replies += 1
        for path, body in (("end", None), ("rating", {"score": 1 + seed % 5})):
            http.post(f"{url}api/conversations/{conv}/{path}", json=body, headers=auth,
                      timeout=REQUEST_TIMEOUT_S).raise_for_status()
    except Exception as exc:  # a bench counts failures instead of stopping at the first
        session.error = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        http.close()
    return session


@dataclass
class Report:
    """A load level's outcome."""

    sessions: list[Session]
    seconds: float

    @property
    def errors(self) -> list[str]:
        return [s.error for s in self.sessions if s.error]

    @property
    def replies(self) -> int:
        return sum(s.replies for s in self.sessions)

    def ttft(self, q: int) -> float:
        """The q-th percentile of time to first token, in seconds."""
        values = sorted(t for s in self.sessions for t in s.ttft_s)
        if len(values) < 2:
            return values[0] if values else float("nan")
        return statistics.quantiles(values, n=100, method="inclusive")[q - 1]

    def line(self, name: str) -> str:
        return (f"{name:>12}: {len(self.sessions)} sessions, {len(self.errors)} errors, {self.replies} replies in "
                f"{self.seconds:.1f} s = {self.replies / self.seconds:.1f} replies/s, "
                f"{len(self.sessions) / self.seconds:.2f} sessions/s; TTFT p50 {1000 * self.ttft(50):.0f} ms, "
                f"p99 {1000 * self.ttft(99):.0f} ms")


def run_load(url: str, sessions: int, messages: int, concurrency: int | None = None,
             deadline_s: float = 600.0) -> Report:
    """``sessions`` widget sessions, ``concurrency`` (default: all) at a time, bounded by ``deadline_s``."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency or sessions) as pool:
        futures = [pool.submit(run_session, url, messages, i) for i in range(sessions)]
        results = [f.result(timeout=max(1.0, deadline_s - (time.perf_counter() - started))) for f in futures]
    return Report(results, time.perf_counter() - started)


def serve_env(model: str, data_dir: Path, max_reply_tokens: int | None = None) -> dict[str, str]:
    """Environment for a bench server: its own key prefix, rate limits lifted."""
    env = {"LOOPDESK_DATA_DIR": str(data_dir), "LOOPDESK_KEY_PREFIX": f"load{uuid.uuid4().hex[:8]}",
           "LOOPDESK_RATE_LIMIT_PER_IP": LIFTED_LIMIT, "LOOPDESK_RATE_LIMIT_PER_CONVERSATION": LIFTED_LIMIT}
    if model:
        env["LOOPDESK_BASE_MODEL"] = model
    if max_reply_tokens:
        env["LOOPDESK_MAX_REPLY_TOKENS"] = str(max_reply_tokens)
    return env


def import_knowledge(env: dict[str, str], folder: Path = DEMO_KNOWLEDGE) -> None:
    """``loopdesk kb import FOLDER --if-empty`` with ``env``: the server's knowledge base before it starts."""
    command = [sys.executable, "-c", "from loopdesk.cli import main; main()", "kb", "import", str(folder), "--if-empty"]
    subprocess.run(command, env={**os.environ, **env}, check=True, capture_output=True, timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="load an already running bot instead of starting one")
    parser.add_argument("--model", default="", help="base model (default: the settings' base model)")
    parser.add_argument("--data-dir", type=Path, help="embedded Redis data dir (default: a fresh temporary one)")
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--messages", type=int, default=2, help="messages per session")
    parser.add_argument("--baseline-sessions", type=int, default=10, help="sessions run one at a time first")
    parser.add_argument("--workers", type=int, default=0, help="loopdesk serve --workers (0: threaded werkzeug)")
    parser.add_argument("--threads", type=int, default=64, help="loopdesk serve --threads (gunicorn only)")
    parser.add_argument("--max-reply-tokens", type=int, default=None)
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds the load level may take")
    args = parser.parse_args()

    def measure(url: str) -> None:
        baseline = run_load(url, args.baseline_sessions, args.messages, concurrency=1) \
            if args.baseline_sessions else None
        report = run_load(url, args.sessions, args.messages, deadline_s=args.deadline)
        if baseline:
            print(baseline.line("one at a time"))
        print(report.line(f"{args.sessions} at once"))
        if baseline and report.replies and baseline.replies:
            print(f"  vs one at a time: throughput ×{(report.replies / report.seconds) / (baseline.replies / baseline.seconds):.2f}, "
                  f"TTFT p50 ×{report.ttft(50) / baseline.ttft(50):.2f}")
        for error in sorted(set(report.errors))[:10]:
            print(f"  error ×{report.errors.count(error)}: {error}")

    if args.url:
        measure(args.url.rstrip("/") + "/")
        return
    with tempfile.TemporaryDirectory(prefix="loopdesk-load-") as tmp:
        data_dir = args.data_dir or Path(tmp)
        env = serve_env(args.model, data_dir, args.max_reply_tokens)
        import_knowledge(env)
        try:
            with loopdesk_serve(env, workers=args.workers, threads=args.threads) as url:
                print(f"serving on {url} (workers={args.workers}); {args.sessions} sessions × {args.messages} messages")
                measure(url)
        finally:
            if args.data_dir is None:
                from feedback_store.server import stop_embedded_redis

                stop_embedded_redis(data_dir)


if __name__ == "__main__":
    main()
