"""The package's import graph, read from the source (every import, those
under ``if TYPE_CHECKING:`` and inside functions included): no cycle
anywhere, and the ROS adapter's subpackages in their order (cass_ros/ros/
__init__.py): inputs, outputs, workers, services, wiring, each importing
only the ones before it (and params.py, which all share)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "cass_ros"
ROS_ORDER = ("params", "inputs", "outputs", "workers", "services", "wiring")


def modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports (a ``from X import y`` counts
    as X, and as X.y where y is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.update(t for t in [target] + [f"{target}.{a.name}" for a in node.names]
                         if t in known)
    return found - {name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (or one that
    imports itself), by repeated depth-first reachability: small graph."""
    reach: dict[str, set[str]] = {}
    for start in edges:
        seen, stack = set(), [start]
        while stack:
            for nxt in edges[stack.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        reach[start] = seen
    out, done = [], set()
    for m in sorted(edges):
        if m in done or m not in reach[m]:
            continue
        comp = sorted(o for o in reach[m] if m in reach[o])
        done.update(comp)
        out.append(comp)
    return out


def test_the_graph_is_read_with_type_only_and_function_level_imports() -> None:
    edges = graph()
    # a function-level import (temporal's tracker) and a top-level one
    assert "cass_ros.core.objects.tracks" in edges["cass_ros.core.temporal"]
    assert "cass_ros.ros.params" in edges["cass_ros.ros.wiring.node"]
    # the cycle finder itself, on a made-up graph
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_the_package() -> None:
    assert cycles(graph()) == []


def test_ros_subpackages_import_only_the_ones_before_them() -> None:
    edges = graph()
    wrong = []
    for name, deps in edges.items():
        parts = name.split(".")
        if parts[:2] != ["cass_ros", "ros"] or len(parts) < 3 or parts[2] not in ROS_ORDER:
            continue
        rank = ROS_ORDER.index(parts[2])
        for dep in deps:
            dp = dep.split(".")
            if dp[:2] == ["cass_ros", "ros"] and len(dp) > 2 and dp[2] in ROS_ORDER \
                    and ROS_ORDER.index(dp[2]) > rank:
                wrong.append(f"{name} -> {dep}")
    assert not wrong, wrong
    assert {p.name for p in (PKG / "ros").iterdir() if p.suffix == ".py"} == {"__init__.py",
                                                                           "params.py"}
