"""The house's rules, read from the source: imports run one way (the CLI
uses the library, never the reverse) and no two modules import each other,
directly or round a loop."""
import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "beam_projector")


def modules():
    """{dotted module name: path} for every module of the package."""
    out = {}
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
                out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return out


def imports(path, known):
    """The package's modules ``path`` imports, anywhere in it (function-level
    imports count: they are still a dependency)."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in known}
    return found


def upward(graph):
    """{library module: the command's modules it imports}, where any."""
    out = {m: sorted(d for d in deps if d.startswith("beam_projector.pipeline"))
           for m, deps in graph.items() if m.startswith("beam_projector.transforms")}
    return {m: d for m, d in out.items() if d}


def loops(graph):
    """Tarjan's strongly connected components of more than one module: each
    is a loop. A module importing its own package (for its docstring's
    names) is not counted as one."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if v.startswith(w + "."):
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph():
    known = modules()
    assert len(known) > 30 and "beam_projector.transforms.composite" in known
    return {m: imports(p, known) - {m} for m, p in known.items()}


def test_the_library_never_imports_the_command(graph):
    assert "beam_projector.transforms.composite" in graph["beam_projector.pipeline.run"]
    assert upward(graph) == {}


def test_no_import_loops(graph):
    assert loops(graph) == []


def test_the_rules_catch_a_loop_and_an_upward_import(graph):
    """The checks on the real graph with one edge added each: so they
    cannot pass by reading nothing."""
    looped = {**graph, "beam_projector.transforms.records":
              graph["beam_projector.transforms.records"] | {"beam_projector.transforms.composite"}}
    assert any("beam_projector.transforms.records" in loop for loop in loops(looped))
    up = {**graph, "beam_projector.transforms.images":
          graph["beam_projector.transforms.images"] | {"beam_projector.pipeline.logs"}}
    assert upward(up) == {"beam_projector.transforms.images": ["beam_projector.pipeline.logs"]}
