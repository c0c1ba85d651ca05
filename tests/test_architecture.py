"""The tree shows the architecture: docs/ARCHITECTURE.md matches it, modules stay small, and the
packages depend on each other in the documented directions."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
MAX_LINES = 400


def _modules() -> list[Path]:
    return sorted(p for base in ("zsqbench", "plugins") for p in (ROOT / base).rglob("*.py")
                  if "__pycache__" not in p.parts)


def _listed() -> set[str]:
    """Module file names mentioned in the 'Where things live' block (with their folder context)."""
    block = DOC.split("## Where things live", 1)[1].split("## Directions", 1)[0]
    return set(re.findall(r"([\w/]+\.py)", block))


def test_every_module_is_in_the_architecture_doc_and_every_listed_one_exists():
    listed = _listed()
    names = {p.name for p in _modules() if p.name != "__init__.py"}
    missing = sorted(n for n in names if not any(entry.endswith(n) for entry in listed))
    assert not missing, f"docs/ARCHITECTURE.md does not mention {missing}"
    files = {p.name for p in _modules()}
    stale = sorted(e for e in listed if Path(e).name not in files)
    assert not stale, f"docs/ARCHITECTURE.md lists modules that do not exist: {stale}"


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these by job: {long}"


def _runtime_imports(path: Path) -> set[str]:
    """zsqbench modules imported at run time (not under ``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text())
    guarded = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
               and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING"
               for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("zsqbench"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("zsqbench"))
    return found


def test_packages_depend_in_the_documented_directions():
    allowed = {
        "api": ("zsqbench.api", "zsqbench.errors", "zsqbench.files"),
        "toolkit": ("zsqbench.api", "zsqbench.toolkit", "zsqbench.errors", "zsqbench.files"),
        "trial": ("zsqbench.api", "zsqbench.trial", "zsqbench.errors", "zsqbench.files", "zsqbench.bits"),
    }
    for package, ok in allowed.items():
        for path in (ROOT / "zsqbench" / package).glob("*.py"):
            bad = sorted(m for m in _runtime_imports(path) if m != "zsqbench" and not m.startswith(ok))
            assert not bad, f"zsqbench/{package}/{path.name} imports {bad}"
    for path in (ROOT / "plugins").rglob("*.py"):
        bad = sorted(m for m in _runtime_imports(path)
                     if not m.startswith(("zsqbench.api", "zsqbench.toolkit", "zsqbench.errors", "zsqbench_plugins")))
        assert not bad, f"{path.relative_to(ROOT)} reaches into the core: {bad}"


def test_the_leaderboard_commands_do_not_import_torch():
    code = ("import sys; import zsqbench.leaderboard.compare, zsqbench.leaderboard.views, "
            "zsqbench.leaderboard.rows, zsqbench.cli.leaderboard_cmd; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
