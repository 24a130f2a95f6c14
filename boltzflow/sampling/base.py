r"""Kernel contract and the one Metropolis–Hastings acceptance used by every sampler.

A kernel is a pair `init(x0) -> State` and `step(state) -> (State, Info)` over small
immutable records (blackjax style). `x0` is `Tensor[chains, *event_shape]`: chains are
always batched. A state carries the RNG state (`rng_state`, from
`torch.Generator.get_state()`; generators come from [`boltzflow.rng`][boltzflow.rng]) so that a
resumed chain continues bit-for-bit.

Proposals return `(x_new, log_q_ratio)` with
`log_q_ratio = log q(x_old | x_new) - log q(x_new | x_old)`, and
[`metropolis_hastings_accept`][boltzflow.metropolis.metropolis_hastings_accept] does the rest
(Metropolis et al. 1953; Hastings 1970). The rule itself lives in `boltzflow.metropolis`
(shared with the stochastic-flow blocks) and is re-exported here.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch

from boltzflow.metropolis import log_acceptance_ratio, metropolis_hastings_accept

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
