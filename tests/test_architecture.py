"""The shape of the house (docs/architecture.md), held by a test: packages import each
other in one direction only — no circle between two packages (or top-level modules),
which is what "no import from a lower layer to a higher one" means — and the hard rules
of who may import what.

Imports are read from the source (ast), lazy ones inside functions included: a lazy
import still ties the two modules together."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "wsop"


def room(module: str) -> str:
    """`wsop.sidecar.app` -> `sidecar`; `wsop.protocol` -> `protocol`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def imports() -> dict[str, set[str]]:
    """Module -> the wsop modules it imports (anywhere in its body)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in ROOT.rglob("*.py"):
        module = ".".join(("wsop", *path.relative_to(ROOT).with_suffix("").parts))
        module = module.removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            graph[module].update(n for n in names if n.startswith("wsop."))
    return graph


def room_graph() -> dict[str, set[str]]:
    rooms: dict[str, set[str]] = defaultdict(set)
    for module, targets in imports().items():
        for target in targets:
            into = room(target)
            is_room = (ROOT / into).exists() or (ROOT / f"{into}.py").exists()
            if is_room and into != room(module):
                rooms[room(module)].add(into)
    return rooms


def test_packages_import_each_other_in_one_direction() -> None:
    graph = room_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle.extend(path[path.index(nxt) :] + [node, nxt] if nxt in path else [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, [*path, node]):
                return True
        state[node] = 2
        return False

    for node in sorted(graph):
        if state.get(node) is None and visit(node, []):
            break
    assert not cycle, f"import circle between packages: {' -> '.join(cycle)}"


def test_the_hard_rules() -> None:
    graph = imports()
    for module, targets in graph.items():
        if room(module) != "cli":
            assert not any(room(t) == "cli" for t in targets), f"{module} imports the CLI"
        if room(module) == "load" and not module.endswith(("runner", "localstack", "nemesis")):
            # the gevent world (locust processes) never loads the asyncio servers
            assert not any(room(t) in ("sidecar", "lb") for t in targets), module
    # the bottom of the house imports nothing of ours but errors
    for bottom in ("wsop.errors", "wsop.names", "wsop.lbsignal"):
        ours = {room(t) for t in graph.get(bottom, set())}
        assert ours <= {"errors"}, (bottom, ours)
