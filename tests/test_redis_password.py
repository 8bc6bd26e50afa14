"""The embedded Redis requires a password: generated once into the data directory (mode 0600), shared by
every process of that directory, never printed; a passwordless server from before is restarted with it."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from feedback_store.server import (PASSWORD_FILE, EmbeddedRedisError, embedded_redis_pid, ensure_embedded_redis,
                                   redis_dir, redis_server_binary, stop_embedded_redis)
from loopdesk.cli import main as loopdesk_cli


def _refuses_without_password(port: int) -> bool:
    try:
        redis.Redis(host="127.0.0.1", port=port, socket_timeout=2).get("k")
    except redis.AuthenticationError:
        return True
    except redis.ResponseError as exc:
        return "NOAUTH" in str(exc)
    return False


def test_embedded_redis_requires_the_password_kept_in_the_data_dir(tmp_path: Path) -> None:
    url = ensure_embedded_redis(tmp_path)
    try:
        path = redis_dir(tmp_path) / PASSWORD_FILE
        password = path.read_text().strip()
        assert len(password) >= 32 and url.startswith(f"redis://:{password}@127.0.0.1:")
        assert path.stat().st_mode & 0o777 == 0o600 and redis_dir(tmp_path).stat().st_mode & 0o777 == 0o700
        port = redis.Redis.from_url(url).connection_pool.connection_kwargs["port"]
        assert _refuses_without_password(port)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=port, password="wrong" + password).ping()
        assert redis.Redis.from_url(url).ping()
        cmdline = Path(f"/proc/{embedded_redis_pid(tmp_path)}/cmdline").read_bytes()
        assert password.encode() not in cmdline  # given on standard input, not in the process list
        assert ensure_embedded_redis(tmp_path) == url and path.read_text().strip() == password  # reused
    finally:
        stop_embedded_redis(tmp_path)
    assert ensure_embedded_redis(tmp_path) == url  # restarted: same port, same password
    stop_embedded_redis(tmp_path)


def test_concurrent_first_starts_agree_on_one_password(tmp_path: Path) -> None:
    code = f"from feedback_store.server import redis_password; print(redis_password({str(tmp_path)!r}))"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(6)]
    passwords = {proc.communicate(timeout=60)[0].strip() for proc in procs}
    assert len(passwords) == 1 and "" not in passwords
    assert [p.name for p in redis_dir(tmp_path).iterdir()] == [PASSWORD_FILE]  # no temporary file left


def test_a_passwordless_server_from_before_is_restarted_with_the_password_and_keeps_its_data(tmp_path: Path) -> None:
    directory = redis_dir(tmp_path)
    directory.mkdir(parents=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    subprocess.run([redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
                    "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "yes",
                    "--pidfile", str(directory / "redis.pid"), "--logfile", str(directory / "redis.log")], check=True)
    (directory / "redis.port").write_text(str(port))
    old = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            old.set("kept", "yes")
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "the passwordless server did not start"
            time.sleep(0.05)
    before = embedded_redis_pid(tmp_path)
    try:
        url = ensure_embedded_redis(tmp_path)
        assert embedded_redis_pid(tmp_path) != before and f"127.0.0.1:{port}/" in url  # same port, new server
        assert redis.Redis.from_url(url).get("kept") == b"yes"  # its AOF was flushed and replayed
        assert _refuses_without_password(port)
    finally:
        stop_embedded_redis(tmp_path)


def test_a_password_file_other_users_can_read_is_refused(tmp_path: Path) -> None:
    directory = redis_dir(tmp_path)
    directory.mkdir(parents=True)
    (directory / PASSWORD_FILE).write_text("readable-by-all\n")
    (directory / PASSWORD_FILE).chmod(0o644)
    with pytest.raises(EmbeddedRedisError, match="readable by other users .*chmod 600"):
        ensure_embedded_redis(tmp_path)
    assert embedded_redis_pid(tmp_path) is None


def test_redis_commands_connect_with_the_password_and_never_print_it(tmp_path: Path) -> None:
    env = {"LOOPDESK_DATA_DIR": str(tmp_path), "REDIS_URL": "", "LOOPDESK_REDIS_URL": None}
    try:
        started = CliRunner().invoke(loopdesk_cli, ["redis", "start"], env=env)
        assert started.exit_code == 0, started.output
        password = (redis_dir(tmp_path) / PASSWORD_FILE).read_text().strip()
        status = CliRunner().invoke(loopdesk_cli, ["redis", "status"], env=env)
        assert status.exit_code == 0 and "ping ok" in status.output, status.output
        shown = CliRunner().invoke(loopdesk_cli, ["settings"], env=env)
        assert shown.exit_code == 0, shown.output
        assert "redis://:***@127.0.0.1:" in started.output and "redis://:***@127.0.0.1:" in status.output
        assert all(password not in r.output for r in (started, status, shown))
    finally:
        stopped = CliRunner().invoke(loopdesk_cli, ["redis", "stop"], env=env)
    assert stopped.exit_code == 0 and "stopped" in stopped.output
