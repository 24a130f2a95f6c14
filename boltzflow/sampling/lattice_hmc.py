r"""HMC-family sampler runners for lattice targets, and τ_int for observables that freeze.

Runners (signature `fn(flow, target, *, n_samples, seed, **params) -> SamplingResult`,
registered in `boltzflow.runs.registry.SAMPLERS`):

* [`hmc`][boltzflow.sampling.lattice_hmc.hmc] -- the baseline: HMC on the target itself (Duane et
  al. 1987). The flow only supplies starting points (`start="flow"`), or none is used (`"random"`,
  `"cold"`);
* [`flow_hmc`][boltzflow.sampling.lattice_hmc.flow_hmc] -- HMC in the flow's latent space on
  $U(z) = u(f(z)) - \log|\det J_f(z)|$ (NeuTra, Hoffman et al. 2019; flow-HMC on lattices, Foreman
  et al. 2021, arXiv:2112.01586), with a fixed step: the chain of
  [`boltzflow.sampling.neutra`][boltzflow.sampling.neutra].

Targets on a torus (U(1) links) declare `period = 2π`; positions (and latent points, since the
gauge flow maps the torus to itself and is periodic) are then wrapped after every drift.

Topological charge freezes under local updates: a chain may never change Q. The per-chain
normalised autocorrelation that
[`boltzflow.sampling.diagnostics.integrated_time`][boltzflow.sampling.diagnostics.integrated_time]
averages is then undefined, so
[`pooled_integrated_time`][boltzflow.sampling.lattice_hmc.pooled_integrated_time] estimates
$\tau_{int} = 1 + 2\sum_{t=1}^{M}\rho(t)$ from the autocovariance about the *pooled* mean, averaged
over chains (frozen chains then contribute $\rho(t) = 1$), with Sokal's window $M \ge c\,\tau$
(Sokal 1997, the rule of `emcee.autocorr.auto_window`). When no window fits in the chain, the
largest $\tau(M)$ is reported as a lower bound.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from boltzflow.rng import generator_for_module
from boltzflow.sampling.chains import run_chain
from boltzflow.sampling.kernels.hmc import HMC
from boltzflow.sampling.neutra import latent_hmc_chains
from boltzflow.sampling.runners import RunCost, SamplingResult

__all__ = ["TauEstimate", "pooled_integrated_time", "hmc", "flow_hmc", "chain_observable_taus"]

TAU_OBSERVABLES = ("topological_charge", "magnetization")
"""Observable whose τ_int each runner reports, by preference."""


class TauEstimate(NamedTuple):
    """`tau` in steps (or kept draws); `lower_bound` is True when the window did not fit."""

    tau: float
    lower_bound: bool


def pooled_integrated_time(values, c: float = 5.0) -> TauEstimate:
    r"""τ_int of a scalar series `values [chains, draws]` (see the module docstring).

    A series with zero variance over all chains (nothing to estimate) returns `nan`.
    """
    a = np.asarray(torch.as_tensor(values).detach().cpu().double())
    if a.ndim == 1:
        a = a[None]
    n = a.shape[1]
    d = a - a.mean()
    var = (d * d).mean()
    if n < 2 or var == 0:
        return TauEstimate(float("nan"), False)
    f = np.fft.rfft(d, n=2 * n, axis=1)
    acov = np.fft.irfft(f * np.conj(f), axis=1)[:, :n].mean(0) / n  # biased, pooled mean
    rho = acov / acov[0]
    taus = 2.0 * np.cumsum(rho) - 1.0
    fits = np.arange(n) >= c * taus  # Sokal's window: the first M with M >= c·τ(M)
    if not fits.any():
        return TauEstimate(float(taus.max()), True)
    return TauEstimate(float(taus[int(np.argmax(fits))]), False)


def chain_observable_taus(target, x: torch.Tensor) -> dict:
    """`{"tau_int_<name>": τ, "tau_int_<name>_lower_bound": bool}` for the first available
    observable of `TAU_OBSERVABLES`, on draws `x [chains, draws, *event]`."""
    obs = target.observables()
    for name in TAU_OBSERVABLES:
        if name in obs:
            with torch.no_grad():
                v = obs[name].fn(x.reshape(-1, *x.shape[2:])).reshape(x.shape[:2])
            est = pooled_integrated_time(v)
            return {f"tau_int_{name}": est.tau, f"tau_int_{name}_lower_bound": est.lower_bound}
    return {}


def _start(flow, target, chains: int, start: str, generator: torch.Generator) -> torch.Tensor:
    anchor = next(iter(flow.parameters()))
    shape = (chains, *target.event_shape)
    if start == "flow":
        with torch.no_grad():
            return flow.sample(chains, generator=generator).x.detach()
    if start == "cold":
        return torch.zeros(shape, dtype=anchor.dtype, device=anchor.device)
    if start == "random":
        u = torch.rand(shape, generator=generator, dtype=anchor.dtype, device=anchor.device)
        period = target.period
        return (u - 0.5) * period if period else 2.0 * u - 1.0
    raise ValueError(f"start must be 'flow', 'cold' or 'random', got {start!r}")


def _result(res, method: str, target, cost: RunCost, extra: dict) -> SamplingResult:
    steps = res.x.shape[1] * extra.get("thin", 1) + extra.get("n_warmup", 0)
    info = {
        "acceptance_rate": res.acceptance_rate,
        "seconds_per_step": cost.seconds / max(steps, 1),
        **extra,
        **chain_observable_taus(target, res.x),
    }
    return SamplingResult.from_chain(
        res.x, res.energy, res.accepted, method=method, cost=cost, info=info
    )


def hmc(
    flow,
    target,
    *,
    n_samples: int,
    seed: int = 0,
    chains: int = 8,
    step_size: float = 0.1,
    n_leapfrog: int = 10,
    thin: int = 1,
    n_warmup: int = 100,
    start: str = "flow",
) -> SamplingResult:
    """HMC on the target (the baseline; leapfrog, torus-wrapped where `target.period`).

    Runs `chains` chains for `ceil(n_samples / chains)` kept draws after `n_warmup`
    discarded steps. Each step costs `n_leapfrog` energy + gradient evaluations per chain.
    """
    g = generator_for_module(flow, seed)
    x0 = _start(flow, target, int(chains), start, g)
    cost = RunCost(target)
    kernel = HMC(target, step_size, n_leapfrog, wrap=target.period)
    n_draws = -(-int(n_samples) // int(chains))
    res = run_chain(kernel, x0, n_draws * thin, seed=seed, thin=thin, n_warmup=n_warmup)
    extra = {"step_size": step_size, "n_leapfrog": n_leapfrog, "thin": thin, "n_warmup": n_warmup}
    return _result(res, "hmc", target, cost, extra)


def flow_hmc(
    flow,
    target,
    *,
    n_samples: int,
    seed: int = 0,
    chains: int = 8,
    step_size: float = 0.2,
    n_leapfrog: int = 10,
    thin: int = 1,
    n_warmup: int = 50,
) -> SamplingResult:
    r"""HMC in the flow's latent space with a fixed step (NeuTra,
    [`latent_hmc_chains`][boltzflow.sampling.neutra.latent_hmc_chains]); chains start at flow
    samples, so in equilibrium as far as the flow is right, and run `n_warmup` discarded steps, then
    `ceil(n_samples / chains)` kept draws each, reported as configurations $x = f(z)$."""
    cost = RunCost(target)
    out = latent_hmc_chains(
        flow,
        target,
        n_draws=-(-int(n_samples) // int(chains)),
        seed=seed,
        chains=chains,
        step_size=step_size,
        n_leapfrog=n_leapfrog,
        thin=thin,
        n_warmup=n_warmup,
        progress=None,
    )
    extra = {"step_size": step_size, "n_leapfrog": n_leapfrog, "thin": thin, "n_warmup": n_warmup}
    return _result(out.result, "flow-hmc", target, cost, extra)
