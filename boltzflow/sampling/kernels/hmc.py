r"""Hamiltonian Monte Carlo with a leapfrog integrator (optionally on a torus).

With a diagonal mass `m` the Hamiltonian is $H(x, p) = u(x) + \tfrac12 p^\top M^{-1} p$.
Each step draws $p \sim \mathcal N(0, M)$, integrates `n_leapfrog` leapfrog steps of
size `ε`

$$
p_{1/2} = p - \tfrac{ε}{2}\nabla u(x), \quad x' = x + ε M^{-1} p_{1/2}, \quad
p' = p_{1/2} - \tfrac{ε}{2}\nabla u(x'),
$$

and accepts with probability $\min(1, e^{-H(x', p') + H(x, p)})$. The leapfrog map is
volume preserving and reversible, so the momentum terms play the role of `log_q_ratio`
(`log_q_ratio = K(p) - K(p')`) in the shared Metropolis–Hastings rule. The energy error is
$O(ε^2)$ over a fixed trajectory length.

For periodic coordinates (torsions, lattice links on $[-π, π)$) pass `wrap`: a
callable applied to positions after each drift, or a period `L` that maps onto
$[-L/2, L/2)$. Wrapping commutes with the dynamics of a periodic `u`, so the
integrator stays volume preserving and reversible on the torus.

References: Duane, Kennedy, Pendleton & Roweth (1987), "Hybrid Monte Carlo", Phys. Lett. B
195, 216; Neal (2011), "MCMC using Hamiltonian dynamics", Handbook of MCMC, ch. 5.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from boltzflow.energies.base import Energy
from boltzflow.sampling.base import StepInfo
from boltzflow.sampling.kernels.mala import GradientState
from boltzflow.sampling.kernels.mh import (
    EnergyAndGrad,
    Proposal,
    energy_and_grad,
    generator_for,
    like,
    mh_update,
    start_generator,
    warn_nonfinite_start,
)

__all__ = ["LeapfrogResult", "DenseMetric", "leapfrog", "torus_wrap", "kinetic_energy", "HMC"]

PositionMap = Callable[[torch.Tensor], torch.Tensor]


class LeapfrogResult(NamedTuple):
    """End point of a leapfrog trajectory: `x`, `p`, and `u(x)`, `∂u/∂x` at the end."""

    x: torch.Tensor
    p: torch.Tensor
    energy: torch.Tensor
    grad: torch.Tensor


class DenseMetric:
    r"""A dense inverse mass matrix $M^{-1} = \Sigma$ for flat events `[chains, d]`.

    Choosing $\Sigma$ close to the target's covariance makes the dynamics isotropic in
    the whitened coordinates $L^{-1}x$ ($\Sigma = LL^\top$), so one step size suits
    every direction of a correlated posterior (Neal 2011, §4.1; Stan's dense metric). Momenta are
    $p = L^{-\top}\xi \sim \mathcal N(0, M)$, velocities $\dot x = \Sigma p$, and
    $K(p) = \tfrac12\lVert L^\top p\rVert^2$.

    Args:
        inv_mass: symmetric positive-definite `[d, d]` tensor $\Sigma$.
    """

    def __init__(self, inv_mass: torch.Tensor):
        inv_mass = torch.as_tensor(inv_mass)
        if inv_mass.ndim != 2 or inv_mass.shape[0] != inv_mass.shape[1]:
            raise ValueError(f"inv_mass must be a square matrix, got shape {tuple(inv_mass.shape)}")
        chol, info = torch.linalg.cholesky_ex(inv_mass)
        if int(info) != 0 or not bool(torch.isfinite(chol).all()):
            raise ValueError("inv_mass must be symmetric positive definite")
        self.inv_mass, self.chol = inv_mass, chol

    def to(self, x: torch.Tensor) -> DenseMetric:
        """This metric on `x`'s dtype and device."""
        if self.inv_mass.dtype == x.dtype and self.inv_mass.device == x.device:
            return self
        return DenseMetric(self.inv_mass.to(dtype=x.dtype, device=x.device))

    def velocity(self, p: torch.Tensor) -> torch.Tensor:
        r"""$\Sigma p$ for `p [chains, d]`."""
        return p @ self.inv_mass

    def kinetic(self, p: torch.Tensor) -> torch.Tensor:
        r"""$\tfrac12 p^\top\Sigma p$, shape `[chains]`."""
        return 0.5 * (p @ self.chol).square().sum(-1)

    def momentum(self, noise: torch.Tensor) -> torch.Tensor:
        r"""$p = L^{-\top}\xi$ for standard normal `noise [chains, d]`."""
        return torch.linalg.solve_triangular(self.chol, noise, upper=False, left=False)


def torus_wrap(x: torch.Tensor, period: float = 2 * math.pi) -> torch.Tensor:
    r"""Map `x` onto $[-L/2, L/2)$ with period `L` (default $[-π, π)$)."""
    half = 0.5 * period
    return torch.remainder(x + half, period) - half


def kinetic_energy(
    p: torch.Tensor, inv_mass: float | torch.Tensor | DenseMetric = 1.0
) -> torch.Tensor:
    r"""`K(p) = ½ pᵀ M⁻¹ p` summed over the event dims, shape `[chains]`."""
    if isinstance(inv_mass, DenseMetric):
        return inv_mass.kinetic(p)
    return 0.5 * (p * p * inv_mass).reshape(p.shape[0], -1).sum(-1)


def leapfrog(
    x: torch.Tensor,
    p: torch.Tensor,
    grad: torch.Tensor,
    step_size: float | torch.Tensor,
    n_steps: int,
    grad_fn: Callable[[torch.Tensor], EnergyAndGrad],
    inv_mass: float | torch.Tensor | DenseMetric = 1.0,
    wrap: PositionMap | None = None,
) -> LeapfrogResult:
    r"""Integrate `n_steps` leapfrog (velocity Verlet) steps of `H = u + ½ pᵀM⁻¹p`.

    Args:
        x, p: positions and momenta `[chains, *event]`.
        grad: `∂u/∂x` at `x` (reused, not recomputed).
        step_size: `ε`; a float or a tensor broadcastable to `x` (per-chain sizes).
        n_steps: number of leapfrog steps (`n_steps` gradient evaluations).
        grad_fn: `x -> (u, ∂u/∂x)`, e.g. `functools.partial(energy_and_grad, target)`.
        inv_mass: diagonal inverse mass, a float or a tensor broadcastable to `x`, or a
            [`DenseMetric`][boltzflow.sampling.kernels.DenseMetric].
        wrap: optional map applied to positions after every drift (torus coordinates).

    Returns:
        [`LeapfrogResult`][boltzflow.sampling.kernels.LeapfrogResult] with the end point and `u`,
        `∂u/∂x` there.
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    u = None
    for _ in range(n_steps):
        p = p - 0.5 * step_size * grad
        v = inv_mass.velocity(p) if isinstance(inv_mass, DenseMetric) else inv_mass * p
        x = x + step_size * v
        if wrap is not None:
            x = wrap(x)
        u, grad = grad_fn(x)
        p = p - 0.5 * step_size * grad
    return LeapfrogResult(x, p, u, grad)


def _as_wrap(wrap: PositionMap | float | None) -> PositionMap | None:
    if wrap is None or callable(wrap):
        return wrap
    period = float(wrap)
    if not (period > 0 and math.isfinite(period)):
        raise ValueError(f"wrap period must be positive and finite, got {wrap}")
    return lambda x: torus_wrap(x, period)


class HMC:
    r"""Hamiltonian Monte Carlo kernel with a fixed number of leapfrog steps.

    Args:
        target: the [`Energy`][boltzflow.energies.base.Energy] `u` (kT), differentiable in `x`.
        step_size: leapfrog step `ε` (float, or a tensor broadcastable to `[chains, 1, ...]`).
        n_leapfrog: leapfrog steps per proposal (`n_leapfrog` energy + gradient evaluations).
        mass: diagonal mass, a float or a tensor broadcastable to `event_shape`; or a
            [`DenseMetric`][boltzflow.sampling.kernels.DenseMetric] (its inverse mass matrix, for
            flat events `[chains, d]`).
        wrap: `None`, a callable applied to positions after each drift, or a period `L`
            (positions are kept in $[-L/2, L/2)$; use `2π` for angles and lattice links).
        jitter: each step and chain uses $ε(1 + j\,(2v - 1))$, $v \sim U(0, 1)$
            from the chain's RNG (Neal 2011, §5.4.2.2). A random step independent of the state
            keeps detailed balance and breaks the periodic trajectories a fixed $ε L$ can
            hit on near-Gaussian targets.

    `Info.log_weight` is zero (no importance weight is defined for a local kernel).
    """

    State = GradientState

    def __init__(
        self,
        target: Energy,
        step_size: float | torch.Tensor,
        n_leapfrog: int,
        mass: float | torch.Tensor | DenseMetric = 1.0,
        wrap: PositionMap | float | None = None,
        jitter: float = 0.0,
    ):
        if not 0.0 <= float(jitter) < 1.0:
            raise ValueError(f"jitter must be in [0, 1), got {jitter}")
        if isinstance(step_size, (int, float)) and not (step_size > 0 and math.isfinite(step_size)):
            raise ValueError(f"step_size must be positive and finite, got {step_size}")
        if int(n_leapfrog) < 1:
            raise ValueError(f"n_leapfrog must be >= 1, got {n_leapfrog}")
        if not isinstance(mass, DenseMetric) and not bool(torch.all(torch.as_tensor(mass) > 0)):
            raise ValueError(f"mass must be positive, got {mass}")
        self.target = target
        self.step_size = step_size
        self.n_leapfrog = int(n_leapfrog)
        self.mass = mass
        self.wrap = _as_wrap(wrap)
        self.jitter = float(jitter)

    def _grad_fn(self, x: torch.Tensor) -> EnergyAndGrad:
        return energy_and_grad(self.target, x)

    def init(self, x0: torch.Tensor, seed: int | torch.Generator | None = None) -> GradientState:
        """Start chains at `x0 [chains, *event]` (wrapped if a torus; one evaluation)."""
        if self.wrap is not None:
            x0 = self.wrap(x0)
        g = start_generator(x0, seed)
        u, grad = self._grad_fn(x0)
        warn_nonfinite_start(u, grad, type(self).__name__)
        return GradientState(x0.detach(), u, g.get_state(), grad)

    def adopt(self, state) -> GradientState:
        """Take over a state with `x`, `energy`, `rng_state`; reuses a cached `grad`
        (also from inside a [`MixtureState`][boltzflow.sampling.kernels.MixtureState])."""
        state = getattr(state, "inner", state)
        if isinstance(state, GradientState):
            return state
        u, grad = self._grad_fn(state.x)
        return GradientState(state.x, u, state.rng_state, grad)

    def kinetic(
        self, p: torch.Tensor, inv_mass: float | torch.Tensor | DenseMetric
    ) -> torch.Tensor:
        r"""`K(p) = ½ pᵀ M⁻¹ p` per chain, as it enters the acceptance (`[chains]`).

        The one place [`propose`][boltzflow.sampling.kernels.HMC.propose] evaluates the kinetic
        energy; the dynamics use `inv_mass` directly. A subclass that overrides it changes only the
        Hamiltonian in the acceptance test (the calibration tests use such a subclass as a wrong
        kernel that must be caught).
        """
        return kinetic_energy(p, inv_mass)

    def propose(self, state: GradientState, generator: torch.Generator) -> Proposal:
        """Draw `p ~ N(0, M)`, integrate; `log_q_ratio = K(p) - K(p')`.

        `exp(-H' + H) = exp(u - u') · exp(K(p) - K(p'))`: the leapfrog map is volume
        preserving and reversible, so the kinetic terms are the whole proposal correction.
        """
        x = state.x
        eps = like(self.step_size, x)
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        if self.jitter > 0:
            shape = (x.shape[0],) + (1,) * (x.ndim - 1)
            v = torch.rand(shape, generator=generator, dtype=x.dtype, device=x.device)
            eps = eps * (1.0 + self.jitter * (2.0 * v - 1.0))
        if isinstance(self.mass, DenseMetric):
            inv_mass = self.mass.to(x)
            p0 = inv_mass.momentum(noise)
        else:
            mass = like(self.mass, x)
            p0, inv_mass = noise * (mass**0.5), 1.0 / mass
        end = leapfrog(x, p0, state.grad, eps, self.n_leapfrog, self._grad_fn, inv_mass, self.wrap)
        log_q_ratio = self.kinetic(p0, inv_mass) - self.kinetic(end.p, inv_mass)
        return Proposal(end.x, log_q_ratio, end.energy, end.grad)

    def step(self, state: GradientState) -> tuple[GradientState, StepInfo]:
        """Resample momenta, integrate, accept on `ΔH` via `mh_update`."""
        g = generator_for(state.rng_state, state.x)
        new = mh_update(state.x, state.energy, state.grad, self.propose(state, g), g)
        info = StepInfo(new.accepted, new.acceptance_prob, new.energy, torch.zeros_like(new.energy))
        return GradientState(new.x, new.energy, g.get_state(), new.cache), info
