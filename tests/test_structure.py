"""The package's shape: data flows one way (no import circles, counting every import: at module level, inside
functions and for type annotations only), and no function or module grows past what one reader holds."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "framepack"
MAX_FUNCTION_LINES = 150
MAX_MODULE_LINES = 800


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """Every framepack module `name` imports, wherever the import is written."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from .x import y` imports the module x.y when y is one, else x.
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in MODULES else module for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != name)
    # Importing a module runs its packages' __init__ files first: those edges count too, except to the packages the
    # module itself is in (a package's face imports its own rooms; they do not import it back).
    own = set(_parents(name)) | ({name} if path.name == "__init__.py" else set())
    return found | {parent for t in found for parent in _parents(t) if parent in MODULES and parent not in own}


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph`, as the modules along it, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_circles_in_the_package():
    graph = {name: imports_of(name) for name in MODULES}
    graph["framepack"] = set()  # the package's face imports its parts; nothing inside imports the face
    assert not any("framepack" in targets for targets in graph.values()), "a module imports the package's face"
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_lower_parts_do_not_reach_higher_ones():
    """The ground floor knows nothing of the rooms above it."""
    graph = {name: imports_of(name) for name in MODULES}

    def reach(module: str, seen: set[str] | None = None) -> set[str]:
        seen = set() if seen is None else seen
        for target in graph.get(module, ()):
            if target not in seen:
                seen.add(target)
                reach(target, seen)
        return seen

    def under(prefix: str) -> set[str]:
        return {name for name in MODULES if name == prefix or name.startswith(prefix + ".")}

    for low, high in (
        ("framepack.models", ("framepack.memory", "framepack.loading", "framepack.lora", "framepack.engine")),
        ("framepack.memory", ("framepack.loading", "framepack.lora", "framepack.engine")),
        ("framepack.media", ("framepack.models", "framepack.engine", "framepack.jobs")),
        ("framepack.engine", ("framepack.kinds", "framepack.queue", "framepack.app", "framepack.cli")),
        ("framepack.queue", ("framepack.app", "framepack.cli")),
        ("framepack.app", ("framepack.cli",)),
    ):
        for module in under(low):
            reached = reach(module)
            for target in high:
                assert not reached & under(target), f"{module} reaches {target}"


# The README's table of parts, top to bottom: a part imports only parts below it (or in its own row).
README_ORDER = (
    ("framepack.cli",), ("framepack.app",), ("framepack.queue",), ("framepack.kinds",), ("framepack.engine",),
    ("framepack.postprocess",), ("framepack.jobs",), ("framepack.controls",),
    ("framepack.loading", "framepack.lora", "framepack.models", "framepack.memory"),
    ("framepack.packing", "framepack.sampling"), ("framepack.media",),
    ("framepack.settings", "framepack.events", "framepack.files"),
)  # fmt: skip


def test_parts_import_only_the_parts_below_them_in_the_readme():
    def row(module: str) -> int | None:
        for index, parts in enumerate(README_ORDER):
            if any(module == part or module.startswith(part + ".") for part in parts):
                return index
        return None

    upward = [
        (module, target)
        for module in MODULES
        for target in imports_of(module)
        if row(module) is not None and row(target) is not None and row(target) < row(module)
    ]
    assert upward == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_functions_and_modules_stay_small(name):
    path = MODULES[name]
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{path.name} has {len(text.splitlines())} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{name}.{node.name} has {length} lines"
