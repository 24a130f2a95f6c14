"""Sampler runners used by recipes: a flow and a target in, a :class:`SamplingResult` out.

Every runner has the signature ``fn(flow, target, *, n_samples, seed, **params)`` and is
registered in :data:`boltzflow.registry.SAMPLERS`. Results are always laid out as
``[chains, draws, ...]`` (importance sampling is one "chain" of independent draws), which is
the layout of the ``posterior`` group in ``samples.nc``.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import torch

from boltzflow.sampling.reweighting import log_weights

__all__ = ["SamplingResult", "importance_sampling", "flow_imh", "draw_with_log_weights"]


class SamplingResult(NamedTuple):
    """Samples and per-sample statistics from one sampler run.

    Attributes:
        x: samples ``[chains, draws, *event_shape]``.
        log_weight: importance log-weights ``[chains, draws]`` (zeros for exact MCMC output).
        energy: reduced energies ``[chains, draws]`` in kT.
        accepted: MCMC acceptance flags ``[chains, draws]``, or ``None`` for i.i.d. draws.
        method: the sampler's name.
        energy_evaluations: target evaluations spent by the sampler.
        wall_seconds: wall-clock time.
        info: extra JSON-serialisable numbers (acceptance rates per move, tau_int, ...).
    """

    x: torch.Tensor
    log_weight: torch.Tensor
    energy: torch.Tensor
    accepted: torch.Tensor | None
    method: str
    energy_evaluations: int
    wall_seconds: float
    info: dict

    @property
    def weighted(self) -> bool:
        """True when the samples need their importance weights (i.i.d. flow draws)."""
        return self.accepted is None


@torch.no_grad()
def draw_with_log_weights(
    flow, target, n: int, generator: torch.Generator | None = None, batch_size: int = 8192
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw ``n`` flow samples in batches; return ``(x [n, *event], log_w [n], energy [n])``."""
    xs, lws, us = [], [], []
    done = 0
    while done < n:
        m = min(batch_size, n - done)
        s = flow.sample(m, generator=generator)
        lw = log_weights(target, s.x, s.log_q)
        xs.append(s.x)
        lws.append(lw)
        us.append(-lw - s.log_q)
        done += m
    return torch.cat(xs), torch.cat(lws), torch.cat(us)


def importance_sampling(
    flow, target, *, n_samples: int, seed: int = 0, batch_size: int = 8192
) -> SamplingResult:
    """I.i.d. flow draws with importance log-weights ``-u(x) - log q(x)`` (one chain)."""
    g = _generator_for(flow, seed)
    n0 = target.n_evaluations
    t0 = time.perf_counter()
    x, lw, u = draw_with_log_weights(flow, target, int(n_samples), g, batch_size)
    return SamplingResult(
        x=x.unsqueeze(0),
        log_weight=lw.unsqueeze(0),
        energy=u.unsqueeze(0),
        accepted=None,
        method="importance",
        energy_evaluations=target.n_evaluations - n0,
        wall_seconds=time.perf_counter() - t0,
        info={},
    )


def flow_imh(
    flow, target, *, n_samples: int, seed: int = 0, chains: int = 8, thin: int = 1
) -> SamplingResult:
    """Independence Metropolis–Hastings with flow proposals (Brofos et al. 2022; Nicoli 2020).

    Runs ``chains`` chains for ``ceil(n_samples / chains)`` kept draws each. The chain is exact
    for ``p`` whatever the flow, so ``log_weight`` is zero.
    """
    from boltzflow.sampling.chains import run_chain
    from boltzflow.sampling.kernels.imh import IndependenceMH

    n_draws = -(-int(n_samples) // int(chains))
    g = _generator_for(flow, seed)
    n0 = target.n_evaluations
    t0 = time.perf_counter()
    with torch.no_grad():
        x0 = flow.sample(int(chains), generator=g).x
    kernel = IndependenceMH(flow, target)
    res = run_chain(kernel, x0, n_draws * int(thin), seed=seed, thin=int(thin))
    accepted = res.accepted
    return SamplingResult(
        x=res.x,
        log_weight=torch.zeros_like(res.energy),
        energy=res.energy,
        accepted=accepted,
        method="imh",
        energy_evaluations=target.n_evaluations - n0,
        wall_seconds=time.perf_counter() - t0,
        info={"acceptance_rate": float(accepted.double().mean())},
    )


def _generator_for(flow, seed: int) -> torch.Generator:
    p = next(iter(flow.parameters()), None)
    device = p.device if p is not None else torch.device("cpu")
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g
