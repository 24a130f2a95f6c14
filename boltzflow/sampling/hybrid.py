r"""Hybrid local + global flow MCMC (flowMC).

Gabrié, Rotskoff & Vanden-Eijnden 2022, PNAS 119, e2109420119; Wong, Gabrié &
Foreman-Mackey 2023, "flowMC", JOSS 8, 5021; Grenioux et al. 2023. Batched chains alternate
local moves (MALA or HMC) with global flow independence moves. During warm-up the flow is
trained by maximum likelihood (NLL, forward KL; [`fit_nll`][boltzflow.training.fit.fit_nll]) on the
pooled history of all chains, and the local step size (and, for HMC, a diagonal or dense mass)
is adapted ([`boltzflow.sampling.adaptation`][boltzflow.sampling.adaptation]). After warm-up
everything is frozen, so the production chain is the fixed Markov kernel
$K = K_{local}^{r_1} K_{IMH}^{r_2}$, which leaves $p$ invariant (Tierney 1994) — ordinary MCMC,
however well or badly the flow was trained. Local and global acceptance are reported separately.

The settings come in four small frozen records: [`Schedule`][boltzflow.sampling.hybrid.Schedule]
(chains, warm-up rounds, production cycle), [`LocalMoves`][boltzflow.sampling.hybrid.LocalMoves],
[`GlobalMoves`][boltzflow.sampling.hybrid.GlobalMoves] (the flow's moves and its training) and
[`Evidence`][boltzflow.sampling.hybrid.Evidence]. Recipes use the flat keys of `FLAT_KEYS` (`local`,
`step_size`, `warmup_rounds`, `evidence_samples`, ...) through
[`hybrid_sampler`][boltzflow.sampling.hybrid.hybrid_sampler], the entry registered as `"hybrid"`.

The result is a [`SamplingResult`][boltzflow.sampling.runners.SamplingResult] with `[chains, draws]`
layout, zero log-weights (exact MCMC output), R-hat and bulk/tail ESS (arviz) in `info`.
Every target evaluation of warm-up, production and evidence is counted in
`energy_evaluations`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from boltzflow.flows.base import frozen
from boltzflow.rng import generator_for_module
from boltzflow.sampling.adaptation import (
    ADAPT_EVERY,
    estimate_metric,
    restart_from_healthy,
    run_adapting_step_size,
    unhealthy_chains,
)
from boltzflow.sampling.chains import run_chain
from boltzflow.sampling.kernels import HMC, MALA, IndependenceMH, Mixture
from boltzflow.sampling.runners import RunCost, SamplingResult, flow_evidence
from boltzflow.sampling.starts import INIT_CHOICES, descend, match_flow_dtype, start_points
from boltzflow.training.fit import fit_affine_to_data, fit_nll

logger = logging.getLogger(__name__)

__all__ = [
    "Schedule",
    "LocalMoves",
    "GlobalMoves",
    "Evidence",
    "FLAT_KEYS",
    "hybrid_settings",
    "hybrid",
    "hybrid_sampler",
]


def _check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


@dataclass(frozen=True)
class Schedule:
    """How many chains, how long the warm-up, and the production cycle.

    Attributes:
        chains: batched chains (each keeps `ceil(n_samples / chains)` draws).
        warmup_rounds: rounds of local steps, flow steps (from the second round on) and flow
            training; the first round is discarded as burn-in when there are several.
        repeats: production cycle `(local, global)`: steps of each kind per kept draw.
        thin: keep every `thin`-th production cycle.
        init: where the chains start
            ([`start_points`][boltzflow.sampling.starts.start_points]): `"auto"` (the prior
            where it can be sampled, else overdispersed Laplace draws around the mode),
            `"prior"`, `"laplace"`, `"flow"`, or a `Tensor[chains, dim]`.
        init_steps: Adam steps (lr 0.05) on `u` from the starting points before the first
            round, to leave the prior's tails quickly (counted as evaluations).
        progress: show progress bars.
    """

    chains: int = 32
    warmup_rounds: int = 8
    repeats: tuple[int, int] = (1, 1)
    thin: int = 1
    init: object = "auto"
    init_steps: int = 0
    progress: bool = False

    def __post_init__(self):
        object.__setattr__(self, "repeats", tuple(int(r) for r in self.repeats))
        if not isinstance(self.init, torch.Tensor):
            _check_choice("init", self.init, INIT_CHOICES)
        if int(self.warmup_rounds) < 1:
            raise ValueError("hybrid needs warmup_rounds >= 1")


@dataclass(frozen=True)
class LocalMoves:
    """The local kernel and its warm-up adaptation.

    Attributes:
        kind: `"mala"` or `"hmc"` (`n_leapfrog` steps, `jitter` as in
            [`HMC`][boltzflow.sampling.kernels.HMC]).
        steps: local steps per warm-up round.
        step_size: initial step, adapted per chain in warm-up towards `target_accept`
            (default 0.57 for MALA, 0.75 for HMC) every
            `ADAPT_EVERY` steps.
        metric: HMC mass from the warm-up history, re-estimated every round: `"diag"` or
            `"dense"` ([`estimate_metric`][boltzflow.sampling.adaptation.estimate_metric]).
    """

    kind: str = "mala"
    steps: int = 50
    step_size: float = 0.01
    n_leapfrog: int = 8
    jitter: float = 0.0
    metric: str = "diag"
    target_accept: float | None = None

    def __post_init__(self):
        _check_choice("local", self.kind, ("mala", "hmc"))
        _check_choice("metric", self.metric, ("diag", "dense"))
        if int(self.steps) < 1:
            raise ValueError("hybrid needs local_steps >= 1")

    @property
    def accept(self) -> float:
        """The target acceptance of the step-size adaptation."""
        if self.target_accept is not None:
            return float(self.target_accept)
        return 0.57 if self.kind == "mala" else 0.75

    def kernel(self, target, step: torch.Tensor, mass=1.0):
        """The local kernel with per-chain steps `step [chains, 1]` and HMC `mass`."""
        if self.kind == "mala":
            return MALA(target, step)
        return HMC(target, step, self.n_leapfrog, mass=mass, jitter=self.jitter)


@dataclass(frozen=True)
class GlobalMoves:
    """The flow's independence moves and the NLL training that shapes them in warm-up.

    Attributes:
        steps: flow independence steps per warm-up round (from the second round on).
        train_steps: Adam steps per round on the pooled history
            ([`fit_nll`][boltzflow.training.fit.fit_nll]).
        batch_size, lr: minibatch size and learning rate of that training (and of the
            evidence training).
        history_rounds: train on the last this many rounds only (default: all but the first).
    """

    steps: int = 10
    train_steps: int = 300
    batch_size: int = 512
    lr: float = 1e-3
    history_rounds: int | None = None


@dataclass(frozen=True)
class Evidence:
    r"""Evidence $\log Z$ from the frozen flow after the chains (off by default).

    Attributes:
        samples: if > 0, draw this many i.i.d. flow samples and report $\log Z$
            (bootstrap error, PSIS k̂) as `info["evidence"]`
            ([`flow_evidence`][boltzflow.sampling.runners.flow_evidence]), with the coverage
            check of the flow against the finished chains
            ([`boltzflow.sampling.coverage`][boltzflow.sampling.coverage]): `coverage`,
            `low_density_fraction`, `coverage_ok` and `flagged`.
        train_steps: before those draws, set the flow's affine layers to the moments of the
            first three quarters of every finished chain and train it this many more Adam
            steps on them; the last quarter is held out for the coverage check. The chains
            have finished (the MCMC is unaffected) and importance sampling is unbiased for any
            flow, so this only makes the evidence's error smaller.
    """

    samples: int = 0
    train_steps: int = 0


_GROUPS = {
    "schedule": Schedule,
    "local": LocalMoves,
    "global_moves": GlobalMoves,
    "evidence": Evidence,
}
"""The settings records by the name of the `hybrid` argument that takes them."""

FLAT_KEYS: dict[str, tuple[str, str]] = {
    **{k: ("schedule", k) for k in ("chains", "warmup_rounds", "repeats", "thin", "init")},
    "init_steps": ("schedule", "init_steps"),
    "progress": ("schedule", "progress"),
    "local": ("local", "kind"),
    "local_steps": ("local", "steps"),
    **{k: ("local", k) for k in ("step_size", "n_leapfrog", "jitter", "metric", "target_accept")},
    "global_steps": ("global_moves", "steps"),
    **{k: ("global_moves", k) for k in ("train_steps", "batch_size", "lr", "history_rounds")},
    "evidence_samples": ("evidence", "samples"),
    "evidence_train_steps": ("evidence", "train_steps"),
}
"""Flat recipe key -> `(hybrid argument, field)` of the settings record it sets."""


def hybrid_settings(**flat) -> dict:
    """Map flat keys (`FLAT_KEYS`) onto the settings records: the keyword arguments of
    [`hybrid`][boltzflow.sampling.hybrid.hybrid] other than `n_samples` and `seed`. Unset fields
    keep their defaults.

    Raises:
        TypeError: a key that is not in `FLAT_KEYS` (the message names it).
    """
    fields: dict[str, dict] = {group: {} for group in _GROUPS}
    for key, value in flat.items():
        if key not in FLAT_KEYS:
            allowed = ", ".join(sorted(FLAT_KEYS))
            raise TypeError(f"hybrid: unknown setting '{key}' (allowed: {allowed})")
        group, field = FLAT_KEYS[key]
        fields[group][field] = value
    return {group: cls(**fields[group]) for group, cls in _GROUPS.items()}


def hybrid(
    flow,
    target,
    *,
    n_samples: int,
    seed: int = 0,
    schedule: Schedule = Schedule(),
    local: LocalMoves = LocalMoves(),
    global_moves: GlobalMoves = GlobalMoves(),
    evidence: Evidence = Evidence(),
) -> SamplingResult:
    r"""Hybrid local + global flow MCMC (flowMC); see the module docstring.

    Args:
        flow: the global proposal; trained in place by NLL during warm-up, then frozen.
        target: the energy `u`; must be differentiable for the local kernel.
        n_samples: kept draws in total (`ceil(n_samples / chains)` per chain).
        seed: seeds the starting points, the training minibatches and the chains.
        schedule, local, global_moves, evidence: the settings records (their docstrings).

    Returns:
        [`SamplingResult`][boltzflow.sampling.runners.SamplingResult] with `info`: `local`,
        `local_acceptance`, `global_acceptance`, `acceptance_rate`, `warmup_evaluations`,
        `warmup_seconds`, `warmup_global_acceptance`, `warmup_restarts` (chains restarted from
        healthy ones, per round), `production_stuck_chains`, `step_size_median`,
        `final_nll`, R-hat and ESS, and `evidence` (with `evidence_nll` when trained).
    """
    chains, progress, rounds = int(schedule.chains), schedule.progress, int(schedule.warmup_rounds)
    g = generator_for_module(flow, int(seed))
    cost = RunCost(target)
    x0 = start_points(flow, target, chains, schedule.init, g)
    x0 = match_flow_dtype(flow, target, descend(target, x0, schedule.init_steps))
    step = torch.full((chains, 1), float(local.step_size), dtype=x0.dtype)
    mass = 1.0
    state = local.kernel(target, step, mass).init(x0, seed=int(seed))
    history, losses, global_acc, restarts = [], [], [], []
    for r in range(rounds):
        state = local.kernel(target, step, mass).adopt(state)
        res, step = run_adapting_step_size(
            functools.partial(local.kernel, target, mass=mass),
            state,
            local.steps,
            step,
            local.accept,
            ADAPT_EVERY,
            progress,
        )
        state = res.final_state
        bad = unhealthy_chains(res.energy, step, int(target.dim))
        restarts.append(int(bad.sum()))
        if 0 < restarts[-1] < chains / 2:
            logger.warning("warm-up round %d: %d stuck chain(s) restarted", r, restarts[-1])
            x_new, step = restart_from_healthy(state.x, step, bad, g)
            state = local.kernel(target, step, mass).init(x_new, seed=int(seed) + 1000 + r)
        healthy = res.x[~bad.to(res.x.device)] if restarts[-1] < chains / 2 else res.x
        if r > 0 and global_moves.steps > 0:
            imh = IndependenceMH(flow, target)
            res_g = run_chain(imh, imh.adopt(state), global_moves.steps, progress=progress)
            state = res_g.final_state
            global_acc.append(float(res_g.accepted.double().mean()))
            history.append(res_g.x)
        if r > 0 or rounds == 1:
            history.append(healthy)
        if not history:
            continue
        keep = global_moves.history_rounds
        window = history if keep is None else history[-2 * int(keep) :]
        data = torch.cat([h.reshape(-1, *h.shape[2:]) for h in window]).to(x0.dtype)
        if r == (1 if rounds > 1 else 0):
            fit_affine_to_data(flow, data)
        losses += fit_nll(
            flow, data, global_moves.train_steps, global_moves.batch_size, global_moves.lr, g
        )
        if local.kind == "hmc":  # this round's healthy draws only: burn-in never enters
            mass = estimate_metric(healthy.reshape(-1, *healthy.shape[2:]), local.metric)
        logger.info(
            "warm-up round %d: local acceptance %.2f, global %s, NLL %.3f, %d evaluations",
            r,
            float(res.accepted.double().mean()),
            f"{global_acc[-1]:.2f}" if global_acc else "-",
            losses[-1] if losses else math.nan,
            cost.evaluations,
        )
    # the step size again, with the final metric (Stan's terminal window); not kept
    state = local.kernel(target, step, mass).adopt(state)
    n_final, kernel = (
        max(local.steps // 2, 3 * ADAPT_EVERY),
        functools.partial(local.kernel, mass=mass),
    )
    res_f, step = run_adapting_step_size(
        functools.partial(kernel, target), state, n_final, step, local.accept, ADAPT_EVERY, progress
    )
    state = res_f.final_state
    warmup_evals, warmup_seconds = cost.evaluations, cost.seconds
    with frozen(flow):
        mix = Mixture(
            [local.kernel(target, step, mass), IndependenceMH(flow, target)],
            repeats=schedule.repeats,
        )
        n_steps = -(-int(n_samples) // chains) * schedule.thin
        res = run_chain(mix, mix.adopt(state), n_steps, thin=schedule.thin, progress=progress)
    rates = Mixture.acceptance_rates(res.stats["kernel_accepted"], res.stats["kernel_steps"])
    stuck = unhealthy_chains(res.energy, step, int(target.dim))
    if bool(stuck.any()):
        logger.warning(
            "%d chain(s) sit far above the others' energies in production", int(stuck.sum())
        )
    info = {
        "local": local.kind,
        "local_acceptance": float(rates[0]),
        "global_acceptance": float(rates[1]),
        "warmup_evaluations": int(warmup_evals),
        "warmup_seconds": warmup_seconds,
        "warmup_global_acceptance": global_acc,
        "warmup_restarts": restarts,
        "production_stuck_chains": int(stuck.sum()),
        "step_size_median": float(step.median()),
        "final_nll": float(np.mean(losses[-20:])) if losses else math.nan,
    }
    if evidence.samples > 0:
        chain_x, cut = res.x.to(x0.dtype), 3 * res.x.shape[1] // 4 * (evidence.train_steps > 0)
        if cut > 0:  # refit on the chains' first 3/4, output affine included
            pooled = chain_x[:, :cut].reshape(-1, *res.x.shape[2:])
            fit_affine_to_data(flow, pooled)
            b, lr = global_moves.batch_size, global_moves.lr
            nll = fit_nll(flow, pooled, evidence.train_steps, b, lr, g)
            info["evidence_nll"] = float(np.mean(nll[-20:]))
        with frozen(flow):  # coverage on the held-out last quarter
            info["evidence"] = flow_evidence(
                flow, target, evidence.samples, int(seed), chain_x[:, cut:], res.energy[:, cut:]
            )
    return SamplingResult.from_chain(
        res.x, res.energy, res.accepted, method="hybrid", cost=cost, info=info, diagnostics=True
    )


def hybrid_sampler(flow, target, *, n_samples: int, seed: int = 0, **settings) -> SamplingResult:
    """[`hybrid`][boltzflow.sampling.hybrid.hybrid] with flat settings, as a recipe's `[sampling]`
    table gives them (`method = "hybrid"`): `settings` are keys of `FLAT_KEYS`, mapped by
    [`hybrid_settings`][boltzflow.sampling.hybrid.hybrid_settings]; an unknown key raises a
    `TypeError` naming it. The signature lists every flat key with its default, so recipe validation
    sees them."""
    return hybrid(flow, target, n_samples=n_samples, seed=seed, **hybrid_settings(**settings))


def _flat_signature() -> inspect.Signature:
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter("flow", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("target", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("n_samples", kw, annotation=int),
        inspect.Parameter("seed", kw, default=0, annotation=int),
    ]
    for key, (group, field) in FLAT_KEYS.items():
        default = {f.name: f.default for f in dataclasses.fields(_GROUPS[group])}[field]
        params.append(inspect.Parameter(key, kw, default=default))
    return inspect.Signature(params, return_annotation=SamplingResult)


hybrid_sampler.__signature__ = _flat_signature()
