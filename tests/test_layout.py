"""The house rules of docs/ARCHITECTURE.md, read from the code: every import runs down the floors, no module takes
part in an import circle (function-level imports count), and every command is a thin adapter."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FLOORS = {
    "vpt": 1, "vpt.errors": 1, "vpt.algo": 1, "vpt.metrics": 1,
    "vpt.io": 2, "vpt.distributed": 2,
    "vpt.toyworld": 3,
    "vpt.models": 4,
    "vpt.encoding": 5,
    "vpt.rewards": 6, "vpt.rollouts": 6,
    "vpt.prefs": 7, "vpt.server": 7, "vpt.report": 7,
    "vpt.train": 8,
    "vpt.stages": 9,
    "vpt.testing": 10,
    "vpt.commands": 11,
}
COMMAND_LINES = 150


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "commands":  # installed as vpt.commands
        parts = ["vpt", *parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_modules() -> dict[str, Path]:
    files = [*(ROOT / "vpt").rglob("*.py"), *(ROOT / "commands").glob("*.py")]
    return {module_name(path): path for path in files}


def imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The vpt modules ``path`` imports anywhere in its body (``from vpt.x import y`` names ``vpt.x.y`` when that is
    a module, else ``vpt.x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "vpt":
            for alias in node.names:
                found.add(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "vpt")
    return found


def room(module: str) -> str:
    return ".".join(module.split(".")[:2])


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = source_modules()
    return {name: {target for target in imports(path, modules) if target != name} for name, path in modules.items()}


def test_every_room_has_a_floor(graph):
    assert sorted({room(name) for name in graph} - set(FLOORS)) == []


def test_imports_run_down_the_floors(graph):
    upward = [f"{name} -> {target}" for name, targets in sorted(graph.items()) for target in sorted(targets)
              if FLOORS[room(target)] > FLOORS[room(name)]]
    assert upward == []


def test_no_import_circles(graph):
    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            current = todo.pop()
            if current == goal:
                return True
            if current not in seen:
                seen.add(current)
                todo.extend(graph.get(current, ()))
        return False

    circles = sorted(f"{name} <-> {target}" for name, targets in graph.items() for target in targets
                     if target in graph and reaches(target, name))
    assert circles == []


def top_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return ({alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
            | {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)})


def test_the_library_never_imports_the_command_line_parser():
    assert [name for name, path in sorted(source_modules().items())
            if room(name) != "vpt.commands" and "typer" in top_level_imports(path)] == []


def test_commands_are_thin():
    long = {path.name: count for path in sorted((ROOT / "commands").glob("*.py"))
            if (count := len(path.read_text(encoding="utf-8").splitlines())) > COMMAND_LINES}
    assert long == {}
