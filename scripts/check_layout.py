"""Check the package's shape: layers, sizes, the backend seam, import cycles, lazy imports.

Usage: ``python scripts/check_layout.py [--report]``. Exits 1 and names each breach of the
rules below; ``--report`` also prints the measures (largest module, class and function, the
number of lazy imports) when all is well. ``tests/fast/test_layout.py`` runs it.

The rules, as the README's design notes state them:

- at most 8 modules at the package root;
- no module over 600 lines, no class over 300, no function over 60;
- a backend's words stay in its folder: no module outside ``backends/`` and ``cli/`` names
  Slurm (the ``--slurm`` options are the CLI's), but for the record that stores a backend's
  own options as data (``core/records.py``);
- no import cycle between modules, and no lower layer importing a higher one (below);
- an import inside a function carries a comment that says why it is lazy (start-up time,
  an optional dependency, a plugin looked up by name);
- ``typing`` and ``dataclasses`` are imported for type checkers only (under
  ``if TYPE_CHECKING:``): each costs every command several ms of start-up, as much as the
  rest of ``list``; records are :mod:`handyjobs.structs`. The trainer (which imports torch)
  and the Typer app (shell completion only) are exempt.

Layers, lowest first. A module may import its own layer and the ones below it:

1. the root modules (``errors``, ``metrics``, ``progress``) and ``gpus/``;
2. ``core/`` (records, registry, lifecycle, ...);
3. ``jobside/`` (what runs in the job's session);
4. ``backends/`` (both halves of each backend);
5. ``views/`` (words and pictures);
6. ``cli/`` (parse, call the core, render).

``trainer/`` runs in the user's process and imports only the root modules. Two seams are
named rather than imported: the core reaches a backend through
:func:`handyjobs.backends.base.get` (the module ``backends/base.py`` is the interface, so the
core and the job side may import it), and the entry points may import what they run:
``__main__`` the CLI, and the runner (with its queue wait), which writes sentences into the
log, ``views/render.py``.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "handyjobs"

MAX_ROOT_MODULES = 8
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 300
MAX_FUNCTION_LINES = 60

LAYERS = {"": 1, "gpus": 1, "core": 2, "jobside": 3, "backends": 4, "views": 5, "cli": 6}
TRAINER_MAY_IMPORT = {"", "trainer"}
#: Interfaces a lower layer may import: the backend seam.
SEAMS = {"handyjobs.backends.base"}
#: Entry points that may import a higher layer, and what.
ENTRY_EXCEPTIONS = {
    ("handyjobs.__main__", "handyjobs.cli"),
    ("handyjobs.jobside.runner", "handyjobs.views.render"),
    ("handyjobs.jobside.waiting", "handyjobs.views.render"),
}
#: Folders whose modules may name a backend's words.
BACKEND_WORDS_ALLOWED = ("backends", "cli")
#: Modules that store a backend's own options as data (the record format: ``JobSpec.slurm``
#: holds what a job asked of Slurm, and the registry file has kept that key since it began).
BACKEND_DATA = {"handyjobs.core.records"}
#: Standard modules kept off the run-time path, and the modules that may import them.
COSTLY = {"typing", "dataclasses"}
COSTLY_ALLOWED = ("handyjobs.trainer", "handyjobs.cli.app")
LAZY_WHY = re.compile(
    r"#.*\b(lazy|lazily|start-up|startup|only when|only if|optional|plugin|pay|"
    r"imported here|import here|cycle|by name|costs?|ms\b|fork|torch)",
    re.I,
)


@dataclass
class Module:
    """One module of the package as the checks see it."""

    name: str
    path: Path
    lines: int
    tree: ast.Module
    text: list[str]
    imports: set[str] = field(default_factory=set)


def modules() -> dict[str, Module]:
    """Every module of the package, by dotted name."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        text = path.read_text().splitlines()
        found[name] = Module(name, path, len(text), ast.parse("\n".join(text)), text)
    for mod in found.values():
        mod.imports = {t for t in _imported(mod, found) if t != mod.name}
    return found


def _type_only(tree: ast.Module) -> set[int]:
    """Ids of the import nodes under ``if TYPE_CHECKING:``: no runtime dependency."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            found |= {id(n) for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom)}
    return found


def _imported(mod: Module, known: dict[str, Module]) -> Iterator[str]:
    """The package's modules this one imports at run time (``from a import b`` names ``a.b``
    if that is a module); imports only for type checkers do not count."""
    skip = _type_only(mod.tree)
    for node in ast.walk(mod.tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("handyjobs"):
                    yield _nearest(alias.name, known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if not node.module.startswith("handyjobs"):
                continue
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                yield full if full in known else _nearest(node.module, known)


def _nearest(name: str, known: dict[str, Module]) -> str:
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def layer_of(name: str) -> str:
    """The top folder of a module under the package ('' for the root modules)."""
    parts = name.split(".")
    if len(parts) == 2 and parts[1] not in LAYERS and parts[1] != "trainer":
        return ""
    return parts[1] if len(parts) > 1 else ""


def check_sizes(mods: dict[str, Module]) -> tuple[list[str], dict[str, str]]:
    """Root module count, module, class and function sizes."""
    bad = []
    root = [m for m in mods.values() if m.path.parent == PACKAGE]
    if len(root) > MAX_ROOT_MODULES:
        bad.append(f"{len(root)} modules at the package root (at most {MAX_ROOT_MODULES})")
    big_mod = max(mods.values(), key=lambda m: m.lines)
    big = {"module": (big_mod.lines, big_mod.name), "class": (0, "-"), "function": (0, "-")}
    for mod in mods.values():
        if mod.lines > MAX_MODULE_LINES:
            bad.append(f"{mod.name}: {mod.lines} lines (at most {MAX_MODULE_LINES})")
        for node in ast.walk(mod.tree):
            kind = (
                "class" if isinstance(node, ast.ClassDef)
                else "function" if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                else None
            )
            if kind is None:
                continue
            assert isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            limit = MAX_CLASS_LINES if kind == "class" else MAX_FUNCTION_LINES
            if size > big[kind][0]:
                big[kind] = (size, f"{mod.name}.{node.name}")
            if size > limit:
                bad.append(f"{mod.name}.{node.name}: {kind} of {size} lines (at most {limit})")
    measures = {k: f"{v[0]} lines ({v[1]})" for k, v in big.items()}
    measures["root modules"] = str(len(root))
    return bad, measures


def check_words(mods: dict[str, Module]) -> list[str]:
    """No module outside backends/ and cli/ names Slurm."""
    bad = []
    for mod in mods.values():
        if layer_of(mod.name) in BACKEND_WORDS_ALLOWED or mod.name in BACKEND_DATA:
            continue
        hits = [i + 1 for i, line in enumerate(mod.text) if "slurm" in line.lower()]
        if hits:
            bad.append(f"{mod.name} names Slurm on line(s) {', '.join(map(str, hits[:5]))}")
    return bad


def check_layers(mods: dict[str, Module]) -> list[str]:
    """No lower layer imports a higher one; the trainer imports only the root modules."""
    bad = []
    for mod in mods.values():
        here = layer_of(mod.name)
        for target in sorted(mod.imports):
            there = layer_of(target)
            if target in SEAMS or (mod.name, target) in ENTRY_EXCEPTIONS:
                continue
            if here == "trainer" or there == "trainer":
                if here == "trainer" and there not in TRAINER_MAY_IMPORT:
                    bad.append(f"{mod.name} (trainer) imports {target}")
                elif there == "trainer" and here not in ("trainer", ""):
                    bad.append(f"{mod.name} imports the trainer ({target})")
                continue
            if LAYERS.get(there, 0) > LAYERS.get(here, 0):
                bad.append(f"{mod.name} ({here or 'root'}) imports higher layer {target}")
    return bad


def check_cycles(mods: dict[str, Module]) -> list[str]:
    """No import cycle between modules (imports inside functions count too)."""
    graph = {m.name: {t for t in m.imports if t in mods} for m in mods.values()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            # A package's __init__ re-exporting its own module is not a cycle to untangle.
            if len(comp) > 1 and not _init_reexport(comp):
                cycles.append(" <-> ".join(sorted(comp)))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return [f"import cycle: {c}" for c in cycles]


def _init_reexport(comp: list[str]) -> bool:
    a, b = [*comp, "", ""][:2]
    return len(comp) == 2 and (a.startswith(b + ".") or b.startswith(a + "."))


def check_lazy(mods: dict[str, Module]) -> tuple[list[str], int]:
    """Each import inside a function says why it is there, in a comment near it."""
    bad, count = [], 0
    for mod in mods.values():
        for fn in ast.walk(mod.tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if not isinstance(node, ast.Import | ast.ImportFrom):
                    continue
                if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                    continue
                count += 1
                near = mod.text[max(0, node.lineno - 4) : node.lineno + 1]
                if not any(LAZY_WHY.search(line) for line in near):
                    bad.append(f"{mod.name}:{node.lineno}: import inside a function with no why")
    return bad, count


def check_costly(mods: dict[str, Module]) -> list[str]:
    """No module imports typing or dataclasses at its top level outside ``TYPE_CHECKING``."""
    bad = []
    for mod in mods.values():
        if mod.name.startswith(COSTLY_ALLOWED):
            continue
        skip = _type_only(mod.tree)
        for node in mod.tree.body:
            if id(node) in skip or not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            for name in names:
                if name and name.split(".")[0] in COSTLY:
                    bad.append(f"{mod.name}:{node.lineno}: imports {name} at run time")
    return bad


def main(argv: list[str]) -> int:
    """Run every check; print breaches (and with --report the measures)."""
    mods = modules()
    size_bad, measures = check_sizes(mods)
    lazy_bad, lazy_count = check_lazy(mods)
    bad = [*size_bad, *check_words(mods), *check_layers(mods), *check_cycles(mods), *lazy_bad]
    bad += check_costly(mods)
    if "--report" in argv or bad:
        for key, value in measures.items():
            print(f"largest {key}: {value}" if key != "root modules" else f"{key}: {value}")
        print(f"imports inside functions: {lazy_count}")
    for line in bad:
        print(f"layout: {line}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
