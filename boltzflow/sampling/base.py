r"""Kernel contract and the one Metropolis–Hastings acceptance used by every sampler.

A kernel is a pair `init(x0) -> State` and `step(state) -> (State, Info)` over small
immutable records (blackjax style). `x0` is `Tensor[chains, *event_shape]`: chains are
always batched. A state carries the RNG state (`rng_state`, from
`torch.Generator.get_state()`; generators come from [`boltzflow.rng`][boltzflow.rng]) so that a
resumed chain continues bit-for-bit.

Proposals return `(x_new, log_q_ratio)` with
`log_q_ratio = log q(x_old | x_new) - log q(x_new | x_old)`, and
[`metropolis_hastings_accept`][boltzflow.sampling.base.metropolis_hastings_accept] does the rest
(Metropolis et al. 1953; Hastings 1970).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch

__all__ = [
    "Kernel",
    "ChainState",
    "StepInfo",
    "log_acceptance_ratio",
    "metropolis_hastings_accept",
]


class ChainState(NamedTuple):
    """Minimal chain state: positions `x [chains, *event]`, energies `u [chains]`, RNG state.

    Kernels may define richer states (e.g. with gradients) with at least these fields.
    """

    x: torch.Tensor
    energy: torch.Tensor
    rng_state: torch.Tensor


class StepInfo(NamedTuple):
    """Per-step diagnostics, each `Tensor[chains]`: acceptance flag and probability, energy,
    and the importance log-weight of the current state where one is defined (else NaN-free zeros).
    """

    accepted: torch.Tensor
    acceptance_prob: torch.Tensor
    energy: torch.Tensor
    log_weight: torch.Tensor


class Kernel(Protocol):
    """Anything with `init(x0) -> State` and `step(state) -> (State, Info)`."""

    def init(self, x0: torch.Tensor, seed: int | None = None): ...

    def step(self, state): ...


def log_acceptance_ratio(
    energy_old: torch.Tensor, energy_new: torch.Tensor, log_q_ratio: torch.Tensor | float = 0.0
) -> torch.Tensor:
    r"""`log α = -(u_new - u_old) + log q_ratio`, with non-finite proposals mapped to `-inf`.

    A non-finite proposed energy (NaN, `+inf` or `-inf`) is never accepted, and a NaN
    `log_q_ratio` rejects. A chain whose current energy is non-finite (NaN or `+inf`, e.g.
    a bad starting point) accepts any proposal with finite energy and finite `log_q_ratio`,
    so it can escape. NaN is never produced.
    """
    energy_old = torch.as_tensor(energy_old)
    energy_new = torch.as_tensor(energy_new)
    neg_inf = torch.tensor(-torch.inf, dtype=energy_new.dtype, device=energy_new.device)
    # a non-finite current energy is treated as +inf: any finite proposal is an improvement
    energy_old = torch.where(
        torch.isfinite(energy_old), energy_old, torch.full_like(energy_old, torch.inf)
    )
    log_alpha = energy_old - energy_new + log_q_ratio
    log_alpha = torch.where(torch.isfinite(energy_new), log_alpha, neg_inf)
    return torch.where(torch.isnan(log_alpha), neg_inf, log_alpha)


def metropolis_hastings_accept(
    log_alpha: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Accept each chain with probability $\min(1, e^{\log\alpha})$.

    Returns `(accepted: BoolTensor[chains], acceptance_prob: Tensor[chains])`. NaN
    `log_alpha` is treated as `-inf` (reject).
    """
    log_alpha = torch.where(
        torch.isnan(log_alpha), torch.full_like(log_alpha, -torch.inf), log_alpha
    )
    u = torch.rand(
        log_alpha.shape, generator=generator, dtype=log_alpha.dtype, device=log_alpha.device
    )
    accepted = torch.log(u) < log_alpha
    return accepted, torch.exp(torch.clamp(log_alpha, max=0.0))
