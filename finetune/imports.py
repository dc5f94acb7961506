"""The project modules an entry point runs: its import closure, read from the source (imports
inside functions included). dvc.yaml lists exactly these as a stage's code deps (a test checks),
and train's resume fingerprint hashes them."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("finetune", "stages", "commands")


def _file(module: str) -> Path | None:
    for candidate in (ROOT / f"{module.replace('.', '/')}.py",
                      ROOT / module.replace(".", "/") / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return [n for n in names if n.split(".")[0] in PACKAGES]


def _runs_code(path: Path) -> bool:
    """False for a package __init__ that holds only its docstring: it cannot change an output."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return path.name != "__init__.py" or not all(
        isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


@functools.cache
def closure(module: str) -> tuple[Path, ...]:
    """The files (relative to the project root, sorted) of `module` and of every project module
    it imports, directly or through another, with the packages they sit in."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = _file(name)
        if path is None or path in seen:
            continue
        seen.add(path)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # the packages above it
        todo += _imported(path)
    return tuple(sorted(p.relative_to(ROOT) for p in seen if _runs_code(p)))
