r"""Does an importance proposal cover the target's mass? A check with the target's own draws.

Importance sampling with a proposal $q$ estimates
$\hat Z = \frac1N\sum_i e^{-u(x_i)}/q(x_i)$, $x_i \sim q$. Where $q$ puts (almost) no mass,
no draw ever lands, so $\hat Z \to Z\,P_p(\text{region } q \text{ covers})$: the estimate is
biased low while every weight-based diagnostic (Kish ESS, PSIS $\hat k$; Vehtari et al. 2024)
looks clean, because those see only the draws $q$ makes. Draws of the target itself, from
finished MCMC chains, see the missing mass. For $y_j \sim p$ the *forward* ratio
$r_j = q(y_j)\,e^{u(y_j)}\,\hat Z$ estimates $q(y)/p(y)$, and

$$
\hat c = \frac1M \sum_j r_j \;\to\; Q(S_p)\,P_p(S_q),
$$

the fraction of the target's mass that the proposal covers (1 for a proposal that covers
everything; $1 - m$ if it misses a share $m$). This is the consistency check of bridge
sampling between the two directions (Meng & Wong 1996, Stat. Sin. 6, 831; forward and
reverse importance weights as in Grosse et al. 2015, "Sandwiching the marginal
likelihood", arXiv:1511.02543). Its standard error comes from the spread of the per-chain
means (batch means, robust to autocorrelation), combined with $\hat Z$'s own error:
$\mathrm{se}(\log\hat c)^2 = (\mathrm{se}(\hat c)/\hat c)^2 + \mathrm{se}(\log\hat Z)^2$.

A second, simpler number: the fraction of chain draws whose flow log-density lies below the
0.1% quantile of $\log q$ on the proposal's own draws (about 0.001 when $q \approx p$).

The evidence is **flagged** (`coverage_ok = False`) when $|\log\hat c| > 3\,\mathrm{se} + 0.005$
($\hat c < 1$: mass missing; $\hat c > 1$: chains that are not from the target, e.g. not
converged, or an estimate $\hat Z$ too high), when more than 5% of the chain draws are in the
proposal's 0.1% low-density tail, or when the forward ratios' own PSIS $\hat k$
(`forward_pareto_k`) exceeds 0.7: a proposal much wider than the target makes them
heavy-tailed ($r$ has infinite variance when $q^2/p$ is not integrable), and $\hat c$ cannot
be trusted. Chain draws that the proposal was trained on make $\hat c$ come out high (the flow
is denser at its training points); [`with_coverage`][boltzflow.sampling.coverage.with_coverage]
therefore uses the last quarter of each chain, which `hybrid`'s evidence refit holds out, or,
after SMC, the islands that the final flow fit held out (`info["flow_holdout_islands"]`; every
chain of SMC's independence-MH production, whose draws no fit saw).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from boltzflow.sampling.reweighting import pareto_k

__all__ = [
    "LOW_QUANTILE",
    "coverage_check",
    "chain_coverage",
    "with_coverage",
    "flow_log_prob",
]

logger = logging.getLogger(__name__)

LOW_QUANTILE = 1e-3
"""Quantile of the proposal's own $\\log q$ below which a chain draw counts as low-density."""
EXP_MAX = math.log(np.finfo(np.float64).max)
r"""Largest $\log c$ whose coverage $c = e^{\log c}$ is a finite float64 (above: `inf`)."""


@torch.no_grad()
def flow_log_prob(flow, x: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
    """`log q(x)` for `x [n, *event]` in batches, in the flow's dtype and device, `[n]`."""
    params = next(iter(flow.parameters()), None) if hasattr(flow, "parameters") else None
    kw = {} if params is None else {"dtype": params.dtype, "device": params.device}
    out = [flow.log_prob(x[i : i + batch_size].to(**kw)) for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out).double().cpu()


def coverage_check(
    chain_log_q,
    chain_energy,
    log_z: float,
    log_z_stderr: float,
    flow_log_q=None,
) -> dict:
    r"""The coverage of a proposal from target draws (module docstring).

    Args:
        chain_log_q: $\log q$ at the chain draws, `[chains, draws]` (or `[n]`: one chain).
        chain_energy: $u$ at the same draws, `[chains, draws]`, in kT.
        log_z: the proposal's importance estimate $\log\hat Z$.
        log_z_stderr: its standard error.
        flow_log_q: $\log q$ at the proposal's own draws `[n]`, for the low-density fraction.

    Returns:
        `coverage` ($\hat c$), `coverage_stderr` (of $\log\hat c$), `low_density_fraction`
        (NaN without `flow_log_q`), `forward_pareto_k` and `coverage_ok`.
    """
    lq = np.asarray(torch.as_tensor(chain_log_q).double().cpu(), dtype=np.float64)
    u = np.asarray(torch.as_tensor(chain_energy).double().cpu(), dtype=np.float64)
    lq, u = np.atleast_2d(lq), np.atleast_2d(u)
    ell = lq + u + float(log_z)
    ell = np.where(np.isfinite(ell), ell, -np.inf)  # an undefined ratio counts as no cover
    shift = float(np.max(ell[np.isfinite(ell)])) if np.isfinite(ell).any() else 0.0
    r = np.exp(ell - shift)
    chains = r.shape[0]
    means = r.mean(1)
    c = float(r.mean())
    if chains >= 2:
        se_c = float(means.std(ddof=1) / math.sqrt(chains))
    else:
        se_c = float(r.std(ddof=1) / math.sqrt(r.size))
    log_c = math.log(c) + shift if c > 0 else -math.inf
    rel = se_c / c if c > 0 else math.inf
    se_log = math.sqrt(rel**2 + float(log_z_stderr) ** 2)
    low = math.nan
    if flow_log_q is not None:
        own = np.asarray(torch.as_tensor(flow_log_q).double().cpu(), dtype=np.float64)
        own = own[np.isfinite(own)]
        if own.size:
            tau = float(np.quantile(own, LOW_QUANTILE))
            low = float(np.mean(~(lq >= tau)))
    k_fwd = float(pareto_k(ell.reshape(-1)))
    ok = bool(abs(log_c) <= 3.0 * se_log + 0.005) and not (low > 0.05) and k_fwd <= 0.7
    out = {
        "coverage": math.exp(log_c) if log_c < EXP_MAX else math.inf,  # -inf -> 0
        "coverage_stderr": se_log,
        "low_density_fraction": low,
        "forward_pareto_k": k_fwd,
        "coverage_ok": ok,
    }
    if not ok:
        logger.warning(
            "coverage check failed: coverage %.3g (log %.3f ± %.3f), %.1f%% of the chain draws "
            "in the proposal's low-density tail, forward k̂ %.2f; log Z is flagged",
            out["coverage"],
            log_c,
            se_log,
            100 * low,
            k_fwd,
        )
    return out


def chain_coverage(flow, x: torch.Tensor, energy: torch.Tensor, evidence: dict, flow_log_q=None):
    """[`coverage_check`][boltzflow.sampling.coverage.coverage_check] of `flow` against chain
    draws `x [chains, draws, *event]` with energies `energy [chains, draws]`, for an `evidence`
    dict in the layout of
    [`ReweightingResult.as_dict`][boltzflow.sampling.reweighting.ReweightingResult.as_dict].
    Returns the keys to add to it, with `flagged = not coverage_ok`; `{}` when the flow
    has no tractable density (a stochastic flow's path densities) or there are no chain draws.
    """
    if getattr(flow, "is_stochastic", False) or x.shape[0] * x.shape[1] < 2:
        return {}
    try:
        lq = flow_log_prob(flow, x.reshape(-1, *x.shape[2:])).reshape(x.shape[:2])
    except NotImplementedError:
        return {}
    lz = evidence["log_z"]
    out = coverage_check(lq, energy, lz["mean"], lz["stderr"], flow_log_q)
    out["flagged"] = not out["coverage_ok"]
    return out


def with_coverage(flow, result, importance, evidence: dict) -> dict:
    r"""`evidence` (the importance-sampling summary of `flow`) with the coverage keys of
    [`chain_coverage`][boltzflow.sampling.coverage.chain_coverage] added when `result` (a
    [`SamplingResult`][boltzflow.sampling.runners.SamplingResult]) holds MCMC chains of the
    target; `importance` is the importance-sampling result whose weights gave `evidence`
    ($\log q = -u - \log w$ on its draws sets the low-density threshold)."""
    if result.accepted is None:
        return evidence
    own_log_q = -(importance.energy + importance.log_weight).reshape(-1)
    held = (result.info or {}).get("flow_holdout_islands")
    if held:  # SMC: the islands that the final flow fit held out
        x, u = result.x[held], result.energy[held]
    else:
        cut = 3 * result.x.shape[1] // 4  # the held-out last quarter (hybrid's evidence refit)
        x, u = result.x[:, cut:], result.energy[:, cut:]
    return {**evidence, **chain_coverage(flow, x, u, evidence, own_log_q)}
