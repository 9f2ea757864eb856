"""The map matches the code: no import loop, unique class names, one TrainLoop builder, plain subcommand imports,
and every path and dotted name README.md and docs/DESIGN.md mention exists."""

from __future__ import annotations

import ast
import importlib
import re
from collections import defaultdict
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("perkunas_ray", "actors", "deployments")
DOCS = ("README.md", "docs/DESIGN.md")


def product_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every product module."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = product_modules()
TREES = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in MODULES.items()}


def imported_modules(name: str) -> set[str]:
    """The product modules `name` imports, at module level or inside functions (both run at some point)."""
    found = set()
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in MODULES)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from pkg import module` imports the module, else pkg itself
                target = f"{node.module}.{alias.name}"
                found.add(target if target in MODULES else node.module)
    return {m for m in found if m in MODULES and m != name}


def import_cycles() -> list[list[str]]:
    """Strongly connected components of more than one module in the import graph (Tarjan)."""
    graph = {name: sorted(imported_modules(name)) for name in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in graph:
        if name not in index:
            visit(name)
    return cycles


def test_no_import_loop_in_product_code() -> None:
    # A package that imports its own sub-modules (perkunas_ray.cli) is not a loop: the sub-modules never import it.
    assert import_cycles() == []


def test_class_names_are_unique_in_product_code() -> None:
    owners = defaultdict(list)
    for name, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                owners[node.name].append(name)
    assert {cls: mods for cls, mods in owners.items() if len(mods) > 1} == {}


def test_train_loop_is_built_in_one_place() -> None:
    builders = [name for name, tree in TREES.items() for node in ast.walk(tree)
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "TrainLoop"]
    assert builders == ["perkunas_ray.stream.build"]


def test_subcommands_are_plain_imports() -> None:
    users = [name for name in MODULES if name.startswith("perkunas_ray.cli")
             if "importlib" in MODULES[name].read_text(encoding="utf-8")]
    assert users == []


def doc_references(text: str) -> tuple[set[str], set[str]]:
    """(repo paths, dotted names) a document mentions in backticks, or in its layout block's tree."""
    paths, dotted = set(), set()
    roots = "|".join((*PACKAGES, "tests", "dashboards", "docs", r"\.ci"))
    core = "|".join(p.name for p in (ROOT / "perkunas_ray").iterdir() if p.is_dir() and p.name != "__pycache__")
    for code in re.findall(r"`([^`\n]+)`", text):
        for word in code.split():
            word = word.strip("(),;")
            if re.match(rf"^({roots})/[\w./-]*$", word):
                paths.add(word)
            elif re.match(rf"^({core})/[\w./-]*$", word):  # `engine/cpu_kernels.py`: inside perkunas_ray/
                paths.add(f"perkunas_ray/{word}")
            elif re.match(rf"^({'|'.join(PACKAGES)})(\.\w+)+(:\w+)?(\(.*)?$", word):
                dotted.add(word.split("(")[0])
    # The README's layout tree: top-level entries, and perkunas_ray/'s entries indented under it.
    for block in re.findall(r"```\n(pyproject\.toml.*?)```", text, re.S):
        parent = ""
        for line in block.splitlines():
            entry = line.split()[0] if line.strip() else ""
            if not entry or entry.startswith(("(", "-")):
                continue
            if not line.startswith(" "):
                parent = entry if entry.endswith("/") else ""
                paths.add(entry)
            elif line.startswith("  ") and not line.startswith("   ") and parent:
                paths.update(f"{parent}{e}" for e in re.split(r",\s*", line.split("  ")[1].strip())
                             if re.match(r"^[\w./]+$", e) and ("." in e or e.endswith("/")))
    return paths, dotted


@pytest.mark.parametrize("doc", DOCS)
def test_every_path_and_name_a_document_mentions_exists(doc: str) -> None:
    paths, dotted = doc_references((ROOT / doc).read_text(encoding="utf-8"))
    assert len(paths) > 10 or doc != "README.md", paths  # the parser still finds the README's map
    missing = sorted(p for p in paths if not (ROOT / p.replace("*", "")).exists() and "*" not in p)
    assert missing == [], f"{doc} names paths that do not exist"
    unresolved = []
    for name in sorted(dotted):
        module_name, _, attribute = name.partition(":")
        parts = module_name.split(".")
        for cut in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            try:
                for attr in [*parts[cut:], *([attribute] if attribute else [])]:
                    obj = getattr(obj, attr)
            except AttributeError:
                unresolved.append(name)
            break
        else:
            unresolved.append(name)
    assert unresolved == [], f"{doc} names modules or attributes that do not exist"
