"""Tail-adaptive flow pieces: the Student-t base, normalization with heavy tails, mutants.

Log-dets of the base, the group-mixing layer and the tail transform against autograd, both
directions, run in the registry loop (``factories_tails.py``); here: marginals against scipy,
densities that integrate to one (including the tails), and mutants that must fail.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from boltzflow.flows.base import Compose, Flow
from boltzflow.flows.distributions import StandardNormal
from boltzflow.flows.tail_builders import tail_adaptive_flow
from boltzflow.flows.tails import StudentTNormal, TailTransform, TransformResult

from .checks import assert_ladj_matches_jacobian

Z_CRIT = 4.0  # two-sided normal quantile at ~6e-5: a seeded, calibrated z-test


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_student_t_base_marginals_match_scipy():
    base = StudentTNormal([True, False, True], df=[0.7, 2.5]).double()
    nu = base.df.detach().numpy()  # float32 initial values, as stored
    z = base.sample(50_000, generator=_gen(0)).detach()
    for j, dist in ((0, stats.t(nu[0])), (1, stats.norm()), (2, stats.t(nu[1]))):
        assert stats.kstest(z[:, j].numpy(), dist.cdf).pvalue > 1e-3
    expect = stats.t(nu[0]).logpdf(z[:5, 0]) + stats.norm.logpdf(z[:5, 1])
    expect = expect + stats.t(nu[1]).logpdf(z[:5, 2])
    np.testing.assert_allclose(base.log_prob(z[:5]).detach().numpy(), expect, rtol=1e-12)


def test_student_t_base_is_reproducible_from_the_generator():
    base = StudentTNormal([True, True], df=1.0).double()
    a, b = base.sample(8, generator=_gen(3)), base.sample(8, generator=_gen(3))
    assert torch.equal(a, b) and not torch.equal(a, base.sample(8, generator=_gen(4)))


@pytest.mark.parametrize("lam", [0.05, 0.5, 1.5])
def test_tail_transform_density_integrates_to_one_with_exact_tail_mass(lam):
    """1-D: ∫q = 1 by quadrature, and P(X > x0) = Φ(-z0) exactly (Gaussian base)."""
    flow = Flow(StandardNormal(1), Compose(TailTransform(1, tail_weights=lam, loc=0.2))).double()

    def q(x):
        return math.exp(flow.log_prob(torch.tensor([[x]], dtype=torch.float64)).item())

    total = sum(integrate.quad(q, a, b, limit=200)[0] for a, b in ((-np.inf, 0.2), (0.2, np.inf)))
    assert abs(total - 1) < 1e-6
    z0 = 3.0
    x0 = flow.forward(torch.tensor([[z0]], dtype=torch.float64)).y.item()
    tail = integrate.quad(q, x0, np.inf, limit=200)[0]
    assert abs(tail / stats.norm.sf(z0) - 1) < 1e-5


def _monte_carlo_mass(flow, n=40_000, seed=0):
    r"""Monte Carlo ∫q with the exact base: mean and standard error.

    Draws come from the defensive mixture $r = (q + t)/2$: half are the flow's own samples
    (its exact base pushed forward), half a product of $t_{0.5}$ (scale 2, heavier than every
    tail here). With $q$ = `flow.log_prob`, the weights $q/r \le 2$ are bounded, so the
    standard error is trustworthy, and $E_r[q/r] = \int q = 1$ exactly when `log_prob` is the
    density of the samples; a wrong log-det or a lost tail moves it away from 1. (Plain
    importance sampling from $t_{0.5}$ alone misses the thin ridges of random spline layers
    and under-estimates the mass by 10–20% with a misleadingly small error.)
    """
    t = stats.t(0.5, scale=2.0)
    with torch.no_grad():
        x_q = flow.sample(n // 2, generator=_gen(seed)).x
        x_t = torch.from_numpy(t.rvs(size=(n // 2, flow.dim), random_state=seed))
        x = torch.cat([x_q.to(torch.float64), x_t])
        log_q = flow.log_prob(x).numpy()
    log_t = t.logpdf(x.numpy()).sum(1)
    log_r = np.logaddexp(log_q, log_t) - math.log(2)
    ratio = np.exp(log_q - log_r)
    return ratio.mean(), ratio.std() / math.sqrt(n)


def _heavy_flows():
    common = dict(num_layers=2, hidden=8, num_blocks=1, num_bins=4, seed=0)
    mtaf = tail_adaptive_flow(2, tails="mtaf", heavy=[True, False], df=0.8, **common).double()
    ttf = tail_adaptive_flow(2, tails="ttf", heavy=[True, True], df=[0.9, 2.0], **common)
    return {"mtaf": mtaf, "ttf": ttf.double()}


@pytest.mark.parametrize("kind", ["mtaf", "ttf"])
def test_heavy_tailed_flow_density_integrates_to_one(kind):
    flow = _heavy_flows()[kind]
    # Perturbed away from the initialisation, but mildly: at 0.1 one t(0.5) draw of 20,000
    # (|x| = 3e7) already makes a perturbed mTAF conditioner return NaN (see above).
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.03 * torch.randn(p.shape, generator=_gen(1), dtype=p.dtype))
    mean, se = _monte_carlo_mass(flow)
    assert abs(mean - 1) < Z_CRIT * se, (mean, se)


class _DroppedTermTailTransform(TailTransform):
    """Mutant: the log-det misses the ``-λ log U`` term (it keeps ``-log U`` only)."""

    def forward(self, z):
        x, ladj = super().forward(z)
        log_u = math.log(2) + torch.special.log_ndtr(-z.abs())
        return TransformResult(x, ladj + (self._side(z > 0) * log_u).sum(-1))

    def inverse(self, x):
        z, _ = super().inverse(x)
        return TransformResult(z, -self.forward(z).ladj)


def test_dropped_log_det_term_fails_the_jacobian_and_normalization_checks():
    mutant = _DroppedTermTailTransform(2, tail_weights=0.8).double()
    z = torch.randn(4, 2, generator=_gen(2), dtype=torch.float64)
    with pytest.raises(AssertionError, match="slogdet"):
        assert_ladj_matches_jacobian(mutant.forward, z)
    mean, se = _monte_carlo_mass(Flow(StandardNormal(2), Compose(mutant)).double())
    assert abs(mean - 1) > Z_CRIT * se, (mean, se)


def test_fixed_tail_weights_are_buffers():
    layer = TailTransform(3, tail_weights=0.5, learnable_tails=False)
    names = {n for n, _ in layer.named_parameters()}
    assert names == {"loc", "log_sigma"} and "raw_tails" in layer.state_dict()
    torch.testing.assert_close(layer.tail_weights, torch.full((2, 3), 0.5))


def test_builder_reads_tails_from_the_energy():
    from boltzflow.energies.heavy_tails import ProductStudentT

    target = ProductStudentT(4, df=[1.0, 2.0], n_heavy=2)
    flow = tail_adaptive_flow(target, tails="mtaf", num_layers=2, hidden=8, seed=0)
    assert flow.base.heavy.tolist() == [True, True, False, False]
    torch.testing.assert_close(flow.base.df.detach(), torch.tensor([1.0, 2.0]), atol=0.02, rtol=0)
    ttf = tail_adaptive_flow(target, tails="ttf", num_layers=2, hidden=8, seed=0)
    lam = ttf.transform.transforms[-1].tail_weights.detach()
    torch.testing.assert_close(lam[:, :2], torch.tensor([[1.0, 0.5]] * 2), atol=0.02, rtol=0)
    assert bool((lam[:, 2:] < 0.05).all())


def test_builder_reads_tails_from_samples():
    from boltzflow.energies.heavy_tails import ProductStudentT

    target = ProductStudentT(4, df=[1.0, 2.0], n_heavy=2)
    flow = tail_adaptive_flow(target, tails="mtaf", tail_index="data", num_layers=2, hidden=8)
    assert flow.base.heavy.tolist() == [True, True, False, False]
    df = flow.base.df.detach()
    assert abs(df[0] - 1.0) < 0.3 and abs(df[1] - 2.0) < 0.6  # Hill spread at n = 5000
