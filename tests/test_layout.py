"""The package's structure: no import cycle between its modules, no function-level import of
its own modules (dispatch goes through spaces.space_for), every GTOPK_* variable declared
once in gtopk_mpi/config.py, and the README's knob table generated from those declarations."""

from __future__ import annotations

import ast
import graphlib
import re

import pytest
import tomllib

from gtopk_mpi import config

from mpi_launch import ROOT

PACKAGE = ROOT / "gtopk_mpi"


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def targets(module: str, node: ast.ImportFrom | ast.Import, known: set[str], is_package: bool) -> set[str]:
    """The package modules an import statement names."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in known}
    if node.level:
        base = module.split(".")
        base = base[: len(base) - node.level + (1 if is_package else 0)]
        where = ".".join(base + ([node.module] if node.module else []))
    else:
        where = node.module or ""
    found = {f"{where}.{a.name}" for a in node.names if f"{where}.{a.name}" in known}
    return found or ({where} if where in known else set())


def test_no_import_cycle_between_modules():
    mods = modules()
    known = set(mods)
    graph = {}
    for name, tree in mods.items():
        is_package = (PACKAGE / "/".join(name.split(".")[1:]) / "__init__.py").exists()
        deps = set()
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps |= targets(name, node, known, is_package)
        # a module inside a package cannot help running that package's __init__ first
        graph[name] = {d for d in deps if d != name and not name.startswith(d + ".")}
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        pytest.fail(f"import cycle: {' -> '.join(e.args[1])}")


def test_no_function_level_import_of_the_package():
    for name, tree in modules().items():
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("gtopk_mpi")):
                    pytest.fail(f"{name}.{fn.name} imports {'.' * node.level}{node.module or ''} inside a function")


def test_every_environment_variable_is_declared_in_config():
    macros = set()
    for path in (ROOT / "csrc").rglob("*"):
        if path.is_file():
            macros |= set(re.findall(r"\bGTOPK_[A-Z0-9_]+", path.read_text()))
    code = (p for d in ("gtopk_mpi", "scripts", "tests") for p in (ROOT / d).rglob("*") if p.suffix in (".py", ".sh"))
    files = [*ROOT.glob("*.py"), *ROOT.glob("*.md"), *ROOT.glob("docs/*.md"), ROOT / ".ci" / "run", *code]
    used = {}
    for path in files:
        for var in set(re.findall(r"\bGTOPK_[A-Z0-9_]+", path.read_text())) - macros:
            used.setdefault(var, path.relative_to(ROOT))
    declared = {k.name for k in config.KNOBS}
    undeclared = {v: str(p) for v, p in used.items() if v not in declared}
    assert not undeclared, f"GTOPK_* variables used but not declared in gtopk_mpi/config.py: {undeclared}"


def test_readme_knob_table_is_generated_from_config():
    readme = (ROOT / "README.md").read_text()
    assert config.markdown_table() in readme, "README's knob table differs from `python -m gtopk_mpi.config`"


def test_a_bad_knob_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("GTOPK_NUM_THREADS", "two")
    with pytest.raises(ValueError, match="GTOPK_NUM_THREADS='two': expected an int"):
        config.NUM_THREADS.get()
    monkeypatch.setenv("GTOPK_MPI_WITH_CUDA", "maybe")
    with pytest.raises(ValueError, match="expected one of auto, 0, 1"):
        config.WITH_CUDA.get()
    monkeypatch.setenv("GTOPK_YIELD", "0")
    assert config.YIELD.get() is False


def test_metadata_lives_in_pyproject_and_the_version_once():
    """pyproject.toml's [project] holds the metadata; the version is written only in
    gtopk_mpi/__init__.py (read by setuptools as a dynamic attr); setup.py builds extensions."""
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = meta["project"]
    assert project["name"] == "gtopk_mpi" and project["dynamic"] == ["version"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "gtopk_mpi.__version__"}
    assert set(project["optional-dependencies"]) >= {"torch", "bench"} and project["scripts"]
    setup_calls = [n for n in ast.walk(ast.parse((ROOT / "setup.py").read_text())) if isinstance(n, ast.Call)
                   and getattr(n.func, "id", "") == "setup"]
    assert [sorted(k.arg for k in c.keywords) for c in setup_calls] == [["cmdclass", "ext_modules", "zip_safe"]]
    import gtopk_mpi

    version = re.escape(gtopk_mpi.__version__)
    holders = [p for p in [*ROOT.glob("*.toml"), *ROOT.glob("*.py"), *PACKAGE.rglob("*.py")]
               if re.search(rf"""version\s*=\s*["']{version}["']|__version__\s*=""", p.read_text())]
    assert holders == [PACKAGE / "__init__.py"], holders
    manifest = (ROOT / "MANIFEST.in").read_text()
    assert "recursive-include csrc" in manifest


def test_the_package_ships_its_types():
    """PEP 561: py.typed and the compiled modules' stubs are package data, and the type
    checker that scripts/test.sh runs is configured for the package."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert set(meta["tool"]["setuptools"]["package-data"]["gtopk_mpi"]) >= {"py.typed", "*.pyi"}
    assert (ROOT / "gtopk_mpi" / "py.typed").exists()
    assert {p.stem for p in (ROOT / "gtopk_mpi").glob("*.pyi")} == {"_C", "_cuda_emu"}
    assert meta["tool"]["mypy"]["packages"] == ["gtopk_mpi"]
    assert ".venv/bin/mypy" in (ROOT / "scripts" / "test.sh").read_text()


def test_no_module_imports_another_modules_private_names():
    """A name with a leading underscore stays in its module (the compiled _C and _cuda_emu
    modules are modules, not names)."""
    mods = modules()
    for name, tree in mods.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("gtopk_mpi")):
                private = [a.name for a in node.names if a.name.startswith("_") and a.name not in ("_C", "_cuda_emu")]
                assert not private, f"{name} imports {private} from {'.' * node.level}{node.module or ''}"
