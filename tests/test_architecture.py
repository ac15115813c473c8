"""docs/architecture.md against the code it describes."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "slm_sweep"
ARCHITECTURE = REPO / "docs" / "architecture.md"
NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
NONE = "—"
# run.py imports most of the package; its row says so instead of listing it.
EXEMPT = {"run.py": "everything below"}


def module_table(text: str) -> dict[str, str]:
    """The Modules table's rows: the module cell (without backticks) -> its imports cell."""
    section = text.split("\n## Modules\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert lines[0].split("|")[-2].strip() == "imports", lines[0]
    rows = {}
    for line in lines[2:]:
        match = re.fullmatch(r"\| `([^`]+)` \| .* \| ([^|]*) \|", line)
        assert match, f"docs/architecture.md: a row of the Modules table that is not `module` | job | imports: {line}"
        rows[match.group(1)] = match.group(2).strip()
    return rows


def named_in(cell: str) -> tuple[list[str], list[str]]:
    """The names an imports cell lists (a comma-separated list, then optionally ' — ' and an explanation), and the
    items of that list that are not names."""
    if cell == NONE:
        return [], []
    listed = [name.strip() for name in cell.split(f" {NONE} ", 1)[0].split(",")]
    return ([name for name in listed if NAME.fullmatch(name)],
            [name for name in listed if not NAME.fullmatch(name)])


def is_module(dotted: str) -> bool:
    path = PACKAGE.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def module_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> tuple[set[str], set[str]]:
    """The package's modules a file imports (dotted, without ``slm_sweep.``; relative imports resolved) and the
    top-level names of the other modules it imports."""
    package = list(path.relative_to(PACKAGE).parent.parts)
    own, other = set(), set()

    def add(base: str, names: list[str]) -> None:
        # ``from base import name`` imports the module base.name when there is one, else a name of base.
        for name in names:
            submodule = f"{base}.{name}" if base else name
            own.add(submodule if is_module(submodule) else base)

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top, _, rest = alias.name.partition(".")
                if top == "slm_sweep":
                    if rest:
                        own.add(rest)
                else:
                    other.add(top)
        elif isinstance(node, ast.ImportFrom):
            names = [alias.name for alias in node.names]
            if node.level:
                parts = package[:len(package) - (node.level - 1)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
                add(base, names)
            else:
                top, _, rest = node.module.partition(".")
                if top == "slm_sweep":
                    add(rest, names)
                else:
                    other.add(top)
    own.discard("")
    return own, other - set(sys.stdlib_module_names) - {"__future__"}


def resolve(name: str, package: str) -> str | None:
    """The package module a listed name means: its dotted name, or (in a subpackage's row) a sibling's short name.
    None when it names no module of the package (another library, or nothing)."""
    candidates = [dotted for dotted in (name, f"{package}.{name}" if package else None)
                  if dotted and is_module(dotted)]
    assert len(candidates) < 2, f"docs/architecture.md: {name!r} could mean {candidates}; write the one it means"
    return candidates[0] if candidates else None


def row_problems(row: str, cell: str) -> list[str]:
    path = PACKAGE / row
    if row.endswith("/"):
        files, package = sorted(path.rglob("*.py")), None
        inside = module_of(path / "__init__.py")
    else:
        files = [path]
        inside = module_of(path)
        package = module_of(path.parent / "__init__.py") if path.parent != PACKAGE else ""
    if not all(file.is_file() for file in files) or not files:
        return [f"{row} is not a module or package of slm_sweep"]
    imported, others = set(), set()
    for file in files:
        own, other = imports_of(file)
        imported |= own
        others |= other
    # A package's row lists what it imports from outside it; a module's row what it imports but itself.
    imported = {module for module in imported if module != inside and not module.startswith(f"{inside}.")}
    if row in EXEMPT and cell == EXEMPT[row]:
        return []
    names, not_names = named_in(cell)
    named = set()
    problems = [f"{row} lists {item!r}, not a module name: write the names as a comma-separated list and any "
                f"explanation after ' {NONE} '" for item in not_names]
    for name in names:
        module = resolve(name, package) if package is not None else (name if is_module(name) else None)
        if module is not None and module in imported:
            named.add(module)
        elif module is not None:
            problems.append(f"{row} names {name}, which it does not import")
        elif name not in others:
            problems.append(f"{row} names {name}, neither a module of the package nor a library it imports")
    problems += [f"{row} imports {module}, which its row does not name" for module in sorted(imported - named)]
    return problems


def test_the_architecture_tables_imports_are_the_modules_imports():
    """Each row of docs/architecture.md's Modules table names, before any ' — ' explanation, exactly the modules of
    the package its module (or, for a package's row, the package from outside) imports, relative imports included,
    and no module it does not import; other libraries it names must be ones it imports. run.py's row says
    "everything below"."""
    rows = module_table(ARCHITECTURE.read_text())
    assert {"run.py", "report/", "train/", "tune/"} <= set(rows)
    problems = [problem for row, cell in rows.items() for problem in row_problems(row, cell)]
    assert not problems, "docs/architecture.md's imports column:\n" + "\n".join(problems)
