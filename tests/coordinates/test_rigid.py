"""Rigid-water coordinates: TIP4P-Ew geometry from an OpenMM System, round trips, the constant
metric of the map (the documented measure) and generalized forces against autograd, float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from boltzflow.coordinates.quaternion import random_quaternion, tangent_basis
from boltzflow.coordinates.rigid import (
    atoms_to_rigid,
    flat_rigid,
    generalized_forces,
    rigid_to_atoms,
    rigid_view,
    rigid_water_geometry,
)

D = torch.float64


def _water_system(n=3, rigid=True):
    """`n` TIP4P-Ew waters (OpenMM's tip4pew.xml), no cutoff."""
    import openmm.app as app
    import openmm.unit as unit

    top = app.Topology()
    chain = top.addChain()
    xyz = []
    for i in range(n):
        res = top.addResidue("HOH", chain)
        o = top.addAtom("O", app.element.oxygen, res)
        for name in ("H1", "H2"):
            top.addBond(o, top.addAtom(name, app.element.hydrogen, res))
        xyz += [[0.5 * i, 0, 0], [0.5 * i + 0.0957, 0, 0], [0.5 * i - 0.024, 0.0927, 0]]
    ff = app.ForceField("tip4pew.xml")
    modeller = app.Modeller(top, np.asarray(xyz) * unit.nanometer)
    modeller.addExtraParticles(ff)
    return ff.createSystem(modeller.topology, nonbondedMethod=app.NoCutoff, rigidWater=rigid)


@pytest.fixture(scope="module")
def geometry():
    return rigid_water_geometry(_water_system())


def _states(n_batch, n_mol, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(n_batch, n_mol, 3, generator=g, dtype=D)
    q = random_quaternion((n_batch, n_mol), generator=g, dtype=D)
    return flat_rigid(r, q)


def test_geometry_is_tip4p_ew_read_from_the_system(geometry):
    """Horn et al. 2004: d_OH 0.9572 Å, HOH 104.52°, O–M 0.125 Å on the bisector; O at the
    origin; one row of System particles per water."""
    b = geometry.body
    assert geometry.names == ("O", "H1", "H2", "M") and geometry.virtual == (0, 0, 0, 1)
    assert geometry.particles.tolist() == [[4 * i + k for k in range(4)] for i in range(3)]
    np.testing.assert_allclose(np.linalg.norm(b[1] - b[0]), 0.09572, atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(b[2] - b[0]), 0.09572, atol=1e-6, rtol=0)
    cos = np.dot(b[1], b[2]) / (np.linalg.norm(b[1]) * np.linalg.norm(b[2]))
    np.testing.assert_allclose(math.degrees(math.acos(cos)), 104.52, atol=1e-4, rtol=0)
    np.testing.assert_allclose(b[3], [0.0, 0.0, 0.0125], atol=1e-6, rtol=0)
    np.testing.assert_array_equal(b[0], 0.0)


def test_geometry_follows_the_system_constraints():
    """Both O–H constraints set to 0.1 nm: the geometry read from the System follows."""
    system = _water_system(1)
    for k in range(system.getNumConstraints()):
        i, j, _ = system.getConstraintParameters(k)
        if 0 in (i, j):
            system.setConstraintParameters(k, i, j, 0.1)
    b = rigid_water_geometry(system).body
    np.testing.assert_allclose(np.linalg.norm(b[1:3], axis=-1), [0.1, 0.1], atol=1e-12, rtol=0)


def test_a_flexible_water_is_refused():
    with pytest.raises(ValueError, match="not rigid"):
        rigid_water_geometry(_water_system(1, rigid=False))


def test_sites_reproduce_the_geometry_and_round_trip(geometry):
    body = torch.as_tensor(geometry.body)
    x = _states(16, 5)
    a = rigid_to_atoms(x, body)
    assert a.shape == (16, 5, 4, 3)
    for i, j in ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3)):
        d = (a[..., i, :] - a[..., j, :]).norm(dim=-1)
        want = float(np.linalg.norm(geometry.body[i] - geometry.body[j]))
        torch.testing.assert_close(d, torch.full_like(d, want), atol=1e-12, rtol=0)
    torch.testing.assert_close(a[..., 0, :], rigid_view(x)[..., :3], atol=0, rtol=0)
    y = atoms_to_rigid(a, body)
    torch.testing.assert_close(rigid_to_atoms(y, body), a, atol=1e-12, rtol=0)
    qx, qy = rigid_view(x)[..., 3:], rigid_view(y)[..., 3:]
    assert (qy[..., 0] >= 0).all()
    sign = torch.sign((qx * qy).sum(-1, keepdim=True))
    torch.testing.assert_close(qy, sign * qx, atol=1e-12, rtol=0)


def test_q_and_minus_q_give_the_same_atoms(geometry):
    body = torch.as_tensor(geometry.body)
    x = _states(8, 4)
    v = rigid_view(x).clone()
    v[..., 3:] = -v[..., 3:]
    torch.testing.assert_close(rigid_to_atoms(v.reshape(8, -1), body), rigid_to_atoms(x, body))


def test_the_metric_of_the_map_is_constant(geometry):
    r"""Gram determinant of $\partial a / \partial (r, c)$ in a tangent chart
    $q = q_0 + E(q_0)\,c$ is the same at every $(r_0, q_0)$: the map is an isometry up to a
    constant, so the rigid-state measure needs no Jacobian term (checked off the sphere as
    well, where the map normalises $q$)."""
    body = torch.as_tensor(geometry.body[:3])  # the three atoms carry the metric
    dets = []
    for x0 in _states(6, 1, seed=3):
        r0, q0 = x0[:3], x0[3:] * (1.0 + 0.3 * torch.rand(1, dtype=D))  # off the sphere too
        e = tangent_basis(q0 / q0.norm())

        def sites(c, r0=r0, q0=q0, e=e):
            q = q0 + q0.norm() * (e @ c[3:])
            return rigid_to_atoms(torch.cat((r0 + c[:3], q))[None], body).reshape(-1)

        j = torch.autograd.functional.jacobian(sites, torch.zeros(6, dtype=D))
        dets.append(torch.linalg.det(j.T @ j))
    dets = torch.stack(dets)
    assert dets[0] > 1e-12
    torch.testing.assert_close(dets, dets[:1].expand_as(dets), rtol=1e-10, atol=0)


def test_generalized_forces_equal_autograd(geometry):
    r"""Torque formula vs autograd of $u = -\sum_{ik} F_{ik} \cdot a_{ik}$ (fixed site forces):
    the quaternion part is tangent to $S^3$; a mutant without the factor 2 fails."""
    body = torch.as_tensor(geometry.body)
    x = _states(4, 3, seed=1).requires_grad_(True)
    f = torch.randn(4, 3, 4, 3, dtype=D, generator=torch.Generator().manual_seed(2))
    (grad,) = torch.autograd.grad(-(rigid_to_atoms(x, body) * f).sum(), x)
    gf = generalized_forces(x.detach(), f, body)
    torch.testing.assert_close(gf, -grad, atol=1e-12, rtol=1e-12)
    q = rigid_view(x.detach())[..., 3:]
    assert ((rigid_view(gf)[..., 3:] * q).sum(-1).abs() < 1e-12).all()
    mutant = rigid_view(gf).clone()
    mutant[..., 3:] *= 0.5
    assert not torch.allclose(mutant.reshape(4, -1), -grad, atol=1e-6)
