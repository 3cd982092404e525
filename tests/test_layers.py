"""The import direction of docs/architecture.md: lower layers never import higher ones."""

from __future__ import annotations

import ast
from pathlib import Path

from contracts import LAYERS

ROOT = Path(__file__).resolve().parents[1]
LEVEL = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def imported_packages(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in a file, nested ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module.split(".")[0]))
    return out


def violations(root: Path) -> list[str]:
    """Every import that goes up the layers or sideways between packages of one layer."""
    found = []
    for pkg, level in LEVEL.items():
        for path in sorted((root / pkg).rglob("*.py")):
            for line, target in imported_packages(path):
                if target in LEVEL and target != pkg and LEVEL[target] >= level:
                    found.append(
                        f"{path.relative_to(root)}:{line}: {pkg} (layer {level}) imports {target} "
                        f"(layer {LEVEL[target]})"
                    )
    return found


def test_no_module_imports_upwards_or_sideways():
    assert violations(ROOT) == []


def test_every_package_is_in_a_layer():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages == set(LEVEL), "add the new package to contracts.LAYERS"


def test_a_planted_upward_import_is_caught(tmp_path):
    for pkg in LEVEL:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "contracts" / "spec.py").write_text(
        "import json\n\n\ndef f():\n    from orchestrator import cli\n"
    )
    (tmp_path / "evals" / "run.py").write_text(
        "from reports.fit import fit\nfrom models.mae import VideoMAE\n"
    )
    assert violations(tmp_path) == [
        "contracts/spec.py:5: contracts (layer 0) imports orchestrator (layer 4)",
        "evals/run.py:1: evals (layer 3) imports reports (layer 3)",
    ]


def import_circles(root: Path, pkg: str) -> list[list[str]]:
    """Circles of imports between the modules of one package, nested imports included."""
    graph: dict[str, set[str]] = {}
    for path in sorted((root / pkg).rglob("*.py")):
        mod = ".".join(path.relative_to(root).with_suffix("").parts)
        deps = graph.setdefault(mod, set())
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            deps |= {
                n
                for n in names
                if n.startswith(pkg + ".") and (root / (n.replace(".", "/") + ".py")).is_file()
            }
    circles, done = [], set()

    def visit(mod: str, stack: list[str]) -> None:
        if mod in stack:
            circles.append(stack[stack.index(mod) :] + [mod])
            return
        if mod in done:
            return
        for dep in sorted(graph.get(mod, ())):
            visit(dep, [*stack, mod])
        done.add(mod)

    for mod in sorted(graph):
        visit(mod, [])
    return circles


def test_no_import_circle_inside_a_package():
    assert {pkg: import_circles(ROOT, pkg) for pkg in LEVEL} == {pkg: [] for pkg in LEVEL}


def test_a_planted_import_circle_is_caught(tmp_path):
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "a.py").write_text("from reports.b import f\n")
    (tmp_path / "reports" / "b.py").write_text("def f():\n    from reports import a\n")
    assert import_circles(tmp_path, "reports") == [["reports.a", "reports.b", "reports.a"]]
