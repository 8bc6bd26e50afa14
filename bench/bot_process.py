"""A real bot for the HTTP benchmarks and tests: ``loopdesk serve`` in a subprocess on a free local port.

``serve_env`` gives it its own key prefix and lifts the rate limits (every client is 127.0.0.1);
``import_knowledge`` loads the demo shop's help articles first (as ``scripts/run.sh`` does);
``tiny_model`` builds the test-size tiny base model once.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import requests

LIFTED_LIMIT = "1000000/minute"
ROOT = Path(__file__).resolve().parent.parent
DEMO_KNOWLEDGE = ROOT / "sim" / "northwind" / "knowledge"
TEST_MODEL = ROOT / "bench" / "out" / "base-test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def loopdesk_command(*args: str) -> list[str]:
    """``loopdesk ARGS`` run by this Python (so the checkout on its path is the one that runs)."""
    return [sys.executable, "-c", "from loopdesk.cli import main; main()", *args]


@contextmanager
def loopdesk_serve(env: dict[str, str], dev: bool = False, workers: int = 1, threads: int = 0,
                   port: int | None = None, log_path: Path | None = None,
                   ready_timeout_s: float = 180.0) -> Iterator[str]:
    """Run ``loopdesk serve`` (gunicorn, or Werkzeug with ``dev``) with ``env`` added to this process's
    environment; yield its base URL once ``/readyz`` answers 200; stop it (SIGTERM, then SIGKILL) after."""
    port = port or free_port()
    log_path = log_path or Path(tempfile.mkstemp(prefix="loopdesk-serve-", suffix=".log")[1])
    server = ["--dev"] if dev else ["--workers", str(workers), "--threads", str(threads)]
    command = loopdesk_command("serve", "--host", "127.0.0.1", "--port", str(port), *server)
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
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _ready(url: str) -> bool:
    try:
        return requests.get(url + "readyz", timeout=5).status_code == 200
    except requests.RequestException:
        return False


def serve_env(model: str, data_dir: Path, **settings: object) -> dict[str, str]:
    """Environment for a bench server: its own key prefix, rate limits lifted, and ``settings``
    (``max_reply_tokens=32`` → ``LOOPDESK_MAX_REPLY_TOKENS=32``; None values left out)."""
    env = {"LOOPDESK_DATA_DIR": str(data_dir), "LOOPDESK_KEY_PREFIX": f"load{uuid.uuid4().hex[:8]}",
           "LOOPDESK_RATE_LIMIT_PER_IP": LIFTED_LIMIT, "LOOPDESK_RATE_LIMIT_PER_CONVERSATION": LIFTED_LIMIT}
    if model:
        env["LOOPDESK_BASE_MODEL"] = model
    env.update({f"LOOPDESK_{name.upper()}": str(value) for name, value in settings.items() if value is not None})
    return env


def import_knowledge(env: dict[str, str], folder: Path = DEMO_KNOWLEDGE) -> None:
    """``loopdesk kb import FOLDER --if-empty`` with ``env``: the server's knowledge base before it starts."""
    command = loopdesk_command("kb", "import", str(folder), "--if-empty")
    subprocess.run(command, env={**os.environ, **env}, check=True, capture_output=True, timeout=120)


def tiny_model(path: Path = TEST_MODEL) -> Path:
    """The test-size tiny base model (the tests' fixture model), built into ``path`` once (about 10 s)."""
    if not (path / "config.json").exists():
        from sim.bootstrap import build_base_model

        print(f"building the test-size base model into {path} ...", file=sys.stderr)
        build_base_model(path, size="test", progress=False)
    return path
