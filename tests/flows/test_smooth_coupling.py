"""Smooth coupling layers and ``smooth_coupling_flow`` (float64).

The flow property loop (``test_flow_registry.py``, factories in ``factories_smooth.py``)
covers round trips, log-dets against autograd and periodicity. Here: gradcheck and
gradgradcheck of couplings and of ``log_prob`` with respect to inputs and network parameters
(what forces and force matching differentiate), the ``fast`` direction, and the registry.
"""

from __future__ import annotations

import math

import pytest
import torch

from boltzflow.energies.base import CallableEnergy
from boltzflow.flows import smooth
from boltzflow.flows.base import InverseTransform
from boltzflow.flows.smooth_coupling import SmoothCoupling, smooth_coupling_flow
from boltzflow.runs.registry import FLOWS, resolve

D = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _perturb(module, seed=0, scale=0.3):
    module = module.double()
    g = _gen(100 + seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=D))
    return module


def _wrap(module, names):
    """``fn(v, *params)``: the module's output with its parameters passed as inputs."""

    def fn(v, *params):
        out = torch.func.functional_call(module, dict(zip(names, params, strict=True)), (v,))
        return tuple(out)

    return fn


@pytest.mark.parametrize("method", ["forward", "inverse"])
def test_coupling_gradcheck_and_gradgradcheck(method):
    torch.manual_seed(0)
    layer = _perturb(SmoothCoupling([1, 0, 1, 0], [True, False, False, True], 3, 1, 2))
    z = torch.tensor([[2.0, 0.3, 0.6, -1.0], [-2.5, 0.8, 0.2, 0.4]], dtype=D)
    v = z if method == "forward" else layer.forward(z).y.detach()
    module = layer if method == "forward" else InverseTransform(layer)
    fn = _wrap(module, [n for n, _ in module.named_parameters()])
    params = [p.detach().clone().requires_grad_(True) for p in module.parameters()]
    args = (v.clone().requires_grad_(True), *params)
    assert torch.autograd.gradcheck(fn, args, fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, args, fast_mode=True)


@pytest.mark.parametrize("fast", ["density", "sampling"])
def test_log_prob_is_twice_differentiable_in_inputs_and_parameters(fast):
    flow = _perturb(
        smooth_coupling_flow(
            3,
            num_layers=2,
            hidden=3,
            num_blocks=1,
            num_components=2,
            seed=1,
            periodic=[True, False, False],
            fast=fast,
        )
    )
    x = flow.sample(2, generator=_gen(1)).x.detach()
    module = _LogProb(flow)
    fn = _wrap(module, [n for n, _ in module.named_parameters()])
    params = [p.detach().clone().requires_grad_(True) for p in module.parameters()]
    args = (x.requires_grad_(True), *params)
    assert torch.autograd.gradcheck(fn, args, fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, args, fast_mode=True)


class _LogProb(torch.nn.Module):
    def __init__(self, flow):
        super().__init__()
        self.flow = flow

    def forward(self, x):
        return (self.flow.log_prob(x),)


def test_fast_density_evaluates_log_prob_without_root_finding(monkeypatch):
    calls = []
    original = smooth.invert
    monkeypatch.setattr(smooth, "invert", lambda *a, **k: calls.append(1) or original(*a, **k))
    flow = smooth_coupling_flow(4, num_layers=2, hidden=8, periodic=[1, 0, 1, 0], seed=0)
    flow.double()
    x = flow.sample(8, generator=_gen()).x
    n_sampling = len(calls)
    flow.log_prob(x)
    assert n_sampling == 2 and len(calls) == n_sampling
    flow = smooth_coupling_flow(4, num_layers=2, hidden=8, fast="sampling", seed=0).double()
    x = flow.sample(8, generator=_gen()).x
    assert len(calls) == n_sampling
    flow.log_prob(x)
    assert len(calls) == n_sampling + 2


def test_builder_registry_periodic_mask_and_seed():
    build = resolve(FLOWS, "smooth-coupling")
    assert build is smooth_coupling_flow
    target = CallableEnergy(lambda x: (1 - torch.cos(x)).sum(-1), event_shape=3)
    target.periodic_mask = [True, True, False]
    a, b = (
        build(target, num_layers=2, hidden=8, seed=3),
        build(target, num_layers=2, hidden=8, seed=3),
    )
    assert a.base.periodic.tolist() == [True, True, False]
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    x = a.sample(100).x
    assert x[:, :2].abs().max() <= math.pi
    with pytest.raises(ValueError, match="fast"):
        build(2, fast="both")
    with pytest.raises(ValueError, match="list of indices"):
        build(3, periodic=[0, 2])


def test_initial_flow_is_close_to_its_gaussian_base():
    # Near-identity initialisation: sigmoid, mixtures with dominant identity weight, logit.
    flow = smooth_coupling_flow(2, num_layers=4, hidden=16, seed=0).double()
    x = torch.linspace(-3, 3, 7, dtype=D).unsqueeze(1).expand(-1, 2)
    gauss = -0.5 * (x * x).sum(-1) - math.log(2 * math.pi)
    assert (flow.log_prob(x) - gauss).abs().max() < 1.0
