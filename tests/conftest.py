"""Shared pytest setup: one torch thread (CI machines are small and shared), float64 fixtures,
and a guard that fails any test or test module that leaves torch's default dtype changed.

Users run boltzflow in float32 (torch's default) unless they opt into float64, so a test that
sets the default dtype and does not restore it silently moves every later test onto the
float64 path. Tests that need float64 request the ``float64`` fixture (or ``float64_module``
for module-scoped fixtures) instead.
"""

import pytest
import torch

torch.set_num_threads(1)

pytest_plugins = ["pytester"]  # tests/test_dtype_guard.py runs the guard in a child session


def default_dtype_problem(before: torch.dtype, after: torch.dtype, where: str) -> str | None:
    """A message when ``where`` changed torch's default dtype from ``before`` to ``after``."""
    if after == before:
        return None
    return (
        f"{where} changed torch's default dtype from {before} to {after} without restoring it; "
        "request the `float64` fixture (or `float64_module`) instead of calling "
        "torch.set_default_dtype"
    )


@pytest.fixture(autouse=True)
def _default_dtype_guard(request):
    """Fail a test that leaves the default dtype changed (and restore it for the next test)."""
    before = torch.get_default_dtype()
    yield
    after = torch.get_default_dtype()
    problem = default_dtype_problem(before, after, request.node.nodeid)
    if problem:
        torch.set_default_dtype(before)
        pytest.fail(problem, pytrace=False)


#: the longest test files, handed to the workers first so that they do not finish last
#: (`-n 2 --dist loadfile` in pyproject: the tutorials' docs build alone takes about 9 minutes)
LONGEST_FIRST = (
    "tests/test_docs_site.py",
    "tests/cli/test_run_smoke.py",
    "tests/sampling/test_lattice_samplers.py",
    "tests/training/test_spline_training.py",
    "tests/flows/test_lattice_flows.py",
)


def pytest_collection_modifyitems(config, items):
    """Order the collected tests so that the longest files come first (stable otherwise)."""

    def rank(item):
        path = item.nodeid.split("::", 1)[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """Turn a test module that changes the default dtype at import into a collection error."""
    before = torch.get_default_dtype()
    report = yield
    after = torch.get_default_dtype()
    problem = default_dtype_problem(before, after, f"importing {collector.nodeid}")
    if problem:
        torch.set_default_dtype(before)
        report.outcome = "failed"
        report.longrepr = problem
    return report


@pytest.fixture
def float64():
    """Make float64 the default dtype for one test, restoring the previous default after."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield torch.float64
    torch.set_default_dtype(previous)


@pytest.fixture(scope="module")
def float64_module():
    """Make float64 the default dtype for a whole module (its tests and module-scoped fixtures),
    restoring the previous default after the module's last test."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield torch.float64
    torch.set_default_dtype(previous)
