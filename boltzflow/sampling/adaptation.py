r"""Warm-up adaptation of gradient-based kernels: per-chain step sizes and the HMC metric.

Adaptation happens in warm-up only; production runs a fixed kernel, so it is ordinary MCMC
(Andrieu & Thoms 2008, "A tutorial on adaptive MCMC", Stat. Comput. 18, 343, §2). Two pieces,
in the spirit of Stan's windowed adaptation (Stan Reference Manual, "HMC algorithm
parameters"), without dual averaging:

* **Step size** ([`adapt_step_size`][boltzflow.sampling.adaptation.adapt_step_size],
  [`run_adapting_step_size`][boltzflow.sampling.adaptation.run_adapting_step_size]): every chain's
  step $\epsilon_c$ is multiplied after each block of steps by

    $$
    \epsilon_c \leftarrow \epsilon_c \cdot
    \mathrm{clip}\bigl(e^{2(\bar a_c - a^*)},\ 0.2,\ 5\bigr),
    $$

    where $\bar a_c$ is the chain's mean acceptance probability over the block and
    $a^*$ the target acceptance: a Robbins–Monro step on $\log\epsilon$ with a
    constant gain (Andrieu & Thoms 2008, §3.2), clipped so one block moves the step by at most
    a factor 5.

* **Metric** ([`estimate_metric`][boltzflow.sampling.adaptation.estimate_metric]): the mass matrix
  from a window of draws, as inverse variances (diagonal) or as a dense inverse mass equal to the
  sample covariance shrunk towards $10^{-3} I$ with weight $5/(n+5)$, Stan's regularisation.
  The window is the latest warm-up round, never the first (burn-in), and the step size is
  adapted again after the last metric update, so production runs at the target acceptance
  with the metric it uses (Stan's terminal fast window).

* **Chain health** ([`unhealthy_chains`][boltzflow.sampling.adaptation.unhealthy_chains],
  [`restart_from_healthy`][boltzflow.sampling.adaptation.restart_from_healthy]): after each
  warm-up round, a chain whose step collapsed or that sits far above the others' energies is
  moved to a healthy chain's point (warm-up only; production is untouched).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from boltzflow.sampling.chains import ChainResult, run_chain
from boltzflow.sampling.kernels.hmc import DenseMetric

__all__ = [
    "ADAPT_EVERY",
    "adapt_step_size",
    "adaptation_blocks",
    "run_adapting_step_size",
    "estimate_metric",
    "unhealthy_chains",
    "restart_from_healthy",
]

ADAPT_EVERY = 10
"""Steps between two step-size updates."""


def adapt_step_size(
    step: torch.Tensor, acceptance: torch.Tensor, target_accept: float
) -> torch.Tensor:
    r"""One multiplicative update of the per-chain steps `step [chains, 1]` (module docstring).

    `acceptance [chains]` is each chain's mean acceptance probability over the last block.
    """
    factor = torch.exp(2.0 * (acceptance.reshape(step.shape) - target_accept)).clamp(0.2, 5.0)
    return step * factor


def adaptation_blocks(n: int, size: int) -> list[int]:
    """Split `n` steps into blocks of `size` and a shorter last one (if `size ∤ n`)."""
    return [size] * (n // size) + ([n % size] if n % size else [])


def run_adapting_step_size(
    make_kernel: Callable[[torch.Tensor], object],
    state,
    n_steps: int,
    step: torch.Tensor,
    target_accept: float,
    every: int = ADAPT_EVERY,
    progress: bool | None = False,
) -> tuple[ChainResult, torch.Tensor]:
    """Run `n_steps` steps from `state` in blocks of `every`, adapting the step after each.

    Args:
        make_kernel: builds the kernel for a given per-chain step `[chains, 1]`.
        state: a state of that kernel (the chain continues from it).
        n_steps: steps in all
            ([`adaptation_blocks`][boltzflow.sampling.adaptation.adaptation_blocks]).
        step: the per-chain steps to start from.
        target_accept: $a^*$.
        every: block length.
        progress: passed to [`run_chain`][boltzflow.sampling.chains.run_chain].

    Returns:
        `(result, step)`: the blocks' draws concatenated along the draw axis (`x`,
        `energy`, `accepted`, `acceptance_prob`, `log_weight`; `final_state` and
        `stats` of the last block), and the adapted steps.
    """
    blocks = []
    for n in adaptation_blocks(int(n_steps), int(every)):
        res = run_chain(make_kernel(step), state, n, progress=progress)
        state = res.final_state
        step = adapt_step_size(step, res.acceptance_prob.double().mean(1), target_accept)
        blocks.append(res)
    if not blocks:
        raise ValueError("run_adapting_step_size needs n_steps >= 1")
    fields = ("x", "energy", "accepted", "acceptance_prob", "log_weight")
    joined = {f: torch.cat([getattr(b, f) for b in blocks], 1) for f in fields}
    return blocks[-1]._replace(**joined), step


def estimate_metric(draws: torch.Tensor, kind: str) -> torch.Tensor | DenseMetric:
    r"""The `mass` argument of [`HMC`][boltzflow.sampling.kernels.HMC] from a window of draws
    `[n, d]`.

    `"diag"`: the diagonal mass $1/\mathrm{var}$ (inverse mass = the variances).
    `"dense"`: a [`DenseMetric`][boltzflow.sampling.kernels.DenseMetric] whose inverse mass is the
    sample covariance shrunk towards $10^{-3} I$,
    $(n\,\Sigma + 5\cdot10^{-3} I)/(n + 5)$.
    """
    if kind == "diag":
        return 1.0 / draws.var(0).clamp(min=1e-8)
    if kind == "dense":
        n = draws.shape[0]
        cov = torch.cov(draws.reshape(n, -1).T).reshape(draws.shape[1], draws.shape[1])
        eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
        return DenseMetric((n * cov + 5e-3 * eye) / (n + 5.0))
    raise ValueError(f"metric must be 'diag' or 'dense', got {kind!r}")


def unhealthy_chains(energy: torch.Tensor, step: torch.Tensor, dim: int) -> torch.Tensor:
    r"""Chains that are stuck or whose step collapsed during a warm-up round, `[chains]` bool.

    A chain is unhealthy when (a) its adapted step is below 1/20 of the median step (a step that
    collapsed in a region the other chains left), or (b) its mean energy over the second half of
    the round lies above the median chain's by more than
    $\max(5\,s,\ 5\sqrt{d/2},\ 5)$ kT, with $s$ the median within-chain energy standard
    deviation and $\sqrt{d/2}$ the standard deviation of $u$ under a $d$-dimensional Gaussian
    posterior: a chain stuck far outside the typical set that the others found. Both tests are
    relative to the other chains, so they need at least 4 chains (fewer: none flagged).

    Args:
        energy: `[chains, draws]` energies of the round (kT); non-finite counts as $+\infty$.
        step: `[chains, 1]` adapted per-chain steps.
        dim: the target's dimension $d$.
    """
    chains = energy.shape[0]
    if chains < 4:
        return torch.zeros(chains, dtype=torch.bool)
    u = energy[:, energy.shape[1] // 2 :].double().cpu()
    u = torch.where(torch.isfinite(u), u, torch.full_like(u, math.inf))
    mean = u.mean(1)
    spread = u.std(1).nan_to_num(math.inf).median() if u.shape[1] > 1 else torch.tensor(0.0)
    width = max(5.0 * float(spread), 5.0 * math.sqrt(dim / 2.0), 5.0)
    s = step.reshape(chains).double().cpu()
    collapsed = s < s.median() / 20.0
    stuck = ~(mean <= mean.median() + width)
    return collapsed | stuck


def restart_from_healthy(
    x: torch.Tensor, step: torch.Tensor, bad: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move every `bad` chain to the current point of a randomly chosen healthy chain and give it
    the healthy chains' median step. `x [chains, *event]`, `step [chains, 1]`; returns both, new.

    The copies decorrelate from their donors within a few steps (their own random numbers);
    as this happens in warm-up only, production is untouched MCMC.
    """
    good = torch.nonzero(~bad).reshape(-1)
    pick = torch.randint(len(good), (int(bad.sum()),), generator=generator, device=generator.device)
    donors = good[pick.cpu()]
    x, step = x.clone(), step.clone()
    x[bad.to(x.device)] = x[donors.to(x.device)]
    step[bad.to(step.device)] = step[good.to(step.device)].median()
    return x, step
