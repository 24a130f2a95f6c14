r"""Molecular dynamics on reduced energies, including a flow's potential $-\log q(x)$.

A trained flow defines the potential $u_q(x) = -\log q(x)$ (kT) with forces
$\nabla_x \log q(x)$; Köhler, Krämer & Noé 2021 ("Smooth Normalizing Flows", NeurIPS)
run MD on it, which requires a C∞ flow: a spline flow's forces jump at its knots (and at ReLU
kinks of its conditioner), and each jump injects an energy error that a symplectic integrator
cannot undo, so the total energy drifts.

Reduced units: energies in kT, positions in the target's length unit $L$, time in
$\tau$, masses in kT·τ²/L², velocities in L/τ; at the reference temperature `kT = 1`
the Maxwell-Boltzmann velocities are $v \sim \mathcal N(0, kT/m)$.

* [`velocity_verlet`][boltzflow.dynamics.velocity_verlet] -- NVE, symplectic and time-reversible
  (Swope et al. 1982); for a smooth potential the total energy error stays bounded, $O(\Delta t^2)$,
  with no drift (Hairer, Lubich & Wanner, *Geometric Numerical Integration*).
* [`langevin`][boltzflow.dynamics.langevin] -- BAOAB splitting of underdamped Langevin dynamics
  (Leimkuhler & Matthews 2013, Appl. Math. Res. Express), friction $\gamma$ in 1/τ.
* [`energy_drift`][boltzflow.dynamics.energy_drift] -- the slope of the total energy, per $10^4$
  steps.

Periodic coordinates (a `periodic` mask) are wrapped into $[-\pi, \pi)$ after each
position update.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from boltzflow.energies.base import Energy

__all__ = [
    "FlowPotential",
    "Trajectory",
    "EnergyDrift",
    "potential_and_force",
    "maxwell_boltzmann",
    "kinetic",
    "VerletStep",
    "BAOABStep",
    "verlet_step",
    "baoab_step",
    "velocity_verlet",
    "langevin",
    "energy_drift",
]


class FlowPotential(Energy):
    r"""The flow's potential $u_q(x) = -\log q(x)$ in kT, as an
    [`Energy`][boltzflow.energies.base.Energy].

    Its `force` is $\nabla_x \log q(x)$; `log_z = 0` because $q$ is normalised.
    """

    log_z = 0.0

    def __init__(self, flow):
        super().__init__(flow.event_shape)
        self.flow = flow

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        return -self.flow.log_prob(x)


class Trajectory(NamedTuple):
    """Recorded frames: `x [frames, batch, *event]`, `v` likewise, `potential` and
    `kinetic` `[frames, batch]` (kT), `steps [frames]` (integration step of each frame)."""

    x: torch.Tensor
    v: torch.Tensor
    potential: torch.Tensor
    kinetic: torch.Tensor
    steps: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        """Total energy `potential + kinetic` `[frames, batch]` (kT)."""
        return self.potential + self.kinetic


class EnergyDrift(NamedTuple):
    """Total-energy drift over NVE trajectories (kT per `per_steps` steps).

    Attributes:
        rms: root mean square over trajectories of the least-squares slope.
        mean, stderr: mean slope and its standard error.
        fluctuation: mean standard deviation of the detrended total energy (kT).
        n_trajectories, n_nonfinite: trajectories used and dropped (non-finite energies).
    """

    rms: float
    mean: float
    stderr: float
    fluctuation: float
    n_trajectories: int
    n_nonfinite: int


def potential_and_force(energy, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(u(x), -∂u/∂x)` from one energy evaluation and one backward pass, both detached."""
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        u = energy.energy(xr) if hasattr(energy, "energy") else energy(xr)
        (grad,) = torch.autograd.grad(u.sum(), xr)
    return u.detach(), -grad


def maxwell_boltzmann(
    like: torch.Tensor, mass=1.0, kT: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Velocities `v ~ N(0, kT / m)` with the shape, dtype and device of `like`."""
    noise = torch.empty_like(like).normal_(generator=generator)
    return noise * torch.sqrt(kT / torch.as_tensor(mass, dtype=like.dtype, device=like.device))


def kinetic(v: torch.Tensor, mass=1.0) -> torch.Tensor:
    r"""Kinetic energy $\tfrac12 \sum_i m_i v_i^2$ per configuration, `[batch]` (kT)."""
    return 0.5 * (mass * v * v).reshape(v.shape[0], -1).sum(-1)


class VerletStep(NamedTuple):
    """One velocity-Verlet step: new `x`, `v`, and `u(x)` (kT), `-∂u/∂x` there."""

    x: torch.Tensor
    v: torch.Tensor
    energy: torch.Tensor
    force: torch.Tensor


class BAOABStep(NamedTuple):
    r"""One BAOAB step: new `x`, `v`, `u(x)`, `-∂u/∂x` and the O step's `heat`
    $K(v_\text{after O}) - K(v_\text{before O})$ `[batch]` (kT)."""

    x: torch.Tensor
    v: torch.Tensor
    energy: torch.Tensor
    force: torch.Tensor
    heat: torch.Tensor


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def verlet_step(x, v, force, potential_force, dt, mass=1.0, wrap=_identity) -> VerletStep:
    r"""One velocity-Verlet step (B A B) from `(x, v)` with `force = -∂u/∂x` at `x`.

    `potential_force(x) -> (u, F)` is called once, at the new position. Nothing is
    detached here, so a differentiable `potential_force` (one that builds the graph of its
    force) makes the step differentiable in `x`, `v` and `dt` (stochastic flow blocks
    rely on this; `velocity_verlet` passes detached values).
    """
    v = v + 0.5 * dt * force / mass
    x = wrap(x + dt * v)
    u, force = potential_force(x)
    return VerletStep(x, v + 0.5 * dt * force / mass, u, force)


def baoab_step(
    x, v, force, potential_force, dt, decay, noise, kT=1.0, mass=1.0, wrap=_identity
) -> BAOABStep:
    r"""One BAOAB step of underdamped Langevin dynamics (Leimkuhler & Matthews 2013).

    B, A, then O: $v \leftarrow a v + \sqrt{(1-a^2)\,kT/m}\,\xi$ with
    $a$ = `decay` $= e^{-\gamma\Delta t}$ and `noise` $= \xi$, then A, B.
    The O step's kinetic-energy change is returned as `heat`; the B and A maps are
    volume preserving, so `heat` is what a path weight needs (Sivak, Chodera & Crooks 2013,
    Phys. Rev. X 3, 011007). Differentiable as `verlet_step`.
    """
    v = v + 0.5 * dt * force / mass
    x = wrap(x + 0.5 * dt * v)
    k_before = kinetic(v, mass)
    v = decay * v + ((1 - decay * decay) * kT / mass) ** 0.5 * noise
    heat = kinetic(v, mass) - k_before
    x = wrap(x + 0.5 * dt * v)
    u, force = potential_force(x)
    return BAOABStep(x, v + 0.5 * dt * force / mass, u, force, heat)


def _wrapper(periodic, like: torch.Tensor):
    if periodic is None:
        return _identity
    mask = torch.as_tensor(periodic, dtype=torch.bool, device=like.device)
    mask = mask.expand(like.shape[1:]) if mask.dim() == 0 else mask.reshape(like.shape[1:])
    return lambda x: torch.where(mask, torch.remainder(x + math.pi, 2 * math.pi) - math.pi, x)


class _Recorder:
    def __init__(self, every: int):
        self.every, self.frames = max(1, int(every)), []

    def __call__(self, step, x, v, u, mass):
        if step % self.every == 0:
            self.frames.append((step, x.clone(), v.clone(), u.clone(), kinetic(v, mass)))

    def trajectory(self) -> Trajectory:
        steps, xs, vs, us, ks = zip(*self.frames, strict=True)
        stack = torch.stack
        return Trajectory(stack(xs), stack(vs), stack(us), stack(ks), torch.tensor(steps))


def velocity_verlet(
    energy,
    x: torch.Tensor,
    v: torch.Tensor,
    dt: float,
    n_steps: int,
    mass=1.0,
    record_every: int = 1,
    periodic=None,
) -> Trajectory:
    r"""NVE velocity Verlet on `energy` (an [`Energy`][boltzflow.energies.base.Energy] or a callable
    `u(x)`, kT).

    $$
    v_{n+1/2} = v_n + \tfrac{\Delta t}{2m} F(x_n), \quad
    x_{n+1} = x_n + \Delta t\, v_{n+1/2}, \quad
    v_{n+1} = v_{n+1/2} + \tfrac{\Delta t}{2m} F(x_{n+1}).
    $$

    Args:
        energy: reduced potential; one evaluation (energy + force) per step.
        x, v: initial positions and velocities `[batch, *event_shape]`.
        dt: time step (τ); n_steps: number of steps.
        mass: scalar or tensor broadcastable to `x` (kT·τ²/L²).
        record_every: frame stride (frames at steps `0, k, 2k, …`).
        periodic: optional bool mask over the event of angles wrapped into $[-\pi, \pi)$.

    Returns:
        [`Trajectory`][boltzflow.dynamics.Trajectory].
    """
    wrap, rec = _wrapper(periodic, x), _Recorder(record_every)
    x, v = wrap(x.detach()), v.detach().clone()
    u, f = potential_and_force(energy, x)
    rec(0, x, v, u, mass)
    pf = lambda y: potential_and_force(energy, y)  # noqa: E731
    for step in range(1, int(n_steps) + 1):
        x, v, u, f = verlet_step(x, v, f, pf, dt, mass, wrap)
        rec(step, x, v, u, mass)
    return rec.trajectory()


def langevin(
    energy,
    x: torch.Tensor,
    dt: float,
    n_steps: int,
    friction: float = 1.0,
    kT: float = 1.0,
    mass=1.0,
    v: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    record_every: int = 1,
    periodic=None,
) -> Trajectory:
    r"""Underdamped Langevin dynamics by BAOAB (Leimkuhler & Matthews 2013).

    B: $v \mathrel{+}= \tfrac{\Delta t}{2m}F$; A: $x \mathrel{+}= \tfrac{\Delta t}2 v$;
    O: $v \leftarrow e^{-\gamma\Delta t} v + \sqrt{(1-e^{-2\gamma\Delta t})\,kT/m}\;\xi$;
    then A, B. Samples $\exp(-u/kT)$ with $O(\Delta t^2)$ configurational bias.
    `kT` is the temperature in units of the energy's kT (1 = the reference temperature).

    Args:
        energy, x, dt, n_steps, mass, record_every, periodic: as in
            [`velocity_verlet`][boltzflow.dynamics.velocity_verlet].
        friction: $\gamma$ (1/τ).
        v: initial velocities (default: Maxwell-Boltzmann from `generator`).
        generator: explicit randomness for the velocities and the O step.

    Returns:
        [`Trajectory`][boltzflow.dynamics.Trajectory].
    """
    wrap, rec = _wrapper(periodic, x), _Recorder(record_every)
    x = wrap(x.detach())
    v = maxwell_boltzmann(x, mass, kT, generator) if v is None else v.detach().clone()
    decay = math.exp(-friction * dt)
    m = torch.as_tensor(mass, dtype=x.dtype, device=x.device)
    pf = lambda y: potential_and_force(energy, y)  # noqa: E731
    u, f = potential_and_force(energy, x)
    rec(0, x, v, u, mass)
    for step in range(1, int(n_steps) + 1):
        noise = torch.empty_like(v).normal_(generator=generator)
        x, v, u, f, _ = baoab_step(x, v, f, pf, dt, decay, noise, kT, m, wrap)
        rec(step, x, v, u, mass)
    return rec.trajectory()


def energy_drift(trajectory: Trajectory, per_steps: int = 10_000) -> EnergyDrift:
    r"""Least-squares slope of the total energy against the step, in kT per `per_steps` steps.

    Each trajectory's slope $\hat b_j$ is fitted to its recorded frames; `rms` is
    $\sqrt{\overline{\hat b_j^2}}$ (systematic and random-walk drift alike), `mean` and
    `stderr` the average and its standard error. Trajectories with a non-finite energy are
    dropped and counted.
    """
    total = trajectory.total.to(torch.float64)
    ok = torch.isfinite(total).all(0)
    e = total[:, ok]
    t = trajectory.steps.to(torch.float64).unsqueeze(1)
    tc = t - t.mean()
    slope = (tc * (e - e.mean(0))).sum(0) / (tc * tc).sum()
    resid = e - e.mean(0) - tc * slope
    n = int(ok.sum())
    b = slope * per_steps
    stderr = float(b.std() / math.sqrt(n)) if n > 1 else math.nan
    return EnergyDrift(
        rms=float(torch.sqrt((b * b).mean())) if n else math.nan,
        mean=float(b.mean()) if n else math.nan,
        stderr=stderr,
        fluctuation=float(resid.std(0).mean()) if n else math.nan,
        n_trajectories=n,
        n_nonfinite=int((~ok).sum()),
    )
