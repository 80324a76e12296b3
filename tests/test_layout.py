"""The package layout the design promises, checked on the source: the dependency direction
orchestrator -> distill -> detr_models, Ray only in the launch package, mlflow only in
tracking.py and registry.py, no private names imported across modules, no print in library code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("detr_models", "distill", "orchestrator")


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every import statement, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def _top(module: str) -> str:
    return module.split(".")[0]


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("detr_models", {"distill", "orchestrator", "ray", "mlflow"}),
        ("distill", {"orchestrator", "ray", "mlflow"}),
    ],
)
def test_dependencies_point_down(package, forbidden):
    bad = [
        f"{path.relative_to(ROOT)}: {module}"
        for path in _modules(package)
        for module, _ in _imports(path)
        if _top(module) in forbidden
    ]
    assert not bad


MLFLOW_MODULES = ("orchestrator/tracking.py", "orchestrator/registry.py")  # runs; models


def test_ray_only_in_launch_and_mlflow_only_in_tracking_and_registry():
    ray, mlflow = [], []
    for path in _modules("orchestrator"):
        relative = path.relative_to(ROOT).as_posix()
        for module, _ in _imports(path):
            if _top(module) == "ray" and not relative.startswith("orchestrator/launch/"):
                ray.append(relative)
            if _top(module) == "mlflow" and relative not in MLFLOW_MODULES:
                mlflow.append(relative)
    assert not ray and not mlflow, (ray, mlflow)


def test_no_private_names_cross_modules_and_no_prints_in_the_library():
    private, prints = [], []
    for package in PACKAGES:
        for path in _modules(package):
            relative = path.relative_to(ROOT).as_posix()
            for module, names in _imports(path):
                if _top(module) in PACKAGES:
                    private += [f"{relative}: {module}.{n}" for n in names if n.startswith("_")]
            if relative.startswith("orchestrator/cli/"):
                continue  # the CLI decides what the user sees
            tree = ast.parse(path.read_text(encoding="utf-8"))
            prints += [
                f"{relative}:{node.lineno}"
                for node in ast.walk(tree)
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print"
            ]
    assert not private and not prints, (private, prints)


def test_files_stay_small():
    long = [
        f"{path.relative_to(ROOT)} ({count} lines)"
        for package in PACKAGES
        for path in _modules(package)
        if (count := len(path.read_text(encoding="utf-8").splitlines())) > 420
    ]
    assert not long


ORCHESTRATOR_ORDER = ("spec", "data", "evaluation", "training", "deploy", "launch", "cli")


def test_orchestrator_sub_packages_import_only_those_below_them():
    """spec <- data <- evaluation <- training <- deploy <- launch <- cli (the top-level modules console,
    errors, tracking and registry are below them all)."""
    upward = []
    for path in _modules("orchestrator"):
        parts = path.relative_to(ROOT / "orchestrator").parts
        if len(parts) < 2:
            continue
        rank = ORCHESTRATOR_ORDER.index(parts[0])
        for module, _ in _imports(path):
            names = module.split(".")
            inside = names[0] == "orchestrator" and len(names) > 1
            if (
                inside
                and names[1] in ORCHESTRATOR_ORDER
                and ORCHESTRATOR_ORDER.index(names[1]) > rank
            ):
                upward.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not upward
