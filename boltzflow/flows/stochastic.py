r"""Stochastic blocks of stochastic normalizing flows (Wu, Köhler & Noé 2020, NeurIPS).

A stochastic normalizing flow (SNF) alternates invertible layers with sampling blocks. Block
$t$ maps $y_{t-1}$ to $y_t$ by a few steps of a Markov kernel $q_t(y_t \mid y_{t-1})$ that
targets the interpolated energy

$$u_\lambda(y) = (1 - \lambda)\,u_\text{prior}(y) + \lambda\,u_\text{target}(y) \quad [kT],$$

and returns, in the slot where a deterministic layer returns $\log|\det \partial y_t/\partial
y_{t-1}|$, the path log-weight increment

$$\delta_t = \log \tilde q_t(y_{t-1} \mid y_t) - \log q_t(y_t \mid y_{t-1}),$$

with $\tilde q_t$ the backward kernel. Summed with the log-dets of the layers, the sample's
$\log q = \log p_z(z) - \sum_t \delta_t$ is the log-density of the forward path relative to the
backward one, and $\log w = -u(x) - \log q$ is an exact importance weight of the end point:
$E_\text{path}[e^{\log w}] = Z$, with no marginalization of the noise (Crooks 1998; Wu et al.
2020, eq. 7). A stochastic flow has no marginal density $\log q(x)$, only these path weights.

Blocks (all use the backward kernel $\tilde q_t = q_t$):

* `MetropolisBlock` -- random-walk Metropolis, $y' = y + \sigma\xi$;
* `LangevinBlock` -- overdamped Langevin, $y' = y - \epsilon\nabla u_\lambda(y) +
  \sqrt{2\epsilon}\,\xi$, with (`metropolize=True`, MALA) or without a Metropolis correction;
* `UnderdampedLangevinBlock` -- BAOAB (`boltzflow.dynamics.baoab_step`) with velocities
  $v_0 \sim \mathcal N(0, 1)$ drawn at the start and discarded at the end;
* `HMCBlock` -- Hamiltonian Monte Carlo with velocity-Verlet trajectories
  (`boltzflow.dynamics.verlet_step`).

For a block in detailed balance with $e^{-u_\lambda}$ (every Metropolis-corrected block)
$\delta_t = u_\lambda(y_t) - u_\lambda(y_{t-1})$. Unadjusted overdamped Langevin gives
$\delta = \sum_k \big[\tfrac12|\xi_k|^2 - |y_{k-1} - y_k + \epsilon\nabla u_\lambda(y_k)|^2
/ (4\epsilon)\big]$, and BAOAB gives $\delta = \sum_\text{O steps}\Delta K + K(v_0) - K(v_K)$:
the heat of the O steps plus the velocity term (its B and A maps preserve volume).

Gradients. Positions are reparametrized: the proposals $y + \sigma\xi$ and the Langevin and
Verlet updates are differentiable in $y$, in the step size and in $\lambda$ (forces are built
with `create_graph`, so the reverse-KL gradient passes through the Langevin noise).
Accept/reject decisions pass no gradient: the accepted branch is selected with
`torch.where`, and the dependence of the acceptance probability on the parameters is ignored
(as in Wu et al. 2020). Every tensor a block creates (noise, uniforms, velocities) is drawn from
the caller's generator on the input's device and in its dtype. The accept/reject rule is the
one of `boltzflow.metropolis`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from boltzflow.dynamics import baoab_step, kinetic, verlet_step
from boltzflow.flows.base import Transform, TransformResult
from boltzflow.metropolis import log_acceptance_ratio, metropolis_hastings_accept

__all__ = [
    "StochasticBlock",
    "MetropolisBlock",
    "LangevinBlock",
    "UnderdampedLangevinBlock",
    "HMCBlock",
    "gaussian_prior_energy",
]


def gaussian_prior_energy(y: torch.Tensor) -> torch.Tensor:
    r"""Energy of the standard normal prior, $\tfrac12|y|^2$ (kT), shape `[batch]`."""
    return 0.5 * (y * y).reshape(y.shape[0], -1).sum(-1)


def _rows(mask: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.reshape(mask.shape + (1,) * (new.dim() - 1)), new, old)


def _sum_event(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).sum(-1)


def _accept(u_old, u_new, log_q_ratio, generator) -> torch.Tensor:
    """The shared MH rule on detached values: a boolean per row, no gradient."""
    la = log_acceptance_ratio(u_old.detach(), u_new.detach(), log_q_ratio)
    return metropolis_hastings_accept(la, generator)[0]


class StochasticBlock(Transform):
    r"""Base of the sampling blocks: the interpolated energy, $\lambda$ and the step size.

    Args:
        target: the target `Energy` $u_\text{target}$ (kT); it must be differentiable in $y$
            for the gradient-based blocks and for reverse-KL training.
        prior: callable $y \mapsto u_\text{prior}(y)$ `[batch]` (default: the standard normal
            energy `gaussian_prior_energy`); not evaluated when $\lambda = 1$ is fixed.
        lam: $\lambda \in [0, 1]$.
        step_size: the block's step ($\sigma$, $\epsilon$ or $\Delta t$), in units of $y$ (or
            time).
        n_steps: Markov steps per block.
        train_lambda: make $\lambda$ trainable (a logit); default: trainable when
            $0 < \lambda < 1$. A fixed $\lambda$ is kept exactly.
        train_step_size: make the step size trainable (its logarithm).

    Subclasses implement `_run(y, generator) -> (y, delta)`; `forward(z, generator)` returns
    `TransformResult(y, delta)` with $\delta$ the path log-weight increment `[batch]`.
    `inverse(x, generator)` samples the backward kernel and returns $-\delta$ of the forward
    path it represents; since every block uses $\tilde q = q$ this is the same computation.
    """

    stochastic = True

    def __init__(
        self,
        target,
        prior=None,
        lam: float = 1.0,
        step_size: float = 0.1,
        n_steps: int = 1,
        train_lambda: bool | None = None,
        train_step_size: bool = True,
    ):
        super().__init__()
        lam, step_size = float(lam), float(step_size)
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lambda must lie in [0, 1], got {lam}")
        if not (step_size > 0 and math.isfinite(step_size)):
            raise ValueError(f"step_size must be positive and finite, got {step_size}")
        if int(n_steps) < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}")
        self.__dict__["target"] = target  # an Energy, not a submodule: never cast or saved
        self.prior = gaussian_prior_energy if prior is None else prior
        self.n_steps = int(n_steps)
        if train_lambda is None:
            train_lambda = 0.0 < lam < 1.0
        self._target_only = not train_lambda and lam == 1.0
        if train_lambda:
            lam = min(max(lam, 1e-6), 1 - 1e-6)
            self.lambda_logit = nn.Parameter(torch.tensor(math.log(lam / (1 - lam))))
        else:
            self.register_buffer("lambda_fixed", torch.tensor(lam))
        log_step = torch.tensor(math.log(step_size))
        if train_step_size:
            self.log_step_size = nn.Parameter(log_step)
        else:
            self.register_buffer("log_step_size", log_step)

    @property
    def lam(self) -> torch.Tensor:
        r"""$\lambda$ (a 0-d tensor, differentiable when trainable)."""
        if hasattr(self, "lambda_logit"):
            return torch.sigmoid(self.lambda_logit)
        return self.lambda_fixed

    @property
    def step_size(self) -> torch.Tensor:
        """The step size (a 0-d tensor, differentiable when trainable)."""
        return self.log_step_size.exp()

    def energy(self, y: torch.Tensor) -> torch.Tensor:
        r"""$u_\lambda(y)$ `[batch]` (kT); one target evaluation per row."""
        u = self.target.energy(y)
        if self._target_only:
            return u
        lam = self.lam.to(u.dtype)
        return (1 - lam) * self.prior(y) + lam * u

    def energy_and_force(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""$(u_\lambda(y), -\nabla u_\lambda(y))$. With grad mode on, the force keeps its graph
        (`create_graph`), so updates built from it are differentiable; otherwise both are
        detached."""
        track = torch.is_grad_enabled()
        with torch.enable_grad():
            yr = y if (track and y.requires_grad) else y.detach().requires_grad_(True)
            u = self.energy(yr)
            (g,) = torch.autograd.grad(u.sum(), yr, create_graph=track)
        if not track:
            return u.detach(), -g.detach()
        return u, -g

    def _noise(self, like: torch.Tensor, generator) -> torch.Tensor:
        return torch.empty_like(like).normal_(generator=generator)

    def _run(self, y, generator):  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, z: torch.Tensor, generator: torch.Generator | None = None):
        """Run the block from `z`: `(y, δ)` with δ the path log-weight increment."""
        return TransformResult(*self._run(z, generator))

    def inverse(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Sample the backward kernel from `x`: `(y, -δ)` of the forward path it stands for."""
        return TransformResult(*self._run(x, generator))

    def extra_repr(self) -> str:
        lam, step = float(self.lam.detach()), float(self.step_size.detach())
        return f"lambda={lam:.3g}, step_size={step:.3g}, n_steps={self.n_steps}"


class MetropolisBlock(StochasticBlock):
    r"""Random-walk Metropolis steps $y' = y + \sigma\xi$ on $e^{-u_\lambda}$.

    $\delta = u_\lambda(y_K) - u_\lambda(y_0)$ (detailed balance). `periodic`: an optional
    bool mask (or `True`) of coordinates kept in $[-\pi, \pi)$; the proposal stays symmetric
    on the torus. Cost: `n_steps + 1` target evaluations per row.
    """

    def __init__(
        self, target, prior=None, lam=1.0, step_size=0.25, n_steps=10, periodic=None, **kw
    ):
        super().__init__(target, prior, lam, step_size, n_steps, **kw)
        if periodic is not None and periodic is not False:
            self.register_buffer("periodic", torch.as_tensor(periodic, dtype=torch.bool))
        else:
            self.periodic = None

    def _wrap(self, y):
        if self.periodic is None:
            return y
        wrapped = torch.remainder(y + math.pi, 2 * math.pi) - math.pi
        mask = self.periodic.reshape(y.shape[1:]) if self.periodic.dim() else self.periodic
        return torch.where(mask, wrapped, y)

    def _run(self, y, generator):
        u = u0 = self.energy(y)
        sigma = self.step_size.to(y.dtype)
        for _ in range(self.n_steps):
            prop = self._wrap(y + sigma * self._noise(y, generator))
            u_new = self.energy(prop)
            acc = _accept(u, u_new, 0.0, generator)
            y, u = _rows(acc, prop, y), torch.where(acc, u_new, u)
        return y, u - u0


class LangevinBlock(StochasticBlock):
    r"""Overdamped Langevin steps $y' = y - \epsilon\nabla u_\lambda(y) + \sqrt{2\epsilon}\,\xi$.

    Without correction (`metropolize=False`) each step adds

    $$
    \log\tilde q - \log q = \tfrac12|\xi|^2
    - |y - y' + \epsilon\nabla u_\lambda(y')|^2/(4\epsilon);
    $$

    with it (MALA, Roberts & Tweedie 1996) the same ratio enters the acceptance and
    $\delta = u_\lambda(y_K) - u_\lambda(y_0)$. Cost: `n_steps + 1` energies and gradients.
    """

    def __init__(
        self, target, prior=None, lam=1.0, step_size=0.01, n_steps=10, metropolize=False, **kw
    ):
        super().__init__(target, prior, lam, step_size, n_steps, **kw)
        self.metropolize = bool(metropolize)

    def _run(self, y, generator):
        u, f = self.energy_and_force(y)
        u0, delta = u, torch.zeros_like(u)
        eps = self.step_size.to(y.dtype)
        for _ in range(self.n_steps):
            xi = self._noise(y, generator)
            prop = y + eps * f + torch.sqrt(2 * eps) * xi
            u_new, f_new = self.energy_and_force(prop)
            back = y - prop - eps * f_new
            log_ratio = 0.5 * _sum_event(xi * xi) - _sum_event(back * back) / (4 * eps)
            if self.metropolize:
                acc = _accept(u, u_new, log_ratio.detach(), generator)
                y, u, f = _rows(acc, prop, y), torch.where(acc, u_new, u), _rows(acc, f_new, f)
            else:
                y, u, f, delta = prop, u_new, f_new, delta + log_ratio
        return y, (u - u0) if self.metropolize else delta


class UnderdampedLangevinBlock(StochasticBlock):
    r"""BAOAB Langevin dynamics with unit masses, velocities as auxiliary variables.

    $v_0 \sim \mathcal N(0, I)$, then `n_steps` steps of `boltzflow.dynamics.baoab_step` with
    time step $\Delta t$ (the step size) and friction $\gamma$; $v_K$ is discarded.
    $\delta = \sum_k \Delta K_{O,k} + K(v_0) - K(v_K)$: the heat of the O steps plus the velocity
    term of drawing $v_0$ forward and $v_K$ backward. Cost: `n_steps + 1` energies and
    gradients.
    """

    def __init__(self, target, prior=None, lam=1.0, step_size=0.05, n_steps=10, friction=1.0, **kw):
        super().__init__(target, prior, lam, step_size, n_steps, **kw)
        self.friction = float(friction)

    def _velocity_term(self, v0, v):
        return kinetic(v0) - kinetic(v)

    def _run(self, y, generator):
        u, f = self.energy_and_force(y)
        v = v0 = self._noise(y, generator)
        dt = self.step_size.to(y.dtype)
        decay = torch.exp(-self.friction * dt)
        heat = torch.zeros_like(u)
        for _ in range(self.n_steps):
            noise = self._noise(y, generator)
            y, v, u, f, h = baoab_step(y, v, f, self.energy_and_force, dt, decay, noise)
            heat = heat + h
        return y, heat + self._velocity_term(v0, v)


class HMCBlock(StochasticBlock):
    r"""Hamiltonian Monte Carlo (Duane et al. 1987) with unit masses.

    Each of the `n_steps` proposals draws $v \sim \mathcal N(0, I)$, runs `n_leapfrog`
    velocity-Verlet steps of size $\epsilon$ (`boltzflow.dynamics.verlet_step`) and accepts with
    $\min(1, e^{-\Delta H})$; $\delta = u_\lambda(y_K) - u_\lambda(y_0)$ (detailed balance).
    Cost: `n_steps · n_leapfrog + 1` energies and gradients.
    """

    def __init__(self, target, prior=None, lam=1.0, step_size=0.1, n_steps=5, n_leapfrog=5, **kw):
        super().__init__(target, prior, lam, step_size, n_steps, **kw)
        self.n_leapfrog = int(n_leapfrog)

    def _run(self, y, generator):
        u, f = self.energy_and_force(y)
        u0 = u
        eps = self.step_size.to(y.dtype)
        for _ in range(self.n_steps):
            v = self._noise(y, generator)
            yp, vp, up, fp = y, v, u, f
            for _ in range(self.n_leapfrog):
                yp, vp, up, fp = verlet_step(yp, vp, fp, self.energy_and_force, eps)
            acc = _accept(u, up, (kinetic(v) - kinetic(vp)).detach(), generator)
            y, u, f = _rows(acc, yp, y), torch.where(acc, up, u), _rows(acc, fp, f)
        return y, u - u0
