"""The package's shape, read from its source: no import cycle between its modules (imports
inside functions count too: a cycle hidden in a function still ties the modules together and
breaks once someone moves the import up), and hook names are built and read in
``hook_layout.py`` alone."""

from __future__ import annotations

import ast
from pathlib import Path

import hooked_whisper

PACKAGE = Path(hooked_whisper.__file__).parent
NAME = "hooked_whisper"


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__.py``)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def runtime_nodes(tree: ast.AST):
    """Every node but those under ``if TYPE_CHECKING:``: those imports never run (annotations
    are strings here, ``from __future__ import annotations``), so they cannot close a cycle."""
    pending = [tree]
    while pending:
        node = pending.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            test = child.test if isinstance(child, ast.If) else None
            if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
                pending.extend(child.orelse)
                continue
            pending.append(child)


def imported(module: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that running ``module`` may run, by the imports anywhere in its
    body (functions included). ``from a import b`` is module ``a.b`` when that is a module, else
    ``a``; relative imports are resolved against ``module``'s package. Importing ``a.b.c`` runs
    the ``__init__`` of ``a`` and ``a.b`` too, unless they enclose ``module`` itself (then they
    are already running, and importing them is no further work)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                targets.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source)
    resolved = set()
    for target in targets:
        while target:
            if target in known and target != module and not module.startswith(target + "."):
                resolved.add(target)
            target = target.rpartition(".")[0]
    return resolved


def import_cycles() -> list[list[str]]:
    """Each cycle of the import graph once: the modules of one strongly connected component,
    each with the members it imports."""
    found = modules()
    graph = {m: imported(m, p, set(found)) for m, p in found.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append([f"{m} -> {', '.join(sorted(graph[m] & set(component)))}" for m in sorted(component)])

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_no_import_cycles():
    cycles = import_cycles()
    assert not cycles, "import cycles between modules:\n" + "\n\n".join("\n".join(c) for c in cycles)


def hook_name_code(tree: ast.AST) -> list[ast.AST]:
    """Code that writes or reads a block's hook name by hand: an f-string or a concatenation
    putting a layer after ``...blocks.``, or a regular expression over block names."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            parts = node.values
            for part, after in zip(parts, parts[1:]):
                if (
                    isinstance(part, ast.Constant)
                    and str(part.value).endswith("blocks.")
                    and not isinstance(after, ast.Constant)
                ):
                    found.append(node)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            if isinstance(node.left, ast.Constant) and str(node.left.value).endswith("blocks."):
                found.append(node)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if isinstance(owner, ast.Name) and owner.id == "re" and node.args:
                pattern = node.args[0]
                if isinstance(pattern, ast.Constant) and "blocks" in str(pattern.value):
                    found.append(node)
    return found


def test_hook_names_are_built_in_hook_layout_alone():
    offenders = []
    for module, path in modules().items():
        if module == f"{NAME}.hook_layout":
            continue
        lines = path.read_text().splitlines()
        for node in hook_name_code(ast.parse("\n".join(lines), str(path))):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not offenders, "hook names built outside hook_layout.py (use model.hook_name):\n" + "\n".join(offenders)


def test_the_hook_name_check_sees_hand_built_names():
    """The check above finds what it is for (and not docstrings or messages naming a hook)."""
    caught = ["f'decoder_blocks.{l}.hook_z'", "'blocks.' + str(l)", "re.match(r'^blocks\\.(\\d+)', name)"]
    for code in caught:
        assert hook_name_code(ast.parse(code)), code
    for code in ['"""e.g. decoder_blocks.{l}.hook_z"""', "f'{name}: decoder_blocks.{{l}}.hook_z'", "'blocks.3.x'"]:
        assert not hook_name_code(ast.parse(code)), code
