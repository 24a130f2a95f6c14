"""Heavy tails: Gaussian-base spline flow vs mTAF vs the tail transform flow (TTF).

On every heavy-tailed target with exact (or quadrature) answers, in one run, three flows with
the same inverse-autoregressive spline layers are trained by reverse KL with the same budget
(steps, batch, learning rate, clipping), then scored on i.i.d. importance draws:

* PSIS k̂ and the Kish ESS fraction of the weights;
* the relative error of the reweighted 99% and 99.9% marginal quantiles, |q̂ - q| / |q|,
  the largest over the checked dimensions (product targets: the first dimension of each ν
  and the first Gaussian one; funnel: v and x1; regression: all three parameters);
* the log Z error (estimate - exact) with its bootstrap standard error.

Flows: ``gaussian`` = ``spline_autoregressive_flow`` (Gaussian base, linear spline tails);
``mtaf`` and ``ttf`` = ``tail_adaptive_flow`` (Laszkiewicz et al. 2022; Hickling & Prangle
2025) with tails read from the energy (the funnel's are Gaussian along every axis, so there
the tails start neutral, ν = 10, and are learned). Published reference for a d = 50
heavy-tailed VI target (Hickling & Prangle 2025): ESS ≈ 39% for TTF, ≈ 0.1% for mTAF.

``--pta`` adds the pta-sim posterior (22 parameters at full size; ``--pta-size small`` uses 3
pulsars, 8 parameters), where the recipe's flows reached an ESS fraction of about 0.02; it has
no exact answers, so only k̂ and ESS are reported. Flows there start at the mean and standard
deviation of prior draws.

Measured (``python benchmarks/tails.py``, seed 0, 2-core machine shared with other work at
load ≈ 9: 2038 s in all; q errors are the largest relative error over the checked
dimensions, 1.000 = the flow puts (almost) nothing there):

======================  ========  =====  ======  =======  =========  ===============
target                  flow      k̂      ESS %   q99 err  q99.9 err  log Z err
======================  ========  =====  ======  =======  =========  ===============
student-t mix d=5       gaussian  0.66   76.0    0.995    1.000      -0.487 ± 0.004
student-t mix d=5       mtaf      0.76   4.6     0.979    1.000      -0.106 ± 0.029
student-t mix d=5       ttf       0.44   92.1    0.053    0.590      +0.002 ± 0.002
student-t mix d=10      gaussian  1.00   0.13    0.995    1.000      -0.610 ± 0.201
student-t mix d=10      mtaf      0.90   0.96    0.988    1.000      -0.264 ± 0.069
student-t mix d=10      ttf       0.45   80.3    0.138    1.056      -0.008 ± 0.004
student-t mix d=50      gaussian  0.94   0.03    0.996    1.000      -3.505 ± 0.357
student-t mix d=50      mtaf      2.46   0.01    1.001    1.000      -5.668 ± 2.724
student-t mix d=50      ttf       0.42   22.7    0.364    0.739      +0.003 ± 0.013
student-t nu=1 d=50     gaussian  1.06   0.30    0.870    0.984      -5.915 ± 0.114
student-t nu=1 d=50     mtaf      1.98   0.05    0.899    0.986      -5.916 ± 0.300
student-t nu=1 d=50     ttf       0.46   23.3    0.041    0.370      -0.012 ± 0.013
funnel d=10             gaussian  0.83   0.07    0.781    0.943      -0.093 ± 0.261
funnel d=10             mtaf      1.03   0.93    0.827    0.943      -0.296 ± 0.078
funnel d=10             ttf       0.98   0.42    0.653    0.807      -0.019 ± 0.113
funnel d=50             gaussian  0.80   0.69    0.907    0.963      -0.908 ± 0.084
funnel d=50             mtaf      1.02   0.38    0.887    0.950      -0.872 ± 0.126
funnel d=50             ttf       1.01   0.10    0.832    0.923      -0.693 ± 0.211
t-regression            gaussian  0.56   91.7    0.085    0.308      -0.012 ± 0.002
t-regression            mtaf      0.69   90.9    0.084    0.266      -0.007 ± 0.002
t-regression            ttf       0.70   83.3    0.049    0.023      +0.001 ± 0.004
======================  ========  =====  ======  =======  =========  ===============

The tail transform flow is the only one with k̂ < 0.5 on the product targets; at d = 50
(ν = 1) its ESS is 23% beside the published 39% (TTF) and 0.1% (mTAF) of Hickling & Prangle
2025, and mTAF here reproduces their finding (k̂ ≈ 2, ESS 0.05%). Reverse KL misses the
funnel's neck whatever the tails (see the ``funnel-d50`` system, trained by maximum
likelihood). pta-sim at reduced size (3 pulsars, 8 parameters; ``--pta --pta-size small``):
k̂ / ESS = 0.76 / 3.1% (gaussian), 0.60 / 5.1% (mtaf), 0.64 / 7.0% (ttf), 259 s.

The ν = 1, d = 50 target across seeds and budgets (same machine and load):

=====================  ========  =====  ======  ===============
run                    flow      k̂      ESS %   log Z err
=====================  ========  =====  ======  ===============
300 steps, seed 1      gaussian  0.81   0.05    -5.836 ± 0.309
300 steps, seed 1      ttf       0.48   18.4    +0.001 ± 0.014
300 steps, seed 2      ttf       0.51   17.3    -0.011 ± 0.016
1000 steps, seed 0     gaussian  0.89   0.13    -4.316 ± 0.173
1000 steps, seed 0     mtaf      1.24   0.10    -1.788 ± 0.210
1000 steps, seed 0     ttf       0.19   69.4    +0.003 ± 0.004
=====================  ========  =====  ======  ===============

(``--only "nu=1" --flows ... --steps 1000``): at 300 steps the tail transform flow sits at
k̂ ≈ 0.5; at 1000 steps it is well below, while the Gaussian base stays above 0.7 and mTAF
matches the published 0.1% ESS.

Usage::

    python benchmarks/tails.py [--steps 300] [--draws 20000] [--pta] [--out FILE]
    python benchmarks/tails.py --quick
    python benchmarks/tails.py --only "nu=1" --flows gaussian,ttf --seed 1
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
from scipy import optimize, stats

from boltzflow.energies.gaussians import Funnel
from boltzflow.energies.heavy_tails import ProductStudentT, StudentTRegression
from boltzflow.flows.builders import spline_autoregressive_flow
from boltzflow.flows.tail_builders import tail_adaptive_flow
from boltzflow.sampling.reweighting import reweight
from boltzflow.sampling.runners import importance_sampling
from boltzflow.training import train

FLOWS = ("gaussian", "mtaf", "ttf")
PROBS = (0.99, 0.999)


def funnel_quantiles(target: Funnel, p: float) -> np.ndarray:
    """Exact quantiles of v and x1: v ~ N(0, σ²); P(x1 ≤ x) = E_v Φ(x e^{-v/2})."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(200)
    weights = weights / weights.sum()
    v = target.sigma * nodes

    def cdf(x):
        return float((weights * stats.norm.cdf(x * np.exp(-0.5 * v))).sum())

    x1 = optimize.brentq(lambda x: cdf(x) - p, -1e6, 1e6, xtol=1e-10)
    return np.array([target.sigma * stats.norm.ppf(p), x1])


def targets(quick: bool) -> dict:
    """name -> (target, checked dims, exact quantile function, log Z, builder extras)."""
    out = {}
    sizes = (5, 10) if quick else (5, 10, 50)
    for d in sizes:
        t = ProductStudentT(d, df=[0.5, 1.0, 2.0], n_heavy=max(3, d // 2))
        out[f"student-t mix d={d}"] = (t, t._watched(), t.quantile, 0.0, {})
    t = ProductStudentT(10 if quick else 50, df=1.0)
    out[f"student-t nu=1 d={t.dim}"] = (t, [0], t.quantile, 0.0, {})
    for d in (10,) if quick else (10, 50):
        f = Funnel(dim=d)
        out[f"funnel d={d}"] = (
            f,
            [0, 1],
            lambda p, f=f: funnel_quantiles(f, p),
            0.0,
            {"tail_index": "neutral"},
        )
    r = StudentTRegression()
    scale = (r.quantile(0.9) - r.quantile(0.1)) / 2.56
    extras = {"loc": torch.as_tensor(r.quantile(0.5)), "scale": torch.as_tensor(scale)}
    out["t-regression"] = (r, [0, 1, 2], r.quantile, r.log_z, extras)
    return out


def build(kind: str, target, extras: dict, layers: int, hidden: int, seed: int):
    common = dict(num_layers=layers, hidden=hidden, seed=seed)
    loc, scale = extras.get("loc", 0.0), extras.get("scale", 1.0)
    if kind == "gaussian":
        return spline_autoregressive_flow(
            target, inverse_autoregressive=True, loc=loc, scale=scale, **common
        )
    tail_index = extras.get("tail_index", "energy")
    return tail_adaptive_flow(
        target, tails=kind, tail_index=tail_index, loc=loc, scale=scale, **common
    )


def weighted_quantile(x: np.ndarray, log_w: np.ndarray, p: float) -> float:
    order = np.argsort(x)
    w = np.exp(log_w[order] - log_w.max())
    c = np.cumsum(w) / w.sum()
    return float(x[order][np.searchsorted(c, p)])


def score(target, flow, dims, quantile, log_z, draws: int, seed: int) -> dict:
    res = importance_sampling(flow, target, n_samples=draws, seed=seed)
    x = res.x.reshape(-1, target.dim).double().numpy()
    lw = res.log_weight.reshape(-1).double().numpy()
    rw = reweight(lw, n_bootstrap=100)
    out = {"k_hat": rw.pareto_k, "ess_fraction": rw.ess_fraction, "n_nonfinite": rw.n_nonfinite}
    finite = np.isfinite(lw)
    for p in PROBS if dims else ():
        exact = np.asarray(quantile(p))
        exact = exact[dims] if exact.size == target.dim else exact
        errs = [
            abs(weighted_quantile(x[finite, j], lw[finite], p) - q) / abs(q)
            for j, q in zip(dims, exact, strict=True)
        ]
        out[f"q{p * 100:g}_rel_err"] = max(errs)
    if log_z is not None:
        out["log_z_err"] = rw.log_z.mean - log_z
        out["log_z_stderr"] = rw.log_z.stderr
    return out


def run_one(name, spec, kind, args) -> dict:
    target, dims, quantile, log_z, extras = spec
    flow = build(kind, target, extras, args.layers, args.hidden, args.seed)
    stage = dict(
        loss="reverse_kl", steps=args.steps, batch_size=args.batch, lr=1e-3, clip_grad_norm=10.0
    )
    t0 = time.perf_counter()
    train(flow, target, [stage], seed=args.seed, progress=False)
    wall = time.perf_counter() - t0
    row = {"target": name, "flow": kind, "train_seconds": wall}
    row.update(score(target, flow, dims, quantile, log_z, args.draws, args.seed + 1))
    return row


def pta_rows(args) -> list[dict]:
    from boltzflow.energies.astro_pta import PTAPosterior

    size = {} if args.pta_size == "full" else dict(n_pulsars=3, n_toas=60, n_freq=5)
    post = PTAPosterior(seed=0, **size)
    prior = post.sample_prior(4096, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    extras = {"loc": prior.mean(0), "scale": prior.std(0), "tail_index": "neutral"}
    spec = (post, [], lambda p: np.array([]), None, extras)
    rows = []
    for kind in args.flows.split(","):
        row = run_one(f"pta-sim ({post.dim} parameters)", spec, kind, args)
        rows.append(row)
        print_row(row)
    return rows


def fmt(v, spec=".3f"):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def print_row(r: dict) -> None:
    lz = "-" if "log_z_err" not in r else f"{r['log_z_err']:+.3f} ± {fmt(r['log_z_stderr'])}"
    print(
        f"{r['target']:<24} {r['flow']:<9} {fmt(r['k_hat'], '.2f'):>6} "
        f"{fmt(100 * r['ess_fraction'], '.2f'):>8} {fmt(r.get('q99_rel_err')):>9} "
        f"{fmt(r.get('q99.9_rel_err')):>9} {lz:>18} {r['train_seconds']:>8.0f}",
        flush=True,
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300, help="reverse-KL steps per flow")
    ap.add_argument("--draws", type=int, default=20000, help="importance draws per flow")
    ap.add_argument("--batch", type=int, default=256, help="reverse-KL batch size")
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="d <= 10 targets, 100 steps, 5000 draws")
    ap.add_argument("--pta", action="store_true", help="also run on pta-sim")
    ap.add_argument("--pta-size", choices=("full", "small"), default="full")
    ap.add_argument("--only", default=None, help="run only targets whose name contains this")
    ap.add_argument("--flows", default=",".join(FLOWS), help="comma-separated subset of flows")
    ap.add_argument("--out", default=None, help="write the rows as JSON")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.draws = min(args.steps, 100), min(args.draws, 5000)
    torch.set_num_threads(1)
    print(f"reverse KL: {args.steps} steps x {args.batch}, lr 1e-3; {args.draws} importance draws")
    print(
        f"{'target':<24} {'flow':<9} {'k_hat':>6} {'ESS %':>8} {'q99 err':>9} {'q99.9 err':>9} "
        f"{'log Z err':>18} {'train s':>8}"
    )
    rows, t0 = [], time.perf_counter()
    for name, spec in targets(args.quick).items():
        if args.only and args.only not in name:
            continue
        for kind in args.flows.split(","):
            rows.append(run_one(name, spec, kind, args))
            print_row(rows[-1])
    if args.pta:
        rows += pta_rows(args)
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=1, default=float)


if __name__ == "__main__":
    main()
