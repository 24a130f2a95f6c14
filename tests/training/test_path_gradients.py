"""Path-gradient losses (Vaitl et al. 2022, 2024), in float64.

* score rules: the score carried forward equals autograd's gradient of `log_prob`, and the fast
  and drop-in estimators give the same parameter gradient (1e-10), in train and eval mode;
* unbiasedness: paired z-tests of the path gradient against the standard reparametrized
  gradient (reverse KL) and against the NLL gradient (forward KL), per flow family;
* negative controls: detaching the log-det, and a wrong-sign force term, are detected as biased
  by the same z-test;
* variance collapse: at an exact flow every path gradient is 0 to round-off, the standard one
  is not.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from flows.registry import FLOW_FACTORIES, perturbed  # tests/flows (pytest puts tests/ on sys.path)

from boltzflow.energies.base import CallableEnergy
from boltzflow.molecular.flows import internal_coordinate_flow
from boltzflow.training.losses import nll, reverse_kl
from boltzflow.training.path_gradients import (
    ForceCache,
    layers_without_score_rule,
    naive_detached_logdet_kl,
    path_estimator,
    path_nll,
    path_reverse_kl,
    sample_and_score,
)
from boltzflow.training.trainer import train

NAMES = sorted(FLOW_FACTORIES)
TRAINABLE = [n for n in NAMES if any(p.requires_grad for p in FLOW_FACTORIES[n](0).parameters())]
FAST = sorted(n for n, f in FLOW_FACTORIES.items() if not layers_without_score_rule(f(0)))
ALPHA = 1e-3  # family-wise level of each z-test (Bonferroni over parameters and directions)


class _Event:
    def __init__(self, periodic):
        self.periodic_mask = torch.as_tensor(periodic, dtype=torch.bool)
        self.event_shape = torch.Size([len(periodic)])


def _internal_coordinates(seed: int):
    event = _Event([1, 0, 0, 1, 0])
    return perturbed(internal_coordinate_flow(event, num_blocks=1, hidden=8, seed=seed), seed)


# One flow per family: (name, factory); "fast" families use the fast estimator.
FAMILIES = {
    "affine-coupling": FLOW_FACTORIES["realnvp-2d"],
    "spline-coupling": FLOW_FACTORIES["spline-coupling-2d"],
    "autoregressive": FLOW_FACTORIES["maf-3d"],
    "spline-autoregressive": FLOW_FACTORIES["spline-autoregressive-3d"],
    "circular-spline": FLOW_FACTORIES["circular-coupling-3d"],
    "smooth": FLOW_FACTORIES["smooth-coupling-2d"],
    "internal-coordinates": _internal_coordinates,
    "phi4-checkerboard": FLOW_FACTORIES["phi4-spline-L4"],
    "u1-gauge": FLOW_FACTORIES["u1-gauge-L4"],
}
DEFAULT_FAMILIES = ("spline-coupling", "autoregressive")


def _gaussian(flow, mean: float = 0.3, var: float = 1.5) -> CallableEnergy:
    def u(x):
        return 0.5 * ((x - mean) ** 2).reshape(x.shape[0], -1).sum(-1) / var

    return CallableEnergy(u, flow.event_shape)


def _exact_target(flow) -> CallableEnergy:
    """`u = -log q` of a frozen copy of `flow`: the flow is exact for it."""
    twin = copy.deepcopy(flow)
    for p in twin.parameters():
        p.requires_grad_(False)
    return CallableEnergy(lambda x: -twin.log_prob(x), flow.event_shape)


def _grad(flow, loss) -> torch.Tensor:
    params = [p for p in flow.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(grads, params, strict=True)
        ]
    )


def _paired(flow, make_a, make_b, batches: int, seed: int = 0) -> torch.Tensor:
    """`[batches, P]` differences of two gradient estimators on the same draws."""
    rows = []
    for m in range(batches):
        a = _grad(flow, make_a(torch.Generator().manual_seed(seed + m)).loss)
        b = _grad(flow, make_b(torch.Generator().manual_seed(seed + m)).loss)
        rows.append(a - b)
    return torch.stack(rows)


def _max_z(diff: torch.Tensor) -> tuple[float, float]:
    """Largest |z| of the coordinate means of `diff` and its Bonferroni threshold."""
    mean, se = diff.mean(0), diff.std(0) / math.sqrt(diff.shape[0])
    live = se > 1e-12 * (1.0 + diff.abs().max())
    z = mean[live] / se[live]
    n = max(int(live.sum()), 1)
    threshold = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1 - ALPHA / (2 * n))))
    return float(z.abs().max()) if live.any() else 0.0, threshold


# ----------------------------------------------------------------- score rules
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("training", [True, False])
def test_score_rule_matches_autograd_of_log_prob(name, training, float64):
    """Every flow: fast rules where a layer has one, the layer's drop-in elsewhere."""
    flow = FLOW_FACTORIES[name](0).train(training)
    x, log_q, score = sample_and_score(flow, 6, torch.Generator().manual_seed(1))
    leaf = x.detach().requires_grad_(True)
    (reference,) = torch.autograd.grad(flow.log_prob(leaf).sum(), leaf)
    assert not score.requires_grad
    torch.testing.assert_close(score, reference, atol=1e-10, rtol=0)
    torch.testing.assert_close(log_q, flow.log_prob(x.detach()), atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_inverse_score_rule_matches_autograd_of_the_pulled_back_density(name, float64):
    r"""`inverse_and_score` carries $\nabla_x \log r$ of a Gaussian $r$ down to
    $\nabla_z[\log r(T(z)) + \log|\det \partial_z T|]$ (fast rules and drop-ins alike)."""
    flow = FLOW_FACTORIES[name](0)
    target = _gaussian(flow)
    x = flow.sample(6, generator=torch.Generator().manual_seed(1)).x.detach()
    z, ladj_inv, score = flow.transform.inverse_and_score(x, target.force(x))
    leaf = z.detach().requires_grad_(True)
    y, ladj = flow.transform.forward(leaf)
    (reference,) = torch.autograd.grad((-target.energy(y) + ladj).sum(), leaf)
    assert not score.requires_grad
    torch.testing.assert_close(score, reference, atol=1e-9, rtol=0)
    torch.testing.assert_close(ladj_inv, -ladj.detach(), atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", TRAINABLE)
@pytest.mark.parametrize("training", [True, False])
def test_fast_and_dropin_estimators_agree(name, training, float64):
    flow = FLOW_FACTORIES[name](0).train(training)
    target = _gaussian(flow)
    grads, values = [], []
    for estimator in ("fast", "dropin"):
        out = path_reverse_kl(
            flow, target, 8, torch.Generator().manual_seed(2), estimator=estimator
        )
        grads.append(_grad(flow, out.loss))
        values.append(out.loss.detach())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-10, rtol=0)
    torch.testing.assert_close(values[0], values[1], atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", TRAINABLE)
def test_fast_and_dropin_forward_kl_estimators_agree(name, float64):
    flow = FLOW_FACTORIES[name](0)
    target = _gaussian(flow)
    data = flow.sample(8, generator=torch.Generator().manual_seed(3)).x.detach()
    data = data + 0.05 * torch.randn(data.shape, generator=torch.Generator().manual_seed(4))
    outs = {e: path_nll(flow, target, data, estimator=e) for e in ("fast", "dropin")}
    grads = {e: _grad(flow, out.loss) for e, out in outs.items()}
    assert grads["dropin"].abs().max() > 1e-4  # not trivially zero
    torch.testing.assert_close(grads["fast"], grads["dropin"], atol=1e-10, rtol=0)
    torch.testing.assert_close(outs["fast"].loss, outs["dropin"].loss, atol=1e-10, rtol=0)
    given = path_nll(flow, target, data, forces=target.force(data))
    torch.testing.assert_close(_grad(flow, given.loss), grads["fast"], atol=1e-12, rtol=0)
    assert (outs["fast"].n_evaluations, given.n_evaluations) == (8, 0)


def test_auto_picks_the_fast_estimator_when_some_layer_has_a_rule(float64):
    assert path_estimator(FLOW_FACTORIES["maf-layer"](0)) == "dropin"
    assert path_estimator(FLOW_FACTORIES["maf-3d"](0)) == "fast"  # its permutations have rules
    assert path_estimator(FLOW_FACTORIES["spline-coupling-2d"](0)) == "fast"
    assert layers_without_score_rule(FLOW_FACTORIES["maf-3d"](0))  # MADE layers: own drop-in
    assert not layers_without_score_rule(FLOW_FACTORIES["u1-gauge-tree-loops-L4"](0))
    assert FAST and set(FAST) < set(NAMES)


# ---------------------------------------------------------------- unbiasedness
def _reverse_z(family: str, estimator, batches: int, batch: int = 4):
    flow = FAMILIES[family](0)
    target = _gaussian(flow)
    diff = _paired(
        flow,
        lambda g: estimator(flow, target, batch, g),
        lambda g: reverse_kl(flow, target, batch, g),
        batches,
    )
    return _max_z(diff)


def _check_reverse_family(family: str, batches: int) -> None:
    z, threshold = _reverse_z(family, path_reverse_kl, batches)
    assert z < threshold, f"{family}: path gradient biased, max |z| = {z:.2f}"


@pytest.mark.parametrize("family", DEFAULT_FAMILIES)
def test_path_reverse_kl_is_unbiased(family, float64):
    _check_reverse_family(family, batches=60)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(set(FAMILIES) - set(DEFAULT_FAMILIES)))
def test_path_reverse_kl_is_unbiased_every_family(family, float64):
    _check_reverse_family(family, batches=150)


def test_negative_control_detached_log_det_is_detected(float64):
    z, threshold = _reverse_z("spline-coupling", naive_detached_logdet_kl, batches=60)
    assert z > threshold, f"the detached log-det estimator passed (max |z| = {z:.2f})"


def _nll_setup(family: str):
    flow = FAMILIES[family](0)
    target = _gaussian(flow)

    def data(g):
        return 0.3 + math.sqrt(1.5) * torch.randn(8, *flow.event_shape, generator=g)

    return flow, target, data


class _WrongSignForce(CallableEnergy):
    """A mutant of the path_nll algorithm: the force term enters with the wrong sign."""

    def force(self, x):
        return -super().force(x)


@pytest.mark.parametrize(
    "family, estimator", [("spline-coupling", "fast"), ("affine-coupling", "dropin")]
)
def test_path_nll_is_unbiased_and_wrong_sign_force_is_detected(family, estimator, float64):
    flow, target, data = _nll_setup(family)
    mutant = _WrongSignForce(target._fn, flow.event_shape)

    def path(energy):
        return lambda g: path_nll(flow, energy, data(g), estimator=estimator)

    diff = _paired(flow, path(target), lambda g: nll(flow, None, data(g)), 60)
    z, threshold = _max_z(diff)
    assert z < threshold, f"path_nll biased, max |z| = {z:.2f}"
    diff = _paired(flow, path(mutant), lambda g: nll(flow, None, data(g)), 60)
    z, threshold = _max_z(diff)
    assert z > threshold, f"wrong-sign force passed (max |z| = {z:.2f})"


# ---------------------------------------------------------- variance collapse
@pytest.mark.parametrize("family", ["spline-coupling", "autoregressive", "phi4-checkerboard"])
def test_variance_collapses_at_an_exact_flow(family, float64):
    flow = FAMILIES[family](0)
    target = _exact_target(flow)
    path = torch.stack(
        [
            _grad(flow, path_reverse_kl(flow, target, 2, torch.Generator().manual_seed(m)).loss)
            for m in range(6)
        ]
    )
    standard = torch.stack(
        [
            _grad(flow, reverse_kl(flow, target, 2, torch.Generator().manual_seed(m)).loss)
            for m in range(6)
        ]
    )
    assert path.abs().max() < 1e-10
    assert standard.var(0).sum() > 1e-4
    data = flow.sample(8, generator=torch.Generator().manual_seed(9)).x.detach()
    forward = _grad(flow, path_nll(flow, target, data).loss)
    assert forward.abs().max() < 1e-10
    assert _grad(flow, nll(flow, None, data).loss).abs().max() > 1e-3


# --------------------------------------------------------------------- trainer
def test_trainer_runs_both_path_losses_by_name(float64):
    flow = FAMILIES["spline-coupling"](0)
    target = _gaussian(flow)
    data = 0.3 + torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    stages = [
        {"loss": "path_nll", "steps": 3, "batch_size": 16, "data": data},
        {"loss": "path_reverse_kl", "steps": 3, "batch_size": 16, "estimator": "dropin"},
    ]
    result = train(flow, target, stages, seed=0, progress=False)
    assert result.steps == 6
    assert result.energy_evaluations == 6 * 16
    assert all(math.isfinite(r["loss"]) for r in result.history)


class _CountingGaussian(CallableEnergy):
    """A Gaussian energy that counts its force evaluations (data points)."""

    n_forces = 0

    def force(self, x):
        self.n_forces += x.shape[0]
        return super().force(x)


def test_a_path_nll_stage_evaluates_each_data_point_once(float64):
    """Four epochs of 32 data points cost 32 force evaluations, and the cached forces give the
    same parameters as evaluating them at every step."""
    data = 0.3 + torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    fn = _gaussian(FAMILIES["spline-coupling"](0))._fn
    flows, targets = [], []
    for loss in ("path_nll", lambda *a, **k: path_nll(*a, **{**k, "forces": None})):
        flow, target = FAMILIES["spline-coupling"](0), _CountingGaussian(fn, (2,))
        stage = {"loss": loss, "steps": 8, "batch_size": 16, "data": data}
        result = train(flow, target, [stage], seed=0, progress=False)
        flows.append(flow)
        targets.append((target.n_forces, result.energy_evaluations))
    assert targets == [(32, 32), (8 * 16, 8 * 16)]
    for a, b in zip(flows[0].parameters(), flows[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_force_cache_returns_the_target_forces_of_repeated_rows(float64):
    target = _CountingGaussian(_gaussian(FAMILIES["spline-coupling"](0))._fn, (2,))
    data = torch.randn(10, 2, generator=torch.Generator().manual_seed(1))
    cache = ForceCache(target, data)
    rows = torch.tensor([3, 3, 7, 0, 7])
    torch.testing.assert_close(cache(rows), target.force(data[rows]), atol=0, rtol=0)
    torch.testing.assert_close(cache(torch.tensor([0, 9])), target.force(data[[0, 9]]))
    assert cache.n_evaluations == 4
