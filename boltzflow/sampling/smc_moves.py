r"""MCMC moves in a flow's latent space for flow-preconditioned sequential Monte Carlo.

A population of particles targets the tempered density

$$
\pi_\beta(x) \propto r(x)\, e^{\beta\,\ell(x)}, \qquad \ell(x) = -u(x) - \log r(x),
$$

between a normalized reference $r$ (the prior, or a Gaussian) at $\beta = 0$ and the target
$e^{-u}$ at $\beta = 1$ ([`boltzflow.sampling.smc`][boltzflow.sampling.smc]). With a flow
$x = f(z)$ fitted to the particles, the moves run on the pulled-back density of $z$,

$$
U_\beta(z) = u_\beta(f(z)) - \log\left|\det \frac{\partial f}{\partial z}\right|, \qquad
u_\beta = -\log r - \beta\,\ell,
$$

([`latent_energy`][boltzflow.sampling.smc_moves.latent_energy]) whose images $f(z)$ are
distributed as $\pi_\beta$ for any invertible flow; a flow close to $\pi_\beta$ makes
$U_\beta$ close to $\tfrac12|z|^2$, where simple proposals mix fast (Hoffman et al. 2019,
arXiv:1903.03704; Karamanis et al. 2022, "Accelerating astronomical and cosmological inference
with preconditioned Monte Carlo", MNRAS 516, 1644). Two proposals, both gradient-free:

* **pCN** (preconditioned Crank–Nicolson; Cotter, Roberts, Stuart & White 2013, Stat. Sci. 28,
  424): $z' = \sqrt{1 - s^2}\,z + s\,\xi$, $\xi \sim \mathcal N(0, I)$, reversible with
  respect to $\mathcal N(0, I)$, so $\log q_\text{ratio} = \tfrac12(|z'|^2 - |z|^2)$; at
  $s = 1$ it is the flow's independence sampler;
* **random-walk Metropolis**: $z' = z + s\,\xi$, $\log q_\text{ratio} = 0$;
* **HMC** (`"hmc"`, only for differentiable targets and references): `n_leapfrog` leapfrog
  steps of size $s$ on $U_\beta$ with unit mass (Neal 2011, "MCMC using Hamiltonian
  dynamics"), $\log q_\text{ratio} = \tfrac12(|p|^2 - |p'|^2)$; each leapfrog step is one
  evaluation of the target with its gradient.

Every proposal is accepted or rejected by the one Metropolis–Hastings rule
(`boltzflow.sampling.kernels.mh.mh_select`, over
[`metropolis_hastings_accept`][boltzflow.metropolis.metropolis_hastings_accept]): a proposal
whose energy is not finite (a likelihood that raised or returned NaN) is rejected and counted.
The step $s$ is adapted after every step towards a target acceptance (Robbins–Monro on
$\log s$; Andrieu & Thoms 2008, Stat. Comput. 18, 343), and the moves continue until the mean
correlation between the latent coordinates at the start and now (over particles, averaged over
coordinates) falls below `decorrelation` (the population-based stopping rule of pocoMC), within
`[min_steps, max_steps]`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from boltzflow.sampling.kernels.mh import mh_select, where_chains

__all__ = [
    "Particles",
    "MoveSettings",
    "MoveStats",
    "tempered_energy",
    "latent_energy",
    "latent_moves",
]

MOVES = ("pcn", "rwm", "hmc")


class Particles(NamedTuple):
    r"""A population: positions `x [n, dim]`, the reference log-density `log_ref [n]`
    ($\log r(x)$, normalized) and `log_l [n]` $= \ell(x) = -u(x) - \log r(x)$
    ($-\infty$ where the target is not finite)."""

    x: torch.Tensor
    log_ref: torch.Tensor
    log_l: torch.Tensor


class MoveSettings(NamedTuple):
    """Settings of [`latent_moves`][boltzflow.sampling.smc_moves.latent_moves].

    Attributes:
        kind: `"pcn"`, `"rwm"` or `"hmc"` (module docstring).
        target_accept: acceptance rate the step size is adapted towards.
        decorrelation: stop once the mean latent correlation with the starting points is below.
        min_steps, max_steps: bounds on the number of moves per stage.
        n_leapfrog: leapfrog steps per HMC move.
    """

    kind: str = "pcn"
    target_accept: float = 0.25
    decorrelation: float = 0.3
    min_steps: int = 2
    max_steps: int = 50
    n_leapfrog: int = 5


class MoveStats(NamedTuple):
    """What one stage's moves did: `steps` taken, mean `acceptance`, the adapted `step_size`,
    the final mean latent `correlation` and `n_nonfinite` proposals (target not finite)."""

    steps: int
    acceptance: float
    step_size: float
    correlation: float
    n_nonfinite: int


def tempered_energy(p: Particles, beta: float) -> torch.Tensor:
    r"""$u_\beta(x) = -\log r(x) - \beta\,\ell(x)$, `[n]`; at $\beta = 0$ the target does
    not enter (no $0 \cdot (-\infty)$)."""
    if beta <= 0:
        return -p.log_ref
    return -p.log_ref - float(beta) * p.log_l


def latent_energy(u_beta: torch.Tensor, ladj_forward: torch.Tensor) -> torch.Tensor:
    r"""Pulled-back energy $U_\beta(z) = u_\beta(f(z)) - \log|\det\partial f/\partial z|$, `[n]`."""
    return u_beta - ladj_forward


def _energy_and_grad(flow, score, z: torch.Tensor, beta: float):
    """`(Particles at f(z), U_beta(z), dU/dz)` with autograd through the flow and the score;
    non-finite gradients are zeroed (their proposals are rejected)."""
    with torch.enable_grad():
        zr = z.detach().requires_grad_(True)
        x, ladj = flow.forward(zr)
        p = Particles(x, *score(x))
        energy = latent_energy(tempered_energy(p, beta), ladj)
        (g,) = torch.autograd.grad(energy.masked_fill(~torch.isfinite(energy), 0.0).sum(), zr)
    p = Particles(p.x.detach(), p.log_ref.detach(), p.log_l.detach())
    return p, energy.detach(), torch.nan_to_num(g, 0.0, 0.0, 0.0)


def _leapfrog(flow, score, z, grad, beta, s, n, generator):
    """`n` leapfrog steps from `z` with fresh momenta; returns the end point and
    `log_q_ratio = K(p) - K(p')`."""
    mom = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
    k0 = 0.5 * mom.square().sum(-1)
    mom = mom - 0.5 * s * grad
    for i in range(int(n)):
        z = z + s * mom
        p, energy, grad = _energy_and_grad(flow, score, z, beta)
        mom = mom - (s if i < n - 1 else 0.5 * s) * grad
    return z, p, energy, grad, k0 - 0.5 * mom.square().sum(-1)


def _mean_correlation(z0: torch.Tensor, z: torch.Tensor) -> float:
    """Mean over coordinates of the correlation (over particles) between `z0` and `z`."""
    a = z0 - z0.mean(0)
    b = z - z.mean(0)
    den = (a.square().sum(0) * b.square().sum(0)).sqrt().clamp_min(1e-300)
    return float(((a * b).sum(0) / den).mean())


@torch.no_grad()
def latent_moves(
    flow,
    score: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    particles: Particles,
    beta: float,
    step_size: float,
    settings: MoveSettings,
    generator: torch.Generator,
) -> tuple[Particles, torch.Tensor, MoveStats]:
    r"""Move every particle by MH steps on $U_\beta$ in the latent space of `flow`.

    Args:
        flow: an invertible [`Flow`][boltzflow.flows.base.Flow] with a standard-normal base.
        score: `x [n, dim] -> (log_ref [n], log_l [n])`, one target evaluation per row.
        particles: the population at `beta`.
        beta: the inverse temperature of the stage.
        step_size: initial $s$ (pCN: capped at 1).
        settings: [`MoveSettings`][boltzflow.sampling.smc_moves.MoveSettings].
        generator: drives the proposals and the accept/reject uniforms.

    Returns:
        `(particles, moved [n] bool, stats)`; `moved` marks particles that left their start.
    """
    if settings.kind not in MOVES:
        raise ValueError(f"move must be one of {MOVES}, got {settings.kind!r}")
    pcn, hmc = settings.kind == "pcn", settings.kind == "hmc"
    x, log_ref, log_l = particles
    z, ladj_inv = flow.inverse(x)
    energy = latent_energy(tempered_energy(particles, beta), -ladj_inv)
    grad = _energy_and_grad(flow, score, z, beta)[2] if hmc else None
    z0, moved = z.clone(), torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    log_s = math.log(min(step_size, 1.0) if pcn else step_size)
    acc_sum, n_bad, corr, steps = 0.0, 0, 1.0, 0
    for t in range(int(settings.max_steps)):
        s = math.exp(log_s)
        if hmc:
            n_lf = settings.n_leapfrog
            z_new, new, energy_new, grad_new, log_q_ratio = _leapfrog(
                flow, score, z, grad, beta, s, n_lf, generator
            )
            x_new = new.x
        else:
            xi = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
            if pcn:
                z_new = math.sqrt(max(1.0 - s * s, 0.0)) * z + s * xi
                log_q_ratio = 0.5 * (z_new.square().sum(-1) - z.square().sum(-1))
            else:
                z_new, log_q_ratio = z + s * xi, 0.0
            x_new, ladj = flow.forward(z_new)
            new = Particles(x_new, *score(x_new))
            energy_new = latent_energy(tempered_energy(new, beta), ladj)
        n_bad += int((~torch.isfinite(energy_new)).sum())
        acc, prob = mh_select(energy, energy_new, log_q_ratio, generator)
        z, x = where_chains(acc, z_new, z), where_chains(acc, x_new, x)
        energy = torch.where(acc, energy_new, energy)
        grad = where_chains(acc, grad_new, grad) if hmc else None
        log_ref = torch.where(acc, new.log_ref, log_ref)
        log_l = torch.where(acc, new.log_l, log_l)
        moved |= acc
        rate = float(prob.mean())
        acc_sum, steps = acc_sum + float(acc.double().mean()), t + 1
        log_s += (rate - settings.target_accept) / (t + 1) ** 0.6
        if pcn:
            log_s = min(log_s, 0.0)
        corr = _mean_correlation(z0, z)
        if steps >= int(settings.min_steps) and corr < settings.decorrelation:
            break
    stats = MoveStats(steps, acc_sum / max(steps, 1), math.exp(log_s), corr, n_bad)
    return Particles(x, log_ref, log_l), moved, stats
