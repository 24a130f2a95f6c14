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

from boltzflow.sampling.base import metropolis_hastings_accept
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
    """Draw ``n`` flow samples in batches; return ``(x [n, *event], log_w [n], energy [n])``.

    No gradients are tracked (the draws are data), whether or not the flow is trainable.
    """
    xs, lws, us = [], [], []
    done = 0
    while done < n:
        m = min(batch_size, n - done)
        with torch.no_grad():
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
    flow,
    target,
    *,
    n_samples: int,
    seed: int = 0,
    chains: int = 8,
    n_warmup: int | None = None,
    batch_size: int = 8192,
) -> SamplingResult:
    r"""Independence Metropolis–Hastings with flow proposals, batched.

    Proposals of an independence sampler do not depend on the chain state, so all of them are
    drawn and scored in large batches first; the accept/reject sweep then runs over cached
    log-weights with the shared :func:`~boltzflow.sampling.base.metropolis_hastings_accept`:
    :math:`\alpha = \min(1, w(x')/w(x))` with :math:`\log w = -u - \log q`
    (Tierney 1994; used with flows by Nicoli et al. 2020 and Gabrié et al. 2022). The
    transition law is exactly that of :class:`~boltzflow.sampling.kernels.imh.IndependenceMH`.

    Runs ``chains`` chains for ``ceil(n_samples / chains)`` kept draws each after ``n_warmup``
    discarded steps (default: 10% of the draws, at most 100). The chain is exact for ``p``
    whatever the flow, so the returned ``log_weight`` is zero.
    """
    chains = int(chains)
    n_draws = -(-int(n_samples) // chains)
    warm = min(100, n_draws // 10) if n_warmup is None else int(n_warmup)
    steps = warm + n_draws
    g = _generator_for(flow, seed)
    n0 = target.n_evaluations
    t0 = time.perf_counter()
    x, lw, u = draw_with_log_weights(flow, target, chains * (steps + 1), g, batch_size)
    lw = lw.reshape(steps + 1, chains)
    current = torch.arange(chains, device=lw.device)  # flat index of each chain's state
    lw_cur = lw[0]
    kept, accepted = [], []
    for t in range(1, steps + 1):
        acc, _ = metropolis_hastings_accept(lw[t] - lw_cur, g)
        current = torch.where(acc, t * chains + torch.arange(chains, device=lw.device), current)
        lw_cur = torch.where(acc, lw[t], lw_cur)
        if t > warm:
            kept.append(current)
            accepted.append(acc)
    idx = torch.stack(kept, dim=1)  # [chains, draws]
    acc_t = torch.stack(accepted, dim=1)
    return SamplingResult(
        x=x[idx.reshape(-1)].reshape(chains, n_draws, *x.shape[1:]),
        log_weight=torch.zeros(chains, n_draws, dtype=u.dtype, device=u.device),
        energy=u[idx.reshape(-1)].reshape(chains, n_draws),
        accepted=acc_t,
        method="imh",
        energy_evaluations=target.n_evaluations - n0,
        wall_seconds=time.perf_counter() - t0,
        info={"acceptance_rate": float(acc_t.double().mean()), "n_warmup": warm},
    )


def _generator_for(flow, seed: int) -> torch.Generator:
    p = next(iter(flow.parameters()), None)
    device = p.device if p is not None else torch.device("cpu")
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g
