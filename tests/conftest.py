"""Shared pytest setup: one torch thread (CI machines are small and shared)."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def float64():
    """Make float64 the default dtype for one test, restoring the previous default after."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield torch.float64
    torch.set_default_dtype(previous)
