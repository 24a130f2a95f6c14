r"""Unit quaternions: the one place for quaternion maths in boltzflow (torch, batched).

A quaternion is stored scalar first, $q = (w, x, y, z) = w + x\,i + y\,j + z\,k$, in the
last dimension of a tensor `(..., 4)`. Every function broadcasts over leading dimensions,
is differentiable and follows the dtype and device of its inputs.

* Product (Hamilton): $q_1 q_2 = (w_1 w_2 - v_1\cdot v_2,\ w_1 v_2 + w_2 v_1 + v_1 \times v_2)$
  with $q = (w, v)$; conjugate $\bar q = (w, -v)$; for a unit quaternion $q^{-1} = \bar q$.
* Rotation: a unit quaternion rotates a vector $u \in \mathbb{R}^3$ by
  $(0, R(q)\,u) = q\,(0, u)\,\bar q$. $R(q) = R(-q)$: $S^3 \to SO(3)$ is a double cover, and
  `canonical_sign` picks the representative with $w \ge 0$.
* Tangent space: the columns of $E(q) = [\,q\,i,\ q\,j,\ q\,k\,]$ (left multiplication by
  $q$ is an orthogonal map of $\mathbb{R}^4$ sending $1 \mapsto q$) form an orthonormal basis
  of $T_q S^3 = q^\perp$; $E(-q) = -E(q)$. For a map $f: S^3 \to S^3$ the log-Jacobian with
  respect to the surface measure is $\log|\det E(f(q))^\top J_f(q)\, E(q)|$, where $J_f$ is
  the $4 \times 4$ ambient Jacobian.
* Exponential map: $\exp_q(v) = \cos|v|\, q + \sin|v|\, v/|v|$ for $v \in T_q S^3$;
  `quaternion_exp(u)` $= \exp((0, u)) = (\cos|u|, \sin|u|\, u/|u|)$ for $u \in \mathbb{R}^3$,
  the rotation by the angle $2|u|$ about $u$; `quaternion_log` is its inverse on $w \ge 0$.
* Haar measure: the uniform distribution on $S^3$ (total area $2\pi^2$) pushes forward to the
  Haar measure on $SO(3)$; `random_quaternion` samples it by normalising a standard
  normal 4-vector (Shoemake 1992, "Uniform random rotations", Graphics Gems III).

Reference: Köhler et al. 2023, "Rigid body flows for sampling molecular crystal structures".
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "quaternion_multiply",
    "quaternion_conjugate",
    "quaternion_apply",
    "quaternion_to_matrix",
    "matrix_to_quaternion",
    "canonical_sign",
    "tangent_basis",
    "sphere_exp",
    "sphere_log",
    "quaternion_exp",
    "quaternion_log",
    "random_quaternion",
    "LOG_S3_AREA",
]

LOG_S3_AREA = math.log(2.0 * math.pi**2)
"""$\\log(2\\pi^2)$, the log surface area of $S^3$: the Haar log-density is `-LOG_S3_AREA`."""


def quaternion_multiply(q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    r"""Hamilton product $q_1 q_2$ of quaternions `(..., 4)` (broadcasting), scalar first."""
    w1, x1, y1, z1 = q1.unbind(-1)
    w2, x2, y2, z2 = q2.unbind(-1)
    return torch.stack(
        (
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ),
        dim=-1,
    )


def quaternion_conjugate(q: torch.Tensor) -> torch.Tensor:
    r"""Conjugate $\bar q = (w, -x, -y, -z)$, `(..., 4)`; the inverse of a unit quaternion."""
    return q * q.new_tensor([1.0, -1.0, -1.0, -1.0])


def quaternion_apply(q: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    r"""Rotate vectors `u` `(..., 3)` by unit quaternions `q` `(..., 4)`: $R(q)\,u$.

    Uses $R(q)u = u + 2w\,(v \times u) + 2\,v \times (v \times u)$ with $q = (w, v)$.
    """
    shape = torch.broadcast_shapes(q.shape[:-1], u.shape[:-1])
    q, u = q.expand(*shape, 4), u.expand(*shape, 3)
    w, v = q[..., :1], q[..., 1:]
    t = 2.0 * torch.linalg.cross(v, u, dim=-1)
    return u + w * t + torch.linalg.cross(v, t, dim=-1)


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    r"""Rotation matrices `(..., 3, 3)` of quaternions `(..., 4)`.

    $R = I + s\,w\,[v]_\times + s\,[v]_\times^2$ with $s = 2/|q|^2$, i.e. the rotation of the
    normalised quaternion; $R(q) = R(-q)$, and `R @ u` equals `quaternion_apply(q, u)`.
    """
    w, x, y, z = q.unbind(-1)
    s = 2.0 / (q * q).sum(-1)
    rows = (
        (1 - s * (y * y + z * z), s * (x * y - w * z), s * (x * z + w * y)),
        (s * (x * y + w * z), 1 - s * (x * x + z * z), s * (y * z - w * x)),
        (s * (x * z - w * y), s * (y * z + w * x), 1 - s * (x * x + y * y)),
    )
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def matrix_to_quaternion(matrix: torch.Tensor) -> torch.Tensor:
    r"""Unit quaternions `(..., 4)` with $w \ge 0$ of rotation matrices `(..., 3, 3)`.

    Shepperd's method: the four candidates computed from $4w^2 = 1 + \operatorname{tr} R$,
    $4x^2 = 1 + R_{xx} - R_{yy} - R_{zz}$, ... ; each row of the result is taken from the
    candidate with the largest squared component, which keeps the division well conditioned.
    """
    m = matrix
    r00, r11, r22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    d21, d02, d10 = (
        m[..., 2, 1] - m[..., 1, 2],
        m[..., 0, 2] - m[..., 2, 0],
        m[..., 1, 0] - m[..., 0, 1],
    )
    s21, s02, s10 = (
        m[..., 2, 1] + m[..., 1, 2],
        m[..., 0, 2] + m[..., 2, 0],
        m[..., 1, 0] + m[..., 0, 1],
    )
    sq = torch.stack(
        (1 + r00 + r11 + r22, 1 + r00 - r11 - r22, 1 - r00 + r11 - r22, 1 - r00 - r11 + r22), dim=-1
    )
    # candidate c has 4 q_c^2 = sq_c; the other components follow from off-diagonal sums/differences
    cands = torch.stack(
        (
            torch.stack((sq[..., 0], d21, d02, d10), dim=-1),
            torch.stack((d21, sq[..., 1], s10, s02), dim=-1),
            torch.stack((d02, s10, sq[..., 2], s21), dim=-1),
            torch.stack((d10, s02, s21, sq[..., 3]), dim=-1),
        ),
        dim=-2,
    )  # (..., 4, 4): row c is 4 q_c * q
    best = sq.argmax(dim=-1)
    denom = 2.0 * sq.gather(-1, best[..., None]).clamp_min(torch.finfo(m.dtype).tiny).sqrt()
    row = cands.gather(-2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = row / denom
    return canonical_sign(q / q.norm(dim=-1, keepdim=True))


def canonical_sign(q: torch.Tensor) -> torch.Tensor:
    """The representative of $\\pm q$ with $w \\ge 0$ (`(..., 4)`); $w = 0$ keeps its sign."""
    return torch.where(q[..., :1] < 0, -q, q)


def tangent_basis(q: torch.Tensor) -> torch.Tensor:
    r"""Orthonormal basis $E(q) = [q\,i, q\,j, q\,k]$ of $T_q S^3$, shape `(..., 4, 3)`.

    Column $a$ is $q\,e_a$ for the imaginary unit $e_a$; $E(q)^\top E(q) = I_3$,
    $E(q)^\top q = 0$ for unit $q$, and $E(-q) = -E(q)$.
    """
    w, x, y, z = q.unbind(-1)
    cols = (
        torch.stack((-x, w, z, -y), dim=-1),  # q * i
        torch.stack((-y, -z, w, x), dim=-1),  # q * j
        torch.stack((-z, y, -x, w), dim=-1),  # q * k
    )
    return torch.stack(cols, dim=-1)


def _sinc(t: torch.Tensor) -> torch.Tensor:
    """$\\sin t / t$, finite with a finite gradient at 0."""
    small = t.abs() < 1e-4
    safe = torch.where(small, torch.ones_like(t), t)
    return torch.where(small, 1 - t * t / 6, torch.sin(safe) / safe)


def sphere_exp(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    r"""Riemannian exponential on $S^3$: $\exp_q(v) = \cos|v|\,q + \operatorname{sinc}|v|\,v$.

    Args:
        q: unit quaternions `(..., 4)`.
        v: tangent vectors at `q` in ambient coordinates `(..., 4)` ($q \cdot v = 0$).
    """
    n = v.norm(dim=-1, keepdim=True)
    return torch.cos(n) * q + _sinc(n) * v


def sphere_log(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    r"""Riemannian logarithm on $S^3$: the tangent vector $v$ at `q` with $\exp_q(v) = p$.

    $v = \theta\, u/|u|$ with $u = p - (q\cdot p)\,q$ and
    $\theta = \operatorname{atan2}(|u|, q\cdot p)$; defined for $p \ne -q$.
    """
    c = (q * p).sum(-1, keepdim=True)
    u = p - c * q
    n = u.norm(dim=-1, keepdim=True)
    theta = torch.atan2(n, c)
    return u * (theta / torch.where(n > 0, n, torch.ones_like(n)))


def quaternion_exp(u: torch.Tensor) -> torch.Tensor:
    r"""Unit quaternions $\exp((0, u)) = (\cos|u|, \operatorname{sinc}|u|\,u)$ `(..., 4)`.

    For $u$ `(..., 3)`: the rotation by the angle $2|u|$ about the axis $u/|u|$.
    """
    n = u.norm(dim=-1, keepdim=True)
    return torch.cat((torch.cos(n), _sinc(n) * u), dim=-1)


def quaternion_log(q: torch.Tensor) -> torch.Tensor:
    r"""Inverse of `quaternion_exp`: $u = \operatorname{atan2}(|v|, w)\, v/|v|$, `(..., 3)`.

    Returns $|u| \in [0, \pi]$; compose with `canonical_sign` first for $|u| \le \pi/2$
    (the rotation vector is then $2u$, of angle at most $\pi$).
    """
    w, v = q[..., :1], q[..., 1:]
    n = v.norm(dim=-1, keepdim=True)
    theta = torch.atan2(n, w)
    return v * (theta / torch.where(n > 0, n, torch.ones_like(n)))


def random_quaternion(
    shape: tuple[int, ...] | int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""Uniform (Haar) samples on $S^3$, shape `(*shape, 4)`.

    A standard normal vector in $\mathbb{R}^4$ is isotropic, so its direction is uniform on
    $S^3$, and the pushforward to $SO(3)$ is the Haar measure. The log-density with respect to
    the surface measure is $-\log 2\pi^2$ (`-LOG_S3_AREA`).

    Args:
        shape: leading shape (an int for a single batch dimension).
        generator: torch generator for reproducible draws (see `boltzflow.rng`).
        dtype: floating dtype (default: torch's default dtype).
        device: device of the result.
    """
    if isinstance(shape, int):
        shape = (shape,)
    g = torch.randn(*shape, 4, generator=generator, dtype=dtype, device=device)
    return g / g.norm(dim=-1, keepdim=True)
