"""The closed-form slope of a rational-quadratic spline's log-derivative against autograd, in
float64: circular and linear-tailed splines, forward and inverse."""

import math

import pytest
import torch
from nflows.transforms.splines.rational_quadratic import unconstrained_rational_quadratic_spline

from boltzflow.flows.circular import circular_rq_spline
from boltzflow.flows.spline_slope import (
    circular_rq_log_slope,
    inverse_local,
    unconstrained_rq_log_slope,
)

K = 6


def _params(n: int, n_derivatives: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(n, k, generator=g, dtype=torch.float64) for k in (K, K, n_derivatives))


def _autograd_local(spline, inputs):
    leaf = inputs.clone().requires_grad_(True)
    out, lad = spline(leaf)
    (local,) = torch.autograd.grad(lad.sum(), leaf)
    return out.detach(), lad.detach(), local


@pytest.mark.parametrize("inverse", [False, True])
def test_circular_slope_matches_autograd(inverse):
    params = _params(200, K)
    x = torch.rand(200, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    x = x * math.pi

    def spline(t):
        return circular_rq_spline(t[:, None], *(p[:, None] for p in params), inverse=inverse)

    out, lad, reference = _autograd_local(spline, x)
    forward_input = out[:, 0] if inverse else x
    slope = circular_rq_log_slope(forward_input, *params)
    local = inverse_local(slope, lad[:, 0]) if inverse else slope
    torch.testing.assert_close(local, reference, atol=1e-9, rtol=1e-9)
    assert reference.abs().max() > 0.1  # a curved spline: the check can fail


@pytest.mark.parametrize("inverse", [False, True])
def test_linear_tail_slope_matches_autograd_inside_and_zero_outside(inverse):
    params = _params(300, K - 1, seed=2)
    x = 4.0 * torch.randn(300, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def spline(t):
        return unconstrained_rational_quadratic_spline(
            t, *params, inverse=inverse, tails="linear", tail_bound=3.0
        )

    out, lad, reference = _autograd_local(spline, x)
    slope = unconstrained_rq_log_slope(out if inverse else x, *params, 3.0)
    local = inverse_local(slope, lad) if inverse else slope
    torch.testing.assert_close(local, reference, atol=1e-9, rtol=1e-9)
    assert (x.abs() > 3.0).any() and (local[x.abs() > 3.0] == 0).all()
    assert reference.abs().max() > 0.1
