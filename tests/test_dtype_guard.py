"""The default-dtype guard in ``tests/conftest.py`` catches leaks (and lets clean tests pass)."""

from pathlib import Path

import pytest
import torch

CONFTEST = Path(__file__).with_name("conftest.py")


@pytest.fixture
def child(pytester):
    """A child pytest session with this suite's conftest."""
    pytester.makeconftest(CONFTEST.read_text())
    return pytester


def test_guard_fails_a_test_that_leaks_and_restores_the_dtype(child):
    child.makepyfile(
        test_leak="""
        import torch

        def test_leaks():
            torch.set_default_dtype(torch.float64)

        def test_after_leak_sees_float32():
            assert torch.get_default_dtype() == torch.float32

        def test_with_fixture(float64):
            assert torch.get_default_dtype() == torch.float64
        """
    )
    result = child.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, errors=1)  # test_leaks passes its body, fails in teardown
    result.stdout.fnmatch_lines(
        ["*test_leak.py::test_leaks changed torch's default dtype from torch.float32 to torch.f*"]
    )
    assert torch.get_default_dtype() == torch.float32


def test_guard_rejects_a_module_that_sets_the_dtype_at_import(child):
    child.makepyfile(
        test_import_leak="""
        import torch

        torch.set_default_dtype(torch.float64)

        def test_anything():
            pass
        """
    )
    result = child.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*importing test_import_leak.py changed torch's default dtype*"])
    assert torch.get_default_dtype() == torch.float32


def test_module_fixture_restores_after_the_module(child):
    child.makepyfile(
        test_a="""
        import pytest
        import torch

        pytestmark = pytest.mark.usefixtures("float64_module")

        def test_one():
            assert torch.get_default_dtype() == torch.float64

        def test_two():
            assert torch.get_default_dtype() == torch.float64
        """,
        test_b="""
        import torch

        def test_back_to_float32():
            assert torch.get_default_dtype() == torch.float32
        """,
    )
    child.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)
