"""Circular splines, shifts and couplings: seam behaviour, wrapping, normalisation."""

from __future__ import annotations

import math

import pytest
import torch

from boltzflow.flows.builders import circular_spline_flow, spline_coupling_flow
from boltzflow.flows.circular import (
    CircularShift,
    CircularSpline,
    CircularSplineCoupling,
    circular_rq_spline,
    wrap_angle,
)

from .registry import perturbed

PI = math.pi


def _spline(features=2, bins=5, seed=0) -> CircularSpline:
    spline = CircularSpline(features, bins).double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in spline.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return spline


def test_identity_at_initialisation(float64):
    spline = CircularSpline(3, 6)
    theta = torch.linspace(-PI, PI, 11, dtype=torch.float64)[:, None].expand(11, 3)
    x, ladj = spline(theta)
    torch.testing.assert_close(x, theta, rtol=0, atol=1e-12)
    torch.testing.assert_close(ladj, torch.zeros(11, dtype=torch.float64), rtol=0, atol=1e-12)


def test_endpoints_fixed_and_derivatives_tied():
    spline = _spline()
    ends = torch.tensor([[-PI, -PI], [PI, PI]], dtype=torch.float64)
    x, _ = spline(ends)
    torch.testing.assert_close(x, ends, rtol=0, atol=1e-12)
    eps = 1e-7
    near = torch.tensor([[-PI + eps, -PI + eps], [PI - eps, PI - eps]], dtype=torch.float64)
    _, lad = circular_rq_spline(near, *[p.expand(2, -1, -1) for p in spline.parameters()])
    # log-density continuous across the seam: log s'(-π⁺) = log s'(π⁻)
    torch.testing.assert_close(lad[0], lad[1], rtol=0, atol=1e-5)
    assert lad.abs().max() > 0.05  # not trivially the identity slope


def test_inputs_outside_the_interval_are_wrapped():
    spline = _spline()
    theta = (2 * torch.rand(20, 2, generator=torch.Generator().manual_seed(1)) - 1).double() * PI
    x, ladj = spline(theta)
    for k in (-2, 1, 3):
        xk, ladjk = spline(theta + 2 * PI * k)
        torch.testing.assert_close(wrap_angle(xk - x), torch.zeros_like(x), rtol=0, atol=1e-9)
        torch.testing.assert_close(ladjk, ladj, rtol=0, atol=1e-9)


def test_shift_rotates_only_periodic_features():
    shift = CircularShift(torch.tensor([3.0, 1.0, -2.0]), periodic=[True, False, True]).double()
    z = torch.tensor([[1.0, 5.0, -2.0]], dtype=torch.float64)
    x, ladj = shift(z)
    torch.testing.assert_close(x, torch.tensor([[4.0 - 2 * PI, 5.0, -4.0 + 2 * PI]]).double())
    assert ladj.tolist() == [0.0]
    assert set(shift.state_dict()) == {"periodic", "shift"}
    a = CircularShift.random(4, generator=torch.Generator().manual_seed(2))
    b = CircularShift.random(4, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a.shift, b.shift) and a.shift.abs().max() <= PI


def test_coupling_rejects_bad_masks():
    with pytest.raises(ValueError, match="some features"):
        CircularSplineCoupling([1, 1], [True, True])
    with pytest.raises(ValueError, match="same number"):
        CircularSplineCoupling([1, 0], [True, True, False])


def _grid_integral(flow, lows, highs, n):
    axes = [
        torch.linspace(lo, hi, n, dtype=torch.float64) for lo, hi in zip(lows, highs, strict=True)
    ]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(axes))
    with torch.no_grad():
        dens = flow.log_prob(grid).exp().reshape([n] * len(axes))
    for ax in axes:
        dens = torch.trapezoid(dens, ax, dim=0)
    return float(dens)


@pytest.mark.parametrize(
    "build, lows, highs, n",
    [
        (lambda: circular_spline_flow(1, num_bins=5, seed=0), [-PI], [PI], 4001),
        (lambda: spline_coupling_flow(1, num_bins=5, seed=0), [-30.0], [30.0], 8001),
        (
            lambda: spline_coupling_flow(2, periodic=[True, False], num_layers=3, hidden=8, seed=0),
            [-PI, -25.0],
            [PI, 25.0],
            301,
        ),
    ],
)
def test_density_integrates_to_one(build, lows, highs, n):
    flow = perturbed(build(), seed=0)
    total = _grid_integral(flow, lows, highs, n)
    assert abs(total - 1) < 2e-3, total
    # negative control: a log-density off by a constant fails the same tolerance
    assert abs(total * math.exp(0.01) - 1) > 2e-3


@pytest.mark.parametrize(
    "build",
    [
        lambda: circular_spline_flow(3, num_layers=3, hidden=8, seed=0),
        lambda: spline_coupling_flow(4, periodic=[True, False, True, True], num_layers=3, seed=0),
        lambda: circular_spline_flow(1, seed=0),
    ],
)
def test_density_is_a_function_on_the_torus(build):
    """Shifting periodic coordinates by whole periods changes neither z (mod 2π) nor log q."""
    flow = perturbed(build(), seed=0)
    x = flow.sample(16, generator=torch.Generator().manual_seed(0)).x
    periodic = flow.base.periodic if hasattr(flow.base, "periodic") else torch.ones(x.shape[1:])
    shift = (
        2
        * PI
        * periodic.to(x)
        * torch.randint(-3, 4, x.shape, generator=torch.Generator().manual_seed(1))
    )
    assert shift.abs().max() > 0
    torch.testing.assert_close(flow.log_prob(x + shift), flow.log_prob(x), rtol=0, atol=1e-9)
    z, _ = flow.inverse(x + shift)
    assert z.min() >= -PI and z.max() <= PI
    torch.testing.assert_close(z, flow.inverse(x).y, rtol=0, atol=1e-9)
