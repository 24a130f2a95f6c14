"""FlowMove inside emcee: exact on a bimodal target where StretchMove alone fails."""

import math

import emcee
import numpy as np
import pytest
import torch

from boltzflow.energies.base import Energy
from boltzflow.energies.gaussians import GaussianMixture
from boltzflow.flows.base import FlowSample
from boltzflow.sampling import diagnostics
from boltzflow.sampling.emcee_move import EmceeLogProb, FlowMove

DIM, WEIGHT = 5, 0.7


def bimodal():
    means = torch.zeros(2, DIM, dtype=torch.float64)
    means[0, 0], means[1, 0] = 5.0, -5.0
    return GaussianMixture(means, scales=0.5, weights=[WEIGHT, 1 - WEIGHT])


class MixtureProposal:
    """An imperfect independence proposal: equal weights, wider modes (not the target)."""

    dim = DIM

    def __init__(self):
        means = torch.zeros(2, DIM, dtype=torch.float64)
        means[0, 0], means[1, 0] = 4.7, -5.2
        self.q = GaussianMixture(means, scales=0.65)

    def sample(self, n, generator=None):
        x = self.q.sample(n, generator=generator)
        return FlowSample(x, x, self.log_prob(x))

    def log_prob(self, x):
        return -self.q.energy(x)


def run(moves, seed, steps=4000, walkers=32):
    target = bimodal()
    rs = np.random.RandomState(seed)
    p0 = rs.randn(walkers, DIM) * 0.25
    p0[:, 0] += 5.0  # every walker starts in the heavier mode
    sampler = emcee.EnsembleSampler(walkers, DIM, EmceeLogProb(target), moves=moves, vectorize=True)
    sampler._random = rs  # emcee's legacy RandomState, seeded
    sampler.run_mcmc(p0, steps)
    chain = sampler.get_chain(discard=steps // 5)  # [steps, walkers, dim]
    return np.transpose(chain, (1, 0, 2)), sampler


def indicator_z(chain):
    ind = (chain[..., :1] > 0).astype(np.float64)
    with np.errstate(divide="ignore"):  # a chain stuck in one mode has zero MCSE
        z = float(diagnostics.calibrated_z(ind, np.array([WEIGHT]))[0])
    return z, float(ind.mean())


def test_flow_move_mixture_recovers_mode_weight():
    chain, sampler = run([(emcee.moves.StretchMove(), 0.7), (FlowMove(MixtureProposal()), 0.3)], 0)
    z, p = indicator_z(chain)
    assert z < 3.5, (z, p)
    assert 0.05 < float(np.mean(sampler.acceptance_fraction)) < 0.95
    # the coordinate means are exact too: E[x1] = 5(2w - 1)
    zx = diagnostics.calibrated_z(chain[..., :1], np.array([5 * (2 * WEIGHT - 1)]))
    assert float(zx[0]) < 3.5


def test_stretch_move_alone_fails_negative_control():
    chain, _ = run([(emcee.moves.StretchMove(), 1.0)], 0)
    z, p = indicator_z(chain)
    assert p > 0.99 and z > 10


def test_flow_move_is_reproducible_from_emcee_random_state():
    a, _ = run([(emcee.moves.StretchMove(), 0.5), (FlowMove(MixtureProposal()), 0.5)], 3, steps=50)
    b, _ = run([(emcee.moves.StretchMove(), 0.5), (FlowMove(MixtureProposal()), 0.5)], 3, steps=50)
    np.testing.assert_array_equal(a, b)


def test_flow_move_rejects_undefined_proposal_density():
    class Broken(MixtureProposal):
        def sample(self, n, generator=None):
            s = super().sample(n, generator)
            return s._replace(log_q=torch.full_like(s.log_q, math.nan))

    move = FlowMove(Broken())
    x, factors = move._propose(np.zeros((4, DIM)), np.random.RandomState(0))
    assert x.shape == (4, DIM) and bool(np.all(factors == -np.inf))


def test_emcee_sampler_runner_layout_and_counts():
    from boltzflow.energies.posterior import from_log_prob
    from boltzflow.sampling.emcee_move import emcee_sampler

    target = from_log_prob(lambda t: -0.5 * (t**2).sum(-1), 2)
    target.sample_prior = lambda n, generator=None, dtype=torch.float64: torch.randn(
        n, 2, generator=generator, dtype=dtype
    )
    res = emcee_sampler(None, target, n_samples=3200, seed=0, walkers=16)
    assert (
        res.x.shape == (16, 200, 2)
        and res.energy.shape == (16, 200)
        and res.accepted.shape == (16, 200)
    )
    assert res.energy_evaluations == 16 * 400 + 16  # burn-in counted, plus the initial ensemble
    torch.testing.assert_close(res.energy, 0.5 * (res.x**2).sum(-1))
    z = diagnostics.calibrated_z(res.x.numpy(), np.zeros(2))
    assert bool((z < 4).all()), z


def test_flow_emcee_trains_then_freezes_and_is_calibrated():
    """flowMC-style emcee: flow trained on the walkers, frozen for the production run, mixed
    with the stretch move, and handed back trainable as it came."""
    from boltzflow.energies.gaussians import CorrelatedGaussian
    from boltzflow.flows.builders import spline_coupling_flow
    from boltzflow.sampling.emcee_move import flow_emcee

    target = CorrelatedGaussian(
        mean=[1.0, -2.0, 0.5, 3.0], cov=torch.diag(torch.tensor([1.0, 4.0, 0.25, 2.0]))
    )
    flow = spline_coupling_flow(4, num_layers=2, hidden=16, seed=0).double()
    res = flow_emcee(
        flow, target, n_samples=16 * 200, seed=0, walkers=16, burn_steps=150, rounds=1,
        round_steps=40, train_steps=100, init="flow",
    )  # fmt: skip
    assert res.method == "flow-emcee" and res.x.shape == (16, 200, 4)
    assert all(p.requires_grad for p in flow.parameters())  # frozen while sampling only
    assert 0.05 < res.info["global_acceptance"] <= 1
    assert res.energy_evaluations == 16 * (150 + 40 + 200) + 16
    z = diagnostics.calibrated_z(res.x.numpy(), target.mean.numpy(), method="bulk")
    assert bool((z < 4).all()), z


def test_defensive_flow_is_a_normalized_mixture_with_its_sampler():
    from scipy import stats

    from boltzflow.flows.builders import spline_coupling_flow
    from boltzflow.sampling.proposals import DefensiveFlow

    flow = spline_coupling_flow(1, seed=0).double()
    q = DefensiveFlow(flow, weight=0.3, scale=2.0)
    grid = torch.linspace(-40, 40, 80001, dtype=torch.float64)[:, None]
    with torch.no_grad():
        dens = torch.exp(q.log_prob(grid))
        assert float(torch.trapezoid(dens, grid[:, 0])) == pytest.approx(1.0, abs=1e-6)
        s = q.sample(4000, torch.Generator().manual_seed(0))
        torch.testing.assert_close(s.log_q, q.log_prob(s.x))
    cdf = torch.cumulative_trapezoid(dens, grid[:, 0]).numpy()
    u = np.interp(s.x[:, 0].numpy(), grid[1:, 0].numpy(), cdf)
    assert stats.kstest(u, "uniform").pvalue > 1e-3


class RaisingGaussian(Energy):
    """A standard normal whose energy raises for any batch with a walker beyond ``x_0 > cut``."""

    def __init__(self, cut=math.inf):
        super().__init__(2)
        self.cut = cut

    def _energy(self, x):
        if bool((x[:, 0] > self.cut).any()):
            raise ValueError("outside the model's domain")
        return 0.5 * (x**2).sum(-1)

    def sample_prior(self, n, generator=None, dtype=torch.float64):
        return 0.1 * torch.randn(n, 2, generator=generator, dtype=dtype)


def test_energy_exceptions_inside_emcee_are_counted_and_reported(caplog):
    """An energy that raises gives -inf (emcee keeps going) and a counted, logged warning."""
    from boltzflow.sampling.emcee_move import emcee_sampler

    with caplog.at_level("WARNING"):
        res = emcee_sampler(None, RaisingGaussian(1.5), n_samples=1600, seed=0, walkers=16)
    assert res.info["n_errors"] > 0 and res.info["n_nonfinite"] >= res.info["n_errors"]
    raised = [r for r in caplog.records if "outside the model's domain" in r.getMessage()]
    assert len(raised) == 1 and raised[0].levelname == "WARNING"  # first error, with its message
    assert any("non-finite" in r.getMessage() for r in caplog.records)  # the final count
    assert float(res.x[..., 0].max()) <= 1.5  # no walker was ever accepted where it raised
    # negative control: a well-behaved energy reports nothing
    caplog.clear()
    with caplog.at_level("WARNING"):
        res = emcee_sampler(None, RaisingGaussian(), n_samples=320, seed=0, walkers=16)
    assert res.info["n_errors"] == 0 and res.info["n_nonfinite"] == 0 and not caplog.records
