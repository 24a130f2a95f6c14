r"""Annealed importance-weighted flow training for Bayesian posteriors, then flow IMH or IS.

A posterior energy splits into a prior part and the likelihood,
$u(y) = u_0(y) - \log L(y)$ with $u_0 = -\log\pi(\theta(y)) - \log J(y)$, whose
density $e^{-u_0}$ is the normalized prior in the unconstrained coordinates `y`
(exactly $\mathcal N(0, I)$ for probit-linked uniform priors). The tempered path

$$
p_\beta(y) \propto \pi(y)\, L(y)^\beta, \qquad 0 = \beta_0 < \beta_1 < \dots = 1,
$$

goes from the prior, which a flow fits without a single likelihood evaluation, to the
posterior. At stage `k` the flow $q_k \approx p_{\beta_k}$ draws `N` points, each
needing one likelihood evaluation (no gradient). Because $\log L$ is stored, the
importance weights $w_i(\beta) = \pi(y_i)L(y_i)^\beta / q_k(y_i)$ are free for every
$\beta$, and the next temperature is chosen adaptively as the largest $\beta$
whose weights keep a Kish ESS of `ess_target · N` (adaptive tempering: Jasra et al. 2011,
Scand. J. Stat. 38, 1). The flow is then trained towards $p_{\beta_{k+1}}$ by
importance-weighted maximum likelihood (forward KL, mass covering; Müller et al. 2019,
"Neural importance sampling", ACM TOG 38, 145), on the weighted draws of the last few stages
(each batch self-normalized, batches weighted by their ESS; every batch is a valid importance
sample of $p_\beta$, so any fixed combination is too). This is annealed flow transport
(Arbel, Matthews & Doucet 2021, ICML) without the MCMC moves, and needs no target gradients,
so it also works for numpy likelihoods. Before each stage the flow's output affine layer is
moved by the map that takes the weighted mean and standard deviation of $p_{\beta_k}$
to those of $p_{\beta_{k+1}}$, which keeps the warm start close as the posterior narrows.

Forward KL keeps every mode the prior put mass on, in proportion (importance weights), so
the trained flow covers the posterior instead of collapsing onto one mode, which reverse KL
tends to do. After the last stage the flow is frozen and used either as the proposal of
batched independence Metropolis–Hastings chains (exact MCMC for any flow; Tierney 1994) or for
self-normalized importance sampling; both come from the same draws, which also give the
evidence $\log Z$ (bootstrap error, PSIS k̂). Every likelihood evaluation, training
included, is counted.
"""

from __future__ import annotations

import logging
import math
import time

import torch

from boltzflow.flows.affine import ElementwiseAffine
from boltzflow.flows.base import frozen
from boltzflow.rng import generator_for_module
from boltzflow.sampling.proposals import defensive_proposal, prior_energy
from boltzflow.sampling.reweighting import reweight
from boltzflow.sampling.runners import (
    RunCost,
    SamplingResult,
    draw_with_log_weights,
    independence_chains,
)
from boltzflow.sampling.starts import reference_for
from boltzflow.training.fit import fit_affine_to_data, fit_nll
from boltzflow.weights import clean_log_weights, kish_ess

__all__ = ["next_beta", "annealed_training", "annealed_flow"]

logger = logging.getLogger(__name__)


def _tempered_log_w(log_w0: torch.Tensor, log_l: torch.Tensor, beta: float) -> torch.Tensor:
    """`log_w0 + beta · log L` under the rule of [`boltzflow.weights`][boltzflow.weights]
    (non-finite → `-inf`); at `beta = 0` the likelihood does not enter (no `0 · -inf`)."""
    return clean_log_weights(log_w0 + beta * log_l if beta > 0 else log_w0)


def next_beta(
    log_w0: torch.Tensor, log_l: torch.Tensor, beta: float, ess_target: float, tol: float = 1e-4
) -> float:
    r"""Largest $\beta' \in [\beta, 1]$ whose weights keep `ESS/N >= ess_target`.

    `log_w0 [n]` are the log-weights towards the prior, $-u_0 - \log q$, and
    `log_l [n]` the log-likelihoods; the tempered log-weights are
    $\log w_0 + \beta'\log L$. Returns `beta` itself if even that is below target.
    """
    n = log_w0.shape[0]

    def frac(b: float) -> float:
        return kish_ess(_tempered_log_w(log_w0, log_l, b)) / n

    if frac(1.0) >= ess_target:
        return 1.0
    if frac(beta) < ess_target:
        return float(beta)
    lo, hi = float(beta), 1.0
    while hi - lo > tol * max(lo, 1e-3):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if frac(mid) >= ess_target else (lo, mid)
    return lo


def _output_affine(flow) -> ElementwiseAffine | None:
    layers = [m for m in flow.modules() if isinstance(m, ElementwiseAffine) and m.index is None]
    return layers[-1] if layers else None


def _weighted_moments(x: torch.Tensor, log_w: torch.Tensor):
    w = torch.softmax(log_w, 0).unsqueeze(-1)
    mean = (w * x).sum(0)
    sd = ((w * (x - mean) ** 2).sum(0)).sqrt().clamp_min(1e-8)
    return mean, sd


@torch.no_grad()
def _move_affine(flow, old: tuple, new: tuple) -> None:
    r"""Compose the output affine with $x \mapsto m' + (s'/s)(x - m)$ (moment transport)."""
    layer = _output_affine(flow)
    if layer is None:
        return
    (m0, s0), (m1, s1) = old, new
    ratio = (s1 / s0).to(layer.loc)
    layer.loc.copy_(m1.to(layer.loc) + ratio * (layer.loc - m0.to(layer.loc)))
    layer.log_scale.add_(torch.log(ratio))


def _train_weighted(flow, opt, batches, beta, steps, batch_size, g) -> list:
    r"""Importance-weighted NLL: each Adam step draws a minibatch from the pooled batches with
    probabilities `w_i / sum_b w_b · ESS_b / sum ESS` (each batch self-normalized, weighted by
    its ESS), so the loss is the NLL of a resample of $p_\beta$. Normalized weights are
    truncated at $\sqrt{n}/n$ (Ionides 2008, JCGS 17, 295): one rare large weight cannot
    make the flow fit a spike; the bias this adds is in training only, since the final
    estimates reweight or accept-reject against the frozen flow."""
    probs, xs = [], []
    for x, lw0, ll in batches:
        lw = _tempered_log_w(lw0, ll, beta)
        if not torch.isfinite(lw).any():
            continue
        w = torch.softmax(lw, 0)
        w = torch.minimum(w, w.new_tensor(math.sqrt(len(w)) / len(w)))  # truncation
        probs.append(w / w.sum() * kish_ess(lw))
        xs.append(x)
    p, data = torch.cat(probs), torch.cat(xs)
    return fit_nll(flow, data, steps, batch_size, 0.0, g, probs=p / p.sum(), optimizer=opt)


DEFENSIVE, DEFENSIVE_SCALE, DEFENSIVE_PRIOR = 0.1, 2.0, 0.02
"""Defensive-mixture defaults: share from the wide base, its width factor, share from the prior."""


def annealed_training(
    flow,
    target,
    *,
    seed: int = 0,
    n_per_stage: int = 2048,
    ess_target: float = 0.5,
    ess_min: float = 0.1,
    max_stages: int = 60,
    final_rounds: int = 3,
    n_final: int | None = None,
    train_steps: int = 200,
    prior_samples: int = 20000,
    prior_steps: int = 500,
    history: int = 3,
    batch_size: int = 512,
    lr: float = 3e-4,
    defensive: float = DEFENSIVE,
    defensive_scale: float = DEFENSIVE_SCALE,
    defensive_prior: float = DEFENSIVE_PRIOR,
    reference=None,
) -> dict:
    r"""Train `flow` in place from the prior to the posterior (see the module docstring).

    Args:
        flow: a [`Flow`][boltzflow.flows.base.Flow] over the target's unconstrained `y`.
        target: a [`Posterior`][boltzflow.energies.posterior.Posterior]; without a sampleable
            prior (a `Flat` one, from `from_log_prob`) the path starts from the overdispersed
            Laplace approximation instead
            ([`reference_for`][boltzflow.sampling.starts.reference_for]).
        n_per_stage: flow draws (likelihood evaluations) per stage.
        ess_target, ess_min: the next $\beta$ keeps a Kish ESS fraction of
            `max(ess_target · f, ess_min)`, with `f` the fraction at the current
            $\beta$ (conditional ESS; a flow that lags behind still moves on), or
            stays put when even `f < ess_min`.
        max_stages: cap on tempering stages (the run ends early at $\beta = 1$).
        final_rounds: extra rounds at $\beta = 1$ of `n_final` draws (default
            `2 · n_per_stage`), trained on all of them pooled.
        train_steps: Adam steps per stage; `prior_steps` on `prior_samples` prior draws
            first (no likelihood evaluations).
        history: stages pooled for training (each reweighted to the new $\beta$).
        batch_size, lr: minibatch size and learning rate of one Adam optimizer kept over all
            stages (a fresh optimizer's first steps perturb every parameter by about `lr`).
        defensive, defensive_scale: draws come from the defensive mixture
            [`DefensiveFlow`][boltzflow.sampling.proposals.DefensiveFlow] (this share from a base
            `defensive_scale` times wider), which bounds the weights where the flow's tails
            are too light; 0 draws from the flow itself. `defensive_prior` mixes in the
            prior as well ([`PriorDefensive`][boltzflow.sampling.proposals.PriorDefensive]).
        reference: the distribution annealed from (default
            [`reference_for`][boltzflow.sampling.starts.reference_for]`(target)`).

    Returns:
        dict with the tempering ladder `betas`, `ess_fractions` (towards each new
        $\beta$), the final `ess_fraction` at $\beta = 1$, `evaluations` and
        `seconds`.
    """
    g = generator_for_module(flow, int(seed))
    dtype = next(flow.parameters()).dtype
    t0, n0 = time.perf_counter(), target.n_evaluations
    if reference is None:  # the prior, or a Laplace reference where it cannot be sampled
        reference = reference_for(target, generator=g)
    ref = reference
    prior = ref.sample_prior(int(prior_samples), generator=g, dtype=dtype)
    fit_affine_to_data(flow, prior)
    fit_nll(flow, prior, prior_steps, batch_size, 1e-3, g)
    opt = torch.optim.Adam([p for p in flow.parameters() if p.requires_grad], lr=lr)
    proposal = defensive_proposal(flow, defensive, defensive_scale, ref, defensive_prior)
    beta, betas, fracs, batches, final = 0.0, [0.0], [], [], []
    n_final = int(n_final or 2 * n_per_stage)
    stage, losses = 0, [math.nan]
    while True:
        at_end = beta >= 1.0
        if at_end and len(final) >= int(final_rounds):
            break
        if not at_end and stage >= int(max_stages):
            logger.warning("annealing stopped at beta = %.4g after %d stages", beta, stage)
            break
        n = n_final if at_end else int(n_per_stage)
        flow.eval()
        x, _, u, log_q = draw_with_log_weights(proposal, target, n, g)
        u0 = prior_energy(ref, x)
        lw0, ll = -u0 - log_q, u0 - u  # log L = u0 - u  (-inf where u = inf)
        batch = (x, lw0, ll)
        if at_end:
            final.append(batch)
            pool, new = final, 1.0
            fracs.append(kish_ess(_tempered_log_w(lw0, ll, 1.0)) / n)
        else:
            batches.append(batch)
            batches = batches[-int(history) :]
            # relative ESS criterion: a flow that lags behind p_beta still moves on
            here = kish_ess(_tempered_log_w(lw0, ll, beta)) / n
            new = next_beta(lw0, ll, beta, max(ess_target * here, ess_min))
            fracs.append(kish_ess(_tempered_log_w(lw0, ll, new)) / n)
            _move_affine(
                flow,
                _weighted_moments(x, _tempered_log_w(lw0, ll, beta)),
                _weighted_moments(x, _tempered_log_w(lw0, ll, new)),
            )
            pool = batches
        logger.info(
            "stage %d: beta %.4g -> %.4g, ESS fraction %.3f, %d evaluations",
            stage,
            beta,
            new,
            fracs[-1],
            target.n_evaluations - n0,
        )
        beta = new
        betas.append(beta)
        losses = _train_weighted(flow, opt, pool, beta, train_steps, batch_size, g) or losses
        stage += 1
    flow.eval()
    return {
        "betas": betas,
        "ess_fractions": fracs,
        "stages": stage,
        "final_beta": beta,
        "final_nll": float(sum(losses[-20:]) / len(losses[-20:])),
        "evaluations": target.n_evaluations - n0,
        "seconds": time.perf_counter() - t0,
    }


def annealed_flow(
    flow,
    target,
    *,
    n_samples: int,
    seed: int = 0,
    sampler: str = "imh",
    chains: int = 64,
    n_warmup: int = 20,
    evidence: bool = True,
    defensive: float = DEFENSIVE,
    defensive_scale: float = DEFENSIVE_SCALE,
    defensive_prior: float = DEFENSIVE_PRIOR,
    **training,
) -> SamplingResult:
    r"""Runner: [`annealed_training`][boltzflow.sampling.bayes_anneal.annealed_training], then flow
    IMH chains (`sampler="imh"`, exact MCMC) or importance sampling (`sampler="importance"`,
    weighted i.i.d. draws) on the frozen flow.

    The proposal is the frozen flow's defensive mixture (`defensive`, `defensive_scale`).
    The same `chains · (ceil(n_samples / chains) + n_warmup + 1)` proposals (IMH) or
    `n_samples` draws (IS) give the evidence (`info["evidence"]`: log Z, bootstrap stderr,
    PSIS k̂, Kish ESS). The defensive settings and the other keyword arguments (`training`)
    go to [`annealed_training`][boltzflow.sampling.bayes_anneal.annealed_training]. `info` also has
    the tempering ladder, the training cost and, for IMH, acceptance, R-hat and bulk/tail ESS.
    """
    if sampler not in ("imh", "importance"):
        raise ValueError(f"sampler must be 'imh' or 'importance', got {sampler!r}")
    cost = RunCost(target)
    defensive_settings = dict(
        defensive=defensive, defensive_scale=defensive_scale, defensive_prior=defensive_prior
    )
    ref = reference_for(target, generator=generator_for_module(flow, int(seed) + 3))
    train_info = annealed_training(
        flow, target, seed=seed, reference=ref, **defensive_settings, **training
    )
    g = generator_for_module(flow, int(seed) + 7)
    t1 = time.perf_counter()
    n_draws = -(-int(n_samples) // int(chains))
    n = int(chains) * (n_draws + int(n_warmup) + 1) if sampler == "imh" else int(n_samples)
    proposal = defensive_proposal(flow, defensive, defensive_scale, ref, defensive_prior)
    with frozen(flow):
        draws = draw_with_log_weights(proposal, target, n, g)
    info = {
        "training": train_info,
        "warmup_evaluations": int(train_info["evaluations"]),
        "warmup_seconds": float(train_info["seconds"]),
        "sampling_seconds": 0.0,
    }
    if evidence:
        info["evidence"] = reweight(draws.log_weight, seed=int(seed)).as_dict()
    if sampler == "importance":
        info["kish_ess"] = float(kish_ess(draws.log_weight))
        info["sampling_seconds"] = time.perf_counter() - t1
        method = "annealed-importance"
        return SamplingResult.from_draws(
            draws.x, draws.log_weight, draws.energy, method=method, cost=cost, info=info
        )
    info["sampling_seconds"] = time.perf_counter() - t1
    return independence_chains(
        draws, chains, n_warmup, g, method="annealed-imh", cost=cost, info=info, diagnostics=True
    )
