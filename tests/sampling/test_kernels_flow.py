"""Flow-based kernels with exact and imperfect affine flows: independence MH and NeuTra HMC."""

import math

import torch

from boltzflow.energies.gaussians import CorrelatedGaussian
from boltzflow.flows.base import Flow, Transform, TransformResult
from boltzflow.flows.distributions import StandardNormal
from boltzflow.sampling.chains import run_chain
from boltzflow.sampling.kernels import (
    HMC,
    IndependenceMH,
    LatentHMC,
    PulledBackEnergy,
    energy_and_grad,
)

D = torch.float64
torch.set_num_threads(1)  # tiny tensors: threading only adds contention


class Affine(Transform):
    r"""``x = shift + L z`` with lower-triangular ``L``; ``ladj = Σ log|L_ii|``."""

    def __init__(self, shift, tril):
        super().__init__()
        self.shift = torch.as_tensor(shift, dtype=D)
        self.tril = torch.as_tensor(tril, dtype=D)

    def _ladj(self, n):
        return torch.log(torch.diagonal(self.tril).abs()).sum().expand(n)

    def forward(self, z):
        return TransformResult(self.shift + z @ self.tril.T, self._ladj(z.shape[0]))

    def inverse(self, x):
        z = torch.linalg.solve_triangular(self.tril, (x - self.shift).T, upper=False).T
        return TransformResult(z, -self._ladj(x.shape[0]))


def target_and_exact_flow(dim=4, condition_number=400.0):
    target = CorrelatedGaussian(
        torch.linspace(-1, 1, dim, dtype=D), dim=dim, condition_number=condition_number
    )
    flow = Flow(StandardNormal(dim).to(D), Affine(target.mean, torch.linalg.cholesky(target.cov)))
    return target, flow


def start(n, dim, seed=0):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=D)


def test_imh_with_exact_flow_always_accepts_and_weights_are_log_z():
    target, flow = target_and_exact_flow()
    res = run_chain(IndependenceMH(flow, target), start(16, 4), 50, seed=0)
    torch.testing.assert_close(res.acceptance_prob, torch.ones_like(res.acceptance_prob))
    assert res.accepted.all()
    torch.testing.assert_close(
        res.log_weight, torch.full_like(res.log_weight, target.log_z), rtol=0, atol=1e-10
    )


def test_imh_caches_log_q_and_weights_with_imperfect_flow():
    target, exact = target_and_exact_flow()
    flow = Flow(exact.base, Affine(exact.transform.shift + 0.3, 1.3 * exact.transform.tril))
    kernel = IndependenceMH(flow, target)
    state = kernel.init(start(16, 4), seed=0)
    rates = []
    for _ in range(20):
        state, info = kernel.step(state)
        rates.append(info.acceptance_prob.mean())
        torch.testing.assert_close(state.log_q, flow.log_prob(state.x))
        torch.testing.assert_close(info.log_weight, -target.energy(state.x) - state.log_q)
    # negative control for the exact-flow test: an imperfect flow does reject
    assert 0.1 < torch.stack(rates).mean() < 0.95


def test_pulled_back_energy_of_exact_flow_is_isotropic():
    """With ``x = μ + L z`` exact, ``U(z) = ½|z|² + log Z - (d/2) log 2π``: the base energy."""
    target, flow = target_and_exact_flow()
    pulled = PulledBackEnergy(target, flow)
    z = start(32, 4, seed=1)
    u, grad = energy_and_grad(pulled, z)
    const = target.log_z - 0.5 * 4 * math.log(2 * math.pi)
    torch.testing.assert_close(u, 0.5 * (z * z).sum(-1) - const)
    torch.testing.assert_close(grad, z)
    assert pulled.log_z == target.log_z and pulled.event_shape == flow.event_shape
    # negative control: the target itself (in x) is far from isotropic
    _, grad_x = energy_and_grad(target, flow.forward(z).y)
    assert not torch.allclose(grad_x, z, atol=1e-3)


def test_pulled_back_energy_is_u_of_f_minus_ladj_and_tempers_only_u():
    target, exact = target_and_exact_flow()
    flow = Flow(exact.base, Affine(exact.transform.shift + 0.3, 1.3 * exact.transform.tril))
    z = start(8, 4, seed=2)
    x, ladj = flow.forward(z)
    pulled = PulledBackEnergy(target, flow)
    torch.testing.assert_close(pulled.energy(z), target.energy(x) - ladj)
    hot = pulled.at_temperature(2.0)
    torch.testing.assert_close(hot.energy(z), target.at_temperature(2.0).energy(x) - ladj)


def test_latent_hmc_with_exact_flow_reports_x_and_log_z_weights():
    target, flow = target_and_exact_flow()
    kernel = LatentHMC(target, flow, step_size=0.5, n_leapfrog=3)
    state = kernel.init(start(16, 4), seed=0)
    probs = []
    for _ in range(30):
        state, info = kernel.step(state)
        probs.append(info.acceptance_prob)
        torch.testing.assert_close(state.x, flow.forward(state.z).y)
        torch.testing.assert_close(state.energy, target.energy(state.x))
        torch.testing.assert_close(info.energy, state.energy)
        torch.testing.assert_close(
            info.log_weight, torch.full_like(info.log_weight, target.log_z), rtol=0, atol=1e-10
        )
    # isotropic latent geometry: ε = 0.5 is accurate in latent space ...
    assert torch.stack(probs).mean() > 0.95
    # ... while the same step in x-space is unstable (smallest sd is 400^-1/4 ≈ 0.22)
    res = run_chain(HMC(target, 0.5, 3), start(16, 4), 30, seed=0)
    assert res.acceptance_prob.mean() < 0.1
