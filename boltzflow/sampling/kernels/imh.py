r"""Independence Metropolis–Hastings with a normalizing-flow proposal.

Every step draws `x' ~ q` from the flow, independently of the current point, and accepts with

$$
\alpha = \min\Bigl(1, \frac{p(x')\,q(x)}{p(x)\,q(x')}\Bigr)
       = \min\bigl(1, e^{\log w(x') - \log w(x)}\bigr), \qquad \log w = -u - \log q,
$$

i.e. `log_q_ratio = log q(x) - log q(x')` (Hastings 1970; Tierney 1994, "Markov chains for
exploring posterior distributions", Ann. Stat. 22, 1701). With a flow this is the global move
of Boltzmann generators (Noé et al. 2019) and flowMC (Gabrié, Rotskoff & Vanden-Eijnden 2022).
The chain is uniformly ergodic when `w` is bounded; the acceptance rate reflects how well
`q` covers `p`.

Cost per step: one flow sample (forward pass) and one target evaluation per chain.

Proposals of an independence sampler do not depend on the chain state, so they can all be
drawn and scored first, in large batches; `imh_sweep` then runs the accept/reject steps
over the cached log-weights. It is the one independence-MH loop of the batched runners
([`flow_imh`][boltzflow.sampling.runners.flow_imh],
[`annealed_flow`][boltzflow.sampling.bayes_anneal.annealed_flow]), and its transition law is exactly
that of [`IndependenceMH`][boltzflow.sampling.kernels.IndependenceMH]: both accept by the shared
[`metropolis_hastings_accept`][boltzflow.metropolis.metropolis_hastings_accept] with
$\log\alpha = \log w(x') - \log w(x)$, and both give a non-finite proposal weight 0
([`boltzflow.weights`][boltzflow.weights]), so it is never accepted, while a chain at a point of
weight 0 accepts any proposal of positive weight.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from boltzflow.energies.base import Energy
from boltzflow.flows.base import Flow
from boltzflow.sampling.base import StepInfo, metropolis_hastings_accept
from boltzflow.sampling.kernels.mh import Proposal, generator_for, mh_update, start_generator
from boltzflow.weights import importance_log_weights

__all__ = ["IMHState", "IndependenceMH", "IMHSweep", "imh_sweep"]


class IMHState(NamedTuple):
    """State of [`IndependenceMH`][boltzflow.sampling.kernels.IndependenceMH]: positions
    `x [chains, *event]`, energies `u` `[chains]` (kT), RNG state, and the cached flow log-density
    `log_q = log q(x)` `[chains]`.
    """

    x: torch.Tensor
    energy: torch.Tensor
    rng_state: torch.Tensor
    log_q: torch.Tensor


class IndependenceMH:
    r"""Flow independence sampler: propose from `flow`, accept by the importance-weight ratio.

    Args:
        flow: a [`Flow`][boltzflow.flows.base.Flow] (held fixed; evaluated without gradients).
        target: the [`Energy`][boltzflow.energies.base.Energy] `u` with `p ∝ e^{-u}`.

    `Info.log_weight` is `log w = -u(x) - log q(x)` of the state after the step.

    Examples:
        >>> import torch
        >>> from boltzflow.energies.double_well import DoubleWell2D
        >>> from boltzflow.flows.builders import spline_coupling_flow
        >>> target = DoubleWell2D()
        >>> kernel = IndependenceMH(spline_coupling_flow(target, seed=0), target)
        >>> state = kernel.init(torch.zeros(4, 2), seed=0)
        >>> state, info = kernel.step(state)
        >>> state.x.shape, info.accepted.shape
        (torch.Size([4, 2]), torch.Size([4]))
    """

    State = IMHState

    def __init__(self, flow: Flow, target: Energy):
        self.flow = flow
        self.target = target

    def _log_q(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.flow.log_prob(x)

    def init(self, x0: torch.Tensor, seed: int | torch.Generator | None = None) -> IMHState:
        """Start chains at `x0 [chains, *event]` (one energy and one `log q` evaluation)."""
        g = start_generator(x0, seed)
        with torch.no_grad():
            u = self.target.energy(x0)
        return IMHState(x0.detach(), u.detach(), g.get_state(), self._log_q(x0))

    def adopt(self, state) -> IMHState:
        """Take over any state with `x`, `energy`, `rng_state`.

        Reuses its energy; `log q(x)` is always recomputed (one flow inverse), so a state
        cached under another flow is never misread.
        """
        return IMHState(state.x, state.energy, state.rng_state, self._log_q(state.x))

    def propose(self, state: IMHState, generator: torch.Generator) -> Proposal:
        """Draw `x' ~ q` for every chain; `log_q_ratio = log q(x) - log q(x')`.

        A non-finite `log q(x')` gives `log_q_ratio = -inf` (rejected).
        """
        with torch.no_grad():
            draw = self.flow.sample(state.x.shape[0], generator=generator)
            x_new, log_q_new = draw.x.detach(), draw.log_q.detach()
            u_new = self.target.energy(x_new).detach()
        reject = torch.full_like(log_q_new, -torch.inf)
        log_q_ratio = torch.where(torch.isfinite(log_q_new), state.log_q - log_q_new, reject)
        return Proposal(x_new, log_q_ratio, u_new, log_q_new)

    def step(self, state: IMHState) -> tuple[IMHState, StepInfo]:
        """One independence proposal per chain, accepted by `mh_update`."""
        g = generator_for(state.rng_state, state.x)
        new = mh_update(state.x, state.energy, state.log_q, self.propose(state, g), g)
        log_w = importance_log_weights(new.energy, new.cache)
        info = StepInfo(new.accepted, new.acceptance_prob, new.energy, log_w)
        return IMHState(new.x, new.energy, g.get_state(), new.cache), info


class IMHSweep(NamedTuple):
    """Result of `imh_sweep`: `index [chains, draws]` into the flattened proposals
    (the state each chain holds after each kept step) and `accepted [chains, draws]`."""

    index: torch.Tensor
    accepted: torch.Tensor


def imh_sweep(log_w: torch.Tensor, n_warmup: int, generator: torch.Generator) -> IMHSweep:
    r"""Independence MH over precomputed proposals with log-weights `log_w [steps + 1, chains]`.

    Row 0 holds the chains' starting points; at step `t` chain `c` moves to proposal
    `(t, c)` with probability $\min(1, w_{t,c} / w_{cur})$ (one uniform per chain from
    `generator`). `log_w` must already follow the rule of [`boltzflow.weights`][boltzflow.weights]
    (non-finite → `-inf`). The first `n_warmup` steps are dropped.

    Returns:
        `IMHSweep` with indices into the flattened `[(steps + 1) · chains]` proposals
        (`t · chains + c`), `steps - n_warmup` kept draws per chain.
    """
    steps, chains = log_w.shape[0] - 1, log_w.shape[1]
    ar = torch.arange(chains, device=log_w.device)
    current, lw_cur = ar.clone(), log_w[0]
    kept, accepted = [], []
    for t in range(1, steps + 1):
        acc, _ = metropolis_hastings_accept(log_w[t] - lw_cur, generator)
        current = torch.where(acc, t * chains + ar, current)
        lw_cur = torch.where(acc, log_w[t], lw_cur)
        if t > n_warmup:
            kept.append(current)
            accepted.append(acc)
    return IMHSweep(torch.stack(kept, 1), torch.stack(accepted, 1))
