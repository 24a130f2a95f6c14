r"""Flow-assisted MCMC runners: hybrid local + global sampling, and NeuTra-HMC.

**Hybrid** (flowMC: Gabrié, Rotskoff & Vanden-Eijnden 2022, PNAS 119, e2109420119; Wong,
Gabrié & Foreman-Mackey 2023, "flowMC", JOSS 8, 5021; Grenioux et al. 2023). Batched chains
alternate local moves (MALA or HMC) with global flow independence moves. During warm-up the
flow is trained by maximum likelihood (NLL, forward KL) on the pooled history of all chains,
and the local step size (and, for HMC, a diagonal or dense mass) is adapted. After warm-up
everything is frozen, so the production chain is the fixed Markov kernel
:math:`K = K_{local}^{r_1} K_{IMH}^{r_2}`, which leaves :math:`p` invariant (Tierney 1994) —
ordinary MCMC, however well or badly the flow was trained. Local and global acceptance are
reported separately.

**NeuTra** (Hoffman et al. 2019, "NeuTra-lizing bad geometry in Hamiltonian Monte Carlo using
neural transport", arXiv:1903.03704): HMC on the pulled-back energy
:math:`U(z) = u(f(z)) - \log|\det \partial f/\partial z|` of a flow trained by reverse KL,
via :class:`~boltzflow.sampling.kernels.LatentHMC`; the step size is adapted in warm-up only.

Both return a :class:`~boltzflow.sampling.runners.SamplingResult` with ``[chains, draws]``
layout, zero log-weights (exact MCMC output), R-hat and bulk/tail ESS (arviz) in ``info``.
Every target evaluation of warm-up and production is counted in ``energy_evaluations``.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch

from boltzflow.flows.affine import ElementwiseAffine
from boltzflow.flows.base import frozen
from boltzflow.sampling import diagnostics
from boltzflow.sampling.chains import run_chain
from boltzflow.sampling.kernels import (
    HMC,
    MALA,
    DenseMetric,
    IndependenceMH,
    LatentHMC,
    Mixture,
)
from boltzflow.sampling.reweighting import reweight
from boltzflow.sampling.runners import SamplingResult, draw_with_log_weights
from boltzflow.training.losses import nll

logger = logging.getLogger(__name__)

__all__ = [
    "hybrid",
    "neutra",
    "train_nll",
    "chain_diagnostics",
    "flow_evidence",
    "fit_affine_to_data",
    "start_points",
]


def chain_diagnostics(x: torch.Tensor) -> dict:
    """Max R-hat and min bulk/tail ESS over coordinates of ``x [chains, draws, *event]``."""
    a = x.detach().cpu().double().numpy()
    if a.shape[1] < 4:
        return {}
    return {
        "rhat_max": float(np.max(diagnostics.rhat(a))),
        "ess_bulk_min": float(np.min(diagnostics.ess(a, "bulk"))),
        "ess_tail_min": float(np.min(diagnostics.ess(a, "tail"))),
    }


def flow_evidence(flow, target, n: int, seed: int = 0) -> dict:
    r"""Evidence :math:`\log Z` by flow importance sampling: :func:`reweight` as a dict."""
    g = torch.Generator(device=next(flow.parameters()).device).manual_seed(int(seed) + 1)
    _, log_w, _ = draw_with_log_weights(flow, target, int(n), g)
    return reweight(log_w, seed=int(seed)).as_dict()


def train_nll(
    flow,
    data: torch.Tensor,
    steps: int,
    batch_size: int,
    lr: float,
    generator,
    probs: torch.Tensor | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> list:
    """Adam on the flow's negative log-likelihood of ``data [n, *event]``; returns the losses.

    Gradients are clipped to norm 10; batches are drawn with replacement from ``generator``:
    uniformly, or with probabilities ``probs [n]`` (a weighted NLL). ``optimizer`` continues
    an existing optimizer instead of a fresh Adam at ``lr``. Data points where the flow's
    density is not finite are dropped from their batch's mean, and a step whose loss is not
    finite is skipped; both are counted and logged as one warning at the end.
    """
    params = [p for p in flow.parameters() if p.requires_grad]
    if not params or steps <= 0:
        return []
    opt = optimizer if optimizer is not None else torch.optim.Adam(params, lr=lr)
    losses, skipped, dropped, seen = [], 0, 0, 0
    flow.train()
    for _ in range(int(steps)):
        if probs is None:
            n = min(batch_size, data.shape[0])
            idx = torch.randint(data.shape[0], (n,), generator=generator)
        else:
            idx = torch.multinomial(probs, int(batch_size), replacement=True, generator=generator)
        out = nll(flow, None, data[idx.to(data.device)])
        loss, dropped, seen = out.loss, dropped + out.n_nonfinite, seen + int(idx.numel())
        if not torch.isfinite(loss):
            skipped += 1
            continue
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        losses.append(float(loss.detach()))
    flow.eval()
    if skipped or dropped:
        logger.warning(
            "NLL training dropped %d of %d data points whose flow density was not finite and "
            "skipped %d of %d steps whose loss was not finite",
            dropped,
            seen,
            skipped,
            int(steps),
        )
    return losses


def fit_affine_to_data(flow, data: torch.Tensor) -> None:
    """Set every :class:`ElementwiseAffine` layer of ``flow`` to the mean and sd of ``data``."""
    for m in flow.modules():
        if isinstance(m, ElementwiseAffine):
            m.set_from_data(data)


def start_points(flow, target, n: int, init: str, generator: torch.Generator) -> torch.Tensor:
    """``n`` starting points: the target's prior draws (``init="prior"``) or flow samples."""
    params = next(iter(flow.parameters()), None) if flow is not None else None
    dtype = params.dtype if params is not None else torch.float64
    with torch.no_grad():
        if init == "prior" and hasattr(target, "sample_prior"):
            return target.sample_prior(n, generator=generator, dtype=dtype)
        if flow is None:
            raise ValueError("init='flow' needs a flow (or a target with sample_prior)")
        return flow.sample(n, generator=generator).x.detach()


def _descend(target, x: torch.Tensor, steps: int, lr: float = 0.05) -> torch.Tensor:
    """``steps`` Adam steps on ``u`` for every chain; non-finite chains keep their last point."""
    if steps <= 0:
        return x
    x = x.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    for _ in range(int(steps)):
        u = target.energy(x)
        opt.zero_grad()
        u.masked_fill(~torch.isfinite(u), 0.0).sum().backward()
        x.grad.nan_to_num_(0.0, 0.0, 0.0)
        opt.step()
    return x.detach()


def _metric(data: torch.Tensor, metric: str):
    r"""Mass for HMC from warm-up draws ``data [n, d]``: inverse variances (``"diag"``) or a
    :class:`DenseMetric` whose inverse mass is the sample covariance, shrunk towards
    :math:`10^{-3} I` with weight :math:`5/(n+5)` as in Stan's windowed adaptation."""
    if metric == "diag":
        return 1.0 / data.var(0).clamp(min=1e-8)
    if metric == "dense":
        n = data.shape[0]
        cov = torch.cov(data.reshape(n, -1).T).reshape(data.shape[1], data.shape[1])
        eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
        return DenseMetric((n * cov + 5e-3 * eye) / (n + 5.0))
    raise ValueError(f"metric must be 'diag' or 'dense', got {metric!r}")


def _local_kernel(target, local: str, step, n_leapfrog: int, mass, jitter: float = 0.0):
    if local == "mala":
        return MALA(target, step)
    if local == "hmc":
        return HMC(target, step, n_leapfrog, mass=mass, jitter=jitter)
    raise ValueError(f"local must be 'mala' or 'hmc', got {local!r}")


#: local steps between step-size updates during warm-up
ADAPT_EVERY = 10


def _blocks(n: int, size: int) -> list[int]:
    """Split ``n`` steps into blocks of at most ``size``."""
    return [size] * (n // size) + ([n % size] if n % size else [])


def _adapt(step: torch.Tensor, accept: torch.Tensor, target_accept: float) -> torch.Tensor:
    """Per-chain Robbins–Monro update of ``log step`` towards the target acceptance."""
    return step * torch.exp(2.0 * (accept.reshape(step.shape) - target_accept)).clamp(0.2, 5.0)


def hybrid(
    flow,
    target,
    *,
    n_samples: int,
    seed: int = 0,
    chains: int = 32,
    local: str = "mala",
    metric: str = "diag",
    step_size: float = 0.01,
    n_leapfrog: int = 8,
    jitter: float = 0.0,
    target_accept: float | None = None,
    warmup_rounds: int = 8,
    local_steps: int = 50,
    global_steps: int = 10,
    train_steps: int = 300,
    batch_size: int = 512,
    lr: float = 1e-3,
    repeats: tuple[int, int] = (1, 1),
    thin: int = 1,
    init: str = "prior",
    init_steps: int = 0,
    history_rounds: int | None = None,
    evidence_samples: int = 0,
    evidence_train_steps: int = 0,
    progress: bool = False,
) -> SamplingResult:
    r"""Hybrid local + global flow MCMC (flowMC); see the module docstring.

    Args:
        flow: the global proposal; trained in place by NLL during warm-up, then frozen.
        target: the energy ``u``; must be differentiable for the local kernel.
        n_samples: kept draws in total (``ceil(n_samples / chains)`` per chain).
        chains: batched chains.
        local: ``"mala"`` or ``"hmc"`` (``n_leapfrog`` steps, mass adapted from the history).
        metric: HMC mass from the warm-up history: ``"diag"`` (inverse variances) or
            ``"dense"`` (a :class:`~boltzflow.sampling.kernels.DenseMetric` with the shrunk
            sample covariance as inverse mass), re-estimated after every warm-up round.
        jitter: HMC step-size jitter (see :class:`~boltzflow.sampling.kernels.HMC`).
        step_size: initial local step (adapted per chain in warm-up towards ``target_accept``,
            default 0.57 for MALA and 0.75 for HMC).
        warmup_rounds: rounds of ``local_steps`` local steps, ``global_steps`` flow
            independence steps (from the second round on), then ``train_steps`` Adam steps on
            the pooled history (first round discarded as burn-in).
        repeats: production cycle ``(local, global)`` steps per kept draw.
        init: ``"prior"`` (the target's ``sample_prior`` if it has one) or ``"flow"``.
        init_steps: Adam steps (lr 0.05) on ``u`` from the starting points before the first
            round, to leave the prior's tails quickly (counted as evaluations).
        history_rounds: train on the last this many rounds only (default: all but the first).
        evidence_samples: if > 0, draw this many i.i.d. samples from the frozen flow and report the
            evidence :math:`\log Z` (bootstrap error, PSIS k̂) as ``info["evidence"]``, via
            :func:`~boltzflow.sampling.reweighting.reweight` (which warns when k̂ > 0.7).
        evidence_train_steps: before those draws, train the flow this many more Adam steps on
            the last warm-up window and all production draws. This happens after the chains
            have finished (the MCMC is unaffected) and importance sampling is unbiased for any
            flow, so it only makes the evidence's error smaller.

    Returns:
        :class:`SamplingResult` with ``info``: ``local_acceptance``, ``global_acceptance``,
        ``warmup_evaluations``, ``step_size``, final training loss, R-hat and ESS.
    """
    if int(local_steps) < 1 or int(warmup_rounds) < 1:
        raise ValueError("hybrid needs local_steps >= 1 and warmup_rounds >= 1")
    if target_accept is None:
        target_accept = 0.57 if local == "mala" else 0.75
    g = torch.Generator().manual_seed(int(seed))
    t0, n0 = time.perf_counter(), target.n_evaluations
    x0 = _descend(target, start_points(flow, target, chains, init, g), init_steps)
    step = torch.full((chains, 1), float(step_size), dtype=x0.dtype)
    mass = 1.0
    state = _local_kernel(target, local, step, n_leapfrog, mass).init(x0, seed=int(seed))
    history, losses, global_acc = [], [], []
    for r in range(int(warmup_rounds)):
        blocks = []
        for n in _blocks(local_steps, ADAPT_EVERY):
            kernel = _local_kernel(target, local, step, n_leapfrog, mass, jitter)
            res = run_chain(kernel, kernel.adopt(state), n, progress=progress)
            state = res.final_state
            step = _adapt(step, res.acceptance_prob.double().mean(1), target_accept)
            blocks.append(res)
        res = res._replace(
            x=torch.cat([b.x for b in blocks], 1),
            accepted=torch.cat([b.accepted for b in blocks], 1),
        )
        if r > 0 and global_steps > 0:
            imh = IndependenceMH(flow, target)
            res_g = run_chain(imh, imh.adopt(state), global_steps, progress=progress)
            state = res_g.final_state
            global_acc.append(float(res_g.accepted.double().mean()))
            history.append(res_g.x)
        if r > 0 or warmup_rounds == 1:
            history.append(res.x)
        if not history:
            continue
        window = history if history_rounds is None else history[-2 * int(history_rounds) :]
        data = torch.cat([h.reshape(-1, *h.shape[2:]) for h in window]).to(x0.dtype)
        if local == "hmc":
            mass = _metric(data, metric)
        if r == (1 if warmup_rounds > 1 else 0):
            fit_affine_to_data(flow, data)
        losses += train_nll(flow, data, train_steps, batch_size, lr, g)
        if local == "hmc":
            mass = _metric(data, metric)
        logger.info(
            "warm-up round %d: local acceptance %.2f, global %s, NLL %.3f, %d evaluations",
            r,
            float(res.accepted.double().mean()),
            f"{global_acc[-1]:.2f}" if global_acc else "-",
            losses[-1] if losses else math.nan,
            target.n_evaluations - n0,
        )
    warmup_evals, warmup_seconds = target.n_evaluations - n0, time.perf_counter() - t0
    with frozen(flow):
        local_kernel = _local_kernel(target, local, step, n_leapfrog, mass, jitter)
        mix = Mixture([local_kernel, IndependenceMH(flow, target)], repeats=repeats)
        n_draws = -(-int(n_samples) // chains)
        res = run_chain(mix, mix.adopt(state), n_draws * thin, thin=thin, progress=progress)
    rates = Mixture.acceptance_rates(res.stats["kernel_accepted"], res.stats["kernel_steps"])
    info = {
        "local": local,
        "local_acceptance": float(rates[0]),
        "global_acceptance": float(rates[1]),
        "acceptance_rate": float(res.accepted.double().mean()),
        "warmup_evaluations": int(warmup_evals),
        "warmup_seconds": warmup_seconds,
        "warmup_global_acceptance": global_acc,
        "step_size_median": float(step.median()),
        "final_nll": float(np.mean(losses[-20:])) if losses else math.nan,
        **chain_diagnostics(res.x),
    }
    if evidence_samples > 0:
        if evidence_train_steps > 0:
            pooled = torch.cat([data, res.x.reshape(-1, *res.x.shape[2:]).to(data.dtype)])
            nll = train_nll(flow, pooled, evidence_train_steps, batch_size, lr, g)
            info["evidence_nll"] = float(np.mean(nll[-20:]))
        with frozen(flow):
            info["evidence"] = flow_evidence(flow, target, evidence_samples, seed=int(seed))
    return SamplingResult(
        x=res.x,
        log_weight=torch.zeros_like(res.energy),
        energy=res.energy,
        accepted=res.accepted,
        method="hybrid",
        energy_evaluations=target.n_evaluations - n0,
        wall_seconds=time.perf_counter() - t0,
        info=info,
    )


def neutra(
    flow,
    target,
    *,
    n_samples: int,
    seed: int = 0,
    chains: int = 16,
    step_size: float = 0.2,
    n_leapfrog: int = 8,
    target_accept: float = 0.75,
    warmup_rounds: int = 10,
    warmup_steps: int = 20,
    thin: int = 1,
    progress: bool = False,
) -> SamplingResult:
    """NeuTra-HMC with a (pre-trained, frozen) flow; step size adapted per chain in warm-up.

    Chains start at flow samples. ``info`` has the acceptance rate, warm-up evaluations,
    the median step size, R-hat and ESS.
    """
    g = torch.Generator().manual_seed(int(seed))
    t0, n0 = time.perf_counter(), target.n_evaluations
    with frozen(flow):
        with torch.no_grad():
            x0 = flow.sample(chains, generator=g).x.detach()
        step = torch.full((chains, 1), float(step_size), dtype=x0.dtype)
        state = LatentHMC(target, flow, step, n_leapfrog).init(x0, seed=int(seed))
        for _ in range(int(warmup_rounds)):
            kernel = LatentHMC(target, flow, step, n_leapfrog)
            res = run_chain(kernel, state, warmup_steps, progress=progress)
            state = res.final_state
            step = _adapt(step, res.acceptance_prob.double().mean(1), target_accept)
        kernel = LatentHMC(target, flow, step, n_leapfrog)
        state = kernel.adopt(state)
        warmup_evals = target.n_evaluations - n0
        n_draws = -(-int(n_samples) // chains)
        res = run_chain(kernel, state, n_draws * thin, thin=thin, progress=progress)
    info = {
        "acceptance_rate": float(res.accepted.double().mean()),
        "warmup_evaluations": int(warmup_evals),
        "step_size_median": float(step.median()),
        **chain_diagnostics(res.x),
    }
    return SamplingResult(
        x=res.x,
        log_weight=torch.zeros_like(res.energy),
        energy=res.energy,
        accepted=res.accepted,
        method="neutra",
        energy_evaluations=target.n_evaluations - n0,
        wall_seconds=time.perf_counter() - t0,
        info=info,
    )
