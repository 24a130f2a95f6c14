"""Quaternion maths against scipy's Rotation and rotation-matrix identities, float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from boltzflow.coordinates.quaternion import (
    canonical_sign,
    matrix_to_quaternion,
    quaternion_apply,
    quaternion_conjugate,
    quaternion_exp,
    quaternion_log,
    quaternion_multiply,
    quaternion_to_matrix,
    random_quaternion,
    sphere_exp,
    sphere_log,
    tangent_basis,
)

D = torch.float64


def _q(n=64, seed=0):
    return random_quaternion(n, generator=torch.Generator().manual_seed(seed), dtype=D)


def _scipy(q):
    """scipy Rotation of scalar-first quaternions."""
    return Rotation.from_quat(q.numpy()[..., [1, 2, 3, 0]])


def test_to_matrix_matches_scipy_and_is_a_rotation():
    q = _q()
    r = quaternion_to_matrix(q)
    np.testing.assert_allclose(r.numpy(), _scipy(q).as_matrix(), atol=1e-13)
    eye = torch.eye(3, dtype=D).expand_as(r)
    torch.testing.assert_close(r @ r.transpose(-1, -2), eye, atol=1e-13, rtol=0)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(64, dtype=D), atol=1e-13, rtol=0)
    torch.testing.assert_close(quaternion_to_matrix(-q), r, atol=1e-14, rtol=0)  # double cover
    torch.testing.assert_close(quaternion_to_matrix(3.0 * q), r, atol=1e-13, rtol=0)  # scale free


def test_multiply_composes_rotations_and_conjugate_inverts():
    q1, q2 = _q(seed=1), _q(seed=2)
    prod = quaternion_multiply(q1, q2)
    np.testing.assert_allclose(
        quaternion_to_matrix(prod).numpy(), (_scipy(q1) * _scipy(q2)).as_matrix(), atol=1e-13
    )
    one = quaternion_multiply(q1, quaternion_conjugate(q1))
    torch.testing.assert_close(
        one, torch.tensor([1.0, 0, 0, 0], dtype=D).expand_as(one), atol=1e-14, rtol=0
    )
    # i j = k (Hamilton's convention), not -k
    i, j = torch.tensor([0.0, 1, 0, 0], dtype=D), torch.tensor([0.0, 0, 1, 0], dtype=D)
    torch.testing.assert_close(quaternion_multiply(i, j), torch.tensor([0.0, 0, 0, 1], dtype=D))


def test_apply_matches_matrix_and_scipy():
    q = _q()
    u = torch.randn(64, 3, generator=torch.Generator().manual_seed(3), dtype=D)
    rotated = quaternion_apply(q, u)
    torch.testing.assert_close(
        rotated, (quaternion_to_matrix(q) @ u[..., None])[..., 0], atol=1e-13, rtol=0
    )
    np.testing.assert_allclose(rotated.numpy(), _scipy(q).apply(u.numpy()), atol=1e-13)
    # broadcasting: one rotation applied to several vectors (molecule geometry)
    many = quaternion_apply(q[:, None], u[None, :4].expand(64, 4, 3))
    assert many.shape == (64, 4, 3)


def test_matrix_to_quaternion_round_trip_including_half_turns():
    q = canonical_sign(_q(256))
    # half turns (w = 0) and near-identity rotations exercise each branch of Shepperd's method
    half = torch.nn.functional.normalize(
        torch.randn(16, 4, dtype=D, generator=torch.Generator().manual_seed(4))
        * torch.tensor([0.0, 1, 1, 1], dtype=D),
        dim=-1,
    )
    near = torch.nn.functional.normalize(torch.tensor([1.0, 1e-9, -2e-9, 0], dtype=D)[None], dim=-1)
    q = torch.cat((q, half, near))
    back = matrix_to_quaternion(quaternion_to_matrix(q))
    assert (back[..., 0] >= 0).all()
    # same rotation, sign fixed up to w = 0 ties
    sign = torch.sign((back * q).sum(-1, keepdim=True))
    torch.testing.assert_close(back * sign, q, atol=1e-12, rtol=0)
    np.testing.assert_allclose(
        quaternion_to_matrix(matrix_to_quaternion(torch.as_tensor(_scipy(q).as_matrix()))).numpy(),
        _scipy(q).as_matrix(),
        atol=1e-12,
    )


def test_canonical_sign():
    q = _q()
    c = canonical_sign(q)
    assert (c[..., 0] >= 0).all()
    torch.testing.assert_close(canonical_sign(-q), c)


def test_tangent_basis_is_orthonormal_and_odd():
    q = _q()
    e = tangent_basis(q)
    assert e.shape == (64, 4, 3)
    torch.testing.assert_close(
        e.transpose(-1, -2) @ e, torch.eye(3, dtype=D).expand(64, 3, 3), atol=1e-14, rtol=0
    )
    torch.testing.assert_close(
        (q[..., None] * e).sum(-2), torch.zeros(64, 3, dtype=D), atol=1e-14, rtol=0
    )
    torch.testing.assert_close(tangent_basis(-q), -e)
    # column a is d/dt q exp(t e_a) at t = 0 (body-frame angular velocity / 2)
    t = 1e-6
    for a in range(3):
        u = torch.zeros(3, dtype=D)
        u[a] = t
        fd = (
            quaternion_multiply(q, quaternion_exp(u)) - quaternion_multiply(q, quaternion_exp(-u))
        ) / (2 * t)
        torch.testing.assert_close(fd, e[..., a], atol=1e-9, rtol=0)


def test_exp_and_log_maps():
    q = _q()
    u = 0.7 * torch.randn(64, 3, generator=torch.Generator().manual_seed(5), dtype=D)
    eq = quaternion_exp(u)
    torch.testing.assert_close(eq.norm(dim=-1), torch.ones(64, dtype=D), atol=1e-14, rtol=0)
    np.testing.assert_allclose(
        quaternion_to_matrix(eq).numpy(),
        Rotation.from_rotvec(2 * u.numpy()).as_matrix(),
        atol=1e-13,
    )
    torch.testing.assert_close(quaternion_log(eq), u, atol=1e-13, rtol=0)
    # Riemannian exp/log on S^3 with tangent vectors from the basis
    v = (tangent_basis(q) @ u[..., None])[..., 0]
    p = sphere_exp(q, v)
    torch.testing.assert_close(p.norm(dim=-1), torch.ones(64, dtype=D), atol=1e-14, rtol=0)
    torch.testing.assert_close(p, quaternion_multiply(q, quaternion_exp(u)), atol=1e-13, rtol=0)
    torch.testing.assert_close(sphere_log(q, p), v, atol=1e-12, rtol=0)
    # the zero vector and its gradient are finite
    z = torch.zeros(2, 3, dtype=D, requires_grad=True)
    quaternion_exp(z).sum().backward()
    assert torch.isfinite(z.grad).all()


def test_random_quaternion_is_reproducible_and_unit():
    a = random_quaternion((3, 5), generator=torch.Generator().manual_seed(9), dtype=D)
    b = random_quaternion((3, 5), generator=torch.Generator().manual_seed(9), dtype=D)
    assert a.shape == (3, 5, 4) and a.dtype == D
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(3, 5, dtype=D), atol=1e-14, rtol=0)


def _beta_moment(k, a=0.5, b=1.5):
    """E[B^k] for B ~ Beta(a, b); w^2 ~ Beta(1/2, 3/2) for q uniform on S^3."""
    return math.prod((a + r) / (a + b + r) for r in range(k))


def _fourth_moment_z(q):
    w4 = q[..., 0] ** 4
    sd = math.sqrt(_beta_moment(4) - _beta_moment(2) ** 2)
    return (w4.mean().item() - _beta_moment(2)) / (sd / math.sqrt(w4.numel()))


def test_random_quaternion_is_uniform_on_s3():
    """z-test of E[w^4] = 1/8 (w^2 ~ Beta(1/2, 3/2)); the cube-normalised sampler fails it."""
    n = 200_000
    q = random_quaternion(n, generator=torch.Generator().manual_seed(11), dtype=D)
    assert abs(_fourth_moment_z(q)) < 4.0
    # the Haar pushforward: the rotated z axis is uniform on S^2, so its z component is U(-1, 1)
    zc = quaternion_apply(q, torch.tensor([0.0, 0, 1], dtype=D))[..., 2]
    assert abs(zc.mean().item()) / (1 / math.sqrt(3 * n)) < 4.0
    # negative control: uniform in the cube [-1, 1]^4, then normalised, is not uniform on S^3
    g = torch.Generator().manual_seed(12)
    cube = 2 * torch.rand(n, 4, generator=g, dtype=D) - 1
    assert abs(_fourth_moment_z(cube / cube.norm(dim=-1, keepdim=True))) > 10.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_follow_inputs(dtype):
    q = random_quaternion(4, generator=torch.Generator().manual_seed(0), dtype=dtype)
    for out in (
        quaternion_to_matrix(q),
        tangent_basis(q),
        matrix_to_quaternion(quaternion_to_matrix(q)),
    ):
        assert out.dtype == dtype
