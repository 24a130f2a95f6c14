"""Stochastic normalizing flows: plain flows against flows with Metropolis blocks.

Double well (Wu, Köhler & Noé 2020, Fig. 3 and Table 1): RealNVP, RealNVP + MC blocks, NSF and
NSF + MC blocks, `--trainings` independent trainings each (seeds 0, 1, ...). Each trained model
draws `--repeats` independent sets of `--samples` samples, and two errors of the reweighted
free-energy profile along x1 (kT) are computed from the same draws (definitions in
`benchmarks/_double_well_profile.py`): the authors' metric ("published": 30 bins over the
samples' own range, $\\sqrt{\\text{bias}^2 + \\text{std}^2}$ with the bias a signed mean over the
bins of (-2.25, 2.25)) and this package's fixed-bin metric (50 fixed bins of (-2.25, 2.25), the
bins exact sampling fills, per-bin $\\sqrt{\\text{bias}^2 + \\text{std}^2}$ averaged). The table
prints mean ± std over the trainings (population std, as the authors) beside the published
values (RealNVP 1.15 ± 0.41 → 0.63 ± 0.11; NSF 2.24 ± 0.47 → 0.60 ± 0.16; RealNVP with
adaptive MC 0.42 ± 0.05) and the ratio "with blocks / without" measured in this run.

`--protocol` chooses how the models are built and trained:

* `published` (the default, because this benchmark exists to be compared with the paper):
  the authors' protocol. 10,000 exact training samples, three transforms of two couplings,
  Metropolis blocks (20 steps of 0.25) before the first coupling and after transforms 1, 2 and
  3 at fixed λ = 0, 0, 0.5, 1, then Adam 5e-3, batch 128: 300 steps of `snf_nll`, 300 of
  `{snf_nll = 0.5, snf_reverse_kl = 0.5}` (details and the deviations in
  `_double_well_profile.py`).
* `package`: the recipe of `systems/double-well-snf` (reverse KL from the energy, first at 3x
  the temperature; the flow kind and the `[flow.stochastic]` table switched; for a plain flow
  `snf_nll` and `snf_reverse_kl` are the ordinary NLL and reverse KL), what
  `boltzflow run double-well-snf` trains.

The alanine-dipeptide comparison (torsion KLs and ESS per energy evaluation, with and without
blocks) is `benchmarks/stochastic_alanine.py`.

Usage: `python benchmarks/stochastic.py [--protocol published|package] [--trainings 10]
[--samples 100000] [--repeats 20] [--steps-scale 1.0] [--only realnvp,realnvp+mc,nsf,nsf+mc]
[--blocks JSON] [--flow JSON] [--out FILE]`; the published sizes are the default.
`--steps-scale` multiplies every training stage's steps; `--blocks` overrides keys of the
`[flow.stochastic]` table, `--flow` keys of the flow. At the default settings it takes about an
hour on 2 cores (`published`) or hours (`package`): run it with nohup.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time

import numpy as np
import torch
from _double_well_profile import evaluate, evaluation_bins, published_recipe, train_published

from boltzflow.energies.double_well import DoubleWell2D
from boltzflow.rng import make_generator
from boltzflow.runs.pipeline import _train, build_flow
from boltzflow.runs.recipes import load_recipe

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


def _train_model(args, model, target, data, seed):
    kind, blocks = MODELS[model]
    overrides, flow_kw = json.loads(args.blocks), json.loads(args.flow)
    if args.protocol == "published":
        recipe = published_recipe(kind, blocks, overrides, flow_kw)
        steps = max(1, int(round(300 * args.steps_scale)))
        return train_published(recipe, target, seed, data, steps)
    recipe = recipe_for(model, args.budget, args.steps_scale, overrides, flow_kw)
    return train(recipe, target, seed, args.work_dir)


def _mean_std(values) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values)) if len(values) > 1 else math.nan


def double_well(args) -> dict:
    target = DoubleWell2D()
    keep = evaluation_bins(target, args.samples, args.bins)
    print(f"protocol {args.protocol}; fixed-bin metric: {int(keep.sum())} of {args.bins} bins "
          f"on (-2.25, 2.25) hold >= 10 exact samples")  # fmt: skip
    data = target.sample(10_000, generator=make_generator(args.data_seed))
    out = {}
    for model in args.only.split(","):
        rows = []
        for seed in range(args.trainings):
            t0, c0, n0 = time.perf_counter(), time.process_time(), target.n_evaluations
            flow, result = _train_model(args, model, target, data, seed)
            t_train = time.perf_counter() - t0
            ev = evaluate(flow, target, args.samples, args.repeats, 1000 + seed, args.bins)
            rows.append({
                "seed": seed, **ev, "train_seconds": t_train,
                "total_seconds": time.perf_counter() - t0,
                "total_cpu_seconds": time.process_time() - c0,
                "energy_evaluations": target.n_evaluations - n0,
                "training_evaluations": result.energy_evaluations,
            })  # fmt: skip
            pub, fix = ev["published"], ev["fixed_bins"]
            print(f"  {model:11s} seed {seed}: published {pub['error']:.3f} kT (bias "
                  f"{pub['bias']:.3f}, std {pub['std']:.3f}, {pub['bins']} bins); fixed bins "
                  f"{fix['error']:.3f} kT ({fix['empty_bins']} empty); "
                  f"{rows[-1]['total_seconds']:.0f} s", flush=True)  # fmt: skip
        out[model] = {"runs": rows}
        for key in ("published", "published_unweighted", "fixed_bins"):
            out[model][key] = _mean_std([r[key]["error"] for r in rows])
        for key in ("bias", "std"):
            out[model][f"published_{key}"] = _mean_std([r["published"][key] for r in rows])
    print(f"\nfree-energy profile error along x1 (kT), protocol {args.protocol}, "
          f"{args.trainings} trainings, {args.samples} samples x {args.repeats} repeats; "
          "mean ± std over trainings")  # fmt: skip
    head = ("model", "published metric", "(bias", "std)", "fixed bins", "paper")
    print(f"{head[0]:12s} {head[1]:>17s} {head[2]:>6s} {head[3]:>5s} {head[4]:>14s} {head[5]:>14s}")
    for model, r in out.items():
        pub, paper = r["published"], PUBLISHED[model]
        print(f"{model:12s} {pub[0]:8.2f} ± {pub[1]:5.2f} {r['published_bias'][0]:6.2f} "
              f"{r['published_std'][0]:5.2f} {r['fixed_bins'][0]:6.3f} ± {r['fixed_bins'][1]:5.3f}"
              f" {paper[0]:6.2f} ± {paper[1]:4.2f}")  # fmt: skip
    for plain in ("realnvp", "nsf"):
        if plain in out and f"{plain}+mc" in out:
            ratios = [
                out[f"{plain}+mc"][k][0] / out[plain][k][0] for k in ("published", "fixed_bins")
            ]
            print(f"{plain}: with blocks / without = {ratios[0]:.2f} (published metric), "
                  f"{ratios[1]:.2f} (fixed bins); paper "
                  f"{PUBLISHED[plain + '+mc'][0] / PUBLISHED[plain][0]:.2f}")  # fmt: skip
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", choices=("published", "package"), default="published")
    ap.add_argument("--trainings", type=int, default=10)
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--bins", type=int, default=50, help="bins of the fixed-bin metric")
    ap.add_argument("--data-seed", type=int, default=0, help="seed of the 10,000 training samples")
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
