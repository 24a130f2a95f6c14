"""Bayesian benchmark: boltzflow vs emcee on the PTA and radial-velocity posteriors.

pta-sim (22 parameters):
  * cost per effective sample for emcee's stretch move and for boltzflow's recipe sampler (and
    for any other ``boltzflow run pta-sim`` output given with ``--from-run``), and the ratio,
    in plain-likelihood-evaluation equivalents: a plain evaluation counts 1 and an evaluation
    with its gradient counts the measured ratio of their CPU times at the sampler's batch size
    (``gradient_cost``, measured in the same benchmark run; about 6-8 on one core). Gradient
    evaluations are counted as they happen for an in-process run; for a run read from disk
    every sampling evaluation of a gradient-based method (``hybrid``, ``neutra``, ``hmc``,
    ``smc`` with ``move = "hmc"``) is counted as a gradient evaluation. Every evaluation counts
    (emcee burn-in; boltzflow's descent from the prior, warm-up and flow fitting); the draws
    for the evidence come after the sampler and are reported separately. Effective sample =
    minimum bulk ESS over the 22 constrained parameters (arviz; walkers, chains or SMC islands
    as chains);
  * the wall time of each run if it ends with R-hat < 1.01 and ESS >= 1000 (else null);
  * emcee's chain length in units of its integrated autocorrelation time (emcee's estimator,
    after burn-in), which should be >= 50 for its ESS to be trustworthy, and emcee's cost from
    that tau (walkers x kept steps / tau as its ESS); the ratio uses the more favourable of
    emcee's two figures;
  * posterior agreement: |mean_emcee - mean_boltzflow| / combined MCSE for every parameter;
  * evidence log Z ± bootstrap error and PSIS k̂ from the flow's draws, the sampler's own
    log Z (SMC), and with ``--nested`` a nested-sampling log Z (dynesty, random-walk
    proposals; ``pip install boltzflow[benchmarks]``) with the combined-error z-scores.

rv-kepler: period-mode weights from boltzflow (self-normalized importance sampling with the
annealed flow on the recipe's marginal posterior, delta-method errors) and from emcee (one run
with MCSE from the bulk ESS of each indicator, and 8 independent runs on the full 8-parameter
model and on the marginal model, whose spread measures emcee's error without trusting its
autocorrelation estimate) against the quadrature reference in
``systems/rv-kepler/reference.json``.

Usage: ``python benchmarks/bayes.py [--budget smoke|default] [--only pta|rv] [--nested]
[--out FILE]``.
The long emcee reference can be cached (``--emcee-cache FILE.npz``: written if absent, read if
present); ``--from-run DIR`` reads boltzflow's samples from a ``boltzflow run pta-sim`` output
instead of sampling again (``--rv-from-run DIR`` likewise for rv-kepler). The default emcee
reference, 46 walkers x 40,000 steps, takes about 35 min; run the benchmark with nohup.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import time
from pathlib import Path

import emcee
import numpy as np
import torch

from boltzflow import arviz_compat
from boltzflow.energies.astro_pta import PTAPosterior
from boltzflow.energies.astro_rv import RVPosterior
from boltzflow.runs import registry
from boltzflow.runs.pipeline import build_flow, build_target
from boltzflow.runs.recipes import load_recipe
from boltzflow.sampling import diagnostics
from boltzflow.sampling.emcee_move import EmceeLogProb
from boltzflow.sampling.reweighting import expectation

SETTINGS = {
    "smoke": {
        "pta": dict(n_pulsars=3, n_toas=60, n_freq=5),
        "emcee": (32, 1500),
        "rv": (32, 800),
        "rv_replicates": 3,
    },
    "default": {"pta": {}, "emcee": (46, 40000), "rv": (64, 6000), "rv_replicates": 8},
}


def constrained(post, x: np.ndarray) -> np.ndarray:
    """``[chains, draws, dim]`` unconstrained -> ``[chains, draws, n_theta]`` named parameters."""
    with torch.no_grad():
        t = post.constrain(torch.as_tensor(x).reshape(-1, x.shape[-1])).theta
    return t.reshape(*x.shape[:2], -1).numpy()


GRADIENT_METHODS = ("hybrid", "neutra", "hmc", "mala")
"""Samplers whose every sampling evaluation comes with a gradient (runs read from disk)."""


def gradient_cost(post, batch: int, repeats: int = 5, seed: int = 0) -> dict:
    """CPU seconds per point of ``post.energy`` and of ``post.force`` (energy and gradient) at
    ``batch`` prior draws, alternated ``repeats`` times (median), and their ratio: the cost of
    one gradient evaluation in plain evaluations. Its evaluations are not counted in any run."""
    x = post.sample_prior(batch, torch.Generator().manual_seed(seed)).double()
    n0 = post.n_evaluations
    plain, grad = [], []
    for _ in range(repeats):
        c0 = time.process_time()
        with torch.no_grad():
            post.energy(x)
        c1 = time.process_time()
        post.force(x)
        c2 = time.process_time()
        plain.append((c1 - c0) / batch)
        grad.append((c2 - c1) / batch)
    post.n_evaluations = n0
    p, g = float(np.median(plain)), float(np.median(grad))
    return {"batch": batch, "plain_cpu_seconds": p, "gradient_cpu_seconds": g, "ratio": g / p}


@contextlib.contextmanager
def count_gradients(post):
    """Counts the points that ``post.energy`` evaluates with autograd recording (``["n"]``)."""
    plain = post.energy
    counter = {"n": 0}

    def energy(x):
        if torch.is_grad_enabled() and x.requires_grad:
            counter["n"] += int(x.shape[0])
        return plain(x)

    post.energy = energy
    try:
        yield counter
    finally:
        del post.energy


def run_dynesty(post, nlive: int = 250, walks: int = 100, seed: int = 0) -> dict:
    """log Z of a posterior with uniform priors by dynesty's nested sampling (Speagle 2020,
    MNRAS 493, 3132): ``nlive`` live points, bounded random-walk proposals of ``walks`` steps,
    multi-ellipsoid bounds, stopped at a remaining dlog Z of 0.5; its own error estimate.

    On pta-sim 25 walks (dynesty's default) left new live points correlated with their seeds
    and gave log Z -470.55 +- 0.57, 3 nats above flow importance sampling (-473.76 +- 0.02);
    100 walks give -473.78 +- 0.48 (569k calls, 10 CPU min)."""
    import dynesty

    lows = np.array([p.prior.low for p in post.parameters], dtype=float)
    widths = np.array([p.prior.high - p.prior.low for p in post.parameters], dtype=float)
    like = post.log_likelihood

    def loglike(theta):
        with torch.no_grad():
            v = float(like(torch.as_tensor(theta[None], dtype=torch.float64))[0])
        return v if math.isfinite(v) else -1e300

    t0, c0 = time.perf_counter(), time.process_time()
    sampler = dynesty.NestedSampler(
        loglike,
        lambda u: lows + widths * u,
        len(lows),
        nlive=nlive,
        sample="rwalk",
        walks=walks,
        bound="multi",
        rstate=np.random.default_rng(seed),
    )
    sampler.run_nested(dlogz=0.5, print_progress=False)
    r = sampler.results
    return {
        "log_z": {"mean": float(r.logz[-1]), "stderr": float(r.logzerr[-1])},
        "evaluations": int(np.sum(r.ncall)),
        "nlive": nlive,
        "walks": walks,
        "wall_seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
    }


def run_emcee(post, walkers: int, steps: int, seed: int = 0, cache: str | None = None) -> dict:
    """Stretch-move emcee from prior draws; the first 10% of the steps are burn-in.

    Returns the kept constrained chain ``theta [walkers, draws, n_theta]`` (thinned by 5 when
    read from a cache written by ``runs``-style scripts) and the cost of the whole run.
    """
    if cache and Path(cache).is_file():
        z = np.load(cache)
        chain, thin = z["chain"], int(z["thin"])
        out = {k: float(z[k]) for k in ("evaluations", "wall_seconds", "cpu_seconds", "acceptance")}
    else:
        sampler = emcee.EnsembleSampler(walkers, post.dim, EmceeLogProb(post), vectorize=True)
        sampler._random = np.random.RandomState(seed)
        x0 = post.sample_prior(walkers, torch.Generator().manual_seed(seed)).numpy()
        n0, t0, c0 = post.n_evaluations, time.perf_counter(), time.process_time()
        sampler.run_mcmc(x0, steps)
        out = {
            "evaluations": post.n_evaluations - n0,
            "wall_seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - c0,
            "acceptance": float(np.mean(sampler.acceptance_fraction)),
        }
        thin = 1 if steps < 5000 else 5
        chain = sampler.get_chain(thin=thin)
        if cache:
            np.savez_compressed(cache, chain=chain, thin=thin, walkers=walkers, steps=steps, **out)
    kept = chain[chain.shape[0] // 10 :]  # [draws, walkers, dim]
    tau = emcee.autocorr.integrated_time(kept, quiet=True) * thin
    out["theta"] = constrained(post, np.transpose(kept, (1, 0, 2)))
    out["tau_max"] = float(tau.max())
    out["kept_steps_over_tau"] = float(kept.shape[0] * thin / tau.max())
    out["ess_from_tau"] = float(kept.shape[0] * thin * kept.shape[1] / tau.max())
    return out


def _read_run(post, run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    posterior = arviz_compat.group(arviz_compat.read_netcdf(run_dir / "samples.nc"), "posterior")
    y = np.stack([posterior[n].values for n in post.parameter_names], -1)
    s = summary["sampling"]
    extra = s.get("evidence", {}).get("n", 0) + summary["reweighting"]["n"]  # not for samples
    gradient = s["method"] in GRADIENT_METHODS or s.get("move") == "hmc"
    return {
        "method": s["method"],
        "theta": constrained(post, y),
        "evaluations": s["energy_evaluations"],
        "evidence_evaluations": extra,
        "gradient_evaluations": s["energy_evaluations"] - extra if gradient else 0,
        "wall_seconds": s["wall_seconds"],
        "info": s,
        # the flow's importance sampling: the hybrid sampler's evidence draws, else the
        # pipeline's importance draws from the final flow (with their coverage check)
        "evidence": s.get("evidence") or summary["reweighting"],
    }


def run_boltzflow(post, system: str, budget: str, seed: int = 0, **override) -> dict:
    """The recipe's sampler (``[sampling] method``) with the recipe's flow and settings."""
    recipe = load_recipe(system, budget)
    sp = {k: v for k, v in recipe.sampling.items() if k not in ("method", "n_importance")}
    sp.update(override)
    method = sp.pop("method_override", recipe.sampling["method"])
    sampler = registry.resolve(registry.SAMPLERS, method, "sampler")
    flow = build_flow(recipe, post, seed).double()
    t0, c0 = time.perf_counter(), time.process_time()
    with count_gradients(post) as grads:
        res = sampler(flow, post, seed=seed + 2, **sp)
    return {
        "method": method,
        "result": res,
        "theta": constrained(post, res.x.numpy()),
        "evaluations": res.energy_evaluations,
        "evidence_evaluations": int(sp.get("evidence_samples", 0)),
        "gradient_evaluations": grads["n"],
        "wall_seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
        "info": res.info,
        "evidence": res.info.get("evidence", {}),
    }


def efficiency(run: dict, gradient_ratio: float = 1.0) -> dict:
    """R-hat, ESS and the cost per effective sample; ``gradient_ratio`` is the cost of one
    evaluation with its gradient in plain evaluations (``gradient_cost``)."""
    ess = diagnostics.ess(run["theta"])
    evals = run["evaluations"] - run.get("evidence_evaluations", 0)  # sampling and training
    n_grad = min(run.get("gradient_evaluations", 0), evals)
    plain_equivalents = evals - n_grad + n_grad * gradient_ratio
    rhat = float(diagnostics.rhat(run["theta"]).max())
    converged = rhat < 1.01 and float(ess.min()) >= 1000
    out = {
        "evaluations": evals,
        "gradient_evaluations": n_grad,
        "plain_equivalents": plain_equivalents,
        "evidence_evaluations": run.get("evidence_evaluations", 0),
        "min_bulk_ess": float(ess.min()),
        "min_tail_ess": float(diagnostics.ess(run["theta"], "tail").min()),
        "max_rhat": rhat,
        "evaluations_per_ess": evals / float(ess.min()),
        "cost_per_ess": plain_equivalents / float(ess.min()),
        "wall_seconds": run["wall_seconds"],
        # the whole run's wall time if it ends with R-hat < 1.01 and ESS >= 1000, else None
        "wall_seconds_to_rhat_1.01_ess_1000": run["wall_seconds"] if converged else None,
    }
    if "cpu_seconds" in run:
        out["cpu_seconds"] = run["cpu_seconds"]
    smc_particles = run.get("method") == "smc" and "imh_acceptance" not in run.get("info", {})
    if smc_particles:  # cross-check: the spread of the independent islands' means
        out["min_island_ess"] = island_ess(run["theta"])
    return out


def island_ess(theta: np.ndarray) -> float:
    """ESS of an SMC population from its independent islands, ``theta [islands, n, d]``:
    the posterior variance over the squared island MCSE (``sd_b(island means)^2 / B``),
    minimum over the parameters. With B islands it is uncertain by about sqrt(2 / (B - 1))."""
    b = theta.shape[0]
    mcse2 = theta.mean(1).var(0, ddof=1) / b
    return float((theta.reshape(-1, theta.shape[-1]).var(0) / mcse2).min())


def _z_pairs(estimates: dict) -> dict:
    """|a - b| / combined stderr for every pair of ``{name: {"mean", "stderr"}}``."""
    names = [n for n, e in estimates.items() if e and math.isfinite(e.get("mean", math.nan))]
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            ea, eb = estimates[a], estimates[b]
            out[f"{a} vs {b}"] = abs(ea["mean"] - eb["mean"]) / math.hypot(
                ea["stderr"], eb["stderr"]
            )
    return out


def pta_benchmark(cfg: dict, budget: str, cache=None, from_runs=(), nested=False) -> dict:
    post = PTAPosterior(seed=0, **cfg["pta"])
    em = run_emcee(post, *cfg["emcee"], cache=cache)
    if from_runs:
        runs = [_read_run(post, Path(d)) for d in from_runs]
    elif cfg["pta"]:  # a smaller array than the recipe's: use the recipe's smoke settings
        runs = [run_boltzflow(post, "pta-sim", "smoke")]
    else:
        runs = [run_boltzflow(post, "pta-sim", budget)]
    grad_runs = [r for r in runs if r["gradient_evaluations"]]
    batch = grad_runs[0]["theta"].shape[0] if grad_runs else 8
    cost = gradient_cost(post, batch)
    res = {"gradient_cost": cost, "emcee": efficiency(em)}
    res["emcee"].update(
        acceptance=em["acceptance"],
        tau_max=em["tau_max"],
        kept_steps_over_tau=em["kept_steps_over_tau"],
        ess_from_tau=em["ess_from_tau"],
        evaluations_per_ess_from_tau=em["evaluations"] / em["ess_from_tau"],
    )
    # A short emcee chain (< 50 tau) makes arviz's bulk ESS unreliable; the ratios use the more
    # favourable of the two emcee figures (arviz bulk ESS, or walkers x steps / tau_max).
    e = res["emcee"]
    emcee_cost = min(e["evaluations_per_ess"], e["evaluations_per_ess_from_tau"])
    log_z = {}
    res["samplers"] = []
    for i, run in enumerate(runs):
        name = "boltzflow" if i == 0 else f"boltzflow_{i}"
        q = efficiency(run, cost["ratio"])
        info, ev = run["info"], run["evidence"] or {}
        q.update(
            method=run["method"],
            acceptance=info.get("acceptance_rate"),
            training_evaluations=info.get("warmup_evaluations"),
            local_acceptance=info.get("local_acceptance"),
            importance_kish_ess=ev.get("ess"),
            smc_particles=info.get("smc"),
            evidence=ev,
            ratio_cost_per_ess=emcee_cost / q["cost_per_ess"],
        )
        mcse = np.hypot(
            diagnostics.mcse(em["theta"], "mean"), diagnostics.mcse(run["theta"], "mean")
        )
        z = np.abs(em["theta"].mean((0, 1)) - run["theta"].mean((0, 1))) / mcse
        q["agreement_z"] = dict(zip(post.names, map(float, z), strict=True))
        q["agreement_max_z"] = float(z.max())
        res[name] = q
        res["samplers"].append(name)
        if ev.get("log_z"):
            log_z[f"{run['method']} flow importance"] = ev["log_z"]
        if isinstance(info.get("log_z"), dict):
            log_z[f"{run['method']} sampler"] = info["log_z"]
    # kept for readers of older outputs: the recipe sampler's figures
    res["ratio_evaluations_per_ess"] = res["boltzflow"]["ratio_cost_per_ess"]
    res["agreement_max_z"] = res["boltzflow"]["agreement_max_z"]
    res["evidence"] = res["boltzflow"]["evidence"]
    if nested:
        res["nested"] = run_dynesty(post)
        log_z["dynesty"] = res["nested"]["log_z"]
    res["log_z"] = log_z
    res["log_z_pairs_z"] = _z_pairs(log_z)
    return res


def mode_weights(post, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-mode weight and MCSE from ``theta [chains, draws, n_theta]`` (period first)."""
    idx = post.mode_index(torch.as_tensor(theta[..., 0])).numpy()
    ind = np.stack([(idx == j).astype(float) for j in range(len(post.mode_edges) + 1)], -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mcse = diagnostics.mcse(ind, "mean")
    return ind.mean((0, 1)), np.nan_to_num(mcse, nan=0.0)


def weighted_mode_weights(post, res) -> tuple[np.ndarray, np.ndarray]:
    """Self-normalized importance estimates of the mode weights with delta-method errors."""
    with torch.no_grad():
        period = post.constrain(res.x.reshape(-1, post.dim)).theta[:, 0]
    idx = post.mode_index(period)
    est = [expectation((idx == j).double(), res.log_weight.reshape(-1)) for j in range(5)]
    return np.array([e.mean for e in est]), np.array([e.stderr for e in est])


def _read_rv_run(run_dir: Path) -> tuple[dict, tuple]:
    """Mode weights ± stderr from the observables of a ``boltzflow run rv-kepler`` output."""
    s = json.loads((run_dir / "summary.json").read_text())
    obs = [s["observables"][f"mode_{j}"] for j in range(5)]
    run = {
        "evaluations": s["sampling"]["energy_evaluations"],
        "wall_seconds": s["sampling"]["wall_seconds"],
        "info": s["sampling"],
    }
    return run, (np.array([o["mean"] for o in obs]), np.array([o["stderr"] for o in obs]))


def emcee_replicates(post, walkers: int, steps: int, replicates: int, w_ref, ref_se) -> dict:
    """Independent emcee runs (seeds 0..R-1): the replicate mean of each mode weight against
    the reference (its error is the replicate spread / sqrt(R), which does not trust emcee's
    own autocorrelation estimate), and the spread of each run's own z-score (1 if emcee's
    MCSE were honest)."""
    ws, zs, evals = [], [], 0
    for seed in range(replicates):
        em = run_emcee(post, walkers, steps, seed=seed)
        w, se = mode_weights(post, em["theta"])
        ws.append(w)
        with np.errstate(divide="ignore", invalid="ignore"):
            zs.append((w - w_ref) / np.hypot(se, ref_se))
        evals += em["evaluations"]
    ws, zs = np.array(ws), np.array(zs)
    mean, sem = ws.mean(0), ws.std(0, ddof=1) / np.sqrt(replicates)
    return {
        "parameters": post.names,
        "replicates": replicates,
        "weights_per_run": ws.tolist(),
        "own_z_per_run": zs.tolist(),
        "mean": mean.tolist(),
        "replicate_stderr": sem.tolist(),
        "bias_z": ((mean - w_ref) / np.hypot(sem, ref_se)).tolist(),
        "own_z_spread": zs.std(0, ddof=1).tolist(),
        "evaluations_per_run": evals / replicates,
    }


def rv_benchmark(cfg: dict, budget: str, from_run=None) -> dict:
    recipe = load_recipe("rv-kepler", budget)
    post = build_target(recipe)  # the recipe's posterior: (A, B, gamma) marginalized
    ref = json.loads((recipe.folder / "reference.json").read_text())
    w_ref, ref_se = np.asarray(ref["mode_weights"]), ref.get("mode_weights_stderr", 0.0)
    em = run_emcee(post, *cfg["rv"])
    out = {"reference": ref["mode_weights"]}
    runs = {"emcee": (em, mode_weights(post, em["theta"]))}
    if from_run:
        bf, est = _read_rv_run(Path(from_run))
    else:
        bf = run_boltzflow(post, "rv-kepler", budget)
        est = weighted_mode_weights(post, bf["result"])
    runs["boltzflow"] = (bf, est)
    for name, (run, (w, se)) in runs.items():
        with np.errstate(divide="ignore"):
            z = (w - w_ref) / np.hypot(se, ref_se)
        out[name] = {
            "weights": w.tolist(),
            "stderr": se.tolist(),
            "z": z.tolist(),
            "max_abs_z": float(np.abs(z).max()),
            "evaluations": run["evaluations"],
            "wall_seconds": run["wall_seconds"],
        }
    ev = bf["info"].get("evidence")
    out["boltzflow"].update(evidence=ev, kish_ess=bf["info"].get("kish_ess"))
    out["reference_log_z"] = ref.get("log_z")
    # emcee's bias: replicated runs on the full 8-parameter model (as users write it) and on
    # the recipe's marginalized model
    walkers, steps, reps = cfg["rv"][0], cfg["rv"][1], cfg["rv_replicates"]
    settings = {k: v for k, v in recipe.target.items() if k not in ("kind", "marginalize_linear")}
    full = RVPosterior(**settings)
    out["emcee_replicates_full_model"] = emcee_replicates(full, walkers, steps, reps, w_ref, ref_se)
    out["emcee_replicates_recipe_model"] = emcee_replicates(
        post, walkers, steps, reps, w_ref, ref_se
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=sorted(SETTINGS), default="default")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--only", choices=("pta", "rv"), default=None)
    parser.add_argument("--emcee-cache", default=None, help="npz of the pta-sim emcee run")
    parser.add_argument(
        "--from-run",
        action="append",
        default=[],
        help="a `boltzflow run pta-sim` directory (repeat for several samplers; the first is "
        "reported as the recipe's)",
    )
    parser.add_argument("--rv-from-run", default=None, help="a `boltzflow run rv-kepler` dir")
    parser.add_argument("--nested", action="store_true", help="pta-sim log Z by dynesty too")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = SETTINGS[args.budget]
    t0 = time.perf_counter()
    results = {"budget": args.budget}
    if args.only in (None, "pta"):
        p = pta_benchmark(cfg, args.budget, args.emcee_cache, args.from_run, args.nested)
        results["pta-sim"] = p
        gc, e = p["gradient_cost"], p["emcee"]
        print(
            f"pta-sim: a gradient costs {gc['ratio']:.1f} plain evaluations "
            f"({1e3 * gc['gradient_cpu_seconds']:.2f} against {1e3 * gc['plain_cpu_seconds']:.2f}"
            f" ms CPU per point at batch {gc['batch']})"
        )
        print(
            f"  emcee: {e['evaluations_per_ess']:.1f} evaluations per effective sample "
            f"({e['evaluations']} evaluations, min bulk ESS {e['min_bulk_ess']:.0f}, "
            f"{e['kept_steps_over_tau']:.0f} tau; {e['evaluations_per_ess_from_tau']:.1f} from "
            f"walkers x steps / tau)"
        )
        for name in ["emcee", *p["samplers"]]:
            q = p[name]
            t = q["wall_seconds_to_rhat_1.01_ess_1000"]
            extra = (
                f", {q['cost_per_ess']:.1f} plain-evaluation equivalents per effective sample "
                f"({q['gradient_evaluations']} of {q['evaluations']} evaluations with a "
                f"gradient), emcee's cost / this {q['ratio_cost_per_ess']:.1f}, posterior "
                f"agreement max |z| {q['agreement_max_z']:.2f}"
                if name != "emcee"
                else ""
            )
            isl = f" ({q['min_island_ess']:.0f} from the islands)" if "min_island_ess" in q else ""
            print(
                f"  {q.get('method', name)}: R-hat {q['max_rhat']:.3f}, min bulk ESS "
                f"{q['min_bulk_ess']:.0f}"
                + isl
                + f", wall {q['wall_seconds']:.0f} s; R-hat < 1.01 with "
                "ESS >= 1000: " + (f"{t:.0f} s" if t is not None else "not reached") + extra
            )
            if isinstance(q.get("smc_particles"), dict):  # SMC alone, before its production
                sp = q["smc_particles"]
                key = "theta_" if "theta_rhat_max" in sp else ""  # the constrained parameters
                print(
                    f"    its SMC particles alone: R-hat {sp.get(key + 'rhat_max', math.nan):.3f}, "
                    f"min bulk ESS {sp.get(key + 'ess_bulk_min', math.nan):.0f}, "
                    f"{sp['evaluations']} evaluations, {sp.get('wall_seconds', math.nan):.0f} s"
                )
        for name, lz in p["log_z"].items():
            print(f"  log Z ({name}) = {lz['mean']:.3f} ± {lz['stderr']:.3f}")
        for pair, z in p["log_z_pairs_z"].items():
            print(f"  log Z {pair}: {z:.2f} combined errors")
    if args.only in (None, "rv"):
        r = rv_benchmark(cfg, args.budget, args.rv_from_run)
        results["rv-kepler"] = r
        print("rv-kepler mode weights  reference", np.round(r["reference"], 3))
        for name in ("emcee", "boltzflow"):
            q = r[name]
            print(
                f"  {name:9s} {np.round(q['weights'], 3)} ± {np.round(q['stderr'], 3)}  "
                f"z {np.round(q['z'], 1)}  ({q['evaluations']} evaluations)"
            )
        for key, label in (("full_model", "8-parameter model"), ("recipe_model", "recipe model")):
            q = r[f"emcee_replicates_{key}"]
            print(
                f"  emcee x{q['replicates']} on the {label}: mean {np.round(q['mean'], 3)} "
                f"± {np.round(q['replicate_stderr'], 3)}  bias z {np.round(q['bias_z'], 1)}  "
                f"spread of its own z {np.round(q['own_z_spread'], 2)}"
            )
    results["wall_seconds"] = time.perf_counter() - t0
    print(f"total {results['wall_seconds']:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
