r"""Production after flow-preconditioned SMC: independence Metropolis–Hastings chains with the
final flow ([`boltzflow.sampling.smc`][boltzflow.sampling.smc], `imh_draws`).

SMC's cost is in reaching $\beta = 1$: its tempering stages evaluate the likelihood at every
particle many times. Once there, its final flow is a proposal fitted to the posterior, and
further draws are cheap: one flow sample and one likelihood evaluation each. The chains

$$
x_{t+1} = \begin{cases} x' \sim q & \text{with probability }
\min\big(1, w(x')/w(x_t)\big),\ w = e^{-u}/q \\ x_t & \text{otherwise}\end{cases}
$$

(Tierney 1994, Ann. Stat. 22, 1701) leave the posterior invariant for any fixed flow $q$, so
their draws are exact whatever the flow learned; a poor flow shows up as low acceptance and
a low ESS, never as a bias. Each chain starts at a final SMC particle of an island that the
final flow was not fitted to (the held-out islands of
[`final_held_out_islands`][boltzflow.sampling.smc_crossfit.final_held_out_islands]): it is then
a posterior draw independent of the kernel, so the chains need no warm-up.
"""

from __future__ import annotations

import logging

import torch

from boltzflow.sampling.runners import (
    FlowDraws,
    SamplingResult,
    draw_diagnostics,
    draw_with_log_weights,
    independence_chains,
)
from boltzflow.sampling.smc_crossfit import island_rows
from boltzflow.weights import importance_log_weights

__all__ = ["LOW_ACCEPTANCE", "imh_starts", "imh_proposals", "imh_production"]

logger = logging.getLogger(__name__)

LOW_ACCEPTANCE = 0.01
"""Acceptance rate of the production chains below which a warning says the flow is too poor."""


def imh_starts(
    x: torch.Tensor, energy: torch.Tensor, islands: int, held: list[int], chains: int, g
) -> tuple[torch.Tensor, torch.Tensor]:
    """`chains` starting points (`x [chains, dim]`, `energy [chains]`) drawn without
    replacement from the final particles `x [islands * m, dim]` of the `held` islands (all
    islands if none is held out), with the generator `g`."""
    m = x.shape[0] // int(islands)
    rows = island_rows(held or list(range(int(islands))), m, x.device)
    pick = rows[torch.randperm(rows.numel(), generator=g, device=x.device)[: int(chains)]]
    if pick.numel() < int(chains):
        raise ValueError(f"{pick.numel()} particles cannot start {chains} chains")
    return x[pick], energy[pick]


@torch.no_grad()
def imh_proposals(flow, target, x0, energy0, steps: int, g, batch_size: int = 8192) -> FlowDraws:
    """The starts `x0 [chains, dim]` (energies `energy0 [chains]`, kT) followed by
    `steps · chains` fresh flow draws, step-major, with their importance log-weights: the input
    of [`independence_chains`][boltzflow.sampling.runners.independence_chains], whose row 0
    holds the chains' starting points."""
    log_q0 = flow.log_prob(x0)
    start = FlowDraws(x0, importance_log_weights(energy0, log_q0), energy0, log_q0)
    fresh = draw_with_log_weights(flow, target, int(steps) * x0.shape[0], g, batch_size)
    return FlowDraws(*(torch.cat([a, b.to(a.dtype)]) for a, b in zip(start, fresh, strict=True)))


def imh_production(flow, cost, x, energy, held: list[int], n: int, g, info: dict) -> SamplingResult:
    """The `imh_draws` step of [`smc`][boltzflow.sampling.smc.smc]: one independence-MH chain
    per island, `ceil(n / islands)` draws each with the proposal `flow`, started by
    [`imh_starts`][boltzflow.sampling.smc_production.imh_starts] from the final particles
    `x [islands, m, dim]` (energies `[islands, m]`, kT) of the `held` islands, and run by
    [`independence_chains`][boltzflow.sampling.runners.independence_chains]. `cost` is the run's
    [`RunCost`][boltzflow.sampling.runners.RunCost] (its target is the one sampled), `info` the
    SMC stages' own.

    Returns:
        the chains as SMC's [`SamplingResult`][boltzflow.sampling.runners.SamplingResult]:
        `x [islands, ceil(n / islands), dim]`; `info` adds `smc` (the stages' `evaluations`,
        `wall_seconds` and the particles' R-hat and ESS keys of
        [`draw_diagnostics`][boltzflow.sampling.runners.draw_diagnostics]) and
        `imh_acceptance` (also `acceptance_rate`),
        and `flow_holdout_islands` becomes every chain, since the flow was fitted to none of
        their draws (the coverage check of
        [`with_coverage`][boltzflow.sampling.coverage.with_coverage] uses them all).
    """
    target, chains = cost.target, x.shape[0]
    info = {k: v for k, v in info.items() if k != "acceptance_rate"}  # the chains' own, below
    info["smc"] = {
        "evaluations": int(cost.evaluations),
        "wall_seconds": cost.seconds,
        **draw_diagnostics(target, x),
    }
    info["flow_holdout_islands"] = list(range(chains))
    flat_x, flat_u = x.reshape(-1, x.shape[-1]), energy.reshape(-1)
    x0, u0 = imh_starts(flat_x, flat_u, chains, held, chains, g)
    draws = imh_proposals(flow, target, x0, u0, -(-int(n) // chains), g)
    res = independence_chains(
        draws, chains, 0, g, method="smc", cost=cost, info=info, diagnostics=True
    )
    res.info["imh_acceptance"] = acceptance = res.info["acceptance_rate"]
    if acceptance < LOW_ACCEPTANCE:
        logger.warning(
            "SMC production: the final flow's proposals were accepted %.2g%% of the time, so the "
            "chains barely move (exact, but with few effective draws): fit the flow to more "
            "particles (n_samples, train_steps) or use the particles (imh_draws = 0)",
            100 * acceptance,
        )
    return res
