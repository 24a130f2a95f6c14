r"""Metropolis-adjusted Langevin algorithm (MALA).

Proposal (one Euler–Maruyama step of overdamped Langevin dynamics with time step `τ`):

$$
x' = x - \tau\,\nabla u(x) + \sqrt{2\tau}\,\xi, \qquad \xi \sim \mathcal N(0, I),
$$

so $\log q(x' \mid x) = -\lVert x' - x + \tau \nabla u(x) \rVert^2 / (4\tau) + c$, and the
asymmetric correction is

$$
\log q_{ratio} = \log q(x \mid x') - \log q(x' \mid x)
= \frac{\lVert x' - x + \tau\nabla u(x)\rVert^2
        - \lVert x - x' + \tau\nabla u(x')\rVert^2}{4\tau}.
$$

Reference: Roberts & Tweedie (1996), "Exponential convergence of Langevin distributions and their
discrete approximations", Bernoulli 2, 341. Cost per step: one energy and gradient evaluation
per chain (the gradient at the current point is cached in the state).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from boltzflow.energies.base import Energy
from boltzflow.sampling.base import StepInfo
from boltzflow.sampling.kernels.mh import (
    Proposal,
    energy_and_grad,
    generator_for,
    like,
    mh_update,
    start_generator,
    warn_nonfinite_start,
)

__all__ = ["GradientState", "MALA"]


class GradientState(NamedTuple):
    """State of gradient-based kernels (MALA, HMC): positions `x [chains, *event]`, reduced
    energies `u [chains]` (kT), RNG state, and the cached gradient `∂u/∂x` (shape of `x`).
    """

    x: torch.Tensor
    energy: torch.Tensor
    rng_state: torch.Tensor
    grad: torch.Tensor


def _sum_event(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).sum(-1)


class MALA:
    r"""MALA kernel `x' = x - τ ∇u(x) + √(2τ) ξ` with the Metropolis–Hastings correction.

    Args:
        target: the [`Energy`][boltzflow.energies.base.Energy] `u` (kT), differentiable in `x`.
        step_size: `τ > 0` (units of `x`², per kT). A float, or a tensor broadcastable to
            `[chains, 1, ...]` for per-chain step sizes.

    `Info.log_weight` is zero (no importance weight is defined for a local kernel).
    """

    State = GradientState

    def __init__(self, target: Energy, step_size: float | torch.Tensor):
        if isinstance(step_size, (int, float)) and not (step_size > 0 and math.isfinite(step_size)):
            raise ValueError(f"step_size must be positive and finite, got {step_size}")
        self.target = target
        self.step_size = step_size

    def init(self, x0: torch.Tensor, seed: int | torch.Generator | None = None) -> GradientState:
        """Start chains at `x0 [chains, *event]` (one energy + gradient evaluation)."""
        g = start_generator(x0, seed)
        u, grad = energy_and_grad(self.target, x0)
        warn_nonfinite_start(u, grad, type(self).__name__)
        return GradientState(x0.detach(), u, g.get_state(), grad)

    def adopt(self, state) -> GradientState:
        """Take over a state with `x`, `energy`, `rng_state`; reuses a cached `grad`
        (also from inside a [`MixtureState`][boltzflow.sampling.kernels.MixtureState])."""
        state = getattr(state, "inner", state)
        if isinstance(state, GradientState):
            return state
        u, grad = energy_and_grad(self.target, state.x)
        return GradientState(state.x, u, state.rng_state, grad)

    def propose(self, state: GradientState, generator: torch.Generator) -> Proposal:
        """Langevin proposal with the asymmetric `log_q_ratio` (module docstring)."""
        x = state.x
        tau = like(self.step_size, x)
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x_new = x - tau * state.grad + math.sqrt(2.0) * (tau**0.5) * noise
        u_new, grad_new = energy_and_grad(self.target, x_new)
        fwd = x_new - x + tau * state.grad  # = sqrt(2 tau) * noise
        bwd = x - x_new + tau * grad_new
        log_q_ratio = _sum_event(fwd * fwd - bwd * bwd) / (4.0 * _tau_per_chain(tau, x))
        return Proposal(x_new, log_q_ratio, u_new, grad_new)

    def step(self, state: GradientState) -> tuple[GradientState, StepInfo]:
        """One Langevin proposal per chain, accepted by `mh_update`."""
        g = generator_for(state.rng_state, state.x)
        new = mh_update(state.x, state.energy, state.grad, self.propose(state, g), g)
        info = StepInfo(new.accepted, new.acceptance_prob, new.energy, torch.zeros_like(new.energy))
        return GradientState(new.x, new.energy, g.get_state(), new.cache), info


def _tau_per_chain(tau: float | torch.Tensor, x: torch.Tensor) -> float | torch.Tensor:
    """The step size as a scalar or a `[chains]` tensor (for per-chain step sizes)."""
    if isinstance(tau, torch.Tensor) and tau.numel() > 1:
        return tau.reshape(x.shape[0], -1)[:, 0]
    return float(tau)
