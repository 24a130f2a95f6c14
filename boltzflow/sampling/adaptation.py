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
"""

from __future__ import annotations

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
