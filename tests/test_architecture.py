"""The package's shape: no import cycle in transfer/, and nothing in it reaches up to the CLI.

Imports are read with ``ast``, not by importing, so an import inside a function counts as
much as one at the top of a file: a cycle that only closes at call time still makes the
modules impossible to read (or move) one at a time.
"""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "transfer"


def _modules():
    """Dotted name -> (file path, is a package) for every module under transfer/."""
    found = {}
    for folder, _, files in os.walk(os.path.join(ROOT, PACKAGE)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                is_package = parts[-1] == "__init__"
                found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _absolute(module, is_package, node):
    """The module a ``from ... import`` names, relative dots resolved against ``module``."""
    if not node.level:
        return node.module
    base = module.split(".")
    base = base[:len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module, path, is_package, modules):
    """Every module ``module`` imports, anywhere in its file (functions included).

    ``from pkg import name`` imports the submodule ``pkg.name`` when there is one, else the
    package's ``__init__``; the parent packages Python initialises on the way are not counted
    (a package is always set up before its own modules, so counting them would only report
    every package that imports its children)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, is_package, node)
            for alias in node.names:
                yield f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target


def import_graph():
    """Module -> the set of transfer modules (and ``cli``) it imports."""
    modules = _modules()
    graph = {}
    for module, (path, is_package) in modules.items():
        targets = set(_imports(module, path, is_package, modules))
        graph[module] = {t for t in targets if t in modules or t == "cli" or t.startswith("cli.")} - {module}
    return graph


def find_cycle(graph):
    """One cycle as a list of modules (first == last), or None."""
    state = {}

    def visit(node, trail):
        state[node] = "open"
        trail.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return trail[trail.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, trail)
                if cycle:
                    return cycle
        trail.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [])
            if cycle:
                return cycle
    return None


def test_find_cycle_sees_a_cycle_through_three_modules():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_function_level_and_relative_imports_are_counted():
    graph = import_graph()
    # transfer/runners.py imports the runs module at the top and the layers module inside a function
    assert {"transfer.runs", "transfer.layers"} <= graph["transfer.runners"]
    # transfer/reports/evaluate.py: `from .. import data` is the package transfer.data, `from ..data.images` a module in it
    assert {"transfer.data", "transfer.data.images"} <= graph["transfer.reports.evaluate"]


def test_transfer_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_nothing_in_transfer_imports_the_cli():
    offenders = sorted(m for m, targets in import_graph().items() if any(t.split(".")[0] == "cli" for t in targets))
    assert not offenders, f"these modules import cli: {offenders}"


def _reachable(graph, start):
    """Every module ``start`` imports, directly or through others, but not through ``transfer/__init__.py``: the
    public facade, which modules reach only for ``__version__``."""
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen and nxt != PACKAGE:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_prediction_and_export_load_models_through_runners_not_each_other():
    graph = import_graph()
    exports = [m for m in graph if m == "transfer.export" or m.startswith("transfer.export.")]
    assert not any(m.startswith("transfer.export") for m in _reachable(graph, "transfer.prediction"))
    assert not any("transfer.prediction" in _reachable(graph, m) for m in exports)
    assert "transfer.runners" in graph["transfer.prediction"] and "transfer.runners" in graph["transfer.export.folders"]


#: (package, name): a package binding a name of one of its modules to something else, on purpose. transfer.export
#: is the function (the package's entry points import nothing until called, so binding it costs nothing)
SHADOWED_ON_PURPOSE = {("transfer", "export")}


def test_no_package_hides_one_of_its_modules_behind_another_object():
    """``from .audit import audit`` in data/__init__.py made ``from transfer.data import audit`` the function."""
    modules = _modules()
    hidden = []
    for package, (path, is_package) in modules.items():
        if not is_package:
            continue
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in tree.body:
            if isinstance(node, ast.ImportFrom):
                source = _absolute(package, True, node)
                bound = [(a.asname or a.name, f"{source}.{a.name}") for a in node.names]
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                bound = [(node.name, None)]
            else:
                continue
            hidden += [(package, name) for name, what in bound
                       if f"{package}.{name}" in modules and what != f"{package}.{name}"]
    assert set(hidden) <= SHADOWED_ON_PURPOSE, hidden


def test_every_package_has_an_init_so_that_it_is_installed():
    """setuptools' find_packages skips a folder without __init__.py: its modules would work here and be missing
    from the wheel."""
    folders = {os.path.dirname(path) for path, _ in _modules().values()}
    assert not [f for f in folders if not os.path.isfile(os.path.join(f, "__init__.py"))]


def test_every_test_marked_serial_is_in_a_file_that_make_test_runs_alone():
    """``make test`` deselects the serial tests from its parallel run and then collects only SERIAL_FILES: a serial
    test anywhere else would never run."""
    with open(os.path.join(ROOT, "Makefile")) as f:
        serial_files = next(line.split(":=")[1].split() for line in f if line.startswith("SERIAL_FILES :="))
    marked = set()
    for name in os.listdir(os.path.join(ROOT, "tests")):
        if name.endswith(".py"):
            with open(os.path.join(ROOT, "tests", name)) as f:
                tree = ast.parse(f.read())
            if any(isinstance(node, ast.Attribute) and node.attr == "serial" and ast.unparse(node) == "pytest.mark.serial"
                   for node in ast.walk(tree)):
                marked.add(f"tests/{name}")
    assert marked and marked <= set(serial_files), (marked, serial_files)
