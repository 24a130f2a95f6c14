"""Mixtures of kernels: schedules, per-kernel acceptance, and local + global mixing across a
high barrier (Tierney 1994; flowMC, Gabrié et al. 2022)."""

import numpy as np
import torch
from scipy import stats

from boltzflow.energies.double_well import DoubleWell2D
from boltzflow.energies.gaussians import CorrelatedGaussian
from boltzflow.flows.base import Flow, Transform, TransformResult
from boltzflow.flows.distributions import StandardNormal
from boltzflow.sampling.chains import run_chain
from boltzflow.sampling.diagnostics import calibrated_z, rhat
from boltzflow.sampling.kernels import MALA, IndependenceMH, Mixture

D = torch.float64
torch.set_num_threads(1)  # tiny tensors: threading only adds contention


class DiagAffine(Transform):
    """``x = shift + scale * z`` elementwise; ``ladj = Σ log|scale|``."""

    def __init__(self, shift, scale):
        super().__init__()
        self.shift = torch.as_tensor(shift, dtype=D)
        self.scale = torch.as_tensor(scale, dtype=D)

    def _ladj(self, n):
        return torch.log(self.scale.abs()).sum().expand(n)

    def forward(self, z):
        return TransformResult(self.shift + self.scale * z, self._ladj(z.shape[0]))

    def inverse(self, x):
        return TransformResult((x - self.shift) / self.scale, -self._ladj(x.shape[0]))


def gaussian_and_exact_flow():
    target = CorrelatedGaussian([0.5, -0.5], [[1.0, 0.0], [0.0, 4.0]])
    return target, Flow(StandardNormal(2).to(D), DiagAffine([0.5, -0.5], [1.0, 2.0]))


def start(n, seed=0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=D)


def test_cycle_runs_each_kernel_its_repeats_and_reports_acceptance_separately():
    target, flow = gaussian_and_exact_flow()
    hybrid = Mixture([MALA(target, 1.5), IndependenceMH(flow, target)], repeats=(3, 1))
    res = run_chain(hybrid, start(16), 40, seed=0)
    steps = res.stats["kernel_steps"]
    assert steps.shape == (16, 40, 2)
    assert torch.all(steps[..., 0] == 3) and torch.all(steps[..., 1] == 1)
    rates = Mixture.acceptance_rates(res.stats["kernel_accepted"], steps)
    assert rates[1] == 1.0  # an exact flow is always accepted
    assert rates[0] < 0.9  # a large MALA step is not
    probs = res.stats["kernel_acceptance_prob"]
    torch.testing.assert_close(res.acceptance_prob, probs.sum(-1) / steps.sum(-1))
    assert torch.all(res.accepted)  # the IMH step always moves every chain
    assert isinstance(res.final_state, Mixture.State) and res.final_state.index == 1


def test_random_scan_picks_kernels_with_the_given_weights():
    target, flow = gaussian_and_exact_flow()
    mix = Mixture([MALA(target, 0.2), IndependenceMH(flow, target)], weights=(3.0, 1.0))
    n = 2000
    res = run_chain(mix, start(4), n, seed=1)
    picked_imh = res.stats["kernel_steps"][0, :, 1]
    # one choice per step, shared by all chains
    assert torch.equal(res.stats["kernel_steps"][:, :, 1], picked_imh.expand(4, n))
    freq = picked_imh.mean().item()

    def z(p):
        return abs(freq - p) / np.sqrt(p * (1 - p) / n)

    assert z(0.25) < 4.0
    assert z(0.35) > 4.0  # negative control: other weights are distinguishable


def test_local_moves_alone_are_stuck_but_the_hybrid_crosses_the_barrier():
    """Default double well (barrier ≈ 9 kT): MALA chains stay in their starting well, while MALA
    interleaved with flow independence moves reproduces the exact well population."""
    target = DoubleWell2D()
    p_right = target.marginal.p_right
    flow = Flow(StandardNormal(2).to(D), DiagAffine([0.5, 0.0], [2.0, 1.0]))
    x0 = torch.zeros(32, 2, dtype=D)
    x0[:, 0] = torch.tensor([-1.7, 1.7], dtype=D).repeat(16)
    thr = stats.norm.isf(0.001 / (2 * 2))

    local = run_chain(MALA(target, 0.01), x0, 600, seed=0)
    assert rhat(local.x[..., 0]) > 1.1  # negative control: unmixed, detected by R-hat
    hybrid = Mixture([MALA(target, 0.01), IndependenceMH(flow, target)], repeats=(4, 1))
    res = run_chain(hybrid, x0, 600, seed=0, n_warmup=50)
    assert rhat(res.x[..., 0]) < 1.05
    assert calibrated_z((res.x[..., 0] >= 0).to(D), p_right) < thr
    assert calibrated_z(res.x[..., 0], target.exact_observable("x1")) < thr
    rates = Mixture.acceptance_rates(res.stats["kernel_accepted"], res.stats["kernel_steps"])
    assert 0.05 < rates[1] < 0.9 and rates[0] > 0.5


def test_gradient_kernels_adopt_a_mixture_state_without_reevaluating():
    target, flow = gaussian_and_exact_flow()
    mix = Mixture([IndependenceMH(flow, target), MALA(target, 0.2)], repeats=(1, 1))
    state, _ = mix.step(mix.init(start(8), seed=0))
    n_before = target.n_evaluations
    adopted = MALA(target, 0.1).adopt(state)
    assert target.n_evaluations == n_before  # the cached gradient is reused
    assert adopted is state.inner
