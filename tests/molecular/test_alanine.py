"""Alanine-dipeptide systems, backbone dihedrals and the state definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from boltzflow.molecular import alanine as ala


@pytest.mark.parametrize("solvent", ["vacuum", "implicit"])
def test_systems_match_openmmtools_settings(solvent):
    import openmm

    mol = ala.load_alanine_dipeptide(solvent)
    names = {type(f).__name__ for f in mol.system.getForces()}
    assert mol.system.getNumParticles() == 22 and mol.system.getNumConstraints() == 0
    nb = next(f for f in mol.system.getForces() if isinstance(f, openmm.NonbondedForce))
    assert nb.getNonbondedMethod() == openmm.NonbondedForce.NoCutoff
    assert ("CustomGBForce" in names or "GBSAOBCForce" in names) == (solvent == "implicit")
    assert mol.positions.shape == (22, 3)
    with pytest.raises(ValueError, match="unknown solvent"):
        ala.load_alanine_dipeptide("water")


def test_phi_psi_match_mdtraj(md_sample):
    import mdtraj

    mol = ala.load_alanine_dipeptide("vacuum")
    traj = mdtraj.Trajectory(md_sample[:200], mol.topology)
    (idx_phi, phi), (idx_psi, psi) = mdtraj.compute_phi(traj), mdtraj.compute_psi(traj)
    assert tuple(idx_phi[0]) == ala.PHI_ATOMS and tuple(idx_psi[0]) == ala.PSI_ATOMS
    ours = ala.phi_psi(torch.as_tensor(md_sample[:200], dtype=torch.float64))
    np.testing.assert_allclose(ours[0].numpy(), phi[:, 0], atol=1e-5)
    np.testing.assert_allclose(ours[1].numpy(), psi[:, 0], atol=1e-5)


def test_states_partition_the_torus_with_documented_boundaries():
    grid = torch.linspace(-math.pi, math.pi, 181, dtype=torch.float64)
    phi, psi = torch.meshgrid(grid, grid, indexing="ij")
    a, r, b = ala.in_alpha_l(phi), ala.in_alpha_r(phi, psi), ala.in_beta(phi, psi)
    assert ((a.int() + r.int() + b.int()) == 1).all()
    deg = torch.deg2rad(torch.tensor([0.0, 1.0, 119.0, 120.0], dtype=torch.float64))
    assert ala.in_alpha_l(deg).tolist() == [False, True, True, False]
    psi_b = torch.deg2rad(torch.tensor([-125.0, -124.0, 75.0, 76.0], dtype=torch.float64))
    phi_b = torch.full_like(psi_b, math.radians(-70))
    assert ala.in_alpha_r(phi_b, psi_b).tolist() == [False, True, True, False]
    assert ala.in_alpha_r(torch.tensor([math.radians(130.0)]), torch.tensor([0.0])).item()


def test_md_sample_visits_all_three_states(md_sample):
    phi, psi = ala.phi_psi(torch.as_tensor(md_sample, dtype=torch.float64))
    for fn in (ala.in_alpha_r, ala.in_beta):
        assert fn(phi, psi).any()
    assert ala.in_alpha_l(phi[1000:]).float().mean() > 0.3  # the αL-seeded frames
    assert not ala.in_alpha_l(phi[:1000]).any()  # plain 300 K MD from β does not reach αL
