r"""Shared plumbing for Metropolis–Hastings kernels: energies with gradients, per-chain
selection, RNG round trips and the accept/reject step.

Every kernel in [`boltzflow.sampling.kernels`][boltzflow.sampling.kernels] builds a `Proposal`
`(x_new, log_q_ratio, ...)` with `log_q_ratio = log q(x_old | x_new) - log q(x_new | x_old)`
in its `propose(state, generator)` method and calls `mh_update`, which wraps the one
acceptance rule
[`boltzflow.sampling.base.metropolis_hastings_accept`][boltzflow.metropolis.metropolis_hastings_accept]
(Metropolis et al. 1953; Hastings 1970). Non-finite proposed energies are rejected, and rejected
chains keep their old values exactly, so NaN never enters a state.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch

from boltzflow.energies.base import Energy
from boltzflow.rng import generator_from_state, make_generator
from boltzflow.sampling.base import log_acceptance_ratio, metropolis_hastings_accept

__all__ = [
    "EnergyAndGrad",
    "energy_and_grad",
    "where_chains",
    "MHDecision",
    "mh_select",
    "Proposal",
    "MHUpdate",
    "mh_update",
    "start_generator",
    "generator_for",
    "warn_nonfinite_start",
    "like",
]

logger = logging.getLogger(__name__)


class EnergyAndGrad(NamedTuple):
    """Reduced energy `u [chains]` (kT) and its gradient `∂u/∂x` (shape of `x`)."""

    energy: torch.Tensor
    grad: torch.Tensor


def energy_and_grad(target: Energy, x: torch.Tensor) -> EnergyAndGrad:
    r"""`(u(x), ∂u/∂x)` in one forward and one backward pass (one energy evaluation per chain).

    The result is detached. Entries of non-finite energies may have non-finite gradients;
    kernels reject the proposals that reach them.
    """
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        u = target.energy(xr)
        if u.requires_grad:
            (g,) = torch.autograd.grad(u.sum(), xr)
        else:  # energy independent of x
            g = torch.zeros_like(xr)
    return EnergyAndGrad(u.detach(), g.detach())


def where_chains(mask: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Per-chain `torch.where`: `mask [chains]` broadcast over the trailing event dims."""
    return torch.where(mask.reshape(mask.shape + (1,) * (new.dim() - mask.dim())), new, old)


class MHDecision(NamedTuple):
    """Outcome of one accept/reject: `accepted` (bool) and `acceptance_prob`, `[chains]`."""

    accepted: torch.Tensor
    acceptance_prob: torch.Tensor


def mh_select(
    energy_old: torch.Tensor,
    energy_new: torch.Tensor,
    log_q_ratio: torch.Tensor | float,
    generator: torch.Generator,
) -> MHDecision:
    r"""Accept with probability $\min(1, e^{u_{old} - u_{new} + \log q_{ratio}})$.

    Thin wrapper over [`log_acceptance_ratio`][boltzflow.metropolis.log_acceptance_ratio] and
    [`metropolis_hastings_accept`][boltzflow.metropolis.metropolis_hastings_accept] (draws one
    uniform per chain).
    """
    log_alpha = log_acceptance_ratio(energy_old, energy_new, log_q_ratio)
    accepted, prob = metropolis_hastings_accept(log_alpha, generator)
    return MHDecision(accepted, prob)


class Proposal(NamedTuple):
    """A proposal for every chain: positions `x [chains, *event]`, `log_q_ratio [chains]`
    `= log q(x_old | x_new) - log q(x_new | x_old)`, the energy `u(x_new)` and the kernel's
    cached quantity at `x_new` (`log q` for IMH, `∂u/∂x` for MALA/HMC)."""

    x: torch.Tensor
    log_q_ratio: torch.Tensor
    energy: torch.Tensor
    cache: torch.Tensor


class MHUpdate(NamedTuple):
    """Positions, energies and caches after accept/reject, with the decision, `[chains]`."""

    x: torch.Tensor
    energy: torch.Tensor
    cache: torch.Tensor
    accepted: torch.Tensor
    acceptance_prob: torch.Tensor


def mh_update(
    x: torch.Tensor,
    energy: torch.Tensor,
    cache: torch.Tensor,
    proposal: Proposal,
    generator: torch.Generator,
) -> MHUpdate:
    """Accept or reject `proposal` per chain; rejected chains keep `x`, `energy`, `cache`
    exactly (so NaN in a rejected proposal never enters the state)."""
    acc, prob = mh_select(energy, proposal.energy, proposal.log_q_ratio, generator)
    return MHUpdate(
        where_chains(acc, proposal.x, x),
        torch.where(acc, proposal.energy, energy),
        where_chains(acc, proposal.cache, cache),
        acc,
        prob,
    )


def start_generator(x0: torch.Tensor, seed: int | torch.Generator | None) -> torch.Generator:
    """A generator on `x0`'s device, from a seed (or a copy of a given generator's state)."""
    if isinstance(seed, torch.Generator):
        return generator_from_state(seed.get_state(), x0.device)
    return make_generator(seed, x0.device)


def generator_for(rng_state: torch.Tensor, like: torch.Tensor) -> torch.Generator:
    """Rebuild the generator stored in a state, on the device of `like`."""
    return generator_from_state(rng_state, like.device)


def warn_nonfinite_start(energy: torch.Tensor, grad: torch.Tensor | None, name: str) -> None:
    """Log a warning when some chains start at a non-finite energy (or gradient).

    Gradient-based kernels cannot leave such a point: every proposal from it is rejected.
    """
    bad = ~torch.isfinite(energy)
    if grad is not None:
        bad = bad | ~torch.isfinite(grad.reshape(grad.shape[0], -1)).all(-1)
    n_bad = int(bad.sum())
    if n_bad:
        logger.warning(
            "%s: %d of %d chains start at a non-finite energy or gradient", name, n_bad, bad.numel()
        )


def like(value: float | torch.Tensor, x: torch.Tensor) -> float | torch.Tensor:
    """A hyper-parameter (float or tensor) on `x`'s dtype and device, so that tensor step
    sizes and masses never promote float32 chains to float64."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype=x.dtype, device=x.device)
    return value
