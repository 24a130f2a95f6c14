"""Shared fixtures: the alanine-dipeptide topology and MD-like perturbed configurations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("mdtraj")
pytest.importorskip("openmm")


@pytest.fixture(scope="session")
def alanine():
    from boltzflow.molecular.alanine import load_alanine_dipeptide

    return load_alanine_dipeptide("vacuum")


@pytest.fixture(scope="session")
def zmat(alanine):
    from boltzflow.coordinates.zmatrix import zmatrix_from_topology

    return zmatrix_from_topology(alanine.topology)


@pytest.fixture
def configs(alanine):
    """Eight perturbed, randomly rotated and translated copies of the crd structure, float64."""
    rng = np.random.default_rng(0)
    x = alanine.positions[None] + 0.01 * rng.standard_normal((8, 22, 3))
    q, _ = np.linalg.qr(rng.standard_normal((8, 3, 3)))
    q *= np.sign(np.linalg.det(q))[:, None, None]  # proper rotations only
    x = np.einsum("bij,baj->bai", q, x) + rng.standard_normal((8, 1, 3))
    return torch.as_tensor(x.reshape(8, -1), dtype=torch.float64)
