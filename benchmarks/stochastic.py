"""Stochastic normalizing flows: plain flows against flows with Metropolis blocks.

Double well (Wu, Köhler & Noé 2020, Fig. 3 and Table 1): RealNVP, RealNVP + MC blocks, NSF and
NSF + MC blocks, `--trainings` independent trainings each (seeds 0, 1, ...). Each trained model
draws `--repeats` independent sets of `--samples` samples, and three errors of the reweighted
free-energy profile along x1 (kT) are computed from the same draws (definitions and the
reasons in `benchmarks/_double_well_profile.py`):

* `interval` (the headline, the one the acceptance is judged on): the authors' estimator,
  $\\sqrt{\\text{bias}^2 + \\text{std}^2}$ with the bias a signed mean over the bins and the std
  the mean per-bin standard deviation over repeats, on 30 fixed bins of (-2.25, 2.25);
* `notebook`: the same estimator with the bins spanning each repeat's sample range, exactly
  as the authors' notebook computes it; a single zero-weight straggler moves it by kT and can
  leave it without a bin (NaN), so it is printed for comparison only;
* `fixed bins`: 50 fixed bins of (-2.25, 2.25), the bins exact sampling fills, per-bin
  $\\sqrt{\\text{bias}^2 + \\text{std}^2}$ averaged.

The table prints mean ± std over the trainings (population std, as the authors), the median,
the floor of each metric (exact i.i.d. sampling, same sizes), the published values (RealNVP
1.15 ± 0.41 → 0.63 ± 0.11; NSF 2.24 ± 0.47 → 0.60 ± 0.16; RealNVP with adaptive MC, not run
here, 0.42 ± 0.05) and, per flow, the difference "with blocks − without" with its standard
error and whether the blocks' mean is at or below the published SNF mean plus its spread.

Resumable: each training's result (metrics and the per-repeat histograms they come from) is
written to `--cache-dir` as `<protocol>-<model>-seed<k>.json` and reused when its settings
match, so rerunning the same command continues where it stopped. Trainings run seed-major
(seed 0 of every model, then seed 1, ...); the table uses the same number of trainings for
every model, the smallest number cached (the first ones in seed order). `--table-only` trains
nothing and prints the table of what is cached. Processes with disjoint `--only` or
`--first-seed` ranges may share one cache.

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

Measured (`nohup nice -n 19 python benchmarks/stochastic.py`; 2 CPU cores, 26 min wall; all
10 trainings per model, seeds 0-9; kT, mean ± population std over trainings):

    model        interval      notebook                 fixed bins      paper
    exact        0.19          0.29                     0.071
    RealNVP      0.10 ± 0.03   3.16 ± 3.41              0.045 ± 0.009   1.15 ± 0.41
    RealNVP+MC   0.46 ± 0.04   NaN (seed 2; median 0.56) 0.166 ± 0.018  0.63 ± 0.11
    NSF          0.18 ± 0.05   8.74 ± 1.70              0.090 ± 0.035   2.24 ± 0.47
    NSF+MC       0.25 ± 0.03   0.85 ± 0.90              0.069 ± 0.004   0.60 ± 0.16

On the interval metric the blocks raise the error for both flows (for NSF they lower it on the
fixed bins); only the notebook metric shows the published gain (see the system README for
why).

The alanine-dipeptide comparison (torsion KLs and ESS per energy evaluation, with and without
blocks) is `benchmarks/stochastic_alanine.py`.

Usage: `python benchmarks/stochastic.py [--protocol published|package] [--trainings 10]
[--samples 100000] [--repeats 20] [--steps-scale 1.0] [--only realnvp,realnvp+mc,nsf,nsf+mc]
[--blocks JSON] [--flow JSON] [--out FILE] [--cache-dir DIR] [--table-only]`; the published
sizes are the default. `--steps-scale` multiplies every training stage's steps; `--blocks`
overrides keys of the `[flow.stochastic]` table, `--flow` keys of the flow. Cost (published
protocol, CPU time per training, evaluation included, on the 2026-12-07 machine): RealNVP
7-13 s, NSF 21-26 s, RealNVP + MC 26-36 s, NSF + MC 42-52 s, so 40 trainings need about
20 min of one core (2-3x that on the slower machine of earlier measurements); on a shared machine
run it with `nohup nice -n 19` (the measured table is in `systems/double-well-snf/README.md`).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from _double_well_profile import evaluate, evaluate_exact, published_recipe, train_published

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


def _cache_key(args, model: str, seed: int) -> dict:
    """The settings a cached training must share to be reused."""
    keys = ("protocol", "samples", "repeats", "bins", "data_seed", "budget", "steps_scale",
            "blocks", "flow")  # fmt: skip
    return {"model": model, "seed": seed, **{k: getattr(args, k) for k in keys}}


def _run_one(args, model, seed, target, data) -> dict:
    """Train and evaluate one model, or read its cached JSON (`--cache-dir`)."""
    key = _cache_key(args, model, seed)
    path = Path(args.cache_dir) / f"{args.protocol}-{model}-seed{seed}.json"
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return cached
    t0, c0, n0 = time.perf_counter(), time.process_time(), target.n_evaluations
    flow, result = _train_model(args, model, target, data, seed)
    t_train = time.perf_counter() - t0
    ev = evaluate(flow, target, args.samples, args.repeats, 1000 + seed, args.bins)
    row = {"key": key, **ev, "train_seconds": t_train,
           "total_seconds": time.perf_counter() - t0,
           "total_cpu_seconds": time.process_time() - c0,
           "energy_evaluations": target.n_evaluations - n0,
           "training_evaluations": result.energy_evaluations}  # fmt: skip
    _write(path, row)
    return row


def _write(path: Path, obj) -> None:
    """Atomically (processes running `--only` subsets may share the cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj))
    tmp.replace(path)


def _exact_floor(args, target) -> dict:
    path = Path(args.cache_dir) / f"exact-{args.samples}x{args.repeats}-bins{args.bins}.json"
    if path.is_file():
        return json.loads(path.read_text())
    floor = evaluate_exact(target, args.samples, args.repeats, 999, args.bins)["metrics"]
    _write(path, floor)
    return floor


def _line(model, seed, m, row) -> str:
    iv, nb, fx = m["interval"], m["notebook"], m["fixed_bins"]
    return (f"  {model:11s} seed {seed}: interval {iv['error']:.3f} kT (bias {iv['bias']:.3f}, "
            f"std {iv['std']:.3f}, {iv['bins']} bins); notebook {nb['error']:.3f}; fixed bins "
            f"{fx['error']:.3f}; x1 in [{min(r['x1_range'][0] for r in row['repeats']):.3g}, "
            f"{max(r['x1_range'][1] for r in row['repeats']):.3g}]; "
            f"{row['total_seconds']:.0f} s ({row['total_cpu_seconds']:.0f} s CPU)")  # fmt: skip


def double_well(args) -> dict:
    """Seed-major loop (seed 0 of every model, then seed 1, ...): stopped at any point, the
    cache holds about as many trainings of every model; the table uses the same number for
    every model, the smallest count cached."""
    target = DoubleWell2D()
    models = args.only.split(",")
    data = target.sample(10_000, generator=make_generator(args.data_seed))
    floor = _exact_floor(args, target)
    rows = {m: [] for m in models}
    for seed in range(args.first_seed, args.trainings):
        for model in models:
            path = Path(args.cache_dir) / f"{args.protocol}-{model}-seed{seed}.json"
            if args.table_only and not path.is_file():
                continue
            row = _run_one(args, model, seed, target, data)
            rows[model].append(row)
            print(_line(model, seed, row["metrics"], row), flush=True)
    n = min(len(r) for r in rows.values())
    print("trainings cached per model: " + ", ".join(f"{m} {len(r)}" for m, r in rows.items())
          + f"; the table uses the first {n} of each")  # fmt: skip
    out = {"trainings_per_model": n, "exact_sampling": floor}
    for model in models:
        runs = rows[model][:n]
        res = {"seeds": [r["key"]["seed"] for r in runs]}
        for key in ("interval", "notebook", "fixed_bins"):
            res[key] = _mean_std([r["metrics"][key]["error"] for r in runs])
            res[key + "_runs"] = [r["metrics"][key] for r in runs]
        res["nonfinite_log_weights"] = int(sum(r["nonfinite"] for r in runs))
        res["median_interval"] = float(np.median([r["metrics"]["interval"]["error"] for r in runs]))
        out[model] = res
    _print_table(args, out, models, n)
    return out


def _print_table(args, out, models, n):
    print(f"\nfree-energy profile error along x1 (kT), protocol {args.protocol}, {n} trainings "
          f"per model, {args.samples} samples x {args.repeats} repeats; mean ± std over "
          "trainings (population std, as the authors)")  # fmt: skip
    print(f"{'model':12s} {'interval (headline)':>22s} {'median':>7s} {'notebook':>16s} "
          f"{'fixed bins':>16s} {'paper':>13s}")  # fmt: skip
    fl = out["exact_sampling"]
    print(f"{'exact':12s} {fl['interval']['error']:13.2f}{'':9s} {'':7s} "
          f"{fl['notebook']['error']:7.2f}{'':9s} {fl['fixed_bins']['error']:7.3f}")  # fmt: skip
    for model in models:
        r, paper = out[model], PUBLISHED[model]
        print(f"{model:12s} {r['interval'][0]:13.2f} ± {r['interval'][1]:5.2f} "
              f"{r['median_interval']:7.2f} {r['notebook'][0]:7.2f} ± {r['notebook'][1]:5.2f} "
              f"{r['fixed_bins'][0]:7.3f} ± {r['fixed_bins'][1]:5.3f} "
              f"{paper[0]:6.2f} ± {paper[1]:4.2f}")  # fmt: skip
    for plain in ("realnvp", "nsf"):
        mc = plain + "+mc"
        if plain in out and mc in out and n:
            a, b, p = out[mc]["interval"], out[plain]["interval"], PUBLISHED[mc]
            se = math.hypot(a[1], b[1]) / math.sqrt(max(n - 1, 1))
            verdict = "at or below it within its spread" if a[0] <= p[0] + p[1] else "above it"
            print(f"{plain}: with blocks {a[0]:.2f} vs without {b[0]:.2f} kT (difference "
                  f"{a[0] - b[0]:+.2f} ± {se:.2f}); published SNF {p[0]:.2f} ± {p[1]:.2f}: "
                  f"{verdict}")  # fmt: skip


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", choices=("published", "package"), default="published")
    ap.add_argument("--trainings", type=int, default=10)
    ap.add_argument(
        "--first-seed", type=int, default=0, help="start at this seed (others may run the rest)"
    )
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
    ap.add_argument(
        "--cache-dir",
        default="runs/benchmark-stochastic/cache",
        help="one JSON per training (reused when its settings match): resumable in pieces",
    )
    ap.add_argument(
        "--table-only", action="store_true", help="train nothing: the table of the cached runs"
    )
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
