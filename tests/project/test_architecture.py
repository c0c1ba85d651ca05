"""The tree shows the architecture: docs/ARCHITECTURE.md matches it, modules stay small, and the
packages depend on each other in the documented directions."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
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


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, *, runtime_only: bool = False) -> set[str]:
    """The zsqbench modules ``path`` imports: every import statement, TYPE_CHECKING and function-level
    ones included (a cycle through either is still a cycle to read), or only those run at import time
    when ``runtime_only``. ``from package import module`` counts as the module."""
    tree = ast.parse(path.read_text())
    guarded = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
               and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING"
               for n in ast.walk(node)}
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if runtime_only and id(node) in guarded:
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            if base.startswith("zsqbench"):
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("zsqbench"))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in (ROOT / "zsqbench").rglob("*.py") if "__pycache__" not in p.parts}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_no_import_cycle_anywhere():
    graph = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(trail[trail.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, trail + [dep])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_trial_package_holds_at_most_ten_modules():
    modules = sorted(p.name for p in (ROOT / "zsqbench" / "trial").glob("*.py"))
    assert len(modules) <= 10, f"zsqbench/trial/ has {len(modules)} modules; move what is not the loop out: {modules}"


def test_packages_depend_in_the_documented_directions():
    allowed = {
        "api": ("zsqbench.api", "zsqbench.errors", "zsqbench.files", "zsqbench.bits"),
        "toolkit": ("zsqbench.api", "zsqbench.toolkit", "zsqbench.errors", "zsqbench.files"),
    }
    for package, ok in allowed.items():
        for path in (ROOT / "zsqbench" / package).glob("*.py"):
            bad = sorted(m for m in _imports(path) if m != "zsqbench" and not m.startswith(ok))
            assert not bad, f"zsqbench/{package}/{path.name} imports {bad}"
    light = ("zsqbench.assets.datasets", "zsqbench.runs.result_file", "zsqbench.runs.migrations",
             "zsqbench.api.budgets", "zsqbench.api.options")
    for name in light:
        path = ROOT / (name.replace(".", "/") + ".py")
        heavy = sorted(m for m in _imports(path, runtime_only=True) if not m.startswith(light)
                       and m != "zsqbench.api" and not m.startswith(("zsqbench.errors", "zsqbench.files", "zsqbench.bits")))
        assert not heavy, f"{name} must stay light (the leaderboard reads it without torch): imports {heavy}"
    for path in (ROOT / "plugins").rglob("*.py"):
        bad = sorted(m for m in _imports(path, runtime_only=True)
                     if not m.startswith(("zsqbench.api", "zsqbench.toolkit", "zsqbench.errors", "zsqbench_plugins")))
        assert not bad, f"{path.relative_to(ROOT)} reaches into the core: {bad}"


def test_the_leaderboard_commands_do_not_import_torch():
    code = ("import sys; import zsqbench.leaderboard.compare, zsqbench.leaderboard.views, "
            "zsqbench.leaderboard.rows, zsqbench.runs.result_file, zsqbench.cli.leaderboard_cmd, "
            "zsqbench.leaderboard.ledger, zsqbench.leaderboard.ledger_sources, zsqbench.cli.ledger_cmd; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
