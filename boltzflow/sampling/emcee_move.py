r"""An emcee move that proposes independently from a normalizing flow.

For walkers at $x$ the move draws $x' \sim q$ from the flow and emcee accepts with

$$
\alpha = \min\Bigl(1, \frac{p(x')\,q(x)}{p(x)\,q(x')}\Bigr),
$$

i.e. the proposal returns the log q-ratio `log q(x) - log q(x')` that emcee's
`emcee.moves.MHMove` expects (independence Metropolis–Hastings; Hastings 1970, Tierney
1994). Mixed with emcee's own ensemble moves, e.g.
`moves=[(StretchMove(), 0.7), (FlowMove(flow), 0.3)]`, each move leaves the target invariant,
so the mixture does too (Tierney 1994, §2.4); the flow supplies jumps between modes that the
stretch move (Goodman & Weare 2010) cannot make.

emcee hands moves its legacy `numpy.random.RandomState`; the flow is driven by a
`torch.Generator` seeded from it, so a seeded emcee run is reproducible end to end.
[`EmceeLogProb`][boltzflow.sampling.emcee_move.EmceeLogProb] is the other side of the interface: any
[`Energy`][boltzflow.energies.base.Energy] as emcee's `log_prob_fn`, robust to non-finite values
and exceptions.
"""

from __future__ import annotations

import logging

import emcee
import numpy as np
import torch
from emcee.moves import MHMove

from boltzflow.flows.base import frozen
from boltzflow.rng import generator_for_module
from boltzflow.sampling.proposals import DefensiveFlow
from boltzflow.sampling.runners import RunCost, SamplingResult, flow_evidence
from boltzflow.sampling.starts import match_flow_dtype, start_points
from boltzflow.training.fit import fit_affine_to_data, fit_nll

__all__ = ["EmceeLogProb", "FlowMove", "emcee_sampler", "flow_emcee"]

logger = logging.getLogger(__name__)


class EmceeLogProb:
    r"""`log_prob_fn` for `emcee.EnsembleSampler` over an `Energy`'s coordinates.

    `coords [n_walkers, dim]` (use `vectorize=True`) or `[dim]` map to $-u$. NaN and
    other non-finite values give $-\infty$ and are counted in `n_nonfinite`. An
    exception raised by the energy is not allowed to stop emcee's loop: the batch gets
    $-\infty$, the walkers in it are counted in `n_errors`, and the first exception is
    logged as a warning with its message (later ones only counted). Runners report both counts.
    Likelihood calls are counted by `target.n_evaluations`.
    """

    def __init__(self, target, dtype: torch.dtype = torch.float64):
        self.target, self.dtype = target, dtype
        self.n_nonfinite = 0
        self.n_errors = 0
        self.first_error: str | None = None

    def __call__(self, coords):
        arr = np.asarray(coords, dtype=np.float64)
        y = torch.as_tensor(np.atleast_2d(arr), dtype=self.dtype)
        try:
            with torch.no_grad():
                lp = -self.target.energy(y).cpu().double().numpy()
        except Exception as exc:  # noqa: BLE001 - never raise inside emcee's loop
            if self.first_error is None:
                self.first_error = f"{type(exc).__name__}: {exc}"
                logger.warning(
                    "the energy raised inside emcee (%s); those walkers get log p = -inf and "
                    "further errors are counted in n_errors",
                    self.first_error,
                )
            self.n_errors += int(y.shape[0])
            lp = np.full(y.shape[0], -np.inf)
        bad = ~np.isfinite(lp)
        self.n_nonfinite += int(bad.sum())
        lp = np.where(bad, -np.inf, lp)
        return lp if arr.ndim == 2 else float(lp[0])

    def counts(self) -> dict:
        """`{"n_nonfinite": ..., "n_errors": ...}` for a runner's `info`; warns if either
        is non-zero."""
        if self.n_nonfinite:
            logger.warning(
                "%d emcee log-probabilities were non-finite (%d of them from exceptions)",
                self.n_nonfinite,
                self.n_errors,
            )
        return {"n_nonfinite": int(self.n_nonfinite), "n_errors": int(self.n_errors)}


class FlowMove(MHMove):
    """Independence proposals from `flow` for every walker (an `emcee.moves.MHMove`).

    Args:
        flow: anything with `sample(n, generator) -> (x, z, log_q)` and `log_prob(x)`
            over the same coordinates as emcee's walkers (`[n_walkers, ndim]`), usually a
            [`Flow`][boltzflow.flows.base.Flow] trained on the target.
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
        """emcee's MH step (`emcee.moves.MHMove.propose`), counting accepted walkers."""
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
    """Ensemble size: `walkers` or `max(32, 2·dim + 2)`, made even."""
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
    init="auto",
    progress: bool = False,
) -> SamplingResult:
    r"""Run emcee's ensemble sampler (optionally mixed with
    [`FlowMove`][boltzflow.sampling.emcee_move.FlowMove]) as a runner.

    The stretch move (Goodman & Weare 2010) alone is the usual baseline; `flow_weight > 0`
    mixes in flow independence moves with that probability. Walkers start from the target's
    `sample_prior`, or around the mode where it has none (`init`;
    [`start_points`][boltzflow.sampling.starts.start_points]), the first `burn_fraction` of the
    steps is discarded, and each walker is reported as one chain, `x [walkers, draws, dim]`.
    `accepted` marks the draws where the walker moved. Every log-probability call is counted
    in `energy_evaluations` (burn-in included).

    Args:
        n_samples: kept draws in total (`ceil(n_samples / walkers)` per walker).
        walkers: ensemble size (default `max(32, 2·dim + 2)`, made even).
    """
    dim, walkers = int(target.dim), _walkers(target, walkers)
    rs = np.random.RandomState(int(seed))
    x0 = start_points(flow, target, walkers, init, generator_for_module(flow, int(seed)))
    x0 = match_flow_dtype(flow, target, x0) if flow_weight > 0 else x0
    moves = emcee.moves.StretchMove()
    if flow_weight > 0:
        moves = [(moves, 1.0 - flow_weight), (FlowMove(flow), flow_weight)]
    cost = RunCost(target)
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
    info = {
        "acceptance_rate": float(np.mean(sampler.acceptance_fraction)),
        "walkers": walkers,
        **log_prob.counts(),
    }
    method = "emcee" if flow_weight == 0 else "emcee+flow"
    return SamplingResult.from_chain(x, energy, accepted, method=method, cost=cost, info=info)


def _chains(sampler, start: int = 0) -> torch.Tensor:
    """emcee's `[steps, walkers, dim]` chain from `start` as `[walkers, draws, dim]`."""
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
    init="auto",
    evidence_samples: int = 0,
    progress: bool = False,
) -> SamplingResult:
    r"""emcee accelerated by a flow trained on its own walkers, then frozen (flowMC-style).

    1. Burn-in: `burn_steps` stretch-move steps from prior draws (gradient-free).
    2. `rounds` times: train the flow by maximum likelihood on the pooled walker history
       (the second half of burn-in and every later round), then run `round_steps` steps of
       the mixture `[(StretchMove, 1 - w), (FlowMove, w)]`.
    3. Freeze the flow and run the same mixture for `ceil(n_samples / walkers)` kept steps:
       a fixed MH kernel mixture, hence exact MCMC (Tierney 1994) for any flow.

    `defensive > 0` proposes from [`DefensiveFlow`][boltzflow.sampling.proposals.DefensiveFlow]
    (that share of draws from a base twice as wide). Works with numpy likelihoods (no gradients
    needed). `info` has the flow-move and overall acceptance, warm-up cost, R-hat and ESS (walkers
    as chains, arviz) and, with `evidence_samples`, the flow importance-sampling evidence.
    """
    dim, walkers = int(target.dim), _walkers(target, walkers)
    rs = np.random.RandomState(int(seed))
    g = generator_for_module(flow, int(seed))
    cost = RunCost(target)
    x0 = match_flow_dtype(flow, target, start_points(flow, target, walkers, init, g))
    x0 = x0.double().cpu().numpy()
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
        fit_nll(flow, data, train_steps, batch_size, lr, g)
        n_acc, n_prop = move.n_accepted, move.n_proposed
        stage = ensemble(mixed)
        state = stage.run_mcmc(state, int(round_steps), progress=progress)
        history.append(_chains(stage))
        warm_acc.append((move.n_accepted - n_acc) / max(move.n_proposed - n_prop, 1))
    warmup_evals, warmup_seconds = cost.evaluations, cost.seconds
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
        **log_prob.counts(),
    }
    if evidence_samples > 0:
        with frozen(flow):
            info["evidence"] = flow_evidence(flow, target, evidence_samples, seed=int(seed))
    return SamplingResult.from_chain(
        x, energy, accepted, method="flow-emcee", cost=cost, info=info, diagnostics=True
    )
