"""The package layout: no import cycles, no module reading another's private names, one direction
of dependency (movinet <- search <- family <- cli).

Every module of ``movinet/``, ``search/``, ``family/`` and ``cli/`` is parsed with ``ast``; nothing
is imported, so the check needs no TensorFlow and takes well under a second.

An import counts wherever it is written, at the top of a module or inside a function: an import
deferred into a function (to start fast, or to break an import-time cycle) still makes the two
modules depend on each other, so it may not close a cycle either. Imports under
``if TYPE_CHECKING:`` are left out: they never run and exist for type annotations only.
``from package import name`` counts as an import of ``package.name`` when that is a module, else of
``package``; importing ``a.b`` does not count as importing ``a``'s ``__init__``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("movinet", "search", "family", "cli")
# Which packages each may import: the arrows run one way.
ALLOWED = {"movinet": {"movinet"}, "search": {"movinet", "search"},
           "family": {"movinet", "search", "family"}, "cli": set(PACKAGES)}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in sorted((root / package).rglob("*.py"))}


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk_runtime(tree: ast.AST):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking_only(child):
                stack.extend(child.orelse)
            else:
                stack.append(child)


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    is_package = PATHS[module].name == "__init__.py"
    base = base[:len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, tree: ast.AST, modules) -> list[tuple[str, list[str], int]]:
    """(imported project module, names taken from it, line) for every runtime import in ``tree``."""
    found = []
    for node in _walk_runtime(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    found.append((alias.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            if source.split(".")[0] not in PACKAGES:
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in modules:
                    found.append((submodule, [], node.lineno))
                else:
                    found.append((source, [alias.name], node.lineno))
    return found


PATHS = project_modules()
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in PATHS.items()}


def import_graph(trees=TREES, modules=PATHS) -> dict[str, set[str]]:
    return {name: {target for target, _, _ in imports_of(name, tree, modules) if target != name}
            for name, tree in trees.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_project_has_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_cycle_check_finds_a_cycle():
    graph = import_graph()
    graph["movinet.spec"] = graph["movinet.spec"] | {"movinet.model"}   # model imports spec
    assert ["movinet.model", "movinet.spec"] in [[m for m in c if m in ("movinet.model", "movinet.spec")]
                                                 for c in cycles(graph)]


def private_imports(trees=TREES, modules=PATHS) -> list[str]:
    """``module:line: name`` for every underscore name one module takes from another project module:
    ``from x import _y``, or ``x._y`` where ``x`` is an imported project module."""
    found = []
    for name, tree in trees.items():
        aliases = {}
        for node in _walk_runtime(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in PACKAGES:
                        aliases[alias.asname or alias.name] = alias.name
            elif isinstance(node, ast.ImportFrom):
                source = _absolute(name, node)
                for alias in node.names:
                    if source.split(".")[0] in PACKAGES and f"{source}.{alias.name}" in modules:
                        aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
        for target, names, line in imports_of(name, tree, modules):
            found += [f"{name}:{line}: {target}.{n}" for n in names if n.startswith("_") and target != name]
        for node in _walk_runtime(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and aliases[node.value.id] != name):
                found.append(f"{name}:{node.lineno}: {aliases[node.value.id]}.{node.attr}")
    return sorted(found)


def test_no_module_takes_another_modules_private_names():
    assert private_imports() == []


def test_the_private_name_check_finds_one():
    tree = ast.parse("from movinet.model import _hidden\nfrom movinet import spec\nspec._reader\n")
    found = private_imports({"search.example": tree}, {**PATHS, "search.example": PATHS["search.space"]})
    assert found == ["search.example:1: movinet.model._hidden", "search.example:3: movinet.spec._reader"]


@pytest.mark.parametrize("package", PACKAGES)
def test_dependencies_run_one_way(package):
    wrong = sorted(f"{name} imports {target}" for name, targets in import_graph().items()
                   if name.split(".")[0] == package
                   for target in targets if target.split(".")[0] not in ALLOWED[package])
    assert wrong == []
