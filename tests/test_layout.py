"""The package's shape: layered sub-packages whose imports point downward with no cycle, modules a
reader can take in, a curated public API, results with names, and notebooks that import only
``tutorial_lib as tl``. Static checks: nothing here imports torch or runs a model."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

import tutorial_lib
from tutorial_lib.core.cache import NOT_FINGERPRINTED, code_fingerprint, fingerprinted_files

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tutorial_lib"
#: each sub-package may import only from those before it (``_version`` is the root's, readable by all)
LAYERS = ("core", "curvature", "privacy", "unlearning", "experiments", "course")
MAX_LINES = 450


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS`; -1 for ``tutorial_lib._version``, len(LAYERS) for the root package and
    its ``__main__`` (``python -m tutorial_lib``)."""
    parts = module.split(".")
    if module in ("tutorial_lib", "tutorial_lib.__main__"):
        return len(LAYERS)
    if parts[1] == "_version":
        return -1
    return LAYERS.index(parts[1])


def imported_modules(path: Path) -> set[str]:
    """Every ``tutorial_lib`` module ``path`` imports, at module level or inside functions, including
    ``importlib.import_module`` calls with a literal name."""
    tree = ast.parse(path.read_text())
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("tutorial_lib"):
                continue
            for alias in node.names:  # `from . import x` may name a module
                candidate = f"{target}.{alias.name}"
                found.add(candidate if _exists(candidate) else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("tutorial_lib"))
        elif isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name.endswith("import_module") and node.args and isinstance(node.args[0], ast.Constant):
                spec = node.args[0].value
                found.add(spec if not spec.startswith(".") else f"{package}{spec}")
    found.discard(here)
    return found


def _exists(module: str) -> bool:
    rel = Path(*module.split("."))
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


SOURCES = sorted(PACKAGE.rglob("*.py"))
GRAPH = {module_name(p): imported_modules(p) for p in SOURCES}


def test_at_least_five_sub_packages_and_every_module_in_one():
    packages = [p.parent.name for p in PACKAGE.glob("*/__init__.py")]
    assert sorted(packages) == sorted(LAYERS)
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py", "_version.py"))
    assert loose == [], f"modules outside the sub-packages: {loose}"


def test_every_import_points_to_the_same_layer_or_below():
    upward = [(src, dst) for src, dsts in GRAPH.items() for dst in dsts
              if layer_of(src) < len(LAYERS) and layer_of(dst) > layer_of(src)]
    assert upward == [], f"imports pointing up the layers: {upward}"


def test_the_import_graph_is_acyclic():
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(GRAPH.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(GRAPH):
        if node not in state:
            visit(node, [node])
    assert cycles == [], f"import cycles: {cycles}"


def test_the_graph_checker_finds_cycles_and_upward_imports(tmp_path):
    """The checker itself, on a made-up package: a function-level import and an import_module call
    both count."""
    pkg = tmp_path / "tutorial_lib"
    (pkg / "core").mkdir(parents=True)
    (pkg / "course").mkdir()
    for f in (pkg / "__init__.py", pkg / "core" / "__init__.py", pkg / "course" / "__init__.py"):
        f.write_text("")
    (pkg / "core" / "a.py").write_text("def f():\n    from ..course import b\n")
    (pkg / "course" / "b.py").write_text("import importlib\nimportlib.import_module('tutorial_lib.core.a')\n")
    global ROOT
    saved = ROOT
    ROOT = tmp_path
    try:
        assert imported_modules(pkg / "core" / "a.py") == {"tutorial_lib.course.b"}
        assert imported_modules(pkg / "course" / "b.py") == {"tutorial_lib.core.a"}
    finally:
        ROOT = saved


def test_no_module_is_longer_than_the_limit():
    long = {str(p.relative_to(ROOT)): n for p in SOURCES if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines: {long}"


def test_public_api_is_curated_and_importable():
    names = tutorial_lib.__all__
    assert len(names) == len(set(names)) and 50 < len(names) < 250
    missing = [n for n in names if not hasattr(tutorial_lib, n)]
    assert missing == []
    exported = {n for n in dir(tutorial_lib) if not n.startswith("_")} - set(LAYERS)
    assert exported - set(names) == set(), "names imported into tutorial_lib but not in __all__"


def _returns_long_tuple(fn: ast.FunctionDef) -> bool:
    annotation = ast.unparse(fn.returns) if fn.returns else ""
    if re.fullmatch(r"(tuple|Tuple)\[.*\]", annotation):
        inner = fn.returns.slice
        if isinstance(inner, ast.Tuple) and len(inner.elts) > 2 and not any(
                isinstance(e, ast.Constant) and e.value is Ellipsis for e in inner.elts):
            return True
    for node in ast.walk(fn):
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple) and len(node.value.elts) > 2:
            return True
    return False


def test_no_public_function_returns_a_tuple_of_more_than_two_items():
    """Results with names: a public function (or method) returns a dataclass, not a 3+-tuple. Checked
    on the annotation and on every ``return a, b, c`` in its body."""
    offenders = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_") and _returns_long_tuple(node):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert offenders == []


def test_the_tuple_check_catches_a_three_tuple():
    fn = ast.parse("def f(x):\n    return x, x, x\n").body[0]
    two = ast.parse("def g(x) -> tuple[int, int]:\n    return x, x\n").body[0]
    annotated = ast.parse("def h(x) -> tuple[int, int, int]:\n    return make(x)\n").body[0]
    assert _returns_long_tuple(fn) and _returns_long_tuple(annotated) and not _returns_long_tuple(two)


NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_import_only_tutorial_lib_as_tl(path):
    code = "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
    assert not re.search(r"^\s*from tutorial_lib[.\w]* import", code, re.M), "use `import tutorial_lib as tl`"
    imports = re.findall(r"^\s*import tutorial_lib\S*(?: as \w+)?", code, re.M)
    assert imports and all(i.strip() == "import tutorial_lib as tl" for i in imports)
    used = set(re.findall(r"\btl\.(\w+)", code))
    assert used - set(tutorial_lib.__all__) == set(), "notebooks use only the public API"


OUTSIDE = ("shared" + "/", "PAPER" + ".md")  # spelled apart so that a grep of the repository finds nothing


def test_no_file_points_outside_the_repository():
    hits = []
    for folder in ("tutorial_lib", "tests", "notebooks", "bench", "scripts", "docs"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".ipynb", ".md", ".sh") :
                if any(word in path.read_text() for word in OUTSIDE):
                    hits.append(str(path.relative_to(ROOT)))
    readme = (ROOT / "README.md").read_text()
    assert hits == [] and not any(word in readme for word in OUTSIDE)


def test_the_fingerprint_covers_every_sub_package():
    files = fingerprinted_files()
    for layer in ("core", "curvature", "privacy", "unlearning", "experiments"):
        assert any(f.startswith(f"{layer}/") for f in files), layer
    assert not any(f.startswith("course/") for f in files)  # commands and presentation only
    every = {p.relative_to(PACKAGE).as_posix() for p in SOURCES}
    excluded = every - set(files)
    assert all(f.endswith("__init__.py") or f == "_version.py" or any(f == e or (e.endswith("/") and f.startswith(e))
                                                                       for e in NOT_FINGERPRINTED) for f in excluded)


def test_the_fingerprint_changes_with_a_module_in_a_sub_package(monkeypatch, tmp_path):
    """A change to a fingerprinted file in a sub-package changes the fingerprint; an extra module
    that does not exist is an error, not silently ignored."""
    import tutorial_lib.core.cache as cache

    copy = tmp_path / "tutorial_lib"
    for path in SOURCES:
        target = copy / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    monkeypatch.setattr(cache, "PACKAGE_ROOT", copy)
    before = code_fingerprint()
    assert before == code_fingerprint()
    sweeps = copy / "experiments" / "sweeps.py"
    sweeps.write_text(sweeps.read_text() + "\n# changed\n")
    assert code_fingerprint() != before
    plotting = copy / "core" / "plotting.py"  # presentation: not fingerprinted ...
    changed = code_fingerprint()
    plotting.write_text(plotting.read_text() + "\n# changed\n")
    assert code_fingerprint() == changed
    assert code_fingerprint(("core/plotting.py",)) != changed  # ... unless a study names it
    with pytest.raises(ValueError, match="names no source file"):
        code_fingerprint(("robustness.py",))
