"""The layers of docs/architecture.md hold: imports point down, no module imports another's
private names, and no function imports the package's modules (but the command line's lazy
imports of its commands)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "lightning_opt"
#: Bottom to top, as docs/architecture.md draws them (one rank may hold several packages).
LAYERS = [
    ("core",), ("data", "models", "optim"), ("clipping",), ("training",), ("population",),
    ("config",), ("runs",), ("tuning",), ("reports",), ("experiments",), ("benchmark",),
    ("cli",),
]  # fmt: skip
RANK = {package: rank for rank, layer in enumerate(LAYERS) for package in layer}
#: Imported inside functions on purpose: the command line loads a command when it runs it.
LAZY = {"cli"}


def _modules() -> list[tuple[str, Path, ast.Module]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        if len(parts) > 1:
            out.append((parts[0], path, ast.parse(path.read_text())))
    return out


def _imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lightning_opt"):
        if node.module == "lightning_opt":
            return [f"lightning_opt.{a.name}" for a in node.names]
        return [node.module]
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.startswith("lightning_opt")]
    return []


def test_every_subpackage_has_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(RANK), packages ^ set(RANK)


def test_imports_point_down_the_layers():
    upward = []
    for package, path, tree in _modules():
        for node in ast.walk(tree):
            for name in _imported(node):
                target = name.split(".")[1] if "." in name else None
                if target in RANK and RANK[target] > RANK[package]:
                    upward.append(f"{path.relative_to(PACKAGE)}:{node.lineno} imports {name}")
    assert not upward, upward


def test_no_module_imports_another_modules_private_names():
    private = []
    for _, path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lightning_opt"):
                names = [a.name for a in node.names if a.name.startswith("_")]
                names = [n for n in names if not n.startswith("__")]
                if names:
                    private.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {names}")
    assert not private, private


@pytest.mark.parametrize("package", sorted(set(RANK) - LAZY))
def test_no_function_imports_the_package(package):
    inside = []
    for owner, path, tree in _modules():
        if owner != package:
            continue
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                inside += [f"{path.relative_to(PACKAGE)}:{n.lineno} {fn.name}"
                           for n in ast.walk(fn) if _imported(n)]  # fmt: skip
    assert not inside, inside
