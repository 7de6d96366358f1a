"""The layers import one way: library <- agents <- application <- CLI; envs/ imports no project code but
the leaf, ``rims_rl.checks``, which every layer may import and which imports only the standard library.

The folders agents/ and envs/ install as the packages ``rims_rl.agents`` and ``rims_rl.envs`` (nothing generic
at the top of site-packages), so the layers are told apart by module prefix.

Every import is read from the source with ``ast``, including imports inside functions, so a lazy import
cannot hide a wrong-way dependency. Function-level project imports are few, and each has a comment
saying why it is deferred.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("rims_rl", "agents", "envs", "train", "experiments", "benchmarks", "tests")
#: Modules of rims_rl that are not the library (the layers above it, and the environments).
NOT_LIBRARY = ("rims_rl.app", "rims_rl.agents", "rims_rl.envs", "rims_rl.cli")

#: What each layer may import from the project (prefixes of module names).
ALLOWED: dict[str, tuple[str, ...]] = {
    "library": ("rims_rl",),  # never NOT_LIBRARY (checked below)
    "envs": ("rims_rl.envs",),
    "agents": ("rims_rl.agents", "rims_rl"),  # the library only, never the app, envs or CLI
    "app": ("rims_rl",),  # never the CLI (checked below)
    "cli": ("rims_rl.app", "rims_rl.cli"),
}
#: The one leaf: the checks of user-given values, importable from every layer (envs/ included) because it
#: holds no behaviour of the project's, only the wording of a refusal; it imports the standard library only.
LEAF = "rims_rl.checks"
#: Function-level project imports that are allowed, each deferred for a reason given at the import.
DEFERRED: set[tuple[str, str]] = set()


def _layer(rel: str) -> str | None:
    if rel in ("train.py", "rims_rl/cli.py"):
        return "cli"
    if rel.startswith("rims_rl/app/"):
        return "app"
    if rel.startswith("rims_rl/"):
        return "library"
    if rel.startswith("agents/"):
        return "agents"
    if rel.startswith("envs/"):
        return "envs"
    return None


def _imports(rel: str, text: str) -> list[tuple[str, bool, int]]:
    """``(module, inside a function, line)`` for every import of project code in a source file.

    Covers ``import x``, ``from x import y`` (as ``x`` and ``x.y``, so ``from rims_rl import app`` counts as
    ``rims_rl.app``), relative imports (resolved against the file's package) and
    ``importlib.import_module("x")`` / ``__import__("x")`` with a literal name.
    """
    tree = ast.parse(text, filename=rel)
    package = rel[: -len(".py")].split("/")[:-1] if rel.endswith(".py") else []
    found: list[tuple[str, bool, int]] = []

    def names_of(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package[: len(package) - (node.level - 1)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            return [base, *(f"{base}.{a.name}" for a in node.names)]
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                return [node.args[0].value]
        return []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            for name in names_of(child):
                if name.split(".")[0] in PROJECT:
                    found.append((name, in_function, child.lineno))
            visit(child, nested)

    visit(tree, False)
    return found


def _sources() -> dict[str, str]:
    """Path relative to the repository -> source, for train.py and the three packages."""
    files = [ROOT / "train.py"]
    for package in ("rims_rl", "agents", "envs"):
        files += sorted((ROOT / package).rglob("*.py"))
    return {f.relative_to(ROOT).as_posix(): f.read_text() for f in files}


def check_layers(sources: dict[str, str]) -> list[str]:
    """Every import that goes the wrong way, as ``file:line imports module (layer)``."""
    problems = []
    for rel, text in sources.items():
        layer = _layer(rel)
        if layer is None:
            continue
        for module, _, line in _imports(rel, text):
            head = module.split(".")[0]
            ok = module.startswith(ALLOWED[layer]) or module in ALLOWED[layer] or head in ALLOWED[layer]
            if head in ("agents", "envs"):
                ok = False  # installed as rims_rl.agents / rims_rl.envs: the top-level names do not exist
            own = "rims_rl." + layer  # the agents and envs layers import themselves
            barred = {
                "library": NOT_LIBRARY,
                "agents": tuple(m for m in NOT_LIBRARY if m != own),
                "app": ("rims_rl.cli",),
            }.get(layer, ())
            if module.startswith(barred):
                ok = False
            if module == LEAF or module.startswith(LEAF + "."):
                ok = True
            if not ok:
                problems.append(f"{rel}:{line} imports {module} ({layer} layer)")
    return problems


def leaf_problems(text: str) -> list[str]:
    """Every import of the leaf's source that is not the standard library, as ``line: module``."""
    problems = []
    for node in ast.walk(ast.parse(text)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = ["." if node.level else (node.module or "")]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "__import__",
        ):
            names = ["<dynamic import>"]
        for name in names:
            if name.split(".")[0] not in (*sys.stdlib_module_names, "__future__"):
                problems.append(f"{node.lineno}: {name}")
    return problems


def test_the_leaf_imports_only_the_standard_library() -> None:
    assert leaf_problems((ROOT / "rims_rl/checks.py").read_text()) == []


@pytest.mark.parametrize(
    "line",
    [
        "import torch",
        "from rims_rl.envs import make_env",
        "from . import policies",
        "def f():\n    import numpy",
        "import importlib\nimportlib.import_module('rims_rl.app')",
    ],
)
def test_the_leaf_check_catches_any_other_import(line: str) -> None:
    assert leaf_problems((ROOT / "rims_rl/checks.py").read_text() + "\n\n" + line + "\n")


@pytest.mark.parametrize(
    "rel",
    ["envs/make.py", "rims_rl/policies.py", "agents/config.py", "rims_rl/app/runs.py", "rims_rl/cli.py"],
)
def test_every_layer_may_import_the_leaf(rel: str) -> None:
    assert check_layers({rel: "from rims_rl.checks import check_positive\nimport rims_rl.checks\n"}) == []


def test_imports_go_one_way() -> None:
    assert check_layers(_sources()) == []


def test_function_level_project_imports_are_the_documented_few() -> None:
    deferred = {
        (rel, module)
        for rel, text in _sources().items()
        for module, inside, _ in _imports(rel, text)
        if inside
    }
    assert deferred == DEFERRED


@pytest.mark.parametrize(
    ("rel", "line", "layer"),
    [
        ("rims_rl/policies.py", "from rims_rl.app.runs import train_run", "library"),
        ("rims_rl/cores/rims.py", "def f():\n    import agents", "library"),
        ("envs/make.py", "from rims_rl.extractors import MiniGridCNN", "envs"),
        ("agents/config.py", "def f():\n    from rims_rl.app import config", "agents"),
        ("train.py", "import agents", "cli"),
        ("rims_rl/policies.py", "from rims_rl import app", "library"),
        ("agents/__init__.py", "from rims_rl import app", "agents"),
        ("rims_rl/policies.py", "from .app.runs import train_run", "library"),
        ("rims_rl/policies.py", "from rims_rl.envs import make_env", "library"),
        ("envs/make.py", "from rims_rl.agents import get_preset", "envs"),
        ("rims_rl/app/runs.py", "from rims_rl.cli import main", "app"),
        ("rims_rl/cores/rims.py", "import importlib\nimportlib.import_module('rims_rl.app.runs')", "library"),
    ],
)
def test_the_check_catches_a_wrong_way_import(rel: str, line: str, layer: str) -> None:
    """Plant one wrong-way import (top-level or inside a function) in a copy and see the check name it."""
    problems = check_layers({rel: (ROOT / rel).read_text() + "\n\n" + line + "\n"})
    assert problems and all(p.startswith(rel) and f"({layer} layer)" in p for p in problems)
