r"""Flow-preconditioned sequential Monte Carlo: adaptive tempering from a reference to the target,
gradient-free (pocoMC-style).

The particles follow the tempered path

$$
\pi_\beta(x) = \frac{r(x)\, e^{\beta\ell(x)}}{Z_\beta},\qquad
\ell(x) = -u(x) - \log r(x),\qquad 0 = \beta_0 < \beta_1 < \dots < \beta_K = 1,
$$

from a normalized reference $r$ (a posterior's prior, so that $\ell$ is the log-likelihood, or a
Gaussian) to the target $e^{-u}/Z$, with $Z_0 = 1$ and $Z_1 = Z$ (Del Moral, Doucet & Jasra 2006,
J. R. Stat. Soc. B 68, 411; Chopin & Papaspiliopoulos 2020, *An Introduction to Sequential Monte
Carlo*, ch. 17). Each stage:

1. **Reweight.** The incremental weight of particle $i$ is
   $w_i = e^{(\beta_{k+1} - \beta_k)\ell(x_i)}$
   ([`incremental_log_weights`][boltzflow.sampling.smc.incremental_log_weights]), and
   $\hat Z_{k+1}/\hat Z_k = \sum_i W_i w_i$ with the normalized weights $W_i$.
2. **Adapt the temperature.** $\beta_{k+1}$ is found by bisection so that the conditional ESS
   $(\sum_i W_i w_i)^2 / \sum_i W_i w_i^2$ is `ess_target` (as a fraction of the particles with a
   finite $\ell$; Zhou, Johansen & Aston 2016, J. Comput. Graph. Stat. 25, 701)
   ([`next_beta`][boltzflow.sampling.smc.next_beta]).
3. **Resample** (systematic; Carpenter, Clifford & Fearnhead 1999) when the Kish ESS falls below
   `resample_threshold` ([`systematic_resample`][boltzflow.sampling.smc.systematic_resample]),
   and always at $\beta = 1$, so that the final particles are equally weighted.
4. **Fit two flows**, one to the weighted particles of each half of the islands (even and odd
   index), by maximum likelihood, warm-started from the previous stage with a few Adam steps
   ([`fit_nll`][boltzflow.training.fit.fit_nll]).
5. **Move** the particles by MCMC in a flow's latent space, pCN or random walk, with the
   number of steps adapted to a target decorrelation
   ([`boltzflow.sampling.smc_moves`][boltzflow.sampling.smc_moves]). Each half is moved with
   the flow fitted to the *other* half (cross-fitting).

**Why cross-fitting.** A Metropolis kernel leaves $\pi_\beta$ invariant for any fixed flow,
but not a kernel built from the very points it moves: a flow fitted by maximum likelihood to
$N$ particles puts excess density on them, so an independence-type proposal accepts moves
*away* from them too often and the population drifts. On the eight schools posterior (2,048
particles, 10 parameters) fitting and moving the same particles shrank the sds of $\eta$ by
15 % and moved $\log Z$ by 0.13 (7 errors). A flow fitted to the other half is independent of
the particles it moves, so the kernel is exact for them.

Every step needs target values only, never gradients, so a numpy likelihood wrapped with
[`from_log_prob`][boltzflow.energies.posterior.from_log_prob] works. A particle whose target value
is not finite (the likelihood raised or returned NaN) gets weight 0 at the first $\beta > 0$
and is counted in `n_nonfinite`; the tempering criterion is computed over the finite ones, so
they never stall it.

**Errors: independent islands.** The particles are split into `islands` groups that are
reweighted, resampled and normalized separately (they share the temperature ladder and the flow,
which are fitted to all of them); each island's $\hat Z_b$ is an unbiased estimate of $Z$ given
the shared ladder and flow, and so are its posterior averages up to $O(1/N_b)$. Hence

$$
\hat Z = \frac1B\sum_b \hat Z_b, \qquad
\operatorname{se}(\log\hat Z) \approx \frac{\operatorname{sd}_b(\hat Z_b / \hat Z)}{\sqrt B},
\qquad \operatorname{MCSE}(\bar f) = \frac{\operatorname{sd}_b(\bar f_b)}{\sqrt B}
$$

(island particle models: Vergé, Dubarry, Del Moral & Moulines 2015, Stat. Comput. 25, 243), with
$B - 1$ degrees of freedom ([`island_mcse`][boltzflow.sampling.smc.island_mcse]). The result
is laid out with the islands as chains, `x [islands, particles per island, dim]`, so R-hat
across islands compares independent populations.
"""

from __future__ import annotations

import copy
import logging
import math

import numpy as np
import torch

from boltzflow.progress import progress_bar
from boltzflow.rng import generator_for_module
from boltzflow.sampling.runners import RunCost, SamplingResult
from boltzflow.sampling.smc_crossfit import (
    cross_fitted_moves,
    final_held_out_islands,
    fit_rows,
    fit_weighted,
    halves,
    held_out_islands,
    merged,
    subset,
)
from boltzflow.sampling.smc_moves import MoveSettings, Particles
from boltzflow.sampling.smc_production import imh_production
from boltzflow.sampling.smc_reference import make_scorer, reference_for
from boltzflow.weights import clean_log_weights, kish_ess

__all__ = [
    "incremental_log_weights",
    "conditional_ess",
    "next_beta",
    "systematic_resample",
    "island_mcse",
    "smc",
]

logger = logging.getLogger(__name__)


def incremental_log_weights(log_l: torch.Tensor, beta: float, beta_new: float) -> torch.Tensor:
    r"""$\log w_i = (\beta' - \beta)\,\ell(x_i)$, `[n]`, with non-finite values $\to -\infty$
    (weight 0; [`boltzflow.weights`][boltzflow.weights])."""
    return clean_log_weights((float(beta_new) - float(beta)) * log_l)


def conditional_ess(log_w: torch.Tensor, log_inc: torch.Tensor, valid: torch.Tensor) -> float:
    r"""Conditional ESS fraction $(\sum_i W_i w_i)^2 / (\sum_i W_i w_i^2 \sum_{i \in V} W_i)$
    of normalized log-weights `log_w [n]` and incremental `log_inc [n]`, relative to the mass
    of the `valid [n]` particles (finite $\ell$); 1 for no change, 0 if every weight vanishes."""
    a = torch.logsumexp(log_w + log_inc, 0)
    b = torch.logsumexp(log_w + 2 * log_inc, 0)
    m = torch.logsumexp(torch.where(valid, log_w, torch.full_like(log_w, -math.inf)), 0)
    if not torch.isfinite(a):
        return 0.0
    return float(torch.exp(2 * a - b - m))


def next_beta(
    log_w: torch.Tensor, log_l: torch.Tensor, beta: float, ess_target: float, tol: float = 1e-6
) -> float:
    r"""The next inverse temperature: 1 if its conditional ESS fraction is at least
    `ess_target`, else the $\beta' \in (\beta, 1)$ where it equals `ess_target` (bisection).

    `log_w [n]` are the current normalized log-weights, `log_l [n]` the particles' $\ell$.
    """
    valid = torch.isfinite(log_l)

    def frac(b: float) -> float:
        return conditional_ess(log_w, incremental_log_weights(log_l, beta, b), valid)

    if frac(1.0) >= ess_target:
        return 1.0
    lo, hi = float(beta), 1.0
    while hi - lo > tol * max(hi, 1e-8):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if frac(mid) >= ess_target else (lo, mid)
    return max(lo, float(beta) + tol * max(hi, 1e-8))


def systematic_resample(log_w: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    r"""Systematic resampling: indices `[n]` with $u_j = (U + j)/n$, $U \sim \mathcal U(0, 1)$,
    and $i_j$ the first index whose cumulative normalized weight exceeds $u_j$ (Carpenter,
    Clifford & Fearnhead 1999, IEE Proc. Radar Sonar Navig. 146, 2)."""
    n = log_w.shape[0]
    w = torch.softmax(log_w.double(), 0)
    u = (
        torch.rand(1, generator=generator, dtype=torch.float64, device=log_w.device)
        + torch.arange(n, dtype=torch.float64, device=log_w.device)
    ) / n
    idx = torch.searchsorted(torch.cumsum(w, 0), u)
    return idx.clamp_max(n - 1)


def island_mcse(values) -> tuple[np.ndarray, np.ndarray]:
    r"""Mean and its standard error from equally weighted islands: `values [islands, n, ...]`
    $\to$ (`mean [...]`, $\operatorname{sd}_b(\bar f_b)/\sqrt B$ `[...]`), float64 numpy."""
    v = torch.as_tensor(values).double()
    means = v.mean(1)
    return means.mean(0).numpy(), (means.std(0, unbiased=True) / math.sqrt(v.shape[0])).numpy()


ISLAND_LOG_Z_SD_MAX = 1.0
r"""Spread $\operatorname{sd}_b(\log\hat Z_b)$ above which the islands' evidences are too
skewed for their mean and its error to be trusted: for log-normal $\hat Z_b$ with this sd the
mean of 16 islands is biased low by about $(e^{\sigma^2} - 1)/(2B) = 0.05$, and the bias and the
underestimate of its error grow fast with $\sigma$."""


def _log_z(log_zb: torch.Tensor) -> dict:
    """log Z from the islands' `log_zb [B]`, with its error, the islands' own values and their
    spread; flagged, with a warning, if the spread exceeds `ISLAND_LOG_Z_SD_MAX`."""
    b = log_zb.shape[0]
    mean = float(torch.logsumexp(log_zb, 0)) - math.log(b)
    ratios = torch.exp(log_zb - mean)
    sd = float(log_zb.std(unbiased=True))
    if sd > ISLAND_LOG_Z_SD_MAX:
        logger.warning(
            "SMC: the islands' log Z spread by %.2f (sd): the log Z error is unreliable and the "
            "estimate biased low; use more particles per island (fewer islands or more particles)",
            sd,
        )
    return {
        "mean": mean,
        "stderr": float(ratios.std(unbiased=True)) / math.sqrt(b),
        "islands": [float(v) for v in log_zb],
        "islands_sd": sd,
        "flagged": sd > ISLAND_LOG_Z_SD_MAX,
    }


def smc(
    flow,
    target,
    *,
    n_samples: int = 2048,
    seed: int = 0,
    reference="auto",
    islands: int = 16,
    ess_target: float = 0.9,
    resample_threshold: float = 0.5,
    move: str = "pcn",
    target_accept: float | None = None,
    decorrelation: float = 0.3,
    max_steps: int = 50,
    n_leapfrog: int = 5,
    train_steps: int = 100,
    prior_steps: int = 300,
    batch_size: int = 256,
    lr: float = 1e-3,
    max_stages: int = 500,
    early_stopping: bool = True,
    imh_draws: int = 0,
) -> SamplingResult:
    r"""Flow-preconditioned SMC from a reference to `target` (module docstring); a runner
    (registered as `"smc"`) and the public `boltzflow.smc`.

    Args:
        flow: a [`Flow`][boltzflow.flows.base.Flow] over the target's coordinates (trained in
            place, warm-started stage to stage), or `None` for a spline coupling flow that starts
            at the identity, with a dense output affine layer.
        target: the [`Energy`][boltzflow.energies.base.Energy]; only `energy` is called.
        n_samples: particles $N$ (rounded up to a multiple of `islands`); the result has
            `N` equally weighted draws.
        seed: seeds the reference draws, the flow fits, the moves and the resampling.
        reference: `"auto"` (the prior when `target.sample_prior` works, else a Laplace
            approximation widened 2×), `"prior"`, `"laplace"`, or an object with
            `sample(n, generator) -> [n, dim]` and normalized `log_prob(x) -> [n]`.
        islands: independent particle groups $B \ge 2$ that give the errors; the even and
            the odd ones form the two halves of the cross-fitting (module docstring).
        ess_target: conditional ESS fraction kept per stage (0.9-0.95 typical).
        resample_threshold: resample an island when its Kish ESS fraction is below.
        move, target_accept, decorrelation, max_steps, n_leapfrog: the latent moves
            ([`MoveSettings`][boltzflow.sampling.smc_moves.MoveSettings]): `"pcn"` (default)
            or `"rwm"`, gradient-free, or `"hmc"` for a differentiable target; the
            acceptance target defaults to 0.25 (0.65 for HMC).
        train_steps, batch_size, lr: Adam steps per stage of the weighted NLL fit, one optimizer
            kept over all stages; `prior_steps` on the reference draws first.
        max_stages: cap on the number of stages (a warning if $\beta < 1$ then).
        early_stopping: hold out a quarter of each half's islands and keep each fit's
            parameters of lowest held-out NLL
            ([`boltzflow.sampling.smc_crossfit`][boltzflow.sampling.smc_crossfit]); `False`
            runs all `train_steps` on all of the half's particles.
        imh_draws: when positive, after the last stage `islands` independence-MH chains with
            the final flow, started at final particles of held-out islands, make about this many
            draws, and the result holds those chains instead of the particles
            ([`boltzflow.sampling.smc_production`][boltzflow.sampling.smc_production]): many more
            effective samples for few more evaluations once the flow fits the posterior.

    Returns:
        [`SamplingResult`][boltzflow.sampling.runners.SamplingResult] with
        `x [islands, N/islands, dim]`, zero log-weights, `accepted` (moved in the last stage)
        and `info`: `log_z` (mean, stderr), `betas`, per-stage `stage_acceptance`,
        `stage_steps`, `stage_step_size`, `stage_correlation`, `resampled`, `n_nonfinite`,
        `islands`, `flow_holdout_islands` (not used by the final fit of `flow`), `final_beta`,
        R-hat and ESS across islands, and the evaluation count. With `imh_draws`, `x [islands,
        ceil(imh_draws / islands), dim]` are the chains, `accepted` their acceptances, and
        `info` adds `imh_acceptance`, and `smc` with the stages' evaluation count and the
        particles' R-hat and ESS (also over the constrained parameters for a posterior).
    """
    if int(islands) < 2:
        raise ValueError(
            f"islands must be at least 2 (got {islands}): the errors come from their spread, "
            "and the flows are fitted on one half of them and move the other"
        )
    if move == "hmc" and not target.differentiable:
        raise ValueError("move='hmc' needs a differentiable target: use move='pcn' or 'rwm'")
    if flow is None:
        from boltzflow.flows.builders import spline_coupling_flow

        flow = spline_coupling_flow(
            target, seed=int(seed), identity_init=True, affine="dense"
        ).double()
    cost = RunCost(target)
    g = generator_for_module(flow, int(seed))
    dtype = next(flow.parameters()).dtype
    nb = int(islands)
    m = -(-int(n_samples) // nb)
    ref = reference_for(target, reference, flow=flow, generator=g, dtype=dtype)
    score = make_scorer(target, ref)
    x = ref.sample(nb * m, generator=g).to(dtype)
    with torch.no_grad():
        p = Particles(x, *score(x))
    n_nonfinite = int((~torch.isfinite(p.log_l)).sum())
    if n_nonfinite == nb * m:
        raise ValueError(
            f"the target is not finite at any of the {nb * m} reference draws: check the "
            "likelihood on a few of them, or give a reference that covers its support"
        )
    rows = halves(nb, m, x.device)
    flows = [flow, copy.deepcopy(flow)]
    opts = [
        torch.optim.Adam([q for q in f.parameters() if q.requires_grad], lr=float(lr))
        for f in flows
    ]
    uniform = torch.zeros(nb * m, dtype=torch.float64, device=x.device)
    for h, (f, o) in enumerate(zip(flows, opts, strict=True)):
        fit_weighted(
            f,
            x,
            uniform,
            fit_rows(nb, m, h, held_out_islands(nb, h, 0, early_stopping), x.device),
            int(prior_steps),
            batch_size,
            o,
            g,
        )
    accept = (0.65 if move == "hmc" else 0.25) if target_accept is None else target_accept
    settings = MoveSettings(move, float(accept), float(decorrelation), 2, int(max_steps))
    settings = settings._replace(n_leapfrog=int(n_leapfrog))
    steps = [{"pcn": 1.0, "hmc": 0.5}.get(move, 2.38 / math.sqrt(target.dim))] * 2
    log_w = torch.full((nb, m), -math.log(m), dtype=torch.float64, device=x.device)
    log_zb = torch.zeros(nb, dtype=torch.float64, device=x.device)
    beta, betas, stats_all, resampled = 0.0, [0.0], [], []
    moved = torch.zeros(nb * m, dtype=torch.bool, device=x.device)
    bar = progress_bar(1000, "smc (1000 beta)", eta=False)
    while beta < 1.0:
        if len(betas) > int(max_stages):
            logger.warning("SMC stopped at beta = %.4g after %d stages", beta, max_stages)
            break
        ll = p.log_l.double().reshape(nb, m)
        new = next_beta((log_w - math.log(nb)).reshape(-1), ll.reshape(-1), beta, ess_target)
        inc = incremental_log_weights(ll, beta, new)
        log_zb = log_zb + torch.logsumexp(log_w + inc, 1)
        log_w = log_w + inc
        log_w = log_w - torch.logsumexp(log_w, 1, keepdim=True)
        beta = new
        betas.append(beta)
        n_res = 0
        idx = torch.arange(nb * m, device=x.device).reshape(nb, m)
        for b in range(nb):
            if beta >= 1.0 or kish_ess(log_w[b]) < resample_threshold * m:
                idx[b] = b * m + systematic_resample(log_w[b], g)
                log_w[b] = -math.log(m)
                n_res += 1
        flat = idx.reshape(-1)
        p = subset(p, flat)
        resampled.append(n_res)
        stage = len(betas) - 1
        for h, (f, o) in enumerate(zip(flows, opts, strict=True)):
            fr = fit_rows(nb, m, h, held_out_islands(nb, h, stage, early_stopping), x.device)
            fit_weighted(f, p.x, log_w, fr, int(train_steps), int(batch_size), o, g)
        p, moved, per_half = cross_fitted_moves(flows, score, p, rows, beta, steps, settings, g)
        steps = [s.step_size for s in per_half]
        st = merged(per_half)
        n_nonfinite += st.n_nonfinite
        stats_all.append(st)
        bar.update(int(1000 * beta) - bar.n)
        bar.set_postfix(stage=len(betas) - 1, moves=st.steps, acceptance=f"{st.acceptance:.2f}")
        logger.info(
            "SMC stage %d: beta %.4g, %d islands resampled, %d moves, acceptance %.2f",
            len(betas) - 1,
            beta,
            n_res,
            st.steps,
            st.acceptance,
        )
    bar.close()
    holdout = final_held_out_islands(nb, early_stopping)
    final_rows = fit_rows(nb, m, None, holdout, x.device)
    fit_weighted(flow, p.x, log_w, final_rows, int(train_steps), int(batch_size), opts[0], g)
    flow.eval()
    info = {
        "acceptance_rate": stats_all[-1].acceptance if stats_all else math.nan,
        "log_z": _log_z(log_zb),
        "betas": betas,
        "final_beta": beta,
        "stages": len(betas) - 1,
        "stage_acceptance": [s.acceptance for s in stats_all],
        "stage_steps": [s.steps for s in stats_all],
        "stage_step_size": [s.step_size for s in stats_all],
        "stage_correlation": [s.correlation for s in stats_all],
        "resampled": resampled,
        "n_nonfinite": n_nonfinite,
        "islands": nb,
        "flow_holdout_islands": holdout,
        "move": move,
        "reference": getattr(ref, "name", type(ref).__name__),
    }
    if n_nonfinite:
        logger.warning("SMC: %d target values were not finite (weight 0)", n_nonfinite)
    with torch.no_grad():
        energy = -(p.log_ref + p.log_l)  # u = -log r - l
    x = p.x.reshape(nb, m, -1)
    if int(imh_draws) > 0:
        return imh_production(flow, cost, x, energy, holdout, imh_draws, g, info)
    return SamplingResult.from_chain(
        x,
        energy.reshape(nb, m),
        moved.reshape(nb, m),
        method="smc",
        cost=cost,
        info=info,
        diagnostics=True,
    )
