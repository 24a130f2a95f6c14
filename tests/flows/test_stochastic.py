"""Stochastic-flow blocks: exact path weights, detailed balance, gradients, devices.

Every statistical check is a z-test against an exact value with the estimated standard error,
and every estimator has a mutant of the algorithm that must fail the same test.
"""

from __future__ import annotations

import math

import pytest
import torch

from boltzflow.energies.gaussians import CorrelatedGaussian
from boltzflow.flows.affine import ElementwiseAffine
from boltzflow.flows.base import Compose, Flow, PathDensityError
from boltzflow.flows.distributions import StandardNormal
from boltzflow.flows.stochastic import (
    HMCBlock,
    LangevinBlock,
    MetropolisBlock,
    UnderdampedLangevinBlock,
)

D = torch.float64
MEAN, VAR = [1.0, -0.5], [0.5, 1.5]
Z_MAX = 4.5  # two-sided, seeded: a correct block fails with probability < 1e-5 per check


def target():
    return CorrelatedGaussian(mean=MEAN, cov=torch.diag(torch.tensor(VAR, dtype=D)))


def exact_affine():
    """N(0, I) pushed to the target exactly (diagonal covariance)."""
    layer = ElementwiseAffine(2).double()
    with torch.no_grad():  # set in float64: the constructor works in the default dtype
        layer.loc.copy_(torch.tensor(MEAN, dtype=D))
        layer.log_scale.copy_(0.5 * torch.tensor(VAR, dtype=D).log())
    return layer


BLOCKS = {
    "metropolis": lambda t, **kw: MetropolisBlock(t, step_size=0.6, n_steps=3, **kw),
    "langevin": lambda t, **kw: LangevinBlock(t, step_size=0.15, n_steps=3, **kw),
    "mala": lambda t, **kw: LangevinBlock(t, step_size=0.3, n_steps=3, metropolize=True, **kw),
    "underdamped": lambda t, **kw: UnderdampedLangevinBlock(t, step_size=0.3, n_steps=3, **kw),
    "hmc": lambda t, **kw: HMCBlock(t, step_size=0.3, n_steps=2, n_leapfrog=3, **kw),
}
EXACT_MH = ("metropolis", "mala", "hmc")  # Metropolis-corrected: invariant, delta = Δu


class WrongSign(torch.nn.Module):
    """Mutant: a block whose increment has the wrong sign."""

    stochastic = True

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, z, generator=None):
        y, delta = self.block(z, generator=generator)
        return y, -delta


class NoVelocityTerm(UnderdampedLangevinBlock):
    """Mutant: BAOAB increment without the velocity term K(v0) - K(vK)."""

    def _velocity_term(self, v0, v):
        return v.new_zeros(v.shape[0])


def _z_mean_weight(flow, t, n, seed):
    """z-score of the importance estimate of Z = E[w] against the exact log Z."""
    with torch.no_grad():
        s = flow.sample(n, generator=torch.Generator().manual_seed(seed))
        w = torch.exp(-t.energy(s.x) - s.log_q - t.log_z)
    return float((w.mean() - 1.0) / (w.std() / math.sqrt(n))), s


def _approximate_flow(block):
    """A deliberately wrong start, then a block at λ=0.5 and one at λ=1. The start is wider
    than half the target's variance, so the weights have a finite variance."""
    t = target()
    layers = [ElementwiseAffine(2, loc=0.4, scale=1.0)]
    layers += [block(t, lam=0.5, train_lambda=True), block(t)]
    return Flow(StandardNormal(2), Compose(layers)).double(), t


@pytest.mark.parametrize("kind", BLOCKS)
def test_oracle_exact_start_keeps_the_target_and_weights_average_one(kind):
    t = target()
    flow = Flow(StandardNormal(2).double(), Compose([exact_affine(), BLOCKS[kind](t)]))
    z, s = _z_mean_weight(flow, t, 20_000, seed=1)
    assert abs(z) < Z_MAX
    log_w = -t.energy(s.x) - s.log_q
    if kind in EXACT_MH:  # δ = u(y_K) - u(y_0): every weight equals Z exactly
        torch.testing.assert_close(log_w, torch.full_like(log_w, t.log_z), rtol=0, atol=1e-10)
        se = torch.tensor(VAR).sqrt() / math.sqrt(20_000)
        zm = (s.x.mean(0) - torch.tensor(MEAN, dtype=D)) / se
        assert zm.abs().max() < Z_MAX  # the distribution is left invariant
    else:  # unadjusted dynamics move away from the target; the weights correct it
        assert float(log_w.std()) > 1e-3


@pytest.mark.parametrize("kind", BLOCKS)
def test_log_z_from_path_weights_is_unbiased(kind):
    flow, t = _approximate_flow(BLOCKS[kind])
    z, _ = _z_mean_weight(flow, t, 40_000, seed=2)
    assert abs(z) < Z_MAX


MUTANTS = {  # (correct block, its mutant); one short step keeps the mutants' weights light-tailed
    "langevin-wrong-sign": (
        lambda t: LangevinBlock(t, step_size=0.05, n_steps=1),
        lambda t: WrongSign(LangevinBlock(t, step_size=0.05, n_steps=1)),
    ),
    "metropolis-wrong-sign": (
        lambda t: MetropolisBlock(t, step_size=0.3, n_steps=1),
        lambda t: WrongSign(MetropolisBlock(t, step_size=0.3, n_steps=1)),
    ),
    "underdamped-no-velocity-term": (
        lambda t: UnderdampedLangevinBlock(t, step_size=0.15, n_steps=1),
        lambda t: NoVelocityTerm(t, step_size=0.15, n_steps=1),
    ),
}


@pytest.mark.parametrize("name", MUTANTS)
def test_negative_control_mutants_fail_the_log_z_test(name):
    t = target()
    z = {}
    for label, make in zip(("correct", "mutant"), MUTANTS[name], strict=True):
        layers = [ElementwiseAffine(2, loc=0.4, scale=1.0), make(t)]
        flow = Flow(StandardNormal(2), Compose(layers)).double()
        z[label], _ = _z_mean_weight(flow, t, 40_000, seed=2)
    assert abs(z["correct"]) < Z_MAX < 2 * Z_MAX < abs(z["mutant"])


def _balance_z(block, n=100_000, seed=3):
    r"""Two-point test of $\pi(x) q(y|x) e^{\delta + u(x) - u(y)} = \pi(y) q(x|y)$ on A × B."""
    t = target()
    g = torch.Generator().manual_seed(seed)
    x = t.sample(n, generator=g)
    with torch.no_grad():
        y, delta = block(x, generator=g)
        w = torch.exp(delta + t.energy(x) - t.energy(y))

    def box(lo, hi):  # bounded boxes keep the weights, and the test, light-tailed
        return lambda v: (v[:, 0] > lo) & (v[:, 0] < hi) & ((v[:, 1] + 0.5).abs() < 1.0)

    in_a, in_b = box(0.0, 0.8), box(1.2, 2.0)
    d = w * (in_a(x) & in_b(y)) - (in_b(x) & in_a(y)).to(D)
    return float(d.mean() / (d.std() / math.sqrt(n)))


@pytest.mark.parametrize("kind", BLOCKS)
def test_detailed_balance_of_each_block_against_its_target(kind):
    assert abs(_balance_z(BLOCKS[kind](target()))) < Z_MAX


@pytest.mark.parametrize(
    "block",
    [
        lambda t: WrongSign(LangevinBlock(t, step_size=0.25, n_steps=2)),
        lambda t: WrongSign(MetropolisBlock(t, step_size=1.0, n_steps=2)),
    ],
    ids=["langevin", "metropolis"],
)
def test_detailed_balance_test_catches_a_wrong_sign(block):
    assert abs(_balance_z(block(target()))) > Z_MAX


def _reverse_kl_loss(flow, t, seed):
    s = flow.sample(64, generator=torch.Generator().manual_seed(seed))
    return (t.energy(s.x) + s.log_q).mean()


@pytest.mark.parametrize("kind", ["langevin", "underdamped"])
def test_reparametrized_gradient_through_langevin_noise_matches_finite_differences(kind):
    flow, t = _approximate_flow(BLOCKS[kind])
    params = [p for p in flow.parameters() if p.requires_grad]
    grads = torch.autograd.grad(_reverse_kl_loss(flow, t, 5), params)
    h = 1e-6
    for p, g in zip(params, grads, strict=True):
        for i in range(p.numel()):
            with torch.no_grad():
                p.view(-1)[i] += h
                up = _reverse_kl_loss(flow, t, 5)
                p.view(-1)[i] -= 2 * h
                down = _reverse_kl_loss(flow, t, 5)
                p.view(-1)[i] += h
            fd = (up - down) / (2 * h)
            assert abs(float(g.view(-1)[i] - fd)) < 1e-6 * (1 + abs(float(fd)))
    assert all(float(g.abs().sum()) > 0 for g in grads)


def test_log_prob_of_a_stochastic_flow_explains_that_only_path_weights_exist():
    flow, _ = _approximate_flow(BLOCKS["metropolis"])
    assert flow.is_stochastic and flow.sample(3).is_path
    with pytest.raises(PathDensityError, match="path"):
        flow.log_prob(torch.zeros(3, 2, dtype=D))


@pytest.mark.parametrize("kind", BLOCKS)
def test_blocks_keep_the_input_dtype(kind):
    flow, _ = _approximate_flow(BLOCKS[kind])
    flow = flow.float()
    s = flow.sample(16, generator=torch.Generator().manual_seed(0))
    assert s.x.dtype == s.log_q.dtype == torch.float32
    assert bool(torch.isfinite(s.log_q).all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", BLOCKS)
def test_stochastic_flow_on_cuda_keeps_every_tensor_on_the_device(kind):
    flow, t = _approximate_flow(BLOCKS[kind])
    flow = flow.to("cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    s = flow.sample(256, generator=g)
    assert s.x.is_cuda and s.log_q.is_cuda and s.z.is_cuda
    back = flow.backward_path(s.x.detach(), generator=g)
    assert back.z.is_cuda and back.log_q.is_cuda


@pytest.mark.slow
@pytest.mark.parametrize("kind", BLOCKS)
def test_log_z_is_unbiased_at_ten_times_the_samples(kind):
    """The same z-test, ten times sharper: a bias of a tenth of the default test's error
    would show here."""
    flow, t = _approximate_flow(BLOCKS[kind])
    z, _ = _z_mean_weight(flow, t, 400_000, seed=11)
    assert abs(z) < Z_MAX


@pytest.mark.slow
def test_double_well_snf_free_energy_and_log_z_agree_with_the_exact_values():
    """A short SNF training on the double well (Metropolis blocks, reverse path KL): ΔF(left vs
    right) and log Z from path weights within 4.5 standard errors of the exact values."""
    from boltzflow.energies.double_well import DoubleWell2D
    from boltzflow.flows.snf import add_stochastic_blocks, realnvp_flow
    from boltzflow.sampling.reweighting import free_energy_difference, reweight
    from boltzflow.training import train
    from boltzflow.weights import importance_log_weights

    target = DoubleWell2D()
    flow = realnvp_flow(target, num_layers=4, hidden=32, seed=0)
    flow = add_stochastic_blocks(flow, target, count=2, steps=5, step_size=0.25)
    stage = {"loss": "snf_reverse_kl", "steps": 150, "batch_size": 256, "lr": 1e-3}
    train(flow, target.at_temperature(3.0), [stage], seed=0, progress=False)
    train(flow, target, [{**stage, "lr": 3e-4}], seed=1, progress=False)
    with torch.no_grad():
        s = flow.sample(50_000, generator=torch.Generator().manual_seed(3))
        log_w = importance_log_weights(target.energy(s.x), s.log_q)
    rw = reweight(log_w.double(), seed=0)
    df = free_energy_difference(s.x[:, 0] < 0, s.x[:, 0] >= 0, log_w, seed=0)
    assert abs(rw.log_z.mean - target.log_z) < Z_MAX * rw.log_z.stderr
    assert abs(df.mean - target.exact_free_energy("left_vs_right")) < Z_MAX * df.stderr
