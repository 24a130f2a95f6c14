"""Sampler runners: batched flow IMH is calibrated, importance sampling is exact for an oracle."""

import math

import torch

from boltzflow.energies import CorrelatedGaussian, DoubleWell2D
from boltzflow.flows import Compose, Flow, StandardNormal
from boltzflow.flows.affine import ElementwiseAffine
from boltzflow.sampling.chains import run_chain
from boltzflow.sampling.diagnostics import calibrated_z
from boltzflow.sampling.kernels.imh import IndependenceMH
from boltzflow.sampling.runners import (
    RunCost,
    SamplingResult,
    draw_with_log_weights,
    flow_imh,
    importance_sampling,
)


def _broad_flow(dim=2, scale=2.0):
    flow = Flow(StandardNormal(dim), Compose(ElementwiseAffine(dim, scale=scale)))
    return flow.double()


def test_importance_sampling_oracle_gives_uniform_weights():
    target = CorrelatedGaussian(mean=torch.zeros(2), cov=torch.diag(torch.tensor([4.0, 0.25])))
    flow = Flow(StandardNormal(2), Compose(ElementwiseAffine(2, scale=torch.tensor([2.0, 0.5]))))
    res = importance_sampling(flow.double(), target, n_samples=1000, seed=0)
    lw = res.log_weight[0]
    assert torch.allclose(lw, torch.full_like(lw, target.log_z), atol=1e-10)
    assert res.x.shape == (1, 1000, 2) and res.accepted is None


def test_batched_imh_is_calibrated_on_the_double_well_and_detects_a_wrong_target():
    target = DoubleWell2D()
    res = flow_imh(_broad_flow(), target, n_samples=40_000, seed=1, chains=8)
    assert res.x.shape == (8, 5000, 2) and res.accepted.shape == (8, 5000)
    z = calibrated_z(res.x[..., 0], target.exact_observable("x1"))
    assert float(z) < 4.0
    assert 0.05 < res.info["acceptance_rate"] < 0.9
    # Negative control: the chain of a wrong target (tilt a = +0.5) misses the true mean.
    wrong = flow_imh(_broad_flow(), DoubleWell2D(a=0.5), n_samples=40_000, seed=1, chains=8)
    assert float(calibrated_z(wrong.x[..., 0], target.exact_observable("x1"))) > 6.0


def test_batched_imh_matches_the_step_kernel_acceptance():
    target = DoubleWell2D()
    flow = _broad_flow()
    batched = flow_imh(flow, target, n_samples=16_000, seed=2, chains=8)
    with torch.no_grad():
        x0 = flow.sample(8, generator=torch.Generator().manual_seed(3)).x
    stepped = run_chain(IndependenceMH(flow, target), x0, 2000, seed=4)
    a, b = batched.accepted.double().mean(), stepped.accepted.double().mean()
    se = math.sqrt(float(a * (1 - a)) / 16_000 * 10)  # generous for autocorrelation
    assert abs(float(a - b)) < 4 * se


def test_imh_counts_energy_evaluations():
    target = DoubleWell2D()
    n0 = target.n_evaluations
    res = flow_imh(_broad_flow(), target, n_samples=800, seed=0, chains=4, n_warmup=10)
    assert res.energy_evaluations == target.n_evaluations - n0 == 4 * (200 + 10 + 1)


def test_draws_keep_the_target_energies_where_the_weight_is_zero():
    """A point with log q = -inf has log-weight -inf (weight 0) but its true, finite energy."""
    target = CorrelatedGaussian(mean=torch.zeros(2), cov=torch.eye(2))

    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.flow = _broad_flow()

        def sample(self, n, generator=None):
            s = self.flow.sample(n, generator=generator)
            return s._replace(log_q=torch.where(torch.arange(n) % 2 == 0, -math.inf, s.log_q))

    d = draw_with_log_weights(Broken(), target, 6, torch.Generator().manual_seed(0))
    torch.testing.assert_close(d.energy, target.energy(d.x))
    assert bool((d.log_weight[::2] == -math.inf).all())
    assert bool(torch.isfinite(d.log_weight[1::2]).all())


def test_chain_result_builder_sets_the_common_fields():
    target = CorrelatedGaussian(mean=torch.zeros(2), cov=torch.eye(2))
    cost = RunCost(target)
    target.energy(torch.zeros(3, 2, dtype=torch.float64))
    accepted = torch.tensor([[True, False], [True, True]])
    res = SamplingResult.from_chain(
        torch.zeros(2, 2, 2), torch.ones(2, 2), accepted, method="m", cost=cost, info={"a": 1}
    )
    assert res.info == {"acceptance_rate": 0.75, "a": 1} and res.energy_evaluations == 3
    assert bool((res.log_weight == 0).all()) and not res.weighted
