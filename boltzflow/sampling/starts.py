r"""Starting points for samplers on any target: the prior where it can be sampled, else a
Laplace approximation at the mode, overdispersed.

A target wrapped with [`from_log_prob`][boltzflow.energies.posterior.from_log_prob] usually has
a [`Flat`][boltzflow.energies.priors.Flat] prior (or none): it cannot be sampled, so the
default start is built from the energy itself:

1. **Mode.** `n_probe` probe points (flow draws when a flow is given, else
   $\mathcal N(0, I)$ in the unconstrained coordinates `y`) are scored; the best finite one
   starts L-BFGS on $u(y)$ (scipy; the gradient by autograd when the target is
   differentiable, by finite differences for a numpy likelihood).
2. **Laplace approximation.** The Hessian $H = \nabla^2 u(\hat y)$ at the mode (autograd, or
   central differences in one batched call), with eigenvalues floored so that it is positive
   definite, gives $\mathcal N(\hat y, H^{-1})$ (Laplace 1774; Gelman et al. 2013, *Bayesian Data
   Analysis*, 3rd ed., §4.1 and §13.3).
3. **Overdispersion.** Starting points are drawn from $\mathcal N(\hat y, c^2 H^{-1})$ with
   $c$ = `overdispersion` (default 2), so that chains start more spread out than the posterior
   and R-hat can detect non-convergence (Gelman & Rubin 1992, Stat. Sci. 7, 457). Draws whose
   energy is not finite are pulled halfway to the mode until it is (at most 20 times).

Every evaluation is counted by `target.n_evaluations`. A posterior with several separated
modes gets starts around one of them: give `init=` explicitly, or use a flow-based sampler, to
cover the others.
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import numpy as np
import torch

__all__ = [
    "Laplace",
    "LaplaceReference",
    "has_sampleable_prior",
    "laplace_approximation",
    "initial_points",
    "descend",
    "INIT_CHOICES",
    "start_points",
    "match_flow_dtype",
    "reference_for",
]


logger = logging.getLogger(__name__)


class Laplace(NamedTuple):
    r"""A Gaussian approximation $\mathcal N(\text{mode}, \text{cov})$ of a target in its
    sampled coordinates.

    Attributes:
        mode: `[dim]`, the optimum of $u$ found.
        cov: `[dim, dim]`, $H^{-1}$ with $H$'s eigenvalues floored.
        energy: $u(\text{mode})$ in kT.
        evaluations: target evaluations spent.
    """

    mode: torch.Tensor
    cov: torch.Tensor
    energy: float
    evaluations: int

    def sample(self, n: int, generator=None, scale: float = 1.0) -> torch.Tensor:
        r"""`n` draws `[n, dim]` of $\mathcal N(\text{mode}, \text{scale}^2\,\text{cov})$."""
        chol = torch.linalg.cholesky(self.cov)
        m = self.mode
        xi = torch.randn(n, m.shape[0], generator=generator, dtype=m.dtype, device=m.device)
        return m + float(scale) * xi @ chol.T

    def log_prob(self, y: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        r"""Normalized log density of $\mathcal N(\text{mode}, \text{scale}^2\,\text{cov})$ at
        `y [n, dim]`, `[n]`."""
        cov = self.cov.to(y.dtype) * float(scale) ** 2
        dist = torch.distributions.MultivariateNormal(self.mode.to(y.dtype), covariance_matrix=cov)
        return dist.log_prob(y)


def has_sampleable_prior(target) -> bool:
    """Whether `target.sample_prior` works (a proper prior on every parameter block)."""
    try:  # deliberate CPU generator: a one-row probe of whether the prior can be sampled
        target.sample_prior(1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    except NotImplementedError:
        return False
    return True


def _energy_np(target, dtype):
    def f(y: np.ndarray) -> float:
        with torch.no_grad():
            u = target.energy(torch.as_tensor(y, dtype=dtype).reshape(1, -1))
        u = float(u[0])
        return u if math.isfinite(u) else 1e300

    return f


def _energy_and_grad_np(target, dtype):
    def f(y: np.ndarray):
        x = torch.as_tensor(y, dtype=dtype).reshape(1, -1).requires_grad_(True)
        u = target.energy(x)
        if not bool(torch.isfinite(u).all()):
            return 1e300, np.zeros_like(y)
        (g,) = torch.autograd.grad(u.sum(), x)
        g = g.reshape(-1).detach().double().numpy()
        return float(u.detach()[0]), np.nan_to_num(g)

    return f


def _hessian(target, mode: torch.Tensor, differentiable: bool) -> torch.Tensor:
    """$\\nabla^2 u$ at `mode [dim]`: autograd, or central differences in one batch."""
    d = mode.shape[0]
    if differentiable:
        return torch.autograd.functional.hessian(lambda y: target.energy(y[None])[0], mode)
    h = 1e-4 * (1.0 + mode.abs())
    e = torch.eye(d, dtype=mode.dtype) * h
    i, j = torch.triu_indices(d, d)
    pts = [mode[None]]
    for si, sj in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
        pts.append(mode + si * e[i] + sj * e[j])
    with torch.no_grad():
        u = target.energy(torch.cat(pts))
    rest = u[1:].reshape(4, -1)
    off = (rest[0] - rest[1] - rest[2] + rest[3]) / (4 * h[i] * h[j])
    hess = torch.zeros(d, d, dtype=mode.dtype)
    hess[i, j] = off
    hess[j, i] = off
    return hess


def laplace_approximation(
    target,
    *,
    flow=None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    n_probe: int = 64,
    max_iter: int = 500,
) -> Laplace:
    """Mode and Laplace covariance of `target` in its sampled coordinates (module docstring).

    Args:
        target: an [`Energy`][boltzflow.energies.base.Energy] over flat `[batch, dim]`.
        flow: optional; its draws are the probe points.
        generator: seeds the probe points.
        dtype: dtype of the optimisation (float64 recommended).
        n_probe: probe points scored (one batched evaluation) to pick the optimiser's start.
        max_iter: L-BFGS iterations.

    Raises:
        ValueError: no probe point has a finite energy (the message says to pass `init=`).
    """
    from scipy.optimize import minimize

    n0, d = target.n_evaluations, int(target.dim)
    with torch.no_grad():
        if flow is not None:
            probe = flow.sample(int(n_probe), generator=generator).x.detach().to(dtype)
        else:
            device = generator.device if generator is not None else None
            probe = torch.randn(int(n_probe), d, generator=generator, dtype=dtype, device=device)
        u = target.energy(probe)
    finite = torch.isfinite(u)
    if not bool(finite.any()):
        raise ValueError(
            f"no finite energy at {n_probe} probe points around 0 in the unconstrained "
            "coordinates: pass starting points explicitly with init=Tensor[n, dim] "
            "(unconstrained, e.g. posterior.unconstrain(theta)), or give the target a proper prior"
        )
    y0 = probe[torch.where(finite, u, torch.full_like(u, math.inf)).argmin()]
    differentiable = bool(target.differentiable)
    if differentiable:
        res = minimize(
            _energy_and_grad_np(target, dtype),
            y0.double().numpy(),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": int(max_iter)},
        )
    else:
        res = minimize(
            _energy_np(target, dtype),
            y0.double().numpy(),
            method="L-BFGS-B",
            options={"maxiter": int(max_iter)},
        )
    mode = torch.as_tensor(res.x, dtype=dtype)
    hess = _hessian(target, mode, differentiable).to(dtype)
    hess = 0.5 * (hess + hess.T)
    evals, vecs = torch.linalg.eigh(torch.nan_to_num(hess, nan=0.0, posinf=0.0, neginf=0.0))
    top = float(evals.abs().max()) if evals.numel() else 1.0
    floor = max(top * 1e-8, 1e-8)
    # a flat or concave direction gets unit curvature: a width of 1 in y, not infinity
    evals = torch.where(evals > floor, evals, torch.ones_like(evals))
    cov = (vecs / evals) @ vecs.T
    cov = 0.5 * (cov + cov.T)
    with torch.no_grad():
        u_mode = float(target.energy(mode[None])[0])
    return Laplace(mode, cov, u_mode, target.n_evaluations - n0)


def descend(target, x: torch.Tensor, steps: int, lr: float = 0.05) -> torch.Tensor:
    """`steps` Adam steps (learning rate `lr`) on $u$ from every point of `x [n, dim]`, to leave
    a prior's tails quickly before a chain starts; a point whose energy is not finite keeps its
    place (its gradient is zeroed). Every evaluation is counted by `target.n_evaluations`."""
    if steps <= 0:
        return x
    x = x.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    for _ in range(int(steps)):
        u = target.energy(x)
        opt.zero_grad()
        u.masked_fill(~torch.isfinite(u), 0.0).sum().backward()
        x.grad.nan_to_num_(0.0, 0.0, 0.0)
        opt.step()
    return x.detach()


def initial_points(
    target,
    n: int,
    *,
    flow=None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    overdispersion: float = 2.0,
    prior: bool = True,
) -> torch.Tensor:
    r"""The documented default starting points `[n, dim]` for any sampler.

    The target's prior draws when it has a sampleable prior
    ([`has_sampleable_prior`][boltzflow.sampling.starts.has_sampleable_prior]); otherwise `n`
    draws of the overdispersed Laplace approximation $\mathcal N(\hat y, c^2 H^{-1})$ at the mode
    ([`laplace_approximation`][boltzflow.sampling.starts.laplace_approximation], module docstring),
    each with a finite energy.

    Args:
        target: the [`Energy`][boltzflow.energies.base.Energy] (a
            [`Posterior`][boltzflow.energies.posterior.Posterior] from `from_log_prob`, say).
        n: number of points.
        flow: optional; probe points for the mode search come from it.
        generator: seeds every draw.
        dtype: dtype of the returned points.
        overdispersion: $c$, the factor on the Laplace standard deviations.
        prior: use the prior where it can be sampled; `False` always takes the Laplace draws.

    Returns:
        `Tensor[n, dim]` in the target's unconstrained coordinates.
    """
    if prior and has_sampleable_prior(target):
        with torch.no_grad():
            return target.sample_prior(int(n), generator=generator, dtype=dtype)
    lap = laplace_approximation(target, flow=flow, generator=generator)
    x = lap.sample(int(n), generator=generator, scale=overdispersion)
    for _ in range(20):
        with torch.no_grad():
            bad = ~torch.isfinite(target.energy(x))
        if not bool(bad.any()):
            break
        x = torch.where(bad[:, None], 0.5 * (x + lap.mode), x)
    return x.to(dtype)


class LaplaceReference:
    r"""A proper reference distribution that stands in for the prior of a target without a
    sampleable one: $\mathcal N(\hat y, c^2 H^{-1})$, the overdispersed Laplace approximation.

    It has the prior hooks of a [`Posterior`][boltzflow.energies.posterior.Posterior]
    (`sample_prior`, `constrain`, `log_prior`, `dim`), so tempering code that anneals from the
    prior, $p_\beta \propto \pi\,L^\beta$, anneals from this reference instead: with
    $u_0 = -\log\mathcal N$ and "$\log L$" $= u_0 - u$ the path
    $p_\beta \propto \mathcal N^{1-\beta} e^{-\beta u}$ is the geometric path from the
    reference to the posterior (Neal 2001, "Annealed importance sampling", Stat. Comput. 11,
    125), and its end point is the posterior whatever the reference.

    Args:
        laplace: a [`Laplace`][boltzflow.sampling.starts.Laplace] approximation.
        scale: $c$, the factor on its standard deviations.
    """

    def __init__(self, laplace: Laplace, scale: float = 2.0):
        self.laplace, self.scale = laplace, float(scale)
        self.dim = int(laplace.mode.shape[0])

    def sample_prior(self, n: int, generator=None, dtype=torch.float64, device=None):
        """`n` reference draws `[n, dim]`."""
        return self.laplace.sample(int(n), generator=generator, scale=self.scale).to(dtype)

    def constrain(self, y: torch.Tensor):
        """The identity with a zero log-Jacobian (the reference lives on `y`)."""
        return y, y.new_zeros(y.shape[0])

    def log_prior(self, y: torch.Tensor) -> torch.Tensor:
        """Normalized log density of the reference at `y [n, dim]`, `[n]`."""
        return self.laplace.log_prob(y, scale=self.scale)


def reference_for(target, *, flow=None, generator=None, scale: float = 2.0):
    """The distribution to anneal from: `target` itself when its prior can be sampled, else a
    [`LaplaceReference`][boltzflow.sampling.starts.LaplaceReference] around its mode."""
    if has_sampleable_prior(target):
        return target
    return LaplaceReference(laplace_approximation(target, flow=flow, generator=generator), scale)


INIT_CHOICES = ("auto", "prior", "laplace", "flow")
"""String values of a runner's `init` (besides a `Tensor[n, dim]` of starting points)."""


def start_points(
    flow, target, n: int, init, generator: torch.Generator, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """`n` starting points `[n, dim]` of a runner's chains or walkers.

    Args:
        init: `"auto"` (the documented default of
            [`initial_points`][boltzflow.sampling.starts.initial_points]: prior draws where the
            target has a sampleable prior, else overdispersed Laplace draws around the mode),
            `"prior"` (prior draws only), `"laplace"` (Laplace draws even with a prior),
            `"flow"` (flow samples), or a `Tensor` of starting points in the target's sampled
            coordinates: `[n, dim]`, or `[dim]` (every chain starts there).
        dtype: of the points (default: the flow's parameters' dtype, else float64).

    Raises:
        ValueError: an unknown `init`, a tensor of the wrong shape or with non-finite energies,
            `"prior"` on a target without a sampleable prior, `"flow"` without a flow; each
            message says which `init` would work.
    """
    params = next(iter(flow.parameters()), None) if flow is not None else None
    if dtype is None:
        dtype = params.dtype if params is not None else torch.float64
    dim = int(target.dim)
    if isinstance(init, torch.Tensor):
        x = init.detach().to(dtype)
        x = x.expand(n, dim).clone() if x.shape == (dim,) else x
        if tuple(x.shape) != (n, dim):
            raise ValueError(
                f"init tensor must have shape [{n}, {dim}] or [{dim}], got {tuple(init.shape)}"
            )
        with torch.no_grad():
            bad = ~torch.isfinite(target.energy(x))
        if bool(bad.any()):
            raise ValueError(
                f"{int(bad.sum())} of the {n} given starting points have a non-finite energy: "
                "give points inside the support (unconstrained coordinates, e.g. "
                "posterior.unconstrain(theta)), or init='auto'"
            )
        return x
    if init not in INIT_CHOICES:
        raise ValueError(f"init must be one of {INIT_CHOICES} or a Tensor[n, dim], got {init!r}")
    with torch.no_grad():
        if init == "flow":
            if flow is None:
                raise ValueError(
                    "init='flow' needs a flow: pass one, or use init='auto' (prior draws, or "
                    "a Laplace approximation at the mode when the prior cannot be sampled)"
                )
            return flow.sample(n, generator=generator).x.detach().to(dtype)
        if init == "prior" and not has_sampleable_prior(target):
            raise ValueError(
                "init='prior': this target has no sampleable prior (a Flat prior, or a "
                "from_log_prob target without priors): use init='auto' or 'laplace' (draws "
                "around the mode), init='flow', or init=Tensor[n, dim]"
            )
    use_prior = init != "laplace"
    return initial_points(target, n, flow=flow, generator=generator, dtype=dtype, prior=use_prior)


def match_flow_dtype(flow, target, x: torch.Tensor) -> torch.Tensor:
    """Cast a flow that is narrower than the target's declared `dtype` (a float32 flow on a
    float64 [`Posterior`][boltzflow.energies.posterior.Posterior]) to that dtype, with a
    warning, and return the starting points `x` in it, so that chain states never run in float32
    against float64 energies. A target whose `dtype` is `None` keeps `x`'s dtype.
    """
    want = x.dtype
    declared = target.dtype
    if isinstance(declared, torch.dtype):
        want = torch.promote_types(want, declared)
    params = next(iter(flow.parameters()), None) if flow is not None else None
    if params is not None and torch.promote_types(params.dtype, want) != params.dtype:
        logger.warning(
            "the flow is %s but the target's energies are %s: the flow is cast to %s "
            "(build it in %s, e.g. dtype = 'float64' in system.toml, to avoid this)",
            params.dtype,
            want,
            want,
            want,
        )
        flow.to(want)
    return x.to(want)
