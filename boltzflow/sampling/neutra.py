r"""NeuTra: HMC in a frozen flow's latent space, the one implementation behind two runners.

With a flow $x = f(z)$, HMC runs on the pulled-back energy
$U(z) = u(f(z)) - \log|\det \partial f/\partial z|$
([`LatentHMC`][boltzflow.sampling.kernels.LatentHMC]), whose images $f(z)$ are exactly
distributed as $p$ for any invertible flow; a good flow makes $U$ nearly isotropic,
so HMC mixes fast (Hoffman et al. 2019, "NeuTra-lizing bad geometry in Hamiltonian Monte Carlo
using neural transport", arXiv:1903.03704; on lattices, Foreman et al. 2021, arXiv:2112.01586).
Chains start at flow samples, i.e. in equilibrium as far as the flow is right.

[`latent_hmc_chains`][boltzflow.sampling.neutra.latent_hmc_chains] is the chain; it may first adapt
a per-chain step size in warm-up rounds
([`run_adapting_step_size`][boltzflow.sampling.adaptation.run_adapting_step_size]), after which the
kernel is fixed. Runners built on it: [`neutra`][boltzflow.sampling.neutra.neutra] (registered as
`"neutra"`: adapted steps, R-hat and ESS) and
[`boltzflow.sampling.lattice_hmc.flow_hmc`][boltzflow.sampling.lattice_hmc.flow_hmc]
(`"lattice-flow-hmc"`: a fixed step, discarded warm-up steps, τ_int of the lattice observables).
Targets on a torus (`target.period`) need a flow whose base is the same torus; latent points are
then wrapped.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from boltzflow.flows.base import frozen
from boltzflow.rng import generator_for_module
from boltzflow.sampling.adaptation import run_adapting_step_size
from boltzflow.sampling.chains import ChainResult, run_chain
from boltzflow.sampling.kernels.latent_hmc import LatentHMC
from boltzflow.sampling.runners import RunCost, SamplingResult

__all__ = ["LatentChains", "latent_hmc_chains", "neutra"]


class LatentChains(NamedTuple):
    """Output of [`latent_hmc_chains`][boltzflow.sampling.neutra.latent_hmc_chains]: the production
    draws (configurations `x = f(z)`), the step size used (`[chains, 1]` when adapted, else the
    float given) and the target evaluations spent before production."""

    result: ChainResult
    step_size: float | torch.Tensor
    warmup_evaluations: int


def latent_hmc_chains(
    flow,
    target,
    *,
    n_draws: int,
    seed: int,
    chains: int,
    step_size: float,
    n_leapfrog: int,
    thin: int = 1,
    n_warmup: int = 0,
    adapt_rounds: int = 0,
    adapt_steps: int = 20,
    target_accept: float = 0.75,
    progress: bool | None = False,
) -> LatentChains:
    """`chains` NeuTra chains from flow samples, `n_draws` kept draws each (every `thin`-th).

    With `adapt_rounds > 0` each chain's step is first adapted towards `target_accept`
    after every round of `adapt_steps` steps; production then adopts the adapted states
    (recomputing `z`, `U` and `∂U/∂z` from `x`). `n_warmup` further steps of the fixed
    kernel are discarded before the kept draws. The flow is frozen throughout and left as it
    was found. The generator (seeded `seed`, on the flow's device) draws the starting points;
    the chains' own RNG is seeded `seed` too.
    """
    period = target.period
    if period is not None and not math.isclose(
        float(flow.base.high - flow.base.low), float(period)
    ):
        raise ValueError("a torus target needs a flow whose base is the same torus")
    g = generator_for_module(flow, seed)
    n0 = target.n_evaluations
    with frozen(flow):
        with torch.no_grad():
            x0 = flow.sample(int(chains), generator=g).x.detach()
        step = float(step_size)
        if adapt_rounds > 0:
            step = torch.full((int(chains), 1), float(step_size), dtype=x0.dtype)

        def kernel_for(eps) -> LatentHMC:
            return LatentHMC(target, flow, eps, n_leapfrog, wrap=period)

        kernel = kernel_for(step)
        state = kernel.init(x0, seed=int(seed))
        if adapt_rounds > 0:
            n_adapt = int(adapt_rounds) * int(adapt_steps)
            adapted, step = run_adapting_step_size(
                kernel_for, state, n_adapt, step, target_accept, int(adapt_steps), progress
            )
            kernel = kernel_for(step)
            state = kernel.adopt(adapted.final_state)
        warmup_evaluations = target.n_evaluations - n0
        res = run_chain(
            kernel, state, int(n_draws) * thin, thin=thin, progress=progress, n_warmup=n_warmup
        )
    return LatentChains(res, step, warmup_evaluations)


def neutra(
    flow,
    target,
    *,
    n_samples: int,
    seed: int = 0,
    chains: int = 16,
    step_size: float = 0.2,
    n_leapfrog: int = 8,
    target_accept: float = 0.75,
    warmup_rounds: int = 10,
    warmup_steps: int = 20,
    thin: int = 1,
    progress: bool = False,
) -> SamplingResult:
    """NeuTra-HMC with a (pre-trained, frozen) flow; step size adapted per chain in warm-up.

    Runs `chains` chains for `ceil(n_samples / chains)` kept draws each, after
    `warmup_rounds` rounds of `warmup_steps` adaptation steps. `info` has the acceptance
    rate, warm-up evaluations, the median step size, R-hat and ESS.
    """
    cost = RunCost(target)
    out = latent_hmc_chains(
        flow,
        target,
        n_draws=-(-int(n_samples) // int(chains)),
        seed=seed,
        chains=chains,
        step_size=step_size,
        n_leapfrog=n_leapfrog,
        thin=thin,
        adapt_rounds=warmup_rounds,
        adapt_steps=warmup_steps,
        target_accept=target_accept,
        progress=progress,
    )
    res = out.result
    info = {
        "warmup_evaluations": int(out.warmup_evaluations),
        "step_size_median": float(torch.as_tensor(out.step_size).median()),
    }
    return SamplingResult.from_chain(
        res.x, res.energy, res.accepted, method="neutra", cost=cost, info=info, diagnostics=True
    )
