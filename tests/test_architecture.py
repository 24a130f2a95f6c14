"""The package's layering, read from the source: who may import whom, and module sizes.

Imports are collected with :mod:`ast` from every ``import`` statement in a module, at module
level and inside functions alike (a function-level import is still a dependency).
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "boltzflow"
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of every boltzflow module imported anywhere in ``path``."""
    tree = ast.parse(path.read_text())
    here = _module_name(path).split(".")
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here if is_pkg else here[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return {m for m in out if m == "boltzflow" or m.startswith("boltzflow.")}


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _edges(src_pkg: str, dst_pkg: str) -> list[str]:
    return sorted(
        f"{mod} -> {dep}"
        for mod, deps in _graph().items()
        if _in(mod, src_pkg)
        for dep in deps
        if _in(dep, dst_pkg)
    )


def test_import_collector_sees_function_level_and_relative_imports():
    """The checker itself: a function-level and a relative import are both found."""
    pkg = ROOT / "boltzflow" / "sampling" / "runners.py"
    assert "boltzflow.sampling.reweighting" in _imports(pkg)
    assert any(_in(d, "boltzflow.sampling") for d in _imports(PACKAGE / "runs" / "pipeline.py"))


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ("boltzflow.training", "boltzflow.sampling"),  # samplers may train; trainers never sample
        ("boltzflow.molecular", "boltzflow.runs.pipeline"),
        ("boltzflow.energies", "boltzflow.reporting"),
        ("boltzflow.energies", "boltzflow.reporting.figures"),
        ("boltzflow.energies", "boltzflow.reporting.figures_bayes"),
        ("boltzflow.energies", "boltzflow.reporting.idata"),
        ("boltzflow.molecular", "boltzflow.reporting"),
        ("boltzflow.molecular", "boltzflow.cli"),
    ],
)
def test_no_forbidden_imports(src, dst):
    assert _edges(src, dst) == []


def test_energies_do_not_plot_or_write_files():
    offenders = []
    for p in sorted((PACKAGE / "energies").rglob("*.py")):
        text = p.read_text()
        if "matplotlib" in text or "savefig" in text or "to_netcdf" in text:
            offenders.append(p.name)
    assert offenders == []


def test_library_modules_stay_small():
    big = {
        str(p.relative_to(ROOT)): n
        for p in sorted(PACKAGE.rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert big == {}


def test_hybrid_takes_at_most_eight_arguments():
    from boltzflow.sampling.hybrid import hybrid

    assert len(inspect.signature(hybrid).parameters) <= 8
