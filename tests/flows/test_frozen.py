"""``frozen(flow)``: samplers borrow a flow and give it back unchanged."""

import pytest
import torch

from boltzflow.energies.gaussians import CorrelatedGaussian
from boltzflow.flows.base import frozen
from boltzflow.flows.builders import spline_coupling_flow
from boltzflow.sampling.neutra import neutra


def _flow():
    flow = spline_coupling_flow((2,), num_layers=2, hidden=8, seed=0).double()
    first = next(flow.parameters())
    first.requires_grad_(False)  # a layer the caller froze
    return flow


def _state(flow):
    return (
        [m.training for m in flow.modules()],
        [p.requires_grad for p in flow.parameters()],
    )


def test_frozen_fixes_everything_inside_and_restores_on_exit():
    flow = _flow()
    flow.train()
    before = _state(flow)
    with frozen(flow) as f:
        assert f is flow and not flow.training
        assert not any(p.requires_grad for p in flow.parameters())
    assert _state(flow) == before
    with pytest.raises(RuntimeError), frozen(flow):
        raise RuntimeError("restored on errors too")
    assert _state(flow) == before


def test_neutra_returns_the_flow_as_it_found_it(float64):
    target = CorrelatedGaussian(dim=2)
    flow = _flow()
    for mode in (True, False):
        flow.train(mode)
        before = _state(flow)
        neutra(flow, target, n_samples=8, chains=2, warmup_rounds=1, warmup_steps=2)
        assert _state(flow) == before
    assert torch.is_grad_enabled()
