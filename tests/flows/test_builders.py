"""Flow builders: accepted inputs, defaults per dimension, determinism, periodic handling."""

from __future__ import annotations

import math

import pytest
import torch

from boltzflow.energies.base import CallableEnergy
from boltzflow.flows.affine import ElementwiseAffine
from boltzflow.flows.base import InverseTransform
from boltzflow.flows.builders import (
    circular_spline_flow,
    coupling_masks,
    maf_flow,
    spline_autoregressive_flow,
    spline_coupling_flow,
)
from boltzflow.flows.circular import CircularShift, CircularSpline, CircularSplineCoupling
from boltzflow.flows.distributions import MixedNormalTorus, StandardNormal, UniformTorus
from boltzflow.flows.nflows_adapter import NflowsTransform
from boltzflow.runs.registry import FLOWS, resolve

BUILDERS = [spline_coupling_flow, spline_autoregressive_flow, maf_flow, circular_spline_flow]
SMALL = dict(num_layers=2, hidden=8, num_blocks=1)


def _layers(flow):
    return list(flow.transform.transforms)


@pytest.mark.parametrize("build", BUILDERS)
def test_same_seed_same_flow_and_global_rng_untouched(build):
    state = torch.get_rng_state()
    a, b = build(3, seed=7, **SMALL), build(3, seed=7, **SMALL)
    assert torch.equal(torch.get_rng_state(), state)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    c = build(3, seed=8, **SMALL)
    sc = c.state_dict()
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("build", BUILDERS)
def test_accepts_energy_int_and_tuple(build):
    energy = CallableEnergy(lambda x: 0.5 * (x**2).sum((1, 2)), event_shape=(2, 3))
    for spec, shape in [(energy, (2, 3)), (4, (4,)), ((2, 2), (2, 2)), (1, (1,))]:
        flow = build(spec, seed=0, **SMALL)
        assert flow.event_shape == torch.Size(shape)
        sample = flow.sample(5, generator=torch.Generator().manual_seed(0))
        assert sample.x.shape == (5, *shape) and sample.log_q.shape == (5,)


def test_spline_coupling_defaults_per_dimension():
    one = _layers(spline_coupling_flow(1, seed=0))
    assert [type(t) for t in one] == [NflowsTransform, NflowsTransform, ElementwiseAffine]
    two = _layers(spline_coupling_flow(2, seed=0))
    assert len(two) == 7 and isinstance(two[-1], ElementwiseAffine)
    big = spline_coupling_flow(60, seed=0)
    assert len(_layers(big)) == 9
    assert _layers(big)[0].nflows_transform.transform_net.hidden_features == 240


def test_coupling_masks_pairs_cover_every_feature():
    gen = torch.Generator().manual_seed(0)
    for dim in [2, 3, 7]:
        masks = coupling_masks(dim, 5, gen)
        for first, second in zip(masks[0::2], masks[1::2], strict=False):
            assert torch.equal(first, ~second)
        assert all(0 < int(m.sum()) < dim for m in masks)
    two = coupling_masks(2, 4, gen)
    assert all(not torch.equal(a, b) for a, b in zip(two, two[1:], strict=False))


def test_output_affine_starts_at_loc_and_scale():
    flow = spline_coupling_flow(2, loc=torch.tensor([10.0, -3.0]), scale=2.0, seed=0)
    affine = _layers(flow)[-1]
    assert isinstance(affine, ElementwiseAffine)
    torch.testing.assert_close(affine.loc.detach(), torch.tensor([10.0, -3.0]))
    torch.testing.assert_close(affine.log_scale.detach(), torch.full((2,), math.log(2.0)))
    assert not any(
        isinstance(t, ElementwiseAffine) for t in _layers(spline_coupling_flow(2, affine=False))
    )


def test_periodic_mask_selects_circular_layers_and_mixed_base():
    flow = spline_coupling_flow(4, periodic=[True, False, True, False], seed=0, **SMALL)
    assert isinstance(flow.base, MixedNormalTorus)
    kinds = [type(t) for t in _layers(flow)]
    assert kinds == [
        CircularSplineCoupling,
        CircularShift,
        CircularSplineCoupling,
        ElementwiseAffine,
    ]
    assert _layers(flow)[-1].loc.numel() == 2  # affine acts on the Euclidean features only
    torus = circular_spline_flow((2, 2), seed=0, **SMALL)
    assert isinstance(torus.base, UniformTorus)
    assert not any(isinstance(t, ElementwiseAffine) for t in _layers(torus))
    ring = circular_spline_flow(1, seed=0)
    assert [type(t) for t in _layers(ring)] == [CircularSpline, CircularShift, CircularSpline]
    x = torus.sample(200, generator=torch.Generator().manual_seed(0)).x
    assert x.min() >= -math.pi and x.max() <= math.pi


def test_periodic_mask_from_target_attribute():
    energy = CallableEnergy(lambda x: (x**2).sum(-1), event_shape=3)
    energy.periodic_mask = torch.tensor([False, False, True])
    flow = spline_coupling_flow(energy, seed=0, **SMALL)
    assert isinstance(flow.base, MixedNormalTorus)
    assert flow.base.periodic.tolist() == [False, False, True]
    assert isinstance(spline_coupling_flow(energy, periodic=False, **SMALL).base, StandardNormal)


def test_bad_periodic_masks_are_rejected():
    with pytest.raises(ValueError, match="indices"):
        spline_coupling_flow(4, periodic=[0, 2])
    with pytest.raises(ValueError, match="entries"):
        spline_coupling_flow(4, periodic=[True, False])
    for build in [spline_autoregressive_flow, maf_flow]:
        with pytest.raises(NotImplementedError):
            build(3, periodic=[True, False, False])
    with pytest.raises(ValueError, match="permutation"):
        maf_flow(3, permutation="sideways")


def test_autoregressive_layout_and_inverse_variant():
    flow = maf_flow(3, num_layers=3, permutation="random", seed=0)
    assert len(_layers(flow)) == 3 + 2 + 1
    iaf = spline_autoregressive_flow(3, num_layers=2, inverse_autoregressive=True, seed=0)
    assert isinstance(_layers(iaf)[0], InverseTransform)
    one = maf_flow(1, loc=2.0, scale=3.0)
    assert [type(t) for t in _layers(one)] == [ElementwiseAffine]


def test_maf_initialisation_is_near_identity():
    flow = maf_flow(10, seed=0).double()
    sample = flow.sample(256, generator=torch.Generator().manual_seed(0))
    assert (sample.x - sample.z).abs().max() < 0.5


@pytest.mark.parametrize(
    "name", ["spline-coupling", "spline-autoregressive", "maf", "circular-spline-coupling"]
)
def test_registered_in_flows_registry(name):
    build = resolve(FLOWS, name, "flow")
    energy = CallableEnergy(lambda x: (x**2).sum(-1), event_shape=2)
    flow = build(energy, seed=0, **SMALL)
    assert flow.event_shape == energy.event_shape


def test_default_spline_flow_learns_a_bimodal_density():
    """Maximum likelihood on a two-mode mixture: held-out log-likelihood close to the exact
    mixture's and far above the best single Gaussian's."""
    gen = torch.Generator().manual_seed(0)
    modes = torch.tensor([[-2.0, 0.0], [2.0, 1.0]], dtype=torch.float64)
    sd = 0.4

    def data(n):
        pick = torch.randint(0, 2, (n,), generator=gen)
        return modes[pick] + sd * torch.randn(n, 2, generator=gen, dtype=torch.float64)

    def exact_log_prob(x):
        comp = torch.distributions.Normal(modes, sd).log_prob(x[:, None, :]).sum(-1)
        return torch.logsumexp(comp, -1) - math.log(2)

    train, test = data(2000), data(2000)
    gauss = torch.distributions.MultivariateNormal(train.mean(0), torch.cov(train.T))
    flow = spline_coupling_flow(2, num_layers=4, hidden=32, seed=0).double()
    flow.transform.transforms[-1].set_from_data(train)
    opt = torch.optim.Adam(flow.parameters(), lr=5e-3)
    for _ in range(150):
        batch = train[torch.randint(0, 2000, (256,), generator=gen)]
        opt.zero_grad()
        (-flow.log_prob(batch).mean()).backward()
        opt.step()
    with torch.no_grad():
        held_out = float(flow.log_prob(test).mean())
    best = float(exact_log_prob(test).mean())
    assert held_out > float(gauss.log_prob(test).mean()) + 0.5
    assert best - 0.2 < held_out < best + 0.05
