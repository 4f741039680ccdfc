"""The layering the folders promise, checked on the import statements themselves (lazy ones too):
no import circles in ``models`` or ``streams``; the serving code (``models.llm``,
``models.candidates``) never imports the evaluation; ``models`` imports neither Kafka nor Faust
nor ``streams``; ``schemas`` imports neither."""
from __future__ import annotations

import ast

import pytest

from tests.conftest import ROOT


def module_name(path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path) -> set[str]:
    """Every module an import statement in the file names (absolute imports; this code uses no others)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


GRAPH = {module_name(p): imports_of(p) for package in ("models", "streams", "schemas")
         for p in (ROOT / package).rglob("*.py")}


def edges(module: str) -> set[str]:
    """The project modules ``module`` imports (a package's name counts as its __init__)."""
    return {name for name in GRAPH[module] if name in GRAPH and name != module}


def cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges(v):
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
                out.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    # a package importing its own submodules from __init__ is not a circle of modules
    found = [c for c in cycles() if not all(m.startswith(c[0]) for m in c)]
    assert found == []


@pytest.mark.parametrize("serving", ["models.llm", "models.candidates"])
def test_serving_code_never_imports_the_evaluation(serving):
    offenders = {m: sorted(n for n in GRAPH[m] if n.startswith("models.evaluation"))
                 for m in GRAPH if m.startswith(serving)}
    assert {m: n for m, n in offenders.items() if n} == {}


# the partitioning hash Kafka's clients share (murmur2, a pure function) is no client: the fold
# routes each item's increments to the partition the item's key goes to
PARTITIONING = {"aiokafka.partitioner", "aiokafka.partitioner.murmur2"}


@pytest.mark.parametrize("package, forbidden", [
    ("models", ("streams", "faust", "mode", "aiokafka", "confluent_kafka")),
    ("schemas", ("streams", "models", "faust", "aiokafka", "confluent_kafka")),
])
def test_lower_layers_import_nothing_above_them(package, forbidden):
    offenders = {m: sorted(n for n in GRAPH[m] - PARTITIONING if n.split(".")[0] in forbidden)
                 for m in GRAPH if m.split(".")[0] == package}
    assert {m: n for m, n in offenders.items() if n} == {}
