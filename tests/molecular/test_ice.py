"""Ice XI with 16 rigid TIP4P-Ew waters: the System, energies and forces through the rigid map
against OpenMM on the atom positions, and MD that keeps the rigid geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from boltzflow.coordinates.quaternion import tangent_basis
from boltzflow.coordinates.rigid import generalized_forces, rigid_to_atoms, rigid_view
from boltzflow.energies.openmm import kT_kJ_per_mol

D = torch.float64


@pytest.fixture(scope="module")
def ice_target():
    from boltzflow.molecular.ice import IceXITarget

    return IceXITarget(100.0, platform="Reference")


def _perturbed(target, n=3, seed=0, dr=0.01, dq=0.05):
    """Thermal-size random displacements and rotations of the crystal, unit quaternions."""
    g = torch.Generator().manual_seed(seed)
    v = rigid_view(target.ice.rigid).expand(n, -1, -1).clone()
    v[..., :3] += dr * torch.randn(v[..., :3].shape, generator=g, dtype=D)
    v[..., 3:] += dq * torch.randn(v[..., 3:].shape, generator=g, dtype=D)
    v[..., 3:] /= v[..., 3:].norm(dim=-1, keepdim=True)
    return v.reshape(n, -1)


def _openmm(target, positions):
    """Energies (kJ/mol) and forces of particle positions, straight from an OpenMM Context
    that places the virtual sites itself."""
    import openmm

    ctx = openmm.Context(
        target.ice.system,
        openmm.VerletIntegrator(0.001),
        openmm.Platform.getPlatformByName("Reference"),
    )
    e, f = [], []
    for p in positions:
        ctx.setPositions(p)
        ctx.computeVirtualSites()
        s = ctx.getState(getEnergy=True, getForces=True)
        e.append(s.getPotentialEnergy()._value)
        f.append(s.getForces(asNumpy=True)._value)
    return np.array(e), np.array(f)


def test_the_system_is_rigid_periodic_tip4p_ew(ice_target):
    import openmm

    ice = ice_target.ice
    system = ice.system
    assert ice_target.n_molecules == 16 and ice_target.event_shape == (112,)
    assert system.getNumParticles() == 64 and system.getNumConstraints() == 48
    assert sum(system.isVirtualSite(i) for i in range(64)) == 16
    assert system.usesPeriodicBoundaryConditions()
    nb = [f for f in system.getForces() if isinstance(f, openmm.NonbondedForce)][0]
    assert nb.getNonbondedMethod() == openmm.NonbondedForce.PME
    np.testing.assert_allclose(ice.box, (0.89846, 0.77808, 0.73358), atol=1e-9)
    a = system.getDefaultPeriodicBoxVectors()
    off = [a[i][j]._value for i in range(3) for j in range(3) if i != j]
    assert off == [0.0] * 6  # orthorhombic


def test_start_structure_has_the_constraint_geometry(ice_target):
    """Each vendored water, fitted onto the body frame, meets every constraint to 1e-6 nm and
    M sits where OpenMM's virtual site puts it."""
    ice = ice_target.ice
    pos = ice.positions
    for k in range(ice.system.getNumConstraints()):
        i, j, d = ice.system.getConstraintParameters(k)
        assert abs(np.linalg.norm(pos[i] - pos[j]) - d._value) < 1e-6
    import openmm

    ctx = openmm.Context(
        ice.system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference")
    )
    ctx.setPositions(pos)
    ctx.computeVirtualSites()
    placed = ctx.getState(getPositions=True).getPositions(asNumpy=True)._value
    np.testing.assert_allclose(placed, pos, atol=1e-9, rtol=0)
    # the fit moved the GenIce coordinates (3 decimals) by no more than their rounding
    assert ice_target.ice.rigid.shape == (1, 112)


def test_energies_through_the_rigid_map_equal_openmm(ice_target):
    x = _perturbed(ice_target)
    e_ref, _ = _openmm(ice_target, ice_target.to_particles(x).numpy())
    u = ice_target.energy(x)
    torch.testing.assert_close(u, torch.as_tensor(e_ref / kT_kJ_per_mol(100.0)), rtol=1e-9, atol=0)
    # a wrong temperature is not within that tolerance
    assert not torch.allclose(u, torch.as_tensor(e_ref / kT_kJ_per_mol(101.0)), rtol=1e-4)
    # q -> -q: same energy
    v = rigid_view(x).clone()
    v[..., 3:] *= -1
    torch.testing.assert_close(ice_target.energy(v.reshape(3, -1)), u, rtol=1e-12, atol=0)
    # at_temperature: 250 K is u * 100/250
    hot = ice_target.at_temperature(2.5)
    torch.testing.assert_close(hot.energy(x), u / 2.5, rtol=1e-12, atol=0)


def test_forces_autograd_torque_and_finite_differences(ice_target):
    r"""$\partial u/\partial x$ by autograd through the map equals central differences along
    tangent directions (positions and $S^3$) and the torque formula on OpenMM's forces with the
    M rows zeroed; keeping the M rows (their force counted twice) is detected."""
    x = _perturbed(ice_target, n=1, seed=1).requires_grad_(True)
    (grad,) = torch.autograd.grad(ice_target.energy(x).sum(), x)
    v = rigid_view(x.detach())
    g = torch.Generator().manual_seed(5)
    for _ in range(2):
        d = torch.randn(1, 16, 7, generator=g, dtype=D)
        d[..., 3:] = (tangent_basis(v[..., 3:]) @ d[..., 4:, None])[..., 0]
        h = 1e-5

        def u_at(s, d=d):
            w = v.clone()
            w[..., :3] += s * d[..., :3]
            q = v[..., 3:] + s * d[..., 3:]
            w[..., 3:] = q / q.norm(dim=-1, keepdim=True)
            return float(ice_target.energy(w.reshape(1, -1)))

        fd = (u_at(h) - u_at(-h)) / (2 * h)
        ad = float((grad * d.reshape(1, -1)).sum())
        assert abs(fd - ad) < 1e-5 * (1 + abs(ad)), (fd, ad)
    _, f = _openmm(ice_target, ice_target.to_particles(x.detach()).numpy())
    kt = kT_kJ_per_mol(100.0)
    sites = torch.as_tensor(f[0][ice_target.ice.geometry.particles] / kt)[None]  # (1, 16, 4, 3)
    atoms_only = sites.clone()
    atoms_only[..., 3, :] = 0.0
    torch.testing.assert_close(
        generalized_forces(x.detach(), atoms_only, ice_target.body), -grad, rtol=1e-6, atol=1e-6
    )
    doubled = generalized_forces(x.detach(), sites, ice_target.body)
    assert not torch.allclose(doubled, -grad, rtol=1e-3, atol=1e-3)


def test_md_keeps_the_rigid_geometry_and_is_cached(tmp_path):
    """2 ps of Langevin MD at 100 K (CPU platform): every stored frame (float32) meets the
    constraints to 1e-6 nm, M is on its virtual site, and the fitted rigid states give the
    frame back; the trajectory is cached on disk (`$BOLTZFLOW_CACHE/md`)."""
    import os
    from pathlib import Path

    from boltzflow.molecular.ice import IceXITarget

    t = IceXITarget(100.0, md_ns=0.002, md_interval_ps=0.1, md_equilibration_ps=0.5, md_seed=3)
    (x,) = t.md_states([100.0])
    assert x.shape == (20, 112) and x.dtype == D
    (path,) = (Path(os.environ["BOLTZFLOW_CACHE"]) / "md").glob("*.npy")
    frames = np.load(path).astype(np.float64)
    system = t.ice.system
    for k in range(system.getNumConstraints()):
        i, j, d = system.getConstraintParameters(k)
        err = np.abs(np.linalg.norm(frames[:, i] - frames[:, j], axis=-1) - d._value)
        assert err.max() < 1e-6, (k, err.max())
    atoms = rigid_to_atoms(x, t.body).numpy()
    np.testing.assert_allclose(atoms, frames[:, t.ice.geometry.particles], atol=1e-6, rtol=0)
    assert float(t.energy(x).std()) > 0  # the frames move
    torch.testing.assert_close(t.md_states([100.0])[0], x, atol=0, rtol=0)  # from the cache


def test_energies_through_the_energy_pool_equal_in_process(ice_target):
    """The same rigid states evaluated in a worker process of the OpenMM pool."""
    from boltzflow.molecular.ice import IceXITarget

    x = _perturbed(ice_target, n=4, seed=2)
    pooled = IceXITarget(100.0, platform="Reference", workers=1)
    try:
        assert pooled.pool is not None
        torch.testing.assert_close(pooled.energy(x), ice_target.energy(x), rtol=1e-12, atol=0)
    finally:
        pooled.close()


def test_the_shipped_reference_is_read_through_the_energy_hooks(ice_target):
    """The MBAR reference that targeted runs compare with (their z-scores), read from
    `reference.json` through the Energy hooks."""
    import json

    shipped = json.loads((ice_target.folder / "reference.json").read_text())
    assert ice_target.exact_free_energy("delta_f_per_molecule") == shipped["delta_f_per_molecule"]
    assert ice_target.reference_stderr("delta_f_per_molecule") == shipped["stderr_per_molecule"]
    assert 0 < shipped["stderr_per_molecule"] < 0.05
    with pytest.raises(KeyError, match="no reference for 'delta_f'"):
        ice_target.exact_free_energy("delta_f")
    assert torch.equal(ice_target.reference_state, ice_target.ice.rigid[0])


@pytest.mark.slow
@pytest.mark.long  # the MD alone takes about 6 minutes: `python -m pytest -m slow`
def test_the_report_checks_reweighted_energies_against_md(ice_target):
    """`ice.json` carries the reference and the MD check of the target state (0.5 ns of MD at
    100 K, several minutes on one core): MD frames weighted uniformly reproduce MD's own mean
    energy to rounding, while the same frames with log-weights tilted towards high energies
    are rejected by more than 3 standard errors."""
    import json

    shipped = json.loads((ice_target.folder / "reference.json").read_text())
    md = ice_target.training_data("md")
    data = ice_target.report_data(md, torch.zeros(md.shape[0], dtype=torch.float64))["ice.json"]
    assert data["mbar_reference"] == shipped["delta_f_per_molecule"]
    check = data["mean_potential_energy_per_molecule"]
    assert check["reweighted"]["mean"] == pytest.approx(check["md"]["mean"], abs=1e-9), check
    assert abs(check["z_score"]) < 1e-6, check
    energy = torch.as_tensor(ice_target.potential_energy(md) / ice_target.n_molecules)
    tilt = 2.0 * (energy - energy.mean()) / energy.std()
    tilted = ice_target.report_data(md, tilt)["ice.json"]["mean_potential_energy_per_molecule"]
    assert tilted["z_score"] > 3, tilted
