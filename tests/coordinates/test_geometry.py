"""Geometry primitives against mdtraj and against their own inverse (NeRF)."""

from __future__ import annotations

import math

import numpy as np
import torch

from boltzflow.coordinates.geometry import angle, dihedral, distance, place_atom


def test_angles_and_dihedrals_match_mdtraj(alanine, configs):
    import mdtraj

    traj = mdtraj.Trajectory(configs.reshape(-1, 22, 3).numpy(), alanine.topology)
    quads = np.array([[4, 6, 8, 14], [6, 8, 14, 16], [10, 8, 14, 6], [0, 1, 4, 6]])
    triples = np.array([[4, 6, 8], [6, 8, 14], [9, 8, 10]])
    p = configs.reshape(-1, 22, 3)
    ours = torch.stack([dihedral(*(p[:, a] for a in q)) for q in quads], -1)
    np.testing.assert_allclose(ours.numpy(), mdtraj.compute_dihedrals(traj, quads), atol=1e-5)
    ours = torch.stack([angle(*(p[:, a] for a in t)) for t in triples], -1)
    np.testing.assert_allclose(ours.numpy(), mdtraj.compute_angles(traj, triples), atol=1e-5)
    d = distance(p[:, 6], p[:, 8])
    np.testing.assert_allclose(d.numpy(), mdtraj.compute_distances(traj, [[6, 8]])[:, 0], atol=1e-6)


def test_dihedral_is_reversal_symmetric_and_mirror_antisymmetric(configs):
    p = configs.reshape(-1, 22, 3)
    t = dihedral(p[:, 4], p[:, 6], p[:, 8], p[:, 14])
    torch.testing.assert_close(dihedral(p[:, 14], p[:, 8], p[:, 6], p[:, 4]), t)
    m = p * torch.tensor([-1.0, 1.0, 1.0], dtype=p.dtype)
    torch.testing.assert_close(dihedral(m[:, 4], m[:, 6], m[:, 8], m[:, 14]), -t)


def test_place_atom_inverts_internal_coordinates():
    g = torch.Generator().manual_seed(1)
    xj, xk, xl = (torch.randn(50, 3, generator=g, dtype=torch.float64) for _ in range(3))
    b = 0.1 + torch.rand(50, generator=g, dtype=torch.float64)
    th = 0.2 + (math.pi - 0.4) * torch.rand(50, generator=g, dtype=torch.float64)
    tau = math.pi * (2 * torch.rand(50, generator=g, dtype=torch.float64) - 1)
    xi = place_atom(xj, xk, xl, b, th, tau)
    torch.testing.assert_close(distance(xi, xj), b)
    torch.testing.assert_close(angle(xi, xj, xk), th)
    torch.testing.assert_close(dihedral(xi, xj, xk, xl), tau)
    # improper reference (l bonded to j) works the same way
    xi2 = place_atom(xj, xk, xj + (xl - xk), b, th, tau)
    torch.testing.assert_close(dihedral(xi2, xj, xk, xj + (xl - xk)), tau)
