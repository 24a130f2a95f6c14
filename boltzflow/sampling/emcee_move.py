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

import math
import time

import emcee
import numpy as np
import torch
from emcee.moves import MHMove

from boltzflow.energies.posterior import EmceeLogProb
from boltzflow.flows.base import FlowSample, frozen
from boltzflow.sampling.runners import SamplingResult

__all__ = ["FlowMove", "DefensiveFlow", "emcee_sampler", "flow_emcee"]


class DefensiveFlow(torch.nn.Module):
    r"""Defensive mixture proposal :math:`q = (1-\epsilon)q_1 + \epsilon q_s` (Hesterberg 1995).

    :math:`q_s` pushes a wider base :math:`\mathcal N(0, s^2 I)` through the same transform, so
    the mixture has heavier tails than the flow alone and importance weights
    :math:`p/q \le p/(\epsilon q_s)` stay bounded where the flow under-covers the target; this
    keeps independence chains from sticking there. Exact densities: both components share the
    transform, :math:`\log q_s(x) = \log\mathcal N(z; 0, s^2) + \log|\det\partial z/\partial x|`.

    Args:
        flow: a :class:`~boltzflow.flows.base.Flow` with a standard-normal base.
        weight: :math:`\epsilon`, the probability of drawing from the wide component.
        scale: :math:`s > 1`.
    """

    def __init__(self, flow, weight: float = 0.2, scale: float = 2.0):
        super().__init__()
        self.flow, self.weight, self.scale = flow, float(weight), float(scale)
        self.dim = flow.dim

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z, ladj_inv = self.flow.inverse(x)
        zz = (z * z).reshape(z.shape[0], -1).sum(-1)
        c = -0.5 * self.dim * math.log(2 * math.pi)
        narrow = c - 0.5 * zz + ladj_inv
        wide = c - self.dim * math.log(self.scale) - 0.5 * zz / self.scale**2 + ladj_inv
        return torch.logaddexp(math.log1p(-self.weight) + narrow, math.log(self.weight) + wide)

    def sample(self, n: int, generator: torch.Generator | None = None):
        z = self.flow.base.sample(n, generator=generator)
        u = torch.rand(n, generator=generator, dtype=z.dtype, device=z.device)
        wide = (u < self.weight).reshape(-1, *([1] * (z.dim() - 1)))
        z = torch.where(wide, z * self.scale, z)
        x, _ = self.flow.forward(z)
        return FlowSample(x, z, self.log_prob(x))


class FlowMove(MHMove):
    """Independence proposals from ``flow`` for every walker (an :class:`emcee.moves.MHMove`).

    Args:
        flow: anything with ``sample(n, generator) -> (x, z, log_q)`` and ``log_prob(x)``
            over the same coordinates as emcee's walkers (``[n_walkers, ndim]``), usually a
            :class:`~boltzflow.flows.base.Flow` trained on the target.
        dtype: dtype the flow is evaluated in.

    Attributes:
        n_proposed, n_accepted: walker proposals made and accepted by this move so far.
    """

    def __init__(self, flow, dtype: torch.dtype = torch.float64):
        self.flow = flow
        self.dtype = dtype
        self.n_proposed = 0
        self.n_accepted = 0
        params = next(iter(flow.parameters()), None) if hasattr(flow, "parameters") else None
        self.device = params.device if params is not None else torch.device("cpu")
        super().__init__(self._propose, ndim=int(getattr(flow, "dim", 0)) or None)

    def _generator(self, random: np.random.RandomState) -> torch.Generator:
        seed = int(random.randint(0, 2**31 - 1)) * (2**31) + int(random.randint(0, 2**31 - 1))
        return torch.Generator(device=self.device).manual_seed(seed)

    def propose(self, model, state):
        """emcee's MH step (:meth:`emcee.moves.MHMove.propose`), counting accepted walkers."""
        state, accepted = super().propose(model, state)
        self.n_accepted += int(np.sum(accepted))
        return state, accepted

    @property
    def acceptance_rate(self) -> float:
        """Fraction of this move's proposals that were accepted (NaN before any)."""
        return self.n_accepted / self.n_proposed if self.n_proposed else float("nan")

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


def _walkers(target, walkers: int | None) -> int:
    """Ensemble size: ``walkers`` or ``max(32, 2·dim + 2)``, made even."""
    n = int(walkers or max(32, 2 * int(target.dim) + 2))
    return n + n % 2


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
    from boltzflow.sampling.hybrid import start_points

    dim, walkers = int(target.dim), _walkers(target, walkers)
    rs = np.random.RandomState(int(seed))
    x0 = start_points(flow, target, walkers, init, torch.Generator().manual_seed(int(seed)))
    moves = emcee.moves.StretchMove()
    if flow_weight > 0:
        moves = [(moves, 1.0 - flow_weight), (FlowMove(flow), flow_weight)]
    t0, n0 = time.perf_counter(), target.n_evaluations
    log_prob = EmceeLogProb(target)
    sampler = emcee.EnsembleSampler(walkers, dim, log_prob, moves=moves, vectorize=True)
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
        info={
            "acceptance_rate": float(np.mean(sampler.acceptance_fraction)),
            "walkers": walkers,
            **log_prob.counts(),
        },
    )


def _chains(sampler, start: int = 0) -> torch.Tensor:
    """emcee's ``[steps, walkers, dim]`` chain from ``start`` as ``[walkers, draws, dim]``."""
    return torch.as_tensor(np.transpose(sampler.get_chain()[start:], (1, 0, 2)).copy())


def flow_emcee(
    flow,
    target,
    *,
    n_samples: int,
    seed: int = 0,
    walkers: int | None = None,
    burn_steps: int = 1000,
    rounds: int = 4,
    round_steps: int = 200,
    train_steps: int = 500,
    batch_size: int = 512,
    lr: float = 1e-3,
    flow_weight: float = 0.5,
    defensive: float = 0.0,
    init: str = "prior",
    evidence_samples: int = 0,
    progress: bool = False,
) -> SamplingResult:
    r"""emcee accelerated by a flow trained on its own walkers, then frozen (flowMC-style).

    1. Burn-in: ``burn_steps`` stretch-move steps from prior draws (gradient-free).
    2. ``rounds`` times: train the flow by maximum likelihood on the pooled walker history
       (the second half of burn-in and every later round), then run ``round_steps`` steps of
       the mixture ``[(StretchMove, 1 - w), (FlowMove, w)]``.
    3. Freeze the flow and run the same mixture for ``ceil(n_samples / walkers)`` kept steps:
       a fixed MH kernel mixture, hence exact MCMC (Tierney 1994) for any flow.

    ``defensive > 0`` proposes from :class:`DefensiveFlow` (that share of draws from a base
    twice as wide). Works with numpy likelihoods (no gradients needed). ``info`` has the
    flow-move and overall acceptance, warm-up cost, R-hat and ESS (walkers as chains, arviz)
    and, with ``evidence_samples``, the flow importance-sampling evidence.
    """
    from boltzflow.sampling.hybrid import (
        chain_diagnostics,
        fit_affine_to_data,
        flow_evidence,
        start_points,
        train_nll,
    )

    dim, walkers = int(target.dim), _walkers(target, walkers)
    rs = np.random.RandomState(int(seed))
    g = torch.Generator().manual_seed(int(seed))
    t0, n0 = time.perf_counter(), target.n_evaluations
    x0 = start_points(flow, target, walkers, init, g).double().cpu().numpy()
    log_prob = EmceeLogProb(target)

    def ensemble(moves):
        s = emcee.EnsembleSampler(walkers, dim, log_prob, moves=moves, vectorize=True)
        s._random = rs  # one seeded legacy RandomState drives every stage
        return s

    burn = ensemble(emcee.moves.StretchMove())
    state = burn.run_mcmc(x0, int(burn_steps), progress=progress)
    history = [_chains(burn, int(burn_steps) // 2)]
    move = FlowMove(DefensiveFlow(flow, defensive) if defensive > 0 else flow)
    mixed = [(emcee.moves.StretchMove(), 1.0 - flow_weight), (move, flow_weight)]
    warm_acc = []
    for r in range(int(rounds)):
        data = torch.cat([h.reshape(-1, dim) for h in history]).to(next(flow.parameters()).dtype)
        if r == 0:
            fit_affine_to_data(flow, data)
        train_nll(flow, data, train_steps, batch_size, lr, g)
        n_acc, n_prop = move.n_accepted, move.n_proposed
        stage = ensemble(mixed)
        state = stage.run_mcmc(state, int(round_steps), progress=progress)
        history.append(_chains(stage))
        warm_acc.append((move.n_accepted - n_acc) / max(move.n_proposed - n_prop, 1))
    warmup_evals, warmup_seconds = target.n_evaluations - n0, time.perf_counter() - t0
    n_acc, n_prop = move.n_accepted, move.n_proposed
    with frozen(flow):
        prod = ensemble(mixed)
        prod.run_mcmc(state, -(-int(n_samples) // walkers), progress=progress)
    x = _chains(prod)
    energy = torch.as_tensor(-prod.get_log_prob().T.copy())
    moved = torch.as_tensor(np.any(np.diff(prod.get_chain(), axis=0) != 0, axis=-1).T.copy())
    accepted = torch.cat([torch.ones(walkers, 1, dtype=torch.bool), moved], 1)
    info = {
        "walkers": walkers,
        "global_acceptance": (move.n_accepted - n_acc) / max(move.n_proposed - n_prop, 1),
        "acceptance_rate": float(np.mean(prod.acceptance_fraction)),
        "warmup_evaluations": int(warmup_evals),
        "warmup_seconds": warmup_seconds,
        "warmup_global_acceptance": warm_acc,
        **chain_diagnostics(x),
        **log_prob.counts(),
    }
    if evidence_samples > 0:
        with frozen(flow):
            info["evidence"] = flow_evidence(flow, target, evidence_samples, seed=int(seed))
    return SamplingResult(
        x=x,
        log_weight=torch.zeros_like(energy),
        energy=energy,
        accepted=accepted,
        method="flow-emcee",
        energy_evaluations=target.n_evaluations - n0,
        wall_seconds=time.perf_counter() - t0,
        info=info,
    )
