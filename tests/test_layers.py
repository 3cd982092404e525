"""The import direction of docs/architecture.md: lower layers never import higher ones, and the modules
of one package import each other one way only (no circle)."""

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


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(root: Path, name: str) -> bool:
    path = root / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(root: Path, path: Path) -> set[str]:
    """The modules of this repository a file imports, nested imports included; `from pkg import mod`
    names the module `pkg.mod` when it is one."""
    here = module_name(root, path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m and is_module(root, m)}


def circles_in(graph: dict[str, list[str]]) -> list[str]:
    """Each circle of a directed graph found by a depth-first walk, as "a -> b -> a"."""
    circles, done = [], set()

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            circles.append(" -> ".join([*trail[trail.index(node) :], node]))
        elif node not in done:
            for target in graph[node]:
                visit(target, [*trail, node])
            done.add(node)

    for node in graph:
        visit(node, [])
    return circles


def import_circles(root: Path) -> list[str]:
    """Every circle of imports among the modules of one package, its subpackages included."""
    circles = []
    for pkg in LEVEL:
        modules = {module_name(root, p): p for p in sorted((root / pkg).rglob("*.py"))}
        graph = {
            m: sorted(t for t in imported_modules(root, p) if t in modules and t != m)
            for m, p in modules.items()
        }
        circles += circles_in(graph)
    return circles


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


def test_no_import_circle_inside_a_package():
    assert import_circles(ROOT) == []


def test_a_planted_circle_is_caught(tmp_path):
    for pkg in LEVEL:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "reports" / "a.py").write_text("from reports import b\n")
    (tmp_path / "reports" / "b.py").write_text("def f():\n    from reports.a import g\n")
    (tmp_path / "orchestrator" / "sub").mkdir()
    (tmp_path / "orchestrator" / "sub" / "__init__.py").write_text("")
    (tmp_path / "orchestrator" / "sub" / "x.py").write_text("from .y import z\n")
    (tmp_path / "orchestrator" / "sub" / "y.py").write_text("from orchestrator.sub.x import w\n")
    (tmp_path / "orchestrator" / "one_way.py").write_text("from orchestrator.sub import x\n")
    assert sorted(import_circles(tmp_path)) == [
        "orchestrator.sub.x -> orchestrator.sub.y -> orchestrator.sub.x",
        "reports.a -> reports.b -> reports.a",
    ]


def test_a_subpackage_is_held_to_its_package_layer(tmp_path):
    for pkg in LEVEL:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "evals" / "heads").mkdir()
    (tmp_path / "evals" / "heads" / "__init__.py").write_text("")
    (tmp_path / "evals" / "heads" / "x.py").write_text("from orchestrator.training import loop\n")
    assert violations(tmp_path) == ["evals/heads/x.py:1: evals (layer 3) imports orchestrator (layer 4)"]
