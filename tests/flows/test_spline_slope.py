"""The fused rational-quadratic splines of `boltzflow.flows.spline_slope` against nflows and
autograd, in float64: the map, its log-derivative and their parameter gradients equal nflows',
and the closed-form slope of the log-derivative equals autograd's; circular and linear-tailed
splines, forward and inverse."""

import math

import pytest
import torch
from nflows.transforms.splines.rational_quadratic import (
    rational_quadratic_spline,
    unconstrained_rational_quadratic_spline,
)

from boltzflow.flows.circular import circular_rq_spline
from boltzflow.flows.spline_slope import _softmax, inverse_local, rq_spline, unconstrained_rq_spline

K = 6
TAIL = 3.0


def _params(n: int, n_derivatives: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(n, k, generator=g, dtype=torch.float64) for k in (K, K, n_derivatives))


def _autograd_local(spline, inputs):
    leaf = inputs.clone().requires_grad_(True)
    out, lad = spline(leaf)
    (local,) = torch.autograd.grad(lad.sum(), leaf)
    return out.detach(), lad.detach(), local


def _angles(n: int) -> torch.Tensor:
    x = torch.rand(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    return x * math.pi


def _wide(n: int) -> torch.Tensor:  # a third of the points fall in the linear tails
    return 4.0 * torch.randn(n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def _nflows_circular(x, params, inverse):
    w, h, d = params
    d = torch.cat([d, d[..., :1]], -1)  # the circular spline's tied boundary derivative
    bounds = {"left": -math.pi, "right": math.pi, "bottom": -math.pi, "top": math.pi}
    return rational_quadratic_spline(x, w, h, d, inverse=inverse, **bounds)


def _nflows_linear(x, params, inverse):
    return unconstrained_rational_quadratic_spline(
        x, *params, inverse=inverse, tails="linear", tail_bound=TAIL
    )


CASES = {  # name: (inputs, parameters, nflows' spline, the fused spline)
    "circular": (
        _angles,
        lambda n: _params(n, K),
        _nflows_circular,
        lambda x, p, inv: circular_rq_spline(x, *p, inverse=inv, slope=True),
    ),
    "linear tails": (
        _wide,
        lambda n: _params(n, K - 1, seed=2),
        _nflows_linear,
        lambda x, p, inv: unconstrained_rq_spline(x, *p, inv, TAIL, slope=True),
    ),
}


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_slope_matches_autograd(case, inverse):
    inputs, make_params, nflows_spline, fused = CASES[case]
    x, params = inputs(300), make_params(300)
    out, lad, reference = _autograd_local(lambda t: nflows_spline(t, params, inverse), x)
    _, lad_fused, slope = fused(x, params, inverse)
    local = inverse_local(slope, lad_fused) if inverse else slope
    torch.testing.assert_close(local, reference, atol=1e-9, rtol=1e-9)
    assert reference.abs().max() > 0.1  # a curved spline: the check can fail
    if case == "linear tails":
        outside = x.abs() > TAIL
        assert outside.any() and (local[outside] == 0).all()


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_spline_equals_nflows_with_its_gradients(case, inverse):
    inputs, make_params, nflows_spline, fused = CASES[case]
    x = inputs(300)
    grads = []
    for spline in (nflows_spline, lambda t, p, inv: fused(t, p, inv)[:2]):
        leaf = x.clone().requires_grad_(True)
        params = tuple(p.requires_grad_(True) for p in make_params(300))
        out, lad = spline(leaf, params, inverse)
        weights = torch.linspace(0.5, 1.5, len(x), dtype=x.dtype)
        torch.autograd.backward([(weights * out).sum() + (weights.flip(0) * lad).sum()])
        grads.append([out.detach(), lad.detach(), leaf.grad] + [p.grad for p in params])
    for mine, theirs in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-12, rtol=1e-10)
    assert grads[0][3].abs().max() > 0.01  # the parameters' gradient is there to compare


def test_spline_rejects_inputs_outside_its_interval():
    params = _params(2, K)
    with pytest.raises(ValueError, match="outside"):
        x = torch.tensor([0.0, 4.0], dtype=torch.float64)
        rq_spline(x, *params[:2], torch.zeros(2, K + 1, dtype=torch.float64))


@pytest.mark.parametrize("inverse", [False, True])
def test_rq_coupling_equals_nflows_coupling(inverse):
    from nflows.transforms import PiecewiseRationalQuadraticCouplingTransform

    from boltzflow.flows.nflows_adapter import rq_coupling

    torch.manual_seed(0)
    ours = rq_coupling([True, False, True, False], hidden_features=16, tail_bound=TAIL).double()
    theirs = PiecewiseRationalQuadraticCouplingTransform(
        mask=torch.tensor([1, 0, 1, 0], dtype=torch.uint8),
        transform_net_create_fn=lambda i, o: ours.nflows_transform.transform_net,
        num_bins=ours.nflows_transform.num_bins,
        tails="linear",
        tail_bound=TAIL,
    )
    x = _wide(400).reshape(100, 4)
    mine = ours.nflows_transform.inverse(x) if inverse else ours.nflows_transform(x)
    ref = theirs.inverse(x) if inverse else theirs(x)
    assert (x.abs() > TAIL).any()
    for a, b in zip(mine, ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_non_finite_inputs_pass_through_the_linear_tails_as_in_nflows():
    params = _params(4, K - 1)
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.5], dtype=torch.float64)
    out, lad = unconstrained_rq_spline(x, *params, False, TAIL)
    ref_out, ref_lad = unconstrained_rational_quadratic_spline(
        x, *params, tails="linear", tail_bound=TAIL
    )
    torch.testing.assert_close(out, ref_out, equal_nan=True)
    torch.testing.assert_close(lad, ref_lad)


def test_knot_softmax_equals_torch_softmax_with_gradients_at_large_offsets():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(64, 3, K, generator=g, dtype=torch.float64) * 4
    x = (x + torch.tensor([0.0, 700.0, -700.0], dtype=torch.float64)[:, None]).requires_grad_(True)
    weights = torch.randn(x.shape, generator=g, dtype=torch.float64)
    ours = _softmax(x)
    ref = torch.softmax(x, -1)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-15)
    (g_ours,) = torch.autograd.grad((ours * weights).sum(), x)
    (g_ref,) = torch.autograd.grad((ref * weights).sum(), x)
    torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=1e-14)
