r"""An emcee move that proposes independently from a normalizing flow.

For walkers at :math:`x` the move draws :math:`x' \sim q` from the flow and emcee accepts with

.. math:: \alpha = \min\Bigl(1, \frac{p(x')\,q(x)}{p(x)\,q(x')}\Bigr),

i.e. the proposal returns the log q-ratio ``log q(x) - log q(x')`` that emcee's
:class:`emcee.moves.MHMove` expects (independence Metropolis–Hastings; Hastings 1970, Tierney
1994). Mixed with emcee's own ensemble moves, e.g.
``moves=[(StretchMove(), 0.7), (FlowMove(flow), 0.3)]``, each move leaves the target invariant,
so the mixture does too (Tierney 1994, §2.4); the flow supplies jumps between modes that the
stretch move (Goodman & Weare 2010) cannot make.

emcee hands moves its legacy :class:`numpy.random.RandomState`; the flow is driven by a
``torch.Generator`` seeded from it, so a seeded emcee run is reproducible end to end.
"""

from __future__ import annotations

import time

import emcee
import numpy as np
import torch
from emcee.moves import MHMove

from boltzflow.energies.posterior import EmceeLogProb
from boltzflow.sampling.runners import SamplingResult

__all__ = ["FlowMove", "emcee_sampler"]


class FlowMove(MHMove):
    """Independence proposals from ``flow`` for every walker (an :class:`emcee.moves.MHMove`).

    Args:
        flow: anything with ``sample(n, generator) -> (x, z, log_q)`` and ``log_prob(x)``
            over the same coordinates as emcee's walkers (``[n_walkers, ndim]``), usually a
            :class:`~boltzflow.flows.base.Flow` trained on the target.
        dtype: dtype the flow is evaluated in.

    Attributes:
        n_proposed: walker proposals made so far (the acceptance rate is read from emcee).
    """

    def __init__(self, flow, dtype: torch.dtype = torch.float64):
        self.flow = flow
        self.dtype = dtype
        self.n_proposed = 0
        params = next(iter(flow.parameters()), None) if hasattr(flow, "parameters") else None
        self.device = params.device if params is not None else torch.device("cpu")
        super().__init__(self._propose, ndim=int(getattr(flow, "dim", 0)) or None)

    def _generator(self, random: np.random.RandomState) -> torch.Generator:
        seed = int(random.randint(0, 2**31 - 1)) * (2**31) + int(random.randint(0, 2**31 - 1))
        return torch.Generator(device=self.device).manual_seed(seed)

    @torch.no_grad()
    def _propose(self, coords: np.ndarray, random: np.random.RandomState):
        n = coords.shape[0]
        g = self._generator(random)
        sample = self.flow.sample(n, generator=g)
        x_old = torch.as_tensor(coords, dtype=self.dtype, device=self.device)
        log_q_old = self.flow.log_prob(x_old)
        factors = (log_q_old - sample.log_q).double().cpu().numpy()
        # a proposal with undefined density is rejected; NaN never reaches emcee
        factors = np.where(
            np.isnan(factors) | ~np.isfinite(sample.log_q.double().cpu().numpy()), -np.inf, factors
        )
        self.n_proposed += n
        return sample.x.double().cpu().numpy(), factors


def emcee_sampler(
    flow,
    target,
    *,
    n_samples: int,
    seed: int = 0,
    walkers: int | None = None,
    flow_weight: float = 0.0,
    burn_fraction: float = 0.5,
    init: str = "prior",
    progress: bool = False,
) -> SamplingResult:
    r"""Run emcee's ensemble sampler (optionally mixed with :class:`FlowMove`) as a runner.

    The stretch move (Goodman & Weare 2010) alone is the usual baseline; ``flow_weight > 0``
    mixes in flow independence moves with that probability. Walkers start from the target's
    ``sample_prior`` (or the flow with ``init="flow"``), the first ``burn_fraction`` of the steps
    is discarded, and each walker is reported as one chain, ``x [walkers, draws, dim]``.
    ``accepted`` marks the draws where the walker moved. Every log-probability call is counted
    in ``energy_evaluations`` (burn-in included).

    Args:
        n_samples: kept draws in total (``ceil(n_samples / walkers)`` per walker).
        walkers: ensemble size (default ``max(32, 2·dim + 2)``, made even).
    """
    dim = int(target.dim)
    walkers = int(walkers or max(32, 2 * dim + 2))
    walkers += walkers % 2
    rs = np.random.RandomState(int(seed))
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        if init == "prior" and hasattr(target, "sample_prior"):
            x0 = target.sample_prior(walkers, generator=g)
        else:
            x0 = flow.sample(walkers, generator=g).x
    moves = emcee.moves.StretchMove()
    if flow_weight > 0:
        moves = [(moves, 1.0 - flow_weight), (FlowMove(flow), flow_weight)]
    t0, n0 = time.perf_counter(), target.n_evaluations
    sampler = emcee.EnsembleSampler(walkers, dim, EmceeLogProb(target), moves=moves, vectorize=True)
    sampler._random = rs  # emcee's legacy RandomState, seeded
    keep = -(-int(n_samples) // walkers)
    total = int(np.ceil(keep / (1.0 - burn_fraction)))
    sampler.run_mcmc(x0.double().cpu().numpy(), total, progress=progress)
    discard = total - keep
    chain = sampler.get_chain()  # [steps, walkers, dim]
    x = torch.as_tensor(np.transpose(chain[discard:], (1, 0, 2)))
    moved = np.any(chain[discard:] != chain[discard - 1 : -1], axis=-1).T if discard > 0 else None
    energy = torch.as_tensor(-sampler.get_log_prob(discard=discard).T)
    accepted = (
        torch.as_tensor(moved) if moved is not None else torch.ones(x.shape[:2], dtype=torch.bool)
    )
    return SamplingResult(
        x=x,
        log_weight=torch.zeros_like(energy),
        energy=energy,
        accepted=accepted,
        method="emcee" if flow_weight == 0 else "emcee+flow",
        energy_evaluations=target.n_evaluations - n0,
        wall_seconds=time.perf_counter() - t0,
        info={"acceptance_rate": float(np.mean(sampler.acceptance_fraction)), "walkers": walkers},
    )
