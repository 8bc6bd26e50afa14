"""The trainer learns from ratings only: it never imports the simulator (its hidden rubric), the bot or Flask."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("sim", "bot", "flask")


def trainer_modules() -> list[Path]:
    return sorted((ROOT / "trainer").rglob("*.py"))


def imported_roots(path: Path) -> set[str]:
    """Top-level package names a module imports (absolute imports, anywhere in the file)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_no_trainer_source_imports_sim_bot_or_flask():
    modules = trainer_modules()
    assert modules, "no trainer modules found"
    offenders = {str(p.relative_to(ROOT)): sorted(imported_roots(p) & set(FORBIDDEN)) for p in modules}
    assert not {k: v for k, v in offenders.items() if v}


def test_importing_every_trainer_module_loads_no_sim_or_bot():
    names = [".".join(p.relative_to(ROOT).with_suffix("").parts) for p in trainer_modules()]
    names = [n.removesuffix(".__init__") for n in names]
    script = (
        "import importlib, json, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
