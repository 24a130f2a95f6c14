"""The nflows adapter: direction convention, flattening, conversion back to nflows."""

from __future__ import annotations

import pytest
import torch
from nflows.distributions.normal import StandardNormal as NflowsNormal
from nflows.flows import Flow as NflowsFlow

from boltzflow.flows import nflows_adapter as nfa
from boltzflow.flows.builders import maf_flow, spline_autoregressive_flow, spline_coupling_flow
from boltzflow.flows.circular import CircularSpline

from .registry import perturbed


def test_forward_is_the_nflows_sampling_direction():
    torch.manual_seed(0)
    layer = nfa.rq_coupling([1, 0, 1], 8, 1, 4, 3.0).double()
    z = torch.randn(6, 3, dtype=torch.float64)
    x, ladj = layer(z)
    nx, nladj = layer.nflows_transform.inverse(z)
    assert torch.equal(x, nx) and torch.equal(ladj, nladj)
    back, ladj_inv = layer.inverse(x)
    nz, nladj_inv = layer.nflows_transform(x)
    assert torch.equal(back, nz) and torch.equal(ladj_inv, nladj_inv)


def test_event_shapes_are_flattened_for_nflows():
    torch.manual_seed(0)
    layer = nfa.rq_coupling([1, 0, 1, 0, 1, 0], 8, 1).double()
    z = torch.randn(5, 2, 3, dtype=torch.float64)
    x, ladj = layer(z)
    assert x.shape == (5, 2, 3) and ladj.shape == (5,)
    torch.testing.assert_close(layer(z.reshape(5, 6)).y, x.reshape(5, 6), rtol=0, atol=0)


@pytest.mark.parametrize(
    "build",
    [
        lambda: spline_coupling_flow(
            3, num_layers=3, hidden=8, loc=[1.0, 2.0, 3.0], scale=2.0, seed=0
        ),
        lambda: spline_autoregressive_flow(
            3, num_layers=2, hidden=8, inverse_autoregressive=True, seed=0
        ),
        lambda: maf_flow(3, num_layers=2, hidden=8, permutation="random", seed=0),
    ],
)
def test_to_nflows_gives_the_same_distribution(build):
    flow = perturbed(build(), seed=1)
    bare = NflowsFlow(nfa.to_nflows(flow.transform), NflowsNormal([3])).double()
    sample = flow.sample(32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(bare.log_prob(sample.x), sample.log_q, rtol=0, atol=1e-10)
    x, _ = bare._transform.inverse(sample.z)
    torch.testing.assert_close(x, sample.x, rtol=0, atol=1e-10)


def test_to_nflows_rejects_transforms_without_counterpart():
    with pytest.raises(TypeError, match="CircularSpline"):
        nfa.to_nflows(CircularSpline(2))


def test_random_permutation_follows_generator():
    a = nfa.random_permutation(6, torch.Generator().manual_seed(3))
    b = nfa.random_permutation(6, torch.Generator().manual_seed(3))
    assert torch.equal(a.nflows_transform._permutation, b.nflows_transform._permutation)
    z = torch.arange(6.0)[None]
    assert sorted(a(z).y[0].tolist()) == z[0].tolist()


def test_coupling_mask_must_split_features():
    with pytest.raises(ValueError, match="some features"):
        nfa.rq_coupling([1, 1, 1])
