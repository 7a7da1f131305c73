"""The layout rules of docs/architecture.md, checked on the source: no import cycles, no
private name imported across modules, small modules and functions, cheap imports."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import embedkit

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"embedkit": ROOT / "embedkit"}
PLUGINS = {p.name: p for p in (ROOT / "plugins").iterdir() if (p / "__init__.py").is_file()}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 50  # body lines, the docstring not counted: one screen
HEAVY = ("torch", "faiss", "pyarrow", "pandas", "timm", "PIL", "ray")


def module_files(packages: dict[str, Path]) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``packages``."""
    found = {}
    for top, folder in packages.items():
        for file in sorted(folder.rglob("*.py")):
            parts = [top, *file.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = file
    return found


EMBEDKIT = module_files(PACKAGES)
EVERYTHING = {**EMBEDKIT, **module_files(PLUGINS)}


def absolute(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an ``import from`` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    is_package = EVERYTHING[module].name == "__init__.py"
    base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str) -> list[tuple[str, str | None, int]]:
    """``(imported module, imported name or None, line)`` for every import in ``module``,
    at any depth (an import inside a function still ties the two modules)."""
    tree = ast.parse(EVERYTHING[module].read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = absolute(module, node)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in EVERYTHING:  # `from pkg import module`
                    out.append((submodule, None, node.lineno))
                else:
                    out.append((source, alias.name, node.lineno))
    return out


def internal_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module in EMBEDKIT:
        graph[module] = {target for target, _, _ in imports(module) if target in EMBEDKIT}
        graph[module].discard(module)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_no_import_cycles():
    cycle = find_cycle(internal_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def private(name: str | None) -> bool:
    return bool(name) and name.startswith("_") and not name.startswith("__")


def private_uses(module: str) -> list[str]:
    """Private names this module takes from another internal module: imported by name,
    or read as an attribute of an imported module."""
    found = []
    aliases: dict[str, str] = {}
    for target, name, line in imports(module):
        if target == module or target.split(".")[0] not in {"embedkit", *PLUGINS}:
            continue
        if private(name) or any(private(part) for part in target.split(".")):
            found.append(f"{module}:{line} imports {target}.{name or ''}")
    tree = ast.parse(EVERYTHING[module].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in EVERYTHING:
                    aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                full = f"{absolute(module, node)}.{alias.name}"
                if full in EVERYTHING:
                    aliases[alias.asname or alias.name] = full
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and aliases[node.value.id] != module
            and private(node.attr)
        ):
            found.append(f"{module}:{node.lineno} reads {aliases[node.value.id]}.{node.attr}")
    return found


def test_no_private_name_crosses_a_module():
    found = [use for module in EVERYTHING for use in private_uses(module)]
    assert not found, "private names used across modules:\n" + "\n".join(found)


def test_the_private_check_catches_both_forms(tmp_path, monkeypatch):
    package = tmp_path / "embedkit"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("_secret = 1\n")
    (package / "b.py").write_text("from embedkit.a import _secret\n")
    (package / "c.py").write_text("from embedkit import a\nx = a._secret\n")
    monkeypatch.setattr(sys.modules[__name__], "EVERYTHING", module_files({"embedkit": package}))
    assert private_uses("embedkit.b") == ["embedkit.b:1 imports embedkit.a._secret"]
    assert private_uses("embedkit.c") == ["embedkit.c:2 reads embedkit.a._secret"]
    assert private_uses("embedkit.a") == []


def test_modules_are_small_and_say_what_they_own():
    for file in EVERYTHING.values():
        lines = len(file.read_text().splitlines())
        assert lines <= MAX_MODULE_LINES, f"{file.relative_to(ROOT)} has {lines} lines"
        doc = ast.get_docstring(ast.parse(file.read_text()))
        assert doc, f"{file.relative_to(ROOT)} has no module docstring saying what it owns"


def body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    first = node.body[0]
    has_doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
    start = first.end_lineno + 1 if has_doc and len(node.body) > 1 else node.body[0].lineno
    return node.end_lineno - start + 1


def test_functions_read_in_one_screen():
    long = []
    for file in EVERYTHING.values():
        for node in ast.walk(ast.parse(file.read_text())):
            function = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            if function and body_lines(node) > MAX_FUNCTION_LINES:
                long.append(f"{file.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: " + ", ".join(long)


def loaded_after(code: str) -> list[str]:
    """The heavy top-level packages a fresh interpreter has imported after ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    modules = json.loads(out.strip().splitlines()[-1])
    return sorted({m.split(".")[0] for m in modules} & set(HEAVY))


def test_import_embedkit_is_cheap():
    assert loaded_after("import embedkit") == []


@pytest.mark.parametrize(
    ("argv", "allowed"),
    [(["--help"], []), (["backbones"], []), (["embed", "--help"], [])],
)
def test_cli_starts_without_heavy_imports(argv, allowed):
    code = (
        "import contextlib, io\nfrom embedkit.cli import main\n"
        f"with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    try:\n        main({argv!r})\n    except SystemExit:\n        pass"
    )
    assert loaded_after(code) == allowed


def test_every_lazy_export_resolves():
    packages = sorted(m for m in EMBEDKIT if m.count(".") == 1 and m != "embedkit.__main__")
    for package in ("embedkit", *packages):
        module = __import__(package, fromlist=["*"])
        for name in getattr(module, "__all__", []):
            assert getattr(module, name) is not None, f"{package}.{name}"


def test_public_api_kept_its_names():
    before = """AttributeVector Backbone BackboneError BackboneInfo BackboneNotFound EmbedResult
    EmbedkitError InputError KMeansResult LatentDataset LatentWriter LoadedIndex PluginError
    analogy analogy_grid apply_vector attribute_sweep attribute_vector attribute_vectors
    broken_plugins build_index centroids embed hookimpl interpolate interpolation_strip kmeans
    list_backbones load_backbone load_image load_index load_vectors neighbors neighbour_grid
    open_latents read_source render_latents save_vectors vectors_for_ids write_latents"""
    assert set(before.split()) <= set(embedkit.__all__)
    assert set(dir(embedkit)) >= set(embedkit.__all__)


#: packages in data-flow order; a package imports only from lower layers (docs/architecture.md)
LAYERS = [
    {
        "embedkit",
        "embedkit.version",
        "embedkit.lazy",
        "embedkit.errors",
        "embedkit.files",
        "embedkit.location",
        "embedkit.device",
        "embedkit.ray_support",
    },
    {"embedkit.images"},
    {"embedkit.plugins"},
    {"embedkit.store"},
    {"embedkit.pipeline", "embedkit.index", "embedkit.algebra"},
    {"embedkit.curation"},
    {"embedkit.probes"},
    {"embedkit.viz"},
    {"embedkit.serve"},
    {"embedkit.demo"},
    {"embedkit.cli"},
    {"embedkit.__main__"},
]


def package_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_packages_follow_the_data_flow():
    layer = {package: n for n, packages in enumerate(LAYERS) for package in packages}
    assert set(map(package_of, EMBEDKIT)) == set(layer), "a package is missing from LAYERS"
    wrong = []
    for module, targets in internal_graph().items():
        here = package_of(module)
        for target in targets:
            there = package_of(target)
            upward = layer[there] > layer[here]
            sideways = layer[there] == layer[here] and there != here and layer[here] > 0
            if upward or sideways:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "imports against the flow:\n" + "\n".join(sorted(wrong))
