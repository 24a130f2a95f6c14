"""Stochastic normalizing flows: plain flows against flows with Metropolis blocks.

Double well (Wu, Köhler & Noé 2020, Fig. 3): for RealNVP, RealNVP + MC blocks, NSF and
NSF + MC blocks, `--trainings` independent trainings each (seeds 0, 1, ...), with the recipe
of `systems/double-well-snf` (the flow kind and the `[flow.stochastic]` table switched; for a
plain flow `snf_nll` and `snf_reverse_kl` are the ordinary NLL and reverse KL). Each trained
model draws `--repeats` independent sets of `--samples` samples; the free-energy profile
along x1 is the reweighted histogram $F_b = -\\ln \\sum_{i \\in b} w_i$ on `--bins` bins of
(-2.25, 2.25), shifted to the exact profile by its mean difference over the bins. The bins
are those that `--samples` exact draws fill with at least 10 points on average, the same for
every model: the barrier bins, which even exact sampling leaves empty, are left out (33 of 50
at 50,000 samples, 35 at 100,000). A bin some repeat leaves empty is dropped from that model's
average and counted ("empty bins"). Per bin,
bias and standard deviation over the repeats give $\\sqrt{\\text{bias}^2 + \\text{std}^2}$
(kT), averaged over the bins: one error per trained model. The script prints the mean ± std
of that error over the trainings beside the published values (RealNVP 1.15 ± 0.41 → 0.63 ±
0.11; NSF 2.24 ± 0.47 → 0.60 ± 0.16; RealNVP with adaptive MC 0.42 ± 0.05), and the ratio
"with blocks / without" measured in this run.

The alanine-dipeptide comparison (torsion KLs and ESS per energy evaluation, with and without
blocks) is not implemented yet.

Usage: `python benchmarks/stochastic.py [--trainings 10] [--samples 100000] [--repeats 20]
[--steps-scale 1.0] [--only realnvp,realnvp+mc,nsf,nsf+mc] [--blocks JSON] [--flow JSON]
[--out FILE]`; the published sample counts are the default. `--steps-scale` multiplies every
training stage's steps; `--blocks` overrides keys of the `[flow.stochastic]` table, `--flow`
the flow's `num_layers` and `hidden`. At the default settings it takes hours on 2 cores: run it
with nohup.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time

import numpy as np
import torch

from boltzflow.energies.double_well import DoubleWell2D
from boltzflow.rng import make_generator
from boltzflow.runs.pipeline import _train, build_flow
from boltzflow.runs.recipes import load_recipe
from boltzflow.weights import importance_log_weights

PUBLISHED = {  # Wu, Köhler & Noé 2020: mean ± std over 10 trainings (kT)
    "realnvp": (1.15, 0.41),
    "realnvp+mc": (0.63, 0.11),
    "nsf": (2.24, 0.47),
    "nsf+mc": (0.60, 0.16),
}
MODELS = {
    "realnvp": ("realnvp", False),
    "realnvp+mc": ("realnvp", True),
    "nsf": ("spline-coupling", False),
    "nsf+mc": ("spline-coupling", True),
}
LO, HI = -2.25, 2.25


def exact_profile(target: DoubleWell2D, bins: int) -> np.ndarray:
    """$-\\ln \\int_b e^{-u_1(x_1)} dx_1$ per bin (the x2 factor is a constant)."""
    edges = np.linspace(LO, HI, bins + 1)
    out = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        x = np.linspace(a, b, 2001)
        u = target.a * x + target.b * x**2 + target.c * x**4
        out.append(-math.log(np.trapezoid(np.exp(-(u - u.min())), x)) + u.min())
    return np.array(out)


def recipe_for(model: str, budget: str, steps_scale: float, overrides=None, flow_kw=None):
    recipe = load_recipe("double-well-snf", budget)
    kind, blocks = MODELS[model]
    flow = {"kind": kind, "num_layers": recipe.flow["num_layers"], "hidden": recipe.flow["hidden"]}
    flow.update(flow_kw or {})
    if blocks:
        flow["stochastic"] = copy.deepcopy(recipe.flow["stochastic"])
        flow["stochastic"].update(overrides or {})
    recipe.flow = flow
    for st in recipe.stages:
        st["steps"] = max(1, int(round(st["steps"] * steps_scale)))
    return recipe


def train(recipe, target, seed: int, out_dir):
    """Train as `boltzflow run` does (stages, tempering, early stopping of the recipe)."""
    torch.manual_seed(seed)
    flow = build_flow(recipe, target, seed)
    result = _train(flow, target, recipe, seed, out_dir)
    flow.eval()
    return flow, result


def evaluation_bins(target, samples: int, bins: int) -> np.ndarray:
    """The bins that `samples` exact draws fill with >= 10 points on average: the same set for
    every model (the barrier bins, which even exact sampling leaves empty, are excluded)."""
    mass = np.exp(-exact_profile(target, bins) - target.marginal.log_z)  # P(x1 in bin)
    return mass * samples >= 10


def profile_error(flow, target, exact, samples, repeats, seed, bins, keep):
    edges = np.linspace(LO, HI, bins + 1)
    profiles = []
    g = make_generator(seed)
    with torch.no_grad():
        for _ in range(repeats):
            xs, lws = [], []
            for start in range(0, samples, 25_000):
                s = flow.sample(min(25_000, samples - start), generator=g)
                xs.append(s.x[:, 0].double())
                lws.append(importance_log_weights(target.energy(s.x).double(), s.log_q.double()))
            x, lw = torch.cat(xs).numpy(), torch.cat(lws)
            w = torch.exp(lw - lw.max()).numpy()
            hist, _ = np.histogram(x, bins=edges, weights=w)
            with np.errstate(divide="ignore"):
                profiles.append(-np.log(hist))
    f = np.array(profiles)[:, keep]
    ok = np.isfinite(f).all(0)  # a bin some repeat left empty counts as missing
    f = f[:, ok] - (f[:, ok] - exact[keep][ok]).mean(1, keepdims=True)
    bias, std = f.mean(0) - exact[keep][ok], f.std(0)
    return float(np.sqrt(bias**2 + std**2).mean()), int((~ok).sum())


def double_well(args) -> dict:
    target = DoubleWell2D()
    exact = exact_profile(target, args.bins)
    keep = evaluation_bins(target, args.samples, args.bins)
    print(f"{int(keep.sum())} of {args.bins} bins on ({LO}, {HI}) hold >= 10 exact samples")
    out = {}
    for model in args.only.split(","):
        blocks, flow_kw = json.loads(args.blocks), json.loads(args.flow)
        recipe = recipe_for(model, args.budget, args.steps_scale, blocks, flow_kw)
        errors, rows = [], []
        for seed in range(args.trainings):
            t0 = time.perf_counter()
            n0 = target.n_evaluations
            flow, result = train(recipe, target, seed, args.work_dir)
            t_train = time.perf_counter() - t0
            err, empty = profile_error(
                flow, target, exact, args.samples, args.repeats, 1000 + seed, args.bins, keep
            )
            errors.append(err)
            rows.append(
                {
                    "seed": seed,
                    "error_kT": err,
                    "empty_bins": empty,
                    "train_seconds": t_train,
                    "total_seconds": time.perf_counter() - t0,
                    "energy_evaluations": target.n_evaluations - n0,
                    "training_evaluations": result.energy_evaluations,
                }
            )
            print(f"  {model:11s} seed {seed}: error {err:.3f} kT ({empty} empty bins), "
                  f"{rows[-1]['total_seconds']:.0f} s", flush=True)  # fmt: skip
        out[model] = {
            "mean": float(np.mean(errors)),
            "std": float(np.std(errors, ddof=1)) if len(errors) > 1 else math.nan,
            "runs": rows,
        }
    print(f"\nfree-energy profile error along x1 (kT), {args.trainings} trainings, "
          f"{args.samples} samples x {args.repeats} repeats, {args.bins} bins")  # fmt: skip
    print(f"{'model':12s} {'measured':>16s} {'published':>14s}")
    for model, r in out.items():
        pub = PUBLISHED[model]
        print(f"{model:12s} {r['mean']:7.2f} ± {r['std']:5.2f}   {pub[0]:6.2f} ± {pub[1]:4.2f}")
    for plain in ("realnvp", "nsf"):
        if plain in out and f"{plain}+mc" in out:
            ratio = out[f"{plain}+mc"]["mean"] / out[plain]["mean"]
            print(f"{plain}: with blocks / without = {ratio:.2f} (published "
                  f"{PUBLISHED[plain + '+mc'][0] / PUBLISHED[plain][0]:.2f})")  # fmt: skip
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trainings", type=int, default=10)
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--bins", type=int, default=50)
    ap.add_argument("--budget", default="default")
    ap.add_argument("--steps-scale", type=float, default=1.0)
    ap.add_argument("--only", default=",".join(MODELS))
    ap.add_argument(
        "--blocks", default="{}", help="JSON overrides of [flow.stochastic], e.g. '{\"steps\": 20}'"
    )
    ap.add_argument(
        "--flow", default="{}", help="JSON overrides of the flow, e.g. '{\"num_layers\": 2}'"
    )
    ap.add_argument("--out", default=None, help="write the results as JSON")
    ap.add_argument("--work-dir", default="runs/benchmark-stochastic", help="trainer files")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    results = {"settings": vars(args), "double_well": double_well(args)}
    results["wall_seconds"] = time.perf_counter() - t0
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
