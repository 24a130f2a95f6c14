"""One loop over every registered flow and transform (``registry.FLOW_FACTORIES``), in float64.

For each: round trips both ways, log-dets against autograd Jacobians (forward and inverse,
per sample), ``log_prob`` against ``sample``'s ``log_q``, gradients reaching every
parameter, ``state_dict`` save/load, and periodicity on periodic coordinates.
"""

from __future__ import annotations

import io

import pytest
import torch

from .checks import (
    angular_difference,
    assert_ladj_matches_jacobian,
    assert_periodic,
    assert_round_trip,
    periodic_domain,
)
from .registry import FLOW_FACTORIES

NAMES = sorted(FLOW_FACTORIES)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _periodic(flow):
    domain = periodic_domain(flow)
    return None if domain is None else domain[0]


@pytest.fixture(params=NAMES)
def flow(request):
    return FLOW_FACTORIES[request.param](0)


def test_float64_and_not_identity(flow):
    z = flow.base.sample(64, generator=_gen())
    x, ladj = flow.forward(z)
    assert x.dtype == z.dtype == torch.float64 and ladj.dtype == torch.float64
    assert x.shape == z.shape and ladj.shape == (64,)
    assert angular_difference(x, z, _periodic(flow)).abs().max() > 1e-2


def test_round_trips(flow):
    periodic = _periodic(flow)
    z = flow.base.sample(64, generator=_gen(1))
    assert_round_trip(flow.forward, flow.inverse, z, periodic)
    x = flow.sample(64, generator=_gen(2)).x
    assert_round_trip(flow.inverse, flow.forward, x, periodic)


def test_forward_ladj_matches_jacobian(flow):
    assert_ladj_matches_jacobian(flow.forward, flow.base.sample(4, generator=_gen(3)))


def test_inverse_ladj_matches_jacobian(flow):
    x = flow.sample(4, generator=_gen(4)).x.detach()
    assert_ladj_matches_jacobian(flow.inverse, x)


def test_log_prob_matches_sample(flow):
    sample = flow.sample(128, generator=_gen(5))
    assert sample.log_q.shape == (128,) and torch.isfinite(sample.log_q).all()
    torch.testing.assert_close(flow.log_prob(sample.x), sample.log_q, rtol=0, atol=1e-9)
    torch.testing.assert_close(
        sample.log_q, flow.base.log_prob(sample.z) - flow.forward(sample.z).ladj, rtol=0, atol=0
    )


def _skip_without_parameters(flow):
    if not any(True for _ in flow.parameters()):
        pytest.skip("no parameters")


def _assert_all_parameters_have_gradient(flow, what):
    for name, p in flow.named_parameters():
        assert p.grad is not None, f"{name} receives no gradient from {what}"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient from {what}"
        assert p.grad.abs().max() > 0, f"{name} receives a zero gradient from {what}"


def test_log_prob_gradient_reaches_every_parameter(flow):
    _skip_without_parameters(flow)
    x = flow.sample(256, generator=_gen(6)).x.detach()
    flow.zero_grad()
    (-flow.log_prob(x).mean()).backward()
    _assert_all_parameters_have_gradient(flow, "log_prob")


def test_sample_is_reparametrized(flow):
    _skip_without_parameters(flow)
    sample = flow.sample(256, generator=_gen(7))
    flow.zero_grad()
    (sample.log_q.mean() + (sample.x**2).mean()).backward()
    _assert_all_parameters_have_gradient(flow, "sample")


def test_state_dict_round_trip(request, flow):
    name = request.node.callspec.params["flow"]
    buffer = io.BytesIO()
    torch.save(flow.state_dict(), buffer)
    other = FLOW_FACTORIES[name](0)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.5).add_(0.1)
    z = flow.base.sample(16, generator=_gen(8))
    x, ladj = flow.forward(z)
    if any(True for _ in other.parameters()):
        assert not torch.equal(other.forward(z).y, x), "perturbing parameters changed nothing"
    buffer.seek(0)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    x2, ladj2 = other.forward(z)
    assert torch.equal(x2, x) and torch.equal(ladj2, ladj)
    assert torch.equal(other.log_prob(x), flow.log_prob(x))


def test_periodic_coordinates(flow):
    domain = periodic_domain(flow)
    if domain is None:
        pytest.skip("no periodic coordinates")
    periodic, low, high = domain
    z = flow.base.sample(3, generator=_gen(9))
    assert_periodic(flow.forward, z, periodic, low, high)
    x = flow.sample(3, generator=_gen(10)).x.detach()
    assert_periodic(flow.inverse, x, periodic, low, high)
