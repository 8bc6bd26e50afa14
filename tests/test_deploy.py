"""The compose file validates against the compose schema and runs real loopdesk commands."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml

from loopdesk.cli import main as loopdesk_cli

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "s3cret-Pass_word"


def run_compose_config(tmp_path: Path, env_file: str) -> subprocess.CompletedProcess:
    """``docker-compose config`` on the compose file, with ``env_file`` as its ``.env`` and no
    ``REDIS_PASSWORD`` from this process's environment."""
    assert shutil.which("docker-compose"), "docker-compose is installed by scripts/test.sh (apt)"
    (tmp_path / "compose.env").write_text(env_file)
    env = {k: v for k, v in os.environ.items() if k != "REDIS_PASSWORD"}
    return subprocess.run(["docker-compose", "--env-file", str(tmp_path / "compose.env"),
                           "-f", str(ROOT / "docker-compose.yml"), "config"],
                          capture_output=True, text=True, cwd=ROOT, env=env)


def compose_config(tmp_path: Path) -> dict:
    result = run_compose_config(tmp_path, f"REDIS_PASSWORD={PASSWORD}\n")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_file_is_valid_and_has_every_service(tmp_path):
    services = compose_config(tmp_path)["services"]
    assert {"redis", "bot", "worker", "scheduler"} <= set(services)
    redis = services["redis"]
    assert "--appendonly" in redis["command"] and redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    command = redis["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction" and command.index("--maxmemory") > 0
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    assert any(str(v).startswith("redis-data:/data") for v in redis["volumes"])
    assert services["bot"]["deploy"]["replicas"] >= 2


def test_compose_services_run_registered_loopdesk_commands(tmp_path):
    services = compose_config(tmp_path)["services"]
    for name, service in services.items():
        if name == "redis":
            continue
        command = service["command"]
        assert command[0] == "loopdesk", name
        assert command[1] in loopdesk_cli.commands, f"{name} runs unknown command {command[1]!r}"
        assert service["environment"]["REDIS_URL"] == f"redis://:{PASSWORD}@redis:6379/0", name


def test_compose_redis_requires_the_password_the_services_connect_with(tmp_path):
    redis = compose_config(tmp_path)["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--requirepass") + 1] == PASSWORD
    assert redis["environment"]["REDISCLI_AUTH"] == PASSWORD  # the health check authenticates too
    assert "PONG" in " ".join(redis["healthcheck"]["test"])  # a NOAUTH answer is no pass


def test_compose_without_a_redis_password_stops_with_a_clear_message(tmp_path):
    result = run_compose_config(tmp_path, "")
    assert result.returncode != 0 and "set REDIS_PASSWORD (in .env): Redis requires a password" in result.stderr
