"""Bayesian benchmark: boltzflow vs emcee on the PTA and radial-velocity posteriors, one run.

pta-sim (22 parameters):
  * likelihood evaluations per effective sample (training/warm-up and burn-in included;
    effective sample = min bulk ESS over the constrained parameters, arviz) for emcee's
    stretch move and for boltzflow's hybrid MALA + flow-IMH sampler, and their ratio;
  * wall time until R-hat < 1.01 and min bulk ESS >= 1000, read off prefixes of each run
    (emcee: first half of each prefix discarded; boltzflow: warm-up + the prefix of the
    frozen production chain; cost per step is uniform, so time is prorated);
  * posterior agreement: |mean_emcee - mean_boltzflow| / combined MCSE for every parameter;
  * evidence log Z ± bootstrap error and PSIS k̂ from flow importance sampling.

rv-kepler: period-mode weights from emcee and from boltzflow against the quadrature reference in
``systems/rv-kepler/reference.json``, as z-scores (MCSE from the bulk ESS of each indicator).

Usage: ``python benchmarks/bayes.py [--budget smoke|default] [--out results.json]``
(``default`` is sized for about 30 minutes on 2 idle CPU cores, ``medium`` for about 10;
run them with nohup).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import emcee
import numpy as np
import torch

from boltzflow.energies.astro_pta import PTAPosterior
from boltzflow.energies.astro_rv import RVPosterior
from boltzflow.energies.posterior import EmceeLogProb
from boltzflow.flows.builders import spline_coupling_flow
from boltzflow.sampling import diagnostics
from boltzflow.sampling.emcee_move import flow_emcee
from boltzflow.sampling.hybrid import flow_evidence, hybrid

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {
    "smoke": {
        "pta": dict(n_pulsars=3, n_toas=60, n_freq=5),
        "emcee_steps": 1500,
        "walkers": 32,
        "flow": dict(num_layers=4, hidden=32),
        "flow_emcee": dict(
            n_samples=32 * 500, walkers=32, burn_steps=500, rounds=2, round_steps=100
        ),
        "hybrid": dict(n_samples=16 * 300, chains=16, warmup_rounds=4, local_steps=25),
        "rv_emcee_steps": 1500,
        "rv_flow_emcee": dict(
            n_samples=64 * 200, walkers=64, burn_steps=500, rounds=2, round_steps=100
        ),
        "rv_hybrid": dict(n_samples=64 * 100, chains=64, warmup_rounds=4, local_steps=25),
        "train_steps": 300,
    },
    "medium": {
        "pta": {},
        "emcee_steps": 1500,
        "walkers": 64,
        "flow": dict(num_layers=6, hidden=64),
        "flow_emcee": dict(
            n_samples=64 * 300, walkers=64, burn_steps=500, rounds=2, round_steps=100
        ),
        "hybrid": dict(n_samples=32 * 300, chains=32, warmup_rounds=4, local_steps=40),
        "rv_emcee_steps": 3000,
        "rv_flow_emcee": dict(
            n_samples=64 * 500, walkers=64, burn_steps=800, rounds=2, round_steps=150
        ),
        "rv_hybrid": dict(n_samples=64 * 300, chains=64, warmup_rounds=4, local_steps=40),
        "train_steps": 300,
    },
    "default": {
        "pta": {},
        "emcee_steps": 4000,
        "walkers": 64,
        "flow": dict(num_layers=6, hidden=64),
        "flow_emcee": dict(
            n_samples=64 * 1000, walkers=64, burn_steps=1000, rounds=3, round_steps=200
        ),
        "hybrid": dict(n_samples=32 * 1000, chains=32, warmup_rounds=8, local_steps=40),
        "rv_emcee_steps": 6000,
        "rv_flow_emcee": dict(
            n_samples=64 * 1000, walkers=64, burn_steps=1500, rounds=3, round_steps=200
        ),
        "rv_hybrid": dict(n_samples=64 * 600, chains=64, warmup_rounds=8, local_steps=40),
        "train_steps": 600,
    },
}
HYBRID_COMMON = dict(
    step_size=0.005, global_steps=10, batch_size=512, lr=1e-3, repeats=(1, 4), init_steps=100
)
FLOW_EMCEE_COMMON = dict(flow_weight=0.7, batch_size=512, lr=1e-3)


def constrained(post, x: np.ndarray) -> np.ndarray:
    """``[chains, draws, dim]`` unconstrained -> ``[chains, draws, n_theta]`` named parameters."""
    with torch.no_grad():
        t = post.constrain(torch.as_tensor(x).reshape(-1, x.shape[-1])).theta
    return t.reshape(*x.shape[:2], -1).numpy()


def converged_at(theta: np.ndarray, burn_half: bool, ess_target=1000.0, rhat_target=1.01):
    """Smallest prefix fraction (of 16 checkpoints) with R-hat < target and ESS >= target."""
    n = theta.shape[1]
    for f in np.linspace(1 / 16, 1, 16):
        k = max(int(f * n), 8)
        part = theta[:, k // 2 : k] if burn_half else theta[:, :k]
        if diagnostics.rhat(part).max() < rhat_target and diagnostics.ess(part).min() >= ess_target:
            return float(f)
    return None


def run_emcee(post, walkers: int, steps: int, seed: int = 0) -> dict:
    rs = np.random.RandomState(seed)
    x0 = post.sample_prior(walkers, torch.Generator().manual_seed(seed)).numpy()
    sampler = emcee.EnsembleSampler(walkers, post.dim, EmceeLogProb(post), vectorize=True)
    sampler._random = rs
    n0, t0 = post.n_evaluations, time.perf_counter()
    sampler.run_mcmc(x0, steps)
    wall, evals = time.perf_counter() - t0, post.n_evaluations - n0
    theta_all = constrained(post, np.transpose(sampler.get_chain(), (1, 0, 2)))
    theta = theta_all[:, steps // 2 :]
    f = converged_at(theta_all, burn_half=True)
    return {
        "theta": theta,
        "evaluations": evals,
        "wall_seconds": wall,
        "acceptance": float(np.mean(sampler.acceptance_fraction)),
        "seconds_to_converged": None if f is None else f * wall,
    }


def run_boltzflow(post, sampler: str, flow_kw: dict, kw: dict, seed=0, evidence_samples=0) -> dict:
    """``sampler``: ``"flow-emcee"`` (gradient-free) or ``"hybrid"`` (MALA + flow IMH)."""
    flow = spline_coupling_flow(post, seed=seed, **flow_kw).double()
    if sampler == "hybrid":
        res = hybrid(flow, post, seed=seed, **HYBRID_COMMON, **kw)
    else:
        res = flow_emcee(flow, post, seed=seed, **FLOW_EMCEE_COMMON, **kw)
    theta = constrained(post, res.x.numpy())
    info = res.info
    prod_wall = res.wall_seconds - info["warmup_seconds"]
    f = converged_at(theta, burn_half=False)
    out = {
        "theta": theta,
        "evaluations": res.energy_evaluations,
        "wall_seconds": res.wall_seconds,
        "global_acceptance": info["global_acceptance"],
        "warmup_evaluations": info["warmup_evaluations"],
        "seconds_to_converged": None if f is None else info["warmup_seconds"] + f * prod_wall,
    }
    if "local_acceptance" in info:
        out["local_acceptance"] = info["local_acceptance"]
    if evidence_samples:
        t0 = time.perf_counter()
        out["evidence"] = flow_evidence(flow, post, evidence_samples, seed=seed)
        out["evidence"]["wall_seconds"] = time.perf_counter() - t0
    return out


def efficiency(run: dict) -> dict:
    ess = diagnostics.ess(run["theta"])
    return {
        "evaluations": run["evaluations"],
        "min_bulk_ess": float(ess.min()),
        "min_tail_ess": float(diagnostics.ess(run["theta"], "tail").min()),
        "max_rhat": float(diagnostics.rhat(run["theta"]).max()),
        "evaluations_per_ess": run["evaluations"] / float(ess.min()),
        "wall_seconds": run["wall_seconds"],
        "seconds_to_rhat_1.01_ess_1000": run["seconds_to_converged"],
    }


def pta_benchmark(cfg: dict, sampler: str) -> dict:
    post = PTAPosterior(seed=0, **cfg["pta"])
    em = run_emcee(post, cfg["walkers"], cfg["emcee_steps"])
    kw = {
        **cfg["hybrid" if sampler == "hybrid" else "flow_emcee"],
        "train_steps": cfg["train_steps"],
    }
    bf = run_boltzflow(post, sampler, cfg["flow"], kw, evidence_samples=20000)
    res = {"emcee": efficiency(em), "boltzflow": efficiency(bf), "boltzflow_sampler": sampler}
    res["emcee"]["acceptance"] = em["acceptance"]
    extra = ("local_acceptance", "global_acceptance", "warmup_evaluations")
    res["boltzflow"].update({k: bf[k] for k in extra if k in bf})
    res["ratio_evaluations_per_ess"] = (
        res["emcee"]["evaluations_per_ess"] / res["boltzflow"]["evaluations_per_ess"]
    )
    mcse = np.hypot(diagnostics.mcse(em["theta"], "bulk"), diagnostics.mcse(bf["theta"], "bulk"))
    z = np.abs(em["theta"].mean((0, 1)) - bf["theta"].mean((0, 1))) / mcse
    res["agreement_z"] = dict(zip(post.names, map(float, z), strict=True))
    res["agreement_max_z"] = float(z.max())
    res["evidence"] = bf["evidence"]
    return res


def mode_weights(post, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-mode weight and MCSE from ``theta [chains, draws, n_theta]`` (period first)."""
    idx = post.mode_index(torch.as_tensor(theta[..., 0])).numpy()
    ind = np.stack([(idx == j).astype(float) for j in range(len(post.mode_edges) + 1)], -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mcse = diagnostics.mcse(ind, "bulk")
    return ind.mean((0, 1)), np.nan_to_num(mcse, nan=0.0)


def rv_benchmark(cfg: dict, sampler: str) -> dict:
    post = RVPosterior()
    ref = json.loads((ROOT / "systems" / "rv-kepler" / "reference.json").read_text())
    w_ref = np.asarray(ref["mode_weights"])
    em = run_emcee(post, 64, cfg["rv_emcee_steps"])
    kw = {
        **cfg["rv_hybrid" if sampler == "hybrid" else "rv_flow_emcee"],
        "train_steps": cfg["train_steps"],
    }
    bf = run_boltzflow(post, sampler, {"num_layers": 6, "hidden": 64}, kw)
    out = {"reference": ref["mode_weights"]}
    for name, run in (("emcee", em), ("boltzflow", bf)):
        w, se = mode_weights(post, run["theta"])
        with np.errstate(divide="ignore"):
            z = np.abs(w - w_ref) / np.hypot(se, ref.get("mode_weights_stderr", 0.0))
        out[name] = {
            "weights": w.tolist(),
            "mcse": se.tolist(),
            "z": z.tolist(),
            "max_z": float(z.max()),
            "evaluations": run["evaluations"],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=sorted(SETTINGS), default="default")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--only", choices=("pta", "rv"), default=None)
    parser.add_argument("--sampler", choices=("flow-emcee", "hybrid"), default="flow-emcee")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = SETTINGS[args.budget]
    t0 = time.perf_counter()
    results = {"budget": args.budget}
    if args.only in (None, "pta"):
        results["pta-sim"] = pta_benchmark(cfg, args.sampler)
        p = results["pta-sim"]
        e, b = p["emcee"], p["boltzflow"]
        print(
            f"pta-sim evaluations per effective sample: emcee {e['evaluations_per_ess']:.1f}, "
            f"boltzflow {b['evaluations_per_ess']:.1f}, ratio {p['ratio_evaluations_per_ess']:.1f}x"
        )
        key = "seconds_to_rhat_1.01_ess_1000"
        print(f"pta-sim time to R-hat<1.01 & ESS>=1000: emcee {e[key]}, boltzflow {b[key]}")
        print(f"pta-sim posterior agreement: max |z| = {p['agreement_max_z']:.2f}")
        ev = p["evidence"]
        lz = ev["log_z"]
        print(f"pta-sim log Z = {lz['mean']:.3f} ± {lz['stderr']:.3f} (k̂ {ev['pareto_k']:.2f})")
    if args.only in (None, "rv"):
        results["rv-kepler"] = rv_benchmark(cfg, args.sampler)
        r = results["rv-kepler"]
        print("rv-kepler mode weights  reference", np.round(r["reference"], 3))
        for name in ("emcee", "boltzflow"):
            print(f"  {name:9s} {np.round(r[name]['weights'], 3)}  max z {r[name]['max_z']:.1f}")
    results["wall_seconds"] = time.perf_counter() - t0
    print(f"total {results['wall_seconds']:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
