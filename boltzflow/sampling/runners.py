r"""Sampler runners used by recipes: a flow and a target in, a
[`SamplingResult`][boltzflow.sampling.runners.SamplingResult] out.

Every runner has the signature `fn(flow, target, *, n_samples, seed, **params)` and is
registered in `boltzflow.runs.registry.SAMPLERS`. Results are always laid out as
`[chains, draws, ...]` (importance sampling is one "chain" of independent draws), which is
the layout of the `posterior` group in `samples.nc`. Every runner builds its result with
[`SamplingResult.from_chain`][boltzflow.sampling.runners.SamplingResult.from_chain] (MCMC) or
[`SamplingResult.from_draws`][boltzflow.sampling.runners.SamplingResult.from_draws] (weighted i.i.d.
draws), with the cost measured by a [`RunCost`][boltzflow.sampling.runners.RunCost] started when the
run starts.

Also here, the plumbing the flow-based runners share: batched flow draws with their
log-weights ([`draw_with_log_weights`][boltzflow.sampling.runners.draw_with_log_weights]), flow
importance-sampling evidence ([`flow_evidence`][boltzflow.sampling.runners.flow_evidence]), batched
independence MH over cached draws
([`independence_chains`][boltzflow.sampling.runners.independence_chains]). Chain starting points
are in [`boltzflow.sampling.starts`][boltzflow.sampling.starts].
"""

from __future__ import annotations

import time
from typing import NamedTuple

import torch

from boltzflow.rng import generator_for_module
from boltzflow.sampling.kernels.imh import imh_sweep
from boltzflow.weights import importance_log_weights

__all__ = [
    "SamplingResult",
    "RunCost",
    "FlowDraws",
    "draw_diagnostics",
    "draw_with_log_weights",
    "log_q_kind",
    "flow_evidence",
    "independence_chains",
    "constrained_draws",
    "importance_sampling",
    "flow_imh",
]


class RunCost:
    """The meter of one run: target evaluations and wall-clock seconds since it was made."""

    def __init__(self, target):
        self.target = target
        self.n0, self.t0 = target.n_evaluations, time.perf_counter()

    @property
    def evaluations(self) -> int:
        """Target evaluations since the start (counted by `target.n_evaluations`)."""
        return self.target.n_evaluations - self.n0

    @property
    def seconds(self) -> float:
        """Wall-clock seconds since the start."""
        return time.perf_counter() - self.t0


class SamplingResult(NamedTuple):
    """Samples and per-sample statistics from one sampler run.

    Attributes:
        x: samples `[chains, draws, *event_shape]`.
        log_weight: importance log-weights `[chains, draws]` (zeros for exact MCMC output).
        energy: reduced energies `[chains, draws]` in kT (the target's own values).
        accepted: MCMC acceptance flags `[chains, draws]`, or `None` for i.i.d. draws.
        method: the sampler's name.
        energy_evaluations: target evaluations spent by the sampler, warm-up, flow training
            and evidence draws included.
        wall_seconds: wall-clock time.
        info: extra JSON-serialisable numbers; they are copied into `summary.json`'s
            `sampling` block. Keys that mean the same in every runner:

            * `acceptance_rate` -- fraction of kept draws whose step moved the chain (MCMC;
              emcee reports its own per-walker acceptance fraction);
            * `n_warmup` -- steps per chain run and discarded before the first kept draw;
            * `warmup_evaluations`, `warmup_seconds` -- target evaluations and seconds
              spent before production (adaptation, flow training);
            * `step_size` (fixed) or `step_size_median` (adapted per chain, median);
            * `rhat_max`, `ess_bulk_min`, `ess_tail_min` -- from
              [`chain_diagnostics`][boltzflow.sampling.diagnostics.chain_diagnostics];
            * `local_acceptance`, `global_acceptance` -- per-move rates of a hybrid chain;
              `warmup_global_acceptance` the flow moves' rate per warm-up round;
            * `evidence` -- [`as_dict`][boltzflow.sampling.reweighting.ReweightingResult.as_dict]
              of flow importance draws (log Z with bootstrap error, ESS, PSIS k̂);
            * `tau_int_<observable>` (and `..._lower_bound`) -- lattice runners;
            * `walkers`, `n_nonfinite`, `n_errors` -- emcee runners.
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

    @classmethod
    def from_chain(
        cls,
        x: torch.Tensor,
        energy: torch.Tensor,
        accepted: torch.Tensor,
        *,
        method: str,
        cost: RunCost,
        info: dict | None = None,
        diagnostics: bool = False,
    ) -> SamplingResult:
        """Exact MCMC draws `x [chains, draws, *event]`: zero log-weights, the cost so far,
        `info["acceptance_rate"]` from `accepted` unless `info` has one, and with
        `diagnostics` the R-hat and ESS keys; for a posterior also `theta_rhat_max`,
        `theta_ess_bulk_min`, `theta_ess_tail_min` over its constrained parameters
        ([`constrained_draws`][boltzflow.sampling.runners.constrained_draws])."""
        info = dict(info or {})
        if "acceptance_rate" not in info:
            info = {"acceptance_rate": float(accepted.double().mean()), **info}
        if diagnostics:
            info.update(draw_diagnostics(cost.target, x))
        zeros = torch.zeros_like(energy)
        return cls(x, zeros, energy, accepted, method, cost.evaluations, cost.seconds, info)

    @classmethod
    def from_draws(
        cls,
        x: torch.Tensor,
        log_weight: torch.Tensor,
        energy: torch.Tensor,
        *,
        method: str,
        cost: RunCost,
        info: dict | None = None,
    ) -> SamplingResult:
        """Weighted i.i.d. draws `x [n, *event]` (with `log_weight`, `energy` `[n]`) as
        one chain, with the cost so far."""
        return cls(
            x.unsqueeze(0),
            log_weight.unsqueeze(0),
            energy.unsqueeze(0),
            None,
            method,
            cost.evaluations,
            cost.seconds,
            dict(info or {}),
        )


@torch.no_grad()
def constrained_draws(target, x: torch.Tensor) -> torch.Tensor | None:
    """Draws `x [chains, draws, dim]` of a [`Posterior`][boltzflow.energies.posterior.Posterior]
    in its constrained parameters, `[chains, draws, n_theta]` (ordered as the posterior's `names`);
    `None` for a target without constrained parameters."""
    if x.ndim != 3:
        return None
    chains, draws = x.shape[:2]
    try:
        theta = target.constrain(x.reshape(chains * draws, -1)).theta
    except NotImplementedError:
        return None
    return theta.reshape(chains, draws, -1)


def draw_diagnostics(target, x: torch.Tensor) -> dict:
    """R-hat and ESS of draws `x [chains, draws, *event]` of `target`
    ([`chain_diagnostics`][boltzflow.sampling.diagnostics.chain_diagnostics]); for a posterior
    also `theta_rhat_max`, `theta_ess_bulk_min`, `theta_ess_tail_min` over its constrained
    parameters ([`constrained_draws`][boltzflow.sampling.runners.constrained_draws])."""
    from boltzflow.sampling.diagnostics import chain_diagnostics

    out = chain_diagnostics(x)
    theta = constrained_draws(target, x)
    if theta is not None:  # a posterior: the same diagnostics on the named parameters
        out.update({f"theta_{k}": v for k, v in chain_diagnostics(theta).items()})
    return out


class FlowDraws(NamedTuple):
    """`n` proposal draws `x [n, *event]` with `log_weight`, `energy` (kT) and the
    proposal's `log_q`, each `[n]`; `log_weight = -energy - log_q` under the rule of
    [`boltzflow.weights`][boltzflow.weights], while `energy` and `log_q` are the values as
    computed."""

    x: torch.Tensor
    log_weight: torch.Tensor
    energy: torch.Tensor
    log_q: torch.Tensor


@torch.no_grad()
def draw_with_log_weights(
    flow, target, n: int, generator: torch.Generator | None = None, batch_size: int = 8192
) -> FlowDraws:
    """Draw `n` samples of `flow` (anything with `sample(n, generator) -> (x, z, log_q)`)
    in batches and score them: one target evaluation per draw.

    No gradients are tracked (the draws are data), whether or not the flow is trainable.
    """
    xs, lws, us, lqs = [], [], [], []
    done = 0
    while done < n:
        m = min(batch_size, n - done)
        s = flow.sample(m, generator=generator)
        u = target.energy(s.x)
        xs.append(s.x)
        lws.append(importance_log_weights(u, s.log_q))
        us.append(u)
        lqs.append(s.log_q)
        done += m
    return FlowDraws(torch.cat(xs), torch.cat(lws), torch.cat(us), torch.cat(lqs))


def log_q_kind(flow) -> dict:
    """`{"log_q": "path"}` for a stochastic flow, whose draws carry path log-densities
    (`boltzflow.flows.base.PathSample`), else `{}`. Runners put it in `info`, so
    `summary.json` says which quantity the log-weights were built from."""
    return {"log_q": "path"} if getattr(flow, "is_stochastic", False) else {}


def flow_evidence(
    flow, target, n: int, seed: int = 0, chains: torch.Tensor | None = None, energy=None
) -> dict:
    r"""Evidence $\log Z$ by flow importance sampling of `n` draws (generator seeded
    `seed + 1`): [`reweight`][boltzflow.sampling.reweighting.reweight] as a dict.

    With the finished chains' draws `chains [chains, draws, *event]` and their energies
    `energy [chains, draws]`, the dict also has the coverage check of
    [`chain_coverage`][boltzflow.sampling.coverage.chain_coverage] (`coverage`,
    `low_density_fraction`, `coverage_ok`, `flagged`): an evidence whose proposal misses
    target mass is flagged, whatever its PSIS k̂ says.
    """
    from boltzflow.sampling.coverage import chain_coverage
    from boltzflow.sampling.reweighting import reweight

    g = generator_for_module(flow, int(seed) + 1)
    draws = draw_with_log_weights(flow, target, int(n), g)
    out = reweight(draws.log_weight, seed=int(seed)).as_dict()
    if chains is not None and energy is not None:
        out.update(chain_coverage(flow, chains, energy, out, draws.log_q))
    return out


def independence_chains(
    draws: FlowDraws,
    chains: int,
    n_warmup: int,
    generator: torch.Generator,
    *,
    method: str,
    cost: RunCost,
    info: dict | None = None,
    diagnostics: bool = False,
) -> SamplingResult:
    """Batched independence MH over cached draws, by
    `imh_sweep`.

    `draws` holds `(steps + 1) · chains` proposals in step-major order; the result has
    `steps - n_warmup` kept draws per chain, built by
    [`SamplingResult.from_chain`][boltzflow.sampling.runners.SamplingResult.from_chain].
    """
    sweep = imh_sweep(draws.log_weight.reshape(-1, int(chains)), int(n_warmup), generator)
    flat = sweep.index.reshape(-1)
    x = draws.x[flat].reshape(*sweep.index.shape, *draws.x.shape[1:])
    energy = draws.energy[flat].reshape(sweep.index.shape)
    return SamplingResult.from_chain(
        x, energy, sweep.accepted, method=method, cost=cost, info=info, diagnostics=diagnostics
    )


def importance_sampling(
    flow, target, *, n_samples: int, seed: int = 0, batch_size: int = 8192
) -> SamplingResult:
    r"""I.i.d. flow draws with their importance log-weights, as one "chain".

    $$
    x_i \sim q, \qquad \log w_i = -u(x_i) - \log q(x_i)
    $$

    (non-finite values give weight 0 and are counted; [`boltzflow.weights`][boltzflow.weights]).
    Summarise the weights with [`reweight`][boltzflow.sampling.reweighting.reweight] (ESS, log Z ±
    error).

    Args:
        flow: the proposal (`sample(n, generator) -> (x, z, log_q)`), used without gradients.
        target: the [`Energy`][boltzflow.energies.base.Energy] (kT).
        n_samples: number of draws `n`.
        seed: seeds a generator on the flow's device.
        batch_size: draws per flow call (memory).

    Returns:
        [`SamplingResult`][boltzflow.sampling.runners.SamplingResult] with `x [1, n, *event_shape]`,
        `log_weight` and `energy` `[1, n]` and `accepted = None`.
    """
    g = generator_for_module(flow, seed)
    cost = RunCost(target)
    d = draw_with_log_weights(flow, target, int(n_samples), g, batch_size)
    info = log_q_kind(flow)
    return SamplingResult.from_draws(
        d.x, d.log_weight, d.energy, method="importance", cost=cost, info=info
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

    All proposals are drawn and scored in large batches first; the accept/reject sweep then
    runs over the cached log-weights
    ([`independence_chains`][boltzflow.sampling.runners.independence_chains]):
    $\alpha = \min(1, w(x')/w(x))$ with $\log w = -u - \log q$ (Tierney 1994; used with flows by
    Nicoli et al. 2020 and Gabrié et al. 2022). The transition law is exactly that of
    [`IndependenceMH`][boltzflow.sampling.kernels.IndependenceMH].

    Runs `chains` chains for `ceil(n_samples / chains)` kept draws each after `n_warmup`
    discarded steps (default: 10% of the draws, at most 100). The chain is exact for `p`
    whatever the flow, so the returned `log_weight` is zero.
    """
    chains = int(chains)
    n_draws = -(-int(n_samples) // chains)
    warm = min(100, n_draws // 10) if n_warmup is None else int(n_warmup)
    g = generator_for_module(flow, seed)
    cost = RunCost(target)
    draws = draw_with_log_weights(flow, target, chains * (warm + n_draws + 1), g, batch_size)
    info = {"n_warmup": warm, **log_q_kind(flow)}
    return independence_chains(draws, chains, warm, g, method="imh", cost=cost, info=info)
