"""Lattice flows: masks, gauge equivariance and invariance, lattice translations, identity start.

Log-dets against autograd Jacobians, round trips, gradients and periodicity run for the
lattice flows in the shared registry loop (``factories_lattice.py``).
"""

import math

import pytest
import torch

from boltzflow.energies.lattice import gauge_transform, plaquettes, wrap_angle
from boltzflow.flows.base import Compose, Flow
from boltzflow.flows.circular import CircularSpline
from boltzflow.flows.distributions import UniformTorus
from boltzflow.flows.lattice import CircularConvNet, checkerboard, circular_pad, phi4_flow
from boltzflow.flows.lattice_gauge import (
    GaugeEquivariantCoupling,
    plaquette_masks,
    u1_gauge_flow,
)
from boltzflow.flows.lattice_tree import (
    PlaquetteTreeSpline,
    SinkSpline,
    plaquette_adjoint,
    tree_link_shift,
    tree_shift_adjoint,
)

from .registry import FLOW_FACTORIES, perturbed

DT = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _angle_close(a, b, atol=1e-10):
    assert wrap_angle(a - b).abs().max() < atol


def test_lattice_flows_are_in_the_registry():
    names = {"phi4-affine-L4", "phi4-spline-L4", "u1-gauge-L4", "u1-gauge-tree-loops-L4"}
    assert names <= set(FLOW_FACTORIES)


@pytest.mark.parametrize(("mu", "offset"), [(0, 0), (0, 3), (1, 1), (1, 2)])
def test_plaquette_masks_structure(mu, offset):
    """Moving the active links changes each active plaquette by exactly that link's move,
    leaves frozen plaquettes alone, and only passive plaquettes absorb the rest."""
    L = 8
    links, active, frozen = plaquette_masks(L, mu, offset)
    assert links[1 - mu].sum() == 0 and links[mu].sum() == L * L // 4
    assert not (active & frozen).any() and frozen.sum() == L * L // 2
    x = torch.zeros(1, 2, L, L, dtype=DT)
    delta = torch.rand(1, 2, L, L, generator=_gen(), dtype=DT) * links
    dp = plaquettes(x + delta) - plaquettes(x)
    sign = 1.0 if mu == 0 else -1.0
    torch.testing.assert_close(dp[0][active], sign * delta[0, mu][active])
    assert dp[0][frozen].abs().max() == 0
    passive = ~(active | frozen)
    assert dp[0][passive].abs().min() > 0
    # the 2×1 loop R(x) = P(x) + P(x - ν̂) at active x is unchanged (loop features)
    dr = dp + torch.roll(dp, 1, 2 - mu)
    assert dr[0][active].abs().max() < 1e-12


def test_tree_link_shift_moves_exactly_the_requested_plaquettes():
    L = 6
    delta = torch.randn(3, L, L, generator=_gen(11), dtype=DT)
    delta = delta - delta.mean(dim=(1, 2), keepdim=True)
    shift = tree_link_shift(delta)
    torch.testing.assert_close(plaquettes(shift), delta)
    tree = torch.zeros(2, L, L, dtype=torch.bool)
    tree[0, :, 1:] = True
    tree[1, :, L - 1] = True
    assert shift[:, ~tree].abs().max() == 0  # only the maximal tree moves


def _random_links(n, L, seed):
    return (torch.rand(n, 2, L, L, generator=_gen(seed), dtype=DT) * 2 - 1) * math.pi


def _randomised(module, seed):
    module = module.double()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=_gen(seed), dtype=DT))
    return module


def test_adjoints_of_the_plaquette_and_tree_maps():
    """`plaquette_adjoint` and `tree_shift_adjoint` are autograd's vector-Jacobian products of
    the linear maps `plaquettes` and `tree_link_shift` (which the tree layers' score rules use)."""
    links = torch.randn(2, 2, 4, 4, generator=_gen(11), dtype=DT, requires_grad=True)
    delta = torch.randn(2, 4, 4, generator=_gen(12), dtype=DT, requires_grad=True)
    a = torch.randn(2, 4, 4, generator=_gen(13), dtype=DT)
    g = torch.randn(2, 2, 4, 4, generator=_gen(14), dtype=DT)
    (expected,) = torch.autograd.grad(plaquettes(links), links, a)
    torch.testing.assert_close(plaquette_adjoint(a), expected, rtol=0, atol=1e-12)
    (expected,) = torch.autograd.grad(tree_link_shift(delta), delta, g)
    torch.testing.assert_close(tree_shift_adjoint(g), expected, rtol=0, atol=1e-12)


def test_plaquette_tree_spline_maps_every_plaquette_but_the_sink():
    L = 4
    layer = _randomised(PlaquetteTreeSpline(L, num_bins=4, num_splines=2, param_scale=1.0), 12)
    z = _random_links(5, L, 13)
    x, ladj = layer.forward(z)
    pz, px = wrap_angle(plaquettes(z)), wrap_angle(plaquettes(x))
    h, lad = layer.splines(pz)
    keep = torch.ones(L, L, dtype=torch.bool)
    keep[-1, -1] = False
    _angle_close(px[:, keep], h[:, keep])
    torch.testing.assert_close(ladj, lad[:, keep].sum(-1))
    # the sink keeps the plaquette sum: Σ_P θ_P ≡ 2πQ is unchanged mod 2π
    _angle_close(px.sum(dim=(1, 2)), pz.sum(dim=(1, 2)))
    assert wrap_angle(px[:, -1, -1] - h[:, -1, -1]).abs().max() > 1e-3


def test_sink_spline_moves_the_sink_and_spreads_the_change():
    L = 4
    layer = _randomised(SinkSpline(L, num_bins=4, num_splines=1, param_scale=1.0), 14)
    z = _random_links(5, L, 15)
    x, ladj = layer.forward(z)
    pz, px = wrap_angle(plaquettes(z)), wrap_angle(plaquettes(x))
    h, lad = layer.splines(pz[:, -1, -1])
    _angle_close(px[:, -1, -1], h)
    torch.testing.assert_close(ladj, lad)
    spread = wrap_angle(px - pz).reshape(5, -1)[:, :-1]
    expected = -wrap_angle(h - pz[:, -1, -1]) / (L * L - 1)
    torch.testing.assert_close(spread, expected.unsqueeze(1).expand_as(spread))


def test_gauge_flow_needs_multiple_of_four():
    with pytest.raises(ValueError):
        u1_gauge_flow(L=6)


@pytest.mark.parametrize("improved", [False, True])
def test_gauge_flow_equivariance_and_log_prob_invariance(improved):
    L = 8
    options = dict(positional=improved, loops=improved, descending=improved, tree=improved)
    flow = u1_gauge_flow(L=L, num_layers=8, num_bins=4, hidden=[4], seed=0, **options)
    flow = perturbed(flow, 0)
    z = flow.base.sample(6, generator=_gen(1))
    alpha = (torch.rand(6, L, L, generator=_gen(2), dtype=DT) * 2 - 1) * math.pi
    x, ladj = flow.forward(z)
    gx, gladj = flow.forward(gauge_transform(z, alpha))
    _angle_close(gx, gauge_transform(x, alpha))
    torch.testing.assert_close(gladj, ladj)
    log_q = flow.log_prob(x)
    torch.testing.assert_close(flow.log_prob(gauge_transform(x, alpha)), log_q)
    assert log_q.std() > 1e-3  # the density is not trivially flat
    # negative control: an elementwise circular spline on links is not gauge invariant
    plain = perturbed(Flow(UniformTorus((2, L, L)), Compose(CircularSpline(2 * L * L, 4))), 0)
    lp = plain.log_prob(x)
    assert (plain.log_prob(gauge_transform(x, alpha)) - lp).abs().max() > 1e-3


def test_gauge_flow_translation_equivariance_by_four():
    L = 8
    flow = u1_gauge_flow(L=L, num_layers=6, num_bins=4, hidden=[4], tree=False, seed=1)
    flow = perturbed(flow, 1)
    z = flow.base.sample(3, generator=_gen(3))
    x, ladj = flow.forward(z)
    for dims, shift in (((2,), 4), ((3,), 4), ((2, 3), (4, 4))):
        xs, ls = flow.forward(torch.roll(z, shift, dims))
        _angle_close(xs, torch.roll(x, shift, dims))
        torch.testing.assert_close(ls, ladj)
    xs, _ = flow.forward(torch.roll(z, 1, 3))  # negative control: masks are 4-periodic
    assert wrap_angle(xs - torch.roll(x, 1, 3)).abs().max() > 1e-3


@pytest.mark.parametrize("coupling", ["affine", "spline"])
def test_phi4_flow_translation_equivariance(coupling):
    L = 6
    flow = perturbed(phi4_flow(L=L, num_layers=3, coupling=coupling, hidden=[4], seed=2), 2)
    z = flow.base.sample(3, generator=_gen(4))
    x, ladj = flow.forward(z)
    for shift, dims in (((1, 1), (1, 2)), (2, 1), (4, 2)):  # checkerboard-preserving shifts
        xs, ls = flow.forward(torch.roll(z, shift, dims))
        torch.testing.assert_close(xs, torch.roll(x, shift, dims))
        torch.testing.assert_close(ls, ladj)
    xs, _ = flow.forward(torch.roll(z, 1, 1))  # negative control: swaps the colours
    assert (xs - torch.roll(x, 1, 1)).abs().max() > 1e-3


def test_gauge_flow_offset_schedules():
    def offsets(flow):
        return [(t.mu, t.offset) for t in flow.transform.transforms]

    up = u1_gauge_flow(L=8, num_layers=8, descending=False, tree=False)
    down = u1_gauge_flow(L=8, num_layers=8, descending=True, tree=False)
    assert offsets(up) == [(i % 2, (i // 2) % 4) for i in range(8)]
    assert offsets(down) == [(0, 0), (1, 0), (0, 3), (1, 3), (0, 2), (1, 2), (0, 1), (1, 1)]


def test_checkerboard_masks():
    m0, m1 = checkerboard(4, 0), checkerboard(4, 1)
    assert torch.equal(m0, ~m1) and m0.sum() == 8 and m0[0, 0]


@pytest.mark.parametrize(
    "flow",
    [
        phi4_flow(L=4, num_layers=2, coupling="affine"),
        phi4_flow(L=4, num_layers=2, coupling="spline"),
        u1_gauge_flow(L=4, num_layers=4, positional=True, loops=True),
    ],
)
def test_fresh_flows_are_the_identity(flow):
    flow = flow.double()
    z = flow.base.sample(5, generator=_gen(5))
    x, ladj = flow.forward(z)
    torch.testing.assert_close(x, z)
    assert ladj.abs().max() < 1e-6  # parameters were initialised in float32


@pytest.mark.parametrize("mu", [0, 1])
def test_strided_conditioner_matches_full_convolution_with_gradients(mu):
    """Stripes along either axis (strides (1, 4) and (4, 1)) give the full convolution's values
    at the active stripes, and the same input and parameter gradients."""
    L = 8
    layer = GaugeEquivariantCoupling(
        L, mu=mu, offset=3, num_bins=4, hidden=[4], positional=True, loops=True
    )
    layer = perturbed(Flow(UniformTorus((2, L, L)), Compose(layer)), 3).transform.transforms[0]
    feats = torch.randn(2, 4, L, L, generator=_gen(6), dtype=DT, requires_grad=True)
    full = layer.net(feats)  # [B, 3K, L, L]
    rows = torch.arange(3, L, 4)
    expected = full.index_select(3 - mu, rows).permute(0, 2, 3, 1)
    mine = layer._spline_params(feats)
    torch.testing.assert_close(mine, expected, rtol=0, atol=1e-12)
    cotangent = torch.randn(mine.shape, generator=_gen(7), dtype=DT)
    inputs = [feats, *layer.net.parameters()]
    for a, b in zip(
        torch.autograd.grad(mine, inputs, cotangent),
        torch.autograd.grad(expected, inputs, cotangent),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("r", [0, 1, 2, 4])
def test_circular_pad_matches_torch_circular_padding(r):
    x = torch.randn(2, 3, 4, 6, generator=_gen(8), dtype=DT)
    padded = torch.nn.functional.pad(x, (r, r, r, r), mode="circular")
    assert torch.equal(circular_pad(x, r), padded)
    padded_last = torch.nn.functional.pad(x.flatten(0, 1), (r, r), mode="circular")  # 3-D only
    padded_last = padded_last.view(*x.shape[:-1], -1)
    assert torch.equal(circular_pad(x, r, dims=1), padded_last)
    with pytest.raises(ValueError, match="circular padding"):
        circular_pad(x, 5)
    with pytest.raises(ValueError, match="circular padding"):
        circular_pad(x, 1, dims=3)


def test_conv_net_matches_torch_circular_convolutions_with_gradients():
    net = CircularConvNet(2, 3, hidden=[4, 4], zero_init=False).double()
    x = torch.randn(3, 2, 8, 8, generator=_gen(9), dtype=DT, requires_grad=True)
    mine, reference = net(x), net.net(x)  # nn.Conv2d's own padding_mode="circular"
    torch.testing.assert_close(mine, reference, rtol=0, atol=1e-12)
    cotangent = torch.randn(mine.shape, generator=_gen(10), dtype=DT)
    inputs = [x, *net.parameters()]
    for a, b in zip(
        torch.autograd.grad(mine, inputs, cotangent),
        torch.autograd.grad(reference, inputs, cotangent),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_periodic_bias_is_periodic_and_learnable():
    net = CircularConvNet(1, 2, hidden=[3], bias_period=2).double()
    with torch.no_grad():
        net.periodic_bias.normal_(generator=_gen(7))
    x = torch.zeros(1, 1, 4, 4, dtype=DT)
    h = net.features(x)
    torch.testing.assert_close(h, torch.roll(h, 2, 2))
    assert (h - torch.roll(h, 1, 2)).abs().max() > 1e-6


def test_von_mises_fit_of_the_shared_splines():
    """The fitted spline pushes a uniform angle to von Mises(κ): 1-D KL below 1e-3 nats and
    ⟨cos θ⟩ = I₁(κ)/I₀(κ); a fresh (identity) spline is the negative control."""
    from boltzflow.flows.lattice_tree import SharedCircularSplines

    kappa = 6.0
    splines = SharedCircularSplines()
    kl = splines.fit_von_mises(kappa)
    assert -1e-6 < kl < 1e-3  # a KL: non-negative up to quadrature and float32 rounding
    z = (torch.rand(200_000, generator=_gen(1)) * 2 - 1) * math.pi
    exact = (torch.special.i1e(torch.tensor(kappa)) / torch.special.i0e(torch.tensor(kappa))).item()
    with torch.no_grad():
        c = torch.cos(splines(z)[0])
        c0 = torch.cos(SharedCircularSplines()(z)[0])
    stderr = c.std().item() / math.sqrt(len(c))
    assert abs(c.mean().item() - exact) < 5 * stderr + 2e-3
    assert abs(c0.mean().item() - exact) > 0.5
