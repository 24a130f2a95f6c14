"""The ``>>>`` examples in boltzflow's docstrings run and print what they show.

Every module under ``boltzflow/`` whose source holds an example is imported and its docstrings
run with :mod:`doctest`; a module whose optional dependency is missing is skipped, naming it.
"""

import doctest
import importlib
from pathlib import Path

import pytest

import boltzflow

PACKAGE = Path(boltzflow.__file__).parent


def modules_with_examples() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if ">>>" in path.read_text(encoding="utf-8"):
            parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


MODULES = modules_with_examples()


def test_examples_are_found():
    assert len(MODULES) >= 10 and "boltzflow.flows.affine" in MODULES, MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_pass(name):
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] == "boltzflow":
            raise
        pytest.skip(f"{name} needs the optional dependency {exc.name!r}")
    tests = doctest.DocTestFinder().find(module, name)
    assert sum(len(t.examples) for t in tests) > 0, f"no examples found in {name}"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    for test in tests:
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
