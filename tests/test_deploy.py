"""The compose file validates against the compose schema and runs real loopdesk commands."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from loopdesk.cli import main as loopdesk_cli

ROOT = Path(__file__).resolve().parent.parent


def compose_config() -> dict:
    assert shutil.which("docker-compose"), "docker-compose is installed by scripts/test.sh (apt)"
    result = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_file_is_valid_and_has_every_service():
    services = compose_config()["services"]
    assert {"redis", "bot", "worker", "scheduler"} <= set(services)
    redis = services["redis"]
    assert "--appendonly" in redis["command"] and redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    command = redis["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction" and command.index("--maxmemory") > 0
    assert "redis-cli" in redis["healthcheck"]["test"]
    assert any(str(v).startswith("redis-data:/data") for v in redis["volumes"])
    assert services["bot"]["deploy"]["replicas"] >= 2


def test_compose_services_run_registered_loopdesk_commands():
    services = compose_config()["services"]
    for name, service in services.items():
        if name == "redis":
            continue
        command = service["command"]
        assert command[0] == "loopdesk", name
        assert command[1] in loopdesk_cli.commands, f"{name} runs unknown command {command[1]!r}"
        assert service["environment"]["REDIS_URL"].startswith("redis://redis:")
