"""Internal ↔ Cartesian transform: round trips and the log-det against autograd (float64)."""

from __future__ import annotations

import math

import pytest
import torch

from boltzflow.coordinates.transform import InternalCoordinateTransform
from boltzflow.flows.base import Compose, Flow, InverseTransform
from boltzflow.flows.distributions import StandardNormal


@pytest.fixture
def ict(zmat):
    return InternalCoordinateTransform(zmat).double()


def _pairwise(x):
    p = x.reshape(x.shape[0], -1, 3)
    return torch.cdist(p, p)


def _random_internal(zmat, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.empty(n, zmat.n_dof, dtype=torch.float64)
    q[:, zmat.bond_slice] = 0.09 + 0.06 * torch.rand(n, zmat.n_atoms - 1, generator=g).double()
    q[:, zmat.angle_slice] = 1.6 + 0.6 * torch.rand(n, zmat.n_atoms - 2, generator=g).double()
    q[:, zmat.torsion_slice] = math.pi * (2 * torch.rand(n, zmat.n_atoms - 3, generator=g) - 1)
    return q


def test_cartesian_round_trip_is_a_rigid_motion(ict, configs):
    q, ladj_inv = ict.inverse(configs)
    x, ladj = ict(q)
    torch.testing.assert_close(_pairwise(x), _pairwise(configs), atol=1e-12, rtol=0)
    torch.testing.assert_close(ladj_inv, -ladj)
    # canonical frame: a0 at the origin, a1 on +x, a2 in the xy-plane with y > 0
    p = x.reshape(-1, 22, 3)
    a0, a1, a2 = ict.zmatrix.root
    assert p[:, a0].abs().max() == 0 and p[:, a1, 1:].abs().max() == 0
    assert (p[:, a1, 0] > 0).all() and p[:, a2, 2].abs().max() == 0 and (p[:, a2, 1] > 0).all()


def test_internal_round_trip(ict, zmat):
    q = _random_internal(zmat, 16)
    torch.testing.assert_close(ict.inverse(ict(q).y).y, q, atol=1e-10, rtol=0)
    # torsions are periodic: shifting one by 2π gives the same configuration
    q2 = q.clone()
    q2[:, zmat.torsion_slice.start + 3] += 2 * math.pi
    torch.testing.assert_close(ict(q2).y, ict(q).y)


def _rotation(alpha, beta, gamma):
    def rz(a):
        c, s, o, z = torch.cos(a), torch.sin(a), torch.ones_like(a), torch.zeros_like(a)
        rows = [torch.stack([c, -s, z]), torch.stack([s, c, z]), torch.stack([z, z, o])]
        return torch.stack(rows)

    def ry(a):
        c, s, o, z = torch.cos(a), torch.sin(a), torch.ones_like(a), torch.zeros_like(a)
        rows = [torch.stack([c, z, s]), torch.stack([z, o, z]), torch.stack([-s, z, c])]
        return torch.stack(rows)

    return rz(alpha) @ ry(beta) @ rz(gamma)


def test_log_det_matches_autograd_jacobian_with_external_dofs(ict, zmat):
    r"""x = R(α,β,γ) Q X(q) + t is a bijection of R^{3N}: |det J| = sin β · exp(ladj(q))."""
    q0 = _random_internal(zmat, 3, seed=4)
    Q = torch.tensor([[0.0, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=torch.float64)  # +x -> +z

    def full(v):
        t, (a, b, g), q = v[:3], v[3:6], v[6:]
        x = ict(q[None]).y.reshape(-1, 3)
        return ((_rotation(a, b, g) @ Q @ x.T).T + t).reshape(-1)

    for n in range(3):
        ext = torch.tensor([0.3, -1.2, 0.7, 0.4, 0.9 + 0.5 * n, -2.0], dtype=torch.float64)
        v = torch.cat([ext, q0[n]])
        jac = torch.autograd.functional.jacobian(full, v)
        assert jac.shape == (66, 66)
        sign, logabs = torch.linalg.slogdet(jac)
        ladj = ict(q0[n : n + 1]).ladj[0]
        expected = ladj + torch.log(torch.sin(ext[4]))
        torch.testing.assert_close(logabs, expected, atol=1e-8, rtol=0)
        # negative control: dropping the sin(theta) factors is detected
        wrong = 2 * torch.log(q0[n, zmat.bond_slice]).sum() + torch.log(torch.sin(ext[4]))
        assert abs(float(logabs - wrong)) > 1e-2


def test_forward_is_differentiable_in_float64(ict, zmat):
    q = _random_internal(zmat, 2, seed=9).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda q: ict(q).y, (q,), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(lambda q: ict(q).ladj, (q,), eps=1e-6, atol=1e-6)


def test_composes_with_flows(ict, zmat, configs):
    """A Flow on Cartesians through the inverse IC transform: log q(x) = log p(q(x)) - ladj."""
    flow = Flow(StandardNormal(60).double(), Compose(InverseTransform(InverseTransform(ict))))
    z = _random_internal(zmat, 4, seed=2)
    x, ladj = flow.forward(z)
    torch.testing.assert_close(flow.log_prob(x), flow.base.log_prob(z) - ladj)
    q_back, ladj_inv = flow.inverse(configs)
    torch.testing.assert_close(ladj_inv, -ict(q_back).ladj)


def test_dtype_and_device_follow_inputs(ict, zmat):
    q = _random_internal(zmat, 3).float()
    x, ladj = InternalCoordinateTransform(zmat)(q)
    assert x.dtype == torch.float32 and ladj.dtype == torch.float32 and x.shape == (3, 66)
