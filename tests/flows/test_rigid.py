"""Rigid-body flows on (R^3 x S^3)^N: the sphere, the double cover, exact log-dets in the
tangent chart, normalisation, round trips and molecule permutations (float64)."""

from __future__ import annotations

import math

import pytest
import torch

from boltzflow.coordinates.quaternion import random_quaternion, tangent_basis
from boltzflow.flows.base import Compose, Flow
from boltzflow.flows.rigid import (
    CentredPositionCoupling,
    OrientationContraction,
    OrientationCoupling,
    PositionContraction,
    PositionCoupling,
    SetConditioner,
    mean_structure,
    rigid_body_flow,
)
from boltzflow.flows.rigid import contraction as contraction_module
from boltzflow.flows.rigid import couplings as couplings_module
from boltzflow.flows.rigid.charts import join_state, split_state
from boltzflow.runs.registry import FLOWS, resolve

D = torch.float64
BOX = (0.9, 1.1, 1.0)
SMALL = dict(hidden=8, depth=1, num_bins=4)


def _perturb(module, seed, scale):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


def _flow(n=2, seed=0, scale=0.3, reference=None, **kw):
    flow = rigid_body_flow(n, BOX, num_layers=1, seed=seed, reference=reference, **SMALL, **kw)
    return _perturb(flow.double(), seed, scale)


def _reference(n, seed=5):
    gen = torch.Generator().manual_seed(seed)
    r = torch.rand(n, 3, generator=gen, dtype=D) * torch.tensor(BOX, dtype=D)
    return join_state(r[None], random_quaternion((1, n), generator=gen, dtype=D))[0]


def _near(reference, batch, seed=6, spread=0.03):
    """Thermal-like states about a reference: small displacements and rotations."""
    gen = torch.Generator().manual_seed(seed)
    r, q = split_state(reference[None].expand(batch, -1))
    r = r + spread * torch.randn(r.shape, generator=gen, dtype=D)
    q = q + spread * torch.randn(q.shape, generator=gen, dtype=D)
    return join_state(r, q / q.norm(dim=-1, keepdim=True))


def _layers(n, reference):
    sites, rot = reference.reshape(n, 7)[:, :3], reference.reshape(n, 7)[:, 3:]
    ref = dict(sites=sites, orientations=rot)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        layers = {
            "position-circular": PositionCoupling(n, BOX, axis=1, **SMALL),
            "position-centred": CentredPositionCoupling(n, BOX, axis=2, hidden=8, depth=1, **ref),
            "orientation-all": OrientationCoupling(n, BOX, **SMALL),
            "orientation-one": OrientationCoupling(n, BOX, components=(1,), **ref, **SMALL),
            "position-contraction": PositionContraction(n, BOX, sites, rot, scale=0.6),
            "orientation-contraction": OrientationContraction(n, BOX, sites, rot, scale=0.6),
        }
    return {k: _perturb(v.double(), 1, 0.3) for k, v in layers.items()}


N_LAYER = 3
REF = _reference(N_LAYER)
LAYERS = _layers(N_LAYER, REF)


def _tangent_frame(x):
    """Block-diagonal (7N, 6N) orthonormal frame: identity on positions, E(q) on quaternions."""
    blocks = []
    for row in x.reshape(-1, 7):
        frame = torch.zeros(7, 6, dtype=x.dtype)
        frame[:3, :3] = torch.eye(3, dtype=x.dtype)
        frame[3:, 3:] = tangent_basis(row[3:])
        blocks.append(frame)
    return torch.block_diag(*blocks)


def _chart_ladj(fn, z):
    """log|det E(f(z))^T J_f(z) E(z)| per sample, J_f the ambient autograd Jacobian."""
    out = []
    for row in z:
        jac = torch.autograd.functional.jacobian(lambda v: fn(v[None]).y[0], row)
        y = fn(row[None]).y[0]
        out.append(torch.linalg.slogdet(_tangent_frame(y).T @ jac @ _tangent_frame(row))[1])
    return torch.stack(out)


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_ladj_matches_tangent_chart_jacobian_and_round_trips(name):
    layer = LAYERS[name]
    z = _near(REF, 3)
    x, ladj = layer.forward(z)
    _, q = split_state(x)
    torch.testing.assert_close(q.norm(dim=-1), torch.ones_like(q[..., 0]), atol=1e-12, rtol=0)
    torch.testing.assert_close(ladj, _chart_ladj(layer.forward, z), atol=1e-9, rtol=0)
    back, ladj_inv = layer.inverse(x)
    torch.testing.assert_close(back, z, atol=1e-10, rtol=0)
    torch.testing.assert_close(ladj_inv, -ladj, atol=1e-10, rtol=0)
    torch.testing.assert_close(ladj_inv, _chart_ladj(layer.inverse, x), atol=1e-9, rtol=0)
    assert (x - z).abs().max() > 1e-3, "perturbed layer should not be the identity"


def test_ambient_jacobian_is_not_the_surface_log_det():
    """Negative control: the 7N x 7N ambient log-det is not the S^3 one (here it is -inf:
    the chart maps ignore the radial direction)."""
    layer = LAYERS["orientation-one"]
    z = _near(REF, 1)
    jac = torch.autograd.functional.jacobian(lambda v: layer.forward(v[None]).y[0], z[0])
    ambient = torch.linalg.slogdet(jac)[1]
    assert not torch.isclose(ambient, layer.forward(z).ladj[0], atol=1e-3)


@pytest.mark.parametrize("reference", [False, True])
def test_flow_is_odd_and_density_even_under_q_to_minus_q(reference):
    n = 3
    ref = _reference(n) if reference else None
    flow = _flow(n, reference=ref)
    z = flow.base.sample(16, generator=torch.Generator().manual_seed(2)).double()
    if reference:
        z = _near(ref, 16)
    x, ladj = flow.transform.forward(z)
    flip = torch.ones(16, n, 7, dtype=D)
    flip[:, :, 3:] = torch.where(torch.rand(16, n, 1, generator=torch.Generator()) < 0.5, -1.0, 1.0)
    flip = flip.reshape(16, -1)
    x_flip, ladj_flip = flow.transform.forward(z * flip)
    torch.testing.assert_close(x_flip, x * flip, atol=1e-12, rtol=0)
    torch.testing.assert_close(ladj_flip, ladj, atol=1e-12, rtol=0)
    torch.testing.assert_close(flow.log_prob(x * flip), flow.log_prob(x), atol=1e-10, rtol=0)


def test_flow_round_trip_stays_on_sphere_and_matches_sample():
    flow = _flow(3)
    s = flow.sample(64, generator=torch.Generator().manual_seed(3))
    _, q = split_state(s.x)
    assert (q.norm(dim=-1) - 1).abs().max() < 1e-12
    torch.testing.assert_close(flow.log_prob(s.x), s.log_q, atol=1e-10, rtol=0)
    z, _ = flow.transform.inverse(s.x)
    torch.testing.assert_close(z, s.z, atol=1e-10, rtol=0)


def _normalisation_z(flow, n=40_000, seed=4):
    """z-score of the Monte Carlo estimate of the integral of q against (uniform box x Haar)."""
    u = flow.base.sample(n, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ratio = torch.exp(flow.log_prob(u) - flow.base.log_prob(u))
    return ((ratio.mean() - 1) / (ratio.std() / math.sqrt(n))).item()


def test_flow_density_integrates_to_one(monkeypatch):
    """Importance estimate of the integral of q with uniform proposals is 1 within 4 standard
    errors (the log-ratio has a standard deviation near 0.8, so the estimate is well behaved);
    dropping the chart term of the S^3 log-det (a mutant) fails the same test."""
    flow = _flow(2, seed=7, scale=0.1)
    rotations = random_quaternion(2, generator=torch.Generator().manual_seed(8), dtype=D)
    squeeze = OrientationContraction(2, BOX, orientations=rotations, scale=0.7).double()
    flow = Flow(flow.base, Compose(*flow.transform.transforms, squeeze))
    assert abs(_normalisation_z(flow)) < 4.0

    def flat(rho):
        return torch.zeros_like(rho[..., 0])

    monkeypatch.setattr(couplings_module, "rodrigues_log_volume", flat)
    monkeypatch.setattr(contraction_module, "rodrigues_log_volume", flat)
    assert abs(_normalisation_z(flow)) > 6.0


def _permuted(x, perm):
    b = x.shape[0]
    return x.reshape(b, -1, 7)[:, perm].reshape(b, -1)


@pytest.mark.parametrize("reference", [False, True])
def test_molecule_permutation_permutes_outputs_and_keeps_density(reference):
    n = 4
    ref = _reference(n) if reference else None
    flow = _flow(n, reference=ref)
    x = _near(ref, 8) if reference else flow.sample(8, generator=torch.Generator()).x.detach()
    perm = torch.tensor([2, 0, 3, 1])
    other = flow
    if reference:  # molecules are tied to their sites: relabel the reference with them
        other = _flow(n, reference=_permuted(ref[None], perm)[0])
        state = {
            k: v[perm] if k.endswith(("sites", "orientations")) else v
            for k, v in flow.state_dict().items()
        }
        other.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(
            other.log_prob(_permuted(x, perm)), flow.log_prob(x), atol=1e-10, rtol=0
        )
        y, _ = flow.transform.forward(x)
        y_perm, _ = other.transform.forward(_permuted(x, perm))
    torch.testing.assert_close(y_perm, _permuted(y, perm), atol=1e-10, rtol=0)


def test_order_dependent_pooling_breaks_permutation_invariance(monkeypatch):
    """Negative control: a conditioner that weights the other molecules by their index."""

    def ordered(self, messages):
        n = messages.shape[1]
        weights = torch.arange(1, n + 1, dtype=messages.dtype)
        return (messages * weights[None, None, :, None]).sum(2) / weights.sum()

    monkeypatch.setattr(SetConditioner, "pool", ordered)
    flow = _flow(4)
    x = flow.sample(8, generator=torch.Generator().manual_seed(1)).x.detach()
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        gap = (flow.log_prob(_permuted(x, perm)) - flow.log_prob(x)).abs().max()
    assert gap > 1e-3


@pytest.mark.parametrize("reference", [False, True])
def test_fresh_flow_is_the_identity_map(reference):
    """Targeted free-energy perturbation starts from plain FEP: f(x) = x, ladj = 0."""
    n = 3
    ref = _reference(n) if reference else None
    flow = rigid_body_flow(n, BOX, num_layers=2, seed=0, reference=ref).double()
    x = _near(ref, 8) if reference else flow.base.sample(8, generator=torch.Generator())
    with torch.no_grad():
        y, ladj = flow.transform.forward(x)
    torch.testing.assert_close(y, x, atol=1e-12, rtol=0)
    torch.testing.assert_close(ladj, torch.zeros_like(ladj), atol=1e-12, rtol=0)


def test_registered_and_built_from_a_target():
    class Ice:
        n_molecules = 2
        box = BOX
        reference_state = _reference(2)

    build = resolve(FLOWS, "rigid-body", "flow")
    assert build is rigid_body_flow
    flow = build(Ice(), num_layers=1, reference="target", seed=0, **SMALL)
    assert flow.event_shape == torch.Size([14])
    assert len(list(flow.transform.transforms)) == 6 + 2
    with pytest.raises(ValueError, match="box"):
        rigid_body_flow(2)

    class NoReference(Ice):
        reference_state = None

    with pytest.raises(ValueError, match="NoReference has none"):
        build(NoReference(), num_layers=1, reference="target", seed=0, **SMALL)
    a = rigid_body_flow(2, BOX, num_layers=1, seed=3, **SMALL)
    b = rigid_body_flow(2, BOX, num_layers=1, seed=3, **SMALL)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_path_gradient_fallback_carries_a_finite_score():
    """Layers without a fast score rule go through `Transform.forward_and_score`'s fallback."""
    flow = _flow(2)
    z = flow.base.sample(4, generator=torch.Generator().manual_seed(8))
    y, ladj, score = flow.transform.forward_and_score(z, torch.zeros_like(z))
    assert torch.isfinite(score).all() and score.shape == z.shape
    torch.testing.assert_close(y, flow.transform.forward(z).y)


def test_crystal_flow_commutes_with_translations_of_the_whole_crystal():
    """A drifting crystal (MD without a centre-of-mass remover): f(x + T) = f(x) + T and the
    same log-det, also for a drift across the periodic cut."""
    n = 4
    ref = _reference(n)
    flow = _flow(n, reference=ref, scale=0.2)
    x = _near(ref, 6)
    r, q = split_state(x)
    for drift in (torch.tensor([0.3, -0.2, 0.1]), torch.tensor([0.47, 0.61, -0.52])):
        moved = join_state(r + drift.to(D), q)
        with torch.no_grad():
            y, ladj = flow.transform.forward(x)
            y_moved, ladj_moved = flow.transform.forward(moved)
        yr, yq = split_state(y)
        torch.testing.assert_close(y_moved, join_state(yr + drift.to(D), yq), atol=1e-10, rtol=0)
        torch.testing.assert_close(ladj_moved, ladj, atol=1e-10, rtol=0)
        back, _ = flow.transform.inverse(y_moved)
        torch.testing.assert_close(back, moved, atol=1e-10, rtol=0)


def test_mean_structure_of_drifting_frames():
    """The mean of frames that wander across the box is the crystal's shape and mean rotations."""
    n = 3
    ref = _reference(n)
    x = _near(ref, 400, spread=0.01)
    r, q = split_state(x)
    gen = torch.Generator().manual_seed(9)
    drift = 2.0 * torch.rand(400, 1, 3, generator=gen, dtype=D)  # beyond the box edges
    sign = torch.where(torch.rand(400, n, 1, generator=gen) < 0.5, -1.0, 1.0).to(D)
    mean = mean_structure(join_state(r + drift, q * sign), BOX)
    mr, mq = split_state(mean[None])
    rr, rq = split_state(ref[None])
    shape = mr - rr
    torch.testing.assert_close(
        shape - shape.mean(1, keepdim=True), torch.zeros_like(shape), atol=3e-3, rtol=0
    )
    overlap = (mq * rq).sum(-1).abs()
    assert (overlap > 1 - 1e-3).all()


@pytest.mark.slow
def test_deeper_flow_of_three_molecules_integrates_to_one():
    """The normalisation test on two blocks over three molecules, with twice the draws."""
    flow = rigid_body_flow(3, BOX, num_layers=2, seed=11, **SMALL)
    flow = _perturb(flow.double(), 11, 0.08)
    rotations = random_quaternion(3, generator=torch.Generator().manual_seed(12), dtype=D)
    squeeze = OrientationContraction(3, BOX, orientations=rotations, scale=0.8).double()
    flow = Flow(flow.base, Compose(*flow.transform.transforms, squeeze))
    assert abs(_normalisation_z(flow, n=80_000, seed=13)) < 4.0
