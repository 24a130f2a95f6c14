r"""Reusable numerical checks for transforms and flows (float64).

Each check raises ``AssertionError`` with a message when it fails; ``test_checks.py`` shows
that each one catches a deliberately broken transform.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from boltzflow.flows.base import Flow, TransformResult
from boltzflow.flows.distributions import MixedNormalTorus, UniformTorus

Map = Callable[[torch.Tensor], TransformResult]


def periodic_domain(flow: Flow) -> tuple[torch.Tensor, float, float] | None:
    """``(flat periodic mask, low, high)`` read from the flow's base, or ``None``."""
    base = flow.base
    if isinstance(base, UniformTorus):
        return torch.ones(base.dim, dtype=torch.bool), base.low, base.high
    if isinstance(base, MixedNormalTorus):
        return base.periodic.reshape(-1).cpu(), base.low, base.high
    return None


def angular_difference(a, b, periodic=None, period: float = 2 * math.pi) -> torch.Tensor:
    """``a - b``, taken modulo ``period`` (into ``[-period/2, period/2)``) on periodic features."""
    diff = (a - b).reshape(a.shape[0], -1)
    if periodic is None:
        return diff
    wrapped = torch.remainder(diff + period / 2, period) - period / 2
    return torch.where(periodic.to(diff.device), wrapped, diff)


def batch_jacobian(fn: Callable[[torch.Tensor], torch.Tensor], u: torch.Tensor) -> torch.Tensor:
    """Per-sample Jacobians ``[batch, d, d]`` of ``fn`` (``[batch, *event] -> same``).

    The full ``(batch·d)²`` Jacobian is computed with ``torch.autograd.functional.jacobian``,
    and its off-diagonal (cross-sample) blocks must vanish.
    """
    b, d = u.shape[0], u[0].numel()
    jac = torch.autograd.functional.jacobian(
        lambda v: fn(v.reshape(u.shape)).reshape(-1), u.detach().reshape(-1)
    )
    blocks = jac.reshape(b, d, b, d).permute(0, 2, 1, 3)
    same = torch.eye(b, dtype=torch.bool)
    cross = blocks[~same].abs().max() if b > 1 else torch.zeros(())
    assert cross == 0, f"output of one sample depends on another (max |∂y_i/∂u_j| = {cross})"
    return blocks[same]


def assert_ladj_matches_jacobian(fn: Map, u: torch.Tensor, atol: float = 1e-8) -> None:
    """``fn(u).ladj`` equals ``log|det ∂y/∂u|`` from autograd, sample by sample."""
    _, ladj = fn(u)
    assert ladj.shape == u.shape[:1], f"ladj has shape {tuple(ladj.shape)}"
    sign, logdet = torch.linalg.slogdet(batch_jacobian(lambda v: fn(v).y, u))
    assert (sign != 0).all(), "singular Jacobian"
    err = (ladj - logdet).abs().max()
    assert err < atol, f"ladj differs from slogdet(Jacobian) by {err:.3g}"


def assert_round_trip(forward: Map, inverse: Map, u, periodic=None, atol=1e-8) -> None:
    """``inverse(forward(u)) == u`` (mod 2π on periodic features) and ladj's cancel."""
    y, ladj = forward(u)
    back, ladj_back = inverse(y)
    err = angular_difference(back, u, periodic).abs().max()
    assert err < atol, f"round trip error {err:.3g}"
    err = (ladj + ladj_back).abs().max()
    assert err < atol, f"forward and inverse log-dets do not cancel ({err:.3g})"


def _vjp(fn: Map, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    u = u.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad((fn(u).y * v).sum(), u)
    return grad


def assert_periodic(
    fn: Map, u, periodic, low: float, high: float, atol=1e-8, max_features: int = 4
) -> None:
    """``fn`` is periodic in its periodic inputs: values (mod period), log-dets and
    derivatives agree at ``u_j = low`` and ``u_j = high``.

    At most ``max_features`` evenly spaced periodic features are tested; derivatives are
    compared through vector-Jacobian products with two random vectors.
    """
    period = high - low
    flat = u.detach().reshape(u.shape[0], -1)
    features = torch.nonzero(periodic).reshape(-1)
    if len(features) > max_features:
        features = features[torch.linspace(0, len(features) - 1, max_features).round().long()]
    gen = torch.Generator().manual_seed(0)
    vs = [torch.randn(u.shape, generator=gen, dtype=u.dtype) for _ in range(2)]
    for j in features.tolist():
        lo, hi = flat.clone(), flat.clone()
        lo[:, j], hi[:, j] = low, high
        lo, hi = lo.reshape(u.shape), hi.reshape(u.shape)
        (y_lo, l_lo), (y_hi, l_hi) = fn(lo), fn(hi)
        err = angular_difference(y_lo, y_hi, periodic, period).abs().max()
        assert err < atol, f"values differ across the seam of feature {j} ({err:.3g})"
        err = (l_lo - l_hi).abs().max()
        assert err < atol, f"log-dets differ across the seam of feature {j} ({err:.3g})"
        for v in vs:
            err = (_vjp(fn, lo, v) - _vjp(fn, hi, v)).abs().max()
            assert err < atol, f"derivatives differ across the seam of feature {j} ({err:.3g})"
