"""The package's shape: no import cycles between its modules (function-local imports included), no module importing
a private name (`_x`) of another, and the method itself (config, losses, log Z, trainer) readable in one sitting."""

import ast
import graphlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "trl_powerflow"
METHOD = ("config.py", "losses.py", "log_z.py", "trainer.py")


def module_name(path: Path) -> str:
    parts = ("trl_powerflow", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str, path: Path):
    """(imported module, imported name or None) for every import of a trl_powerflow module in `path`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((alias.name, None) for alias in node.names if alias.name.startswith("trl_powerflow"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            if base.startswith("trl_powerflow"):
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    yield (submodule, None) if submodule in MODULES else (base, alias.name)


def owner(name: str) -> str:
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def test_no_import_cycles_and_no_private_imports():
    graph, private = {}, []
    for name, path in MODULES.items():
        graph[name] = set()
        for target, imported in imports(name, path):
            target = owner(target)
            if target != name:
                graph[name].add(target)
                if imported and imported.startswith("_") and not imported.startswith("__"):
                    private.append(f"{name} imports {imported} from {target}")
    assert len(graph) > 30 and sum(map(len, graph.values())) > 40  # the walk sees the package
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError with the cycle
    assert not private, private


def test_the_method_reads_in_one_sitting():
    """The four method modules sit alone at the top level and together stay near 900 lines."""
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == sorted(["__init__.py", "__main__.py", *METHOD]), top
    lines = sum(len((PACKAGE / name).read_text().splitlines()) for name in METHOD)
    assert lines <= 1000, f"config + losses + log_z + trainer = {lines} lines"
