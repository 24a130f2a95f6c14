"""Smooth mixture transforms and their root-finding inverse (float64).

Round trips to 1e-10, derivatives against autograd, gradcheck/gradgradcheck through forward
and inverse with respect to inputs and parameters, derivatives of every order matching across
the circle's seam, and negative controls showing each check can fail.
"""

from __future__ import annotations

import math

import pytest
import torch

from boltzflow.flows.base import InverseTransform
from boltzflow.flows.root_finding import RootInverse, bracketed_newton, invert
from boltzflow.flows.smooth import (
    SmoothMixture,
    circle_mixture,
    interval_mixture,
    mixture_num_params,
    mixture_transform,
    smooth_step,
)

K = 3
D = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _params(n, circular, scale=2.0, seed=0):
    return scale * torch.randn(n, mixture_num_params(K, circular), generator=_gen(seed), dtype=D)


def _derivatives(fn, x, order):
    """``[fn(x), fn'(x), …, fn^(order)(x)]`` by repeated autograd."""
    x = x.clone().requires_grad_(True)
    out = [fn(x)]
    for _ in range(order):
        (g,) = torch.autograd.grad(out[-1].sum(), x, create_graph=True)
        out.append(g)
    return [o.detach() for o in out]


def test_smooth_step_is_a_flat_edged_step():
    t = torch.linspace(-0.5, 1.5, 2001, dtype=D)
    alpha = torch.tensor(0.7, dtype=D)
    s, ds = smooth_step(t, alpha)
    assert (s[t <= 0] == 0).all() and (s[t >= 1] == 1).all()
    assert (s.diff() >= 0).all() and (ds >= 0).all()
    torch.testing.assert_close(s[t == 0.5], torch.tensor([0.5], dtype=D))
    inner = (t > 0.01) & (t < 0.99)
    auto = _derivatives(lambda u: smooth_step(u, alpha)[0], t[inner], 1)[1]
    torch.testing.assert_close(ds[inner], auto, rtol=1e-12, atol=1e-14)
    # Derivatives of orders 1-4 vanish approaching both edges (C∞ join with the constants).
    for edge in (torch.tensor([0.01], dtype=D), torch.tensor([0.99], dtype=D)):
        for d in _derivatives(lambda u: smooth_step(u, alpha)[0], edge, 4)[1:]:
            assert d.abs().max() < 1e-30


@pytest.mark.parametrize("circular", [False, True])
def test_mixture_is_an_increasing_bijection_with_exact_derivative(circular):
    fn = circle_mixture if circular else interval_mixture
    p = _params(1, circular, scale=3.0)
    x = torch.linspace(0, 1, 1001, dtype=D)
    f, df = fn(x, p.expand(len(x), -1), 0.01)
    torch.testing.assert_close(f[[0, -1]], torch.tensor([0.0, 1.0], dtype=D), rtol=0, atol=1e-15)
    assert (f.diff() > 0).all() and (df >= 0.01 - 1e-15).all()
    auto = _derivatives(lambda u: fn(u, p.expand(len(x), -1), 0.01)[0], x, 1)[1]
    torch.testing.assert_close(df, auto, rtol=1e-12, atol=1e-13)


def _straddling_params(n=2):
    """Circle parameters whose steps straddle the seam at 0 ≡ 1 (the hard case)."""
    p = torch.zeros(n, mixture_num_params(2, True), dtype=D)
    p[:, 1:3] = 2.0  # step weights above the identity's
    p[:, 3], p[:, 4] = -3.0, 3.0  # shifts near 0 and near 1
    p[:, 5:7] = -5.0  # scale ≈ 1: half-width ≈ 1/2
    p[:, 7:9] = torch.tensor([-1.0, 1.0])
    p[:, 9] = 0.3  # rotation
    return p


def test_circle_mixture_derivatives_of_every_order_match_across_the_seam():
    p = _straddling_params()
    ends = torch.tensor([0.0, 1.0], dtype=D)
    values = _derivatives(lambda u: circle_mixture(u, p)[0], ends, 5)
    assert values[0][1] - values[0][0] == 1.0
    assert values[1].abs().min() > 0.1
    for d in values[1:]:
        torch.testing.assert_close(d[0], d[1], rtol=1e-10, atol=1e-9)
    assert values[3].abs().max() > 1.0  # the higher derivatives are not trivially zero
    # With the rotation, the map on angles agrees mod 2π at -π and π, with its log-det.
    v, lad = mixture_transform(ends, p, circular=True)
    assert torch.remainder(v[1] - v[0] + 0.5, 1.0) - 0.5 == 0
    torch.testing.assert_close(lad[0], lad[1], rtol=0, atol=1e-14)


def test_interval_mixture_is_not_periodic_negative_control():
    # The seam check above is able to fail: the interval family is not periodic.
    p = _params(2, circular=False)[:1].expand(2, -1)
    d = _derivatives(lambda u: interval_mixture(u, p)[0], torch.tensor([0.0, 1.0], dtype=D), 2)
    assert (d[1][0] - d[1][1]).abs() + (d[2][0] - d[2][1]).abs() > 1e-3


@pytest.mark.parametrize("circular", [False, True])
def test_round_trip_to_float64_precision(circular):
    n = 4000
    p = _params(n, circular, scale=4.0, seed=1)
    u = torch.rand(n, generator=_gen(2), dtype=D)
    u[:6] = torch.tensor([0.0, 1e-12, 0.5, 1 - 1e-12, 1.0 - 2**-53, 1e-300], dtype=D)
    v, lad = mixture_transform(u, p, circular)
    back, lad_back = mixture_transform(v, p, circular, inverse=True)
    err = back - u
    if circular:
        err = torch.remainder(err + 0.5, 1.0) - 0.5
    assert err.abs().max() <= 1e-10
    assert (lad + lad_back).abs().max() <= 1e-10
    forward_again, _ = mixture_transform(back, p, circular)
    assert (forward_again - v).abs().max() <= 1e-12 or circular


CASES = [(c, inv) for c in (False, True) for inv in (False, True)]


@pytest.mark.parametrize("circular,inverse", CASES)
def test_gradcheck_and_gradgradcheck_inputs_and_parameters(circular, inverse):
    u = (0.05 + 0.9 * torch.rand(5, generator=_gen(3), dtype=D)).requires_grad_(True)
    p = _params(5, circular, scale=1.5, seed=4).requires_grad_(True)

    def fn(u, p):
        return mixture_transform(u, p, circular, inverse)

    assert torch.autograd.gradcheck(fn, (u, p))
    assert torch.autograd.gradgradcheck(fn, (u, p))


@pytest.mark.parametrize("circular", [False, True])
def test_smooth_mixture_layer_gradgradcheck_through_parameters(circular):
    layer = SmoothMixture(2, K, circular=circular, init_scale=1.0, generator=_gen(5)).double()
    lo, hi = (-math.pi, math.pi) if circular else (0.0, 1.0)
    z = lo + (hi - lo) * (0.1 + 0.8 * torch.rand(3, 2, generator=_gen(6), dtype=D))
    x = layer.forward(z).y.detach()
    theta = layer.params.detach().clone().requires_grad_(True)
    for module, name, inputs in (
        (layer, "params", z),
        (InverseTransform(layer), "transform.params", x),
    ):

        def call(v, theta, module=module, name=name):
            return tuple(torch.func.functional_call(module, {name: theta}, (v,)))

        args = (inputs.clone().requires_grad_(True), theta)
        assert torch.autograd.gradcheck(call, args, fast_mode=True)
        assert torch.autograd.gradgradcheck(call, args, fast_mode=True)


def _cubic(x, p):
    a, b = torch.exp(p[..., 0]), torch.exp(p[..., 1])
    return a * x**3 + b * x + 0.1 * p[..., 0] * torch.sin(x), (
        3 * a * x**2 + b + 0.1 * p[..., 0] * torch.cos(x)
    )


def test_root_finder_converges_from_any_bracket_and_propagates_nan():
    p = torch.randn(200, 2, generator=_gen(7), dtype=D) * 0.3
    y = torch.linspace(-5, 5, 200, dtype=D)
    x = bracketed_newton(_cubic, y, p, -4.0, 4.0, x0=torch.full_like(y, 3.9))
    assert (_cubic(x, p)[0] - y).abs().max() < 1e-13
    y[3] = math.nan
    assert torch.isnan(bracketed_newton(_cubic, y, p, -4.0, 4.0)[3])
    x32 = invert(_cubic, y[:3].float(), p[:3].float(), -4.0, 4.0)
    assert x32.dtype == torch.float32 and (_cubic(x32, p[:3].float())[0] - y[:3]).abs().max() < 1e-5


class _FirstOrderOnly(RootInverse):
    """Negative control: the implicit gradient with the root detached (no double backward)."""

    @staticmethod
    def backward(ctx, grad_x):
        x, params = ctx.saved_tensors
        with torch.enable_grad():
            theta = params.detach().requires_grad_(True)
            fx, dfx = ctx.fn(x.detach(), theta)
            v = grad_x / dfx.detach()
            (gp,) = torch.autograd.grad(fx, theta, -v.detach())
        return None, v, gp, None, None


def test_gradgradcheck_catches_an_inverse_without_double_backward():
    y = torch.tensor([0.3, 1.2], dtype=D, requires_grad=True)
    p = torch.tensor([[0.1, -0.2], [0.3, 0.1]], dtype=D, requires_grad=True)

    def good(y, p):
        return invert(_cubic, y, p, -3.0, 3.0)

    def bad(y, p):
        return _FirstOrderOnly.apply(_cubic, y, p, -3.0, 3.0)

    assert torch.autograd.gradcheck(bad, (y, p))  # first derivatives are right...
    assert not torch.autograd.gradgradcheck(bad, (y, p), raise_exception=False)  # ...not second
    assert torch.autograd.gradgradcheck(good, (y, p))
