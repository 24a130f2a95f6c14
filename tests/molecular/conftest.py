"""Fixtures: the vacuum target, the shipped MD sample, and an isolated MD cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("openmm")
pytest.importorskip("mdtraj")

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BOLTZFLOW_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def target():
    from boltzflow.molecular.target import AlanineDipeptideTarget

    return AlanineDipeptideTarget("vacuum")


@pytest.fixture(scope="session")
def md_sample(target):
    """Shipped MD frames ``[1500, 22, 3]`` (nm): 1000 from β/αR, 500 from αL-seeded runs."""
    return np.load(target.folder / "md_sample.npy")
