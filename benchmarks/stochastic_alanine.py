"""Stochastic normalizing flows on alanine dipeptide in vacuum: torsion KLs and ESS per evaluation.

The alanine-dipeptide half of the stochastic-flow benchmark (`benchmarks/stochastic.py` runs the
double well). One invocation runs both recipes through the run pipeline, exactly as
`boltzflow run NAME --budget B --seed S` does (`boltzflow.runs.pipeline.run`, outputs under
`--out`):

* `alanine-dipeptide-vacuum`: the internal-coordinate spline flow trained by maximum likelihood
  on the MD of the run;
* `alanine-dipeptide-vacuum-snf`: the same flow and training (`snf_layers_nll`), then Metropolis
  steps on the target after the last layer (Wu, Köhler & Noé 2020).

For each it prints, side by side:

* the KL divergence between the MD histogram (the run's training frames) and the histogram of
  the unweighted generated samples, per torsion. Torsions: the five of the SNF paper, i.e. rows
  0, 1, 2, 10 and 12 of the Z-matrix of the authors' alanine-dipeptide notebook
  (`experiment3_ala2_MC_RNVP.ipynb` of noegroup/stochastic_normalizing_flows; atom indices as
  in the vendored topology, which has the same atom order), then φ and ψ. The estimator is the
  authors': 50 bins on [-π, π), densities smoothed by the periodic kernel
  (0.25, 0.5, 1, 0.5, 0.25), $\\sum_b h^{MD}_b \\log[(h^{MD}_b + 10^{-5}) / (h^{gen}_b +
  10^{-5})]$ over the densities (not the bin probabilities; about 20 times the KL in nats of the
  smoothed bin probabilities, which is printed too). The published values (RealNVP, then RealNVP
  with MC blocks: 1.71, 3.95, 0.81, 0.72, 0.87 -> 0.41, 0.20, 0.16, 0.08, 0.10) are for the
  authors' 1000 K training data, so they are a scale, not a target;
* the importance ESS of the run's weights, the energy evaluations of sampling (and of sampling
  plus training; the MD that makes the training data costs the same for both and is left out),
  the ESS per evaluation, and ΔF(αL vs rest) with its bootstrap error and z against the
  umbrella/MBAR reference of the system.

Usage (both default runs, MD cached: 745 s wall and 804 s CPU measured on 2 cores with no
other jobs; far longer beside other jobs under nice):

    nice -n 19 python benchmarks/stochastic_alanine.py [--budget default] [--seed 0]
        [--out runs/bench-stochastic-alanine] [--workers N] [--reuse]

`--reuse` reads a recipe's finished run (`summary.json`, `samples.nc`) from `--out` instead of
running it again (its run wall time is then not measured). It writes `table.md` and
`benchmark.json` into `--out`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from boltzflow.arviz_compat import read_groups
from boltzflow.molecular.alanine import PHI_ATOMS, PSI_ATOMS, dihedral
from boltzflow.runs.pipeline import build_target, run
from boltzflow.runs.recipes import load_recipe

RECIPES = {"flow": "alanine-dipeptide-vacuum", "flow + MC": "alanine-dipeptide-vacuum-snf"}
TORSIONS = {  # the five of Wu, Köhler & Noé 2020 (their labels), then the backbone
    "paper φ: H1-CH3-C-N (Ace methyl)": (0, 1, 4, 6),
    "paper γ1: CH3-C-N-CA (ω Ace-Ala)": (1, 4, 6, 8),
    "paper ψ: H2-CH3-C-H1 (Ace methyl)": (2, 1, 4, 0),
    "paper γ2: O-C-CA-N (improper at C)": (15, 14, 8, 16),
    "paper γ3: H-N-C-O (Nme peptide)": (17, 16, 14, 15),
    "φ: C-N-CA-C": PHI_ATOMS,
    "ψ: N-CA-C-N": PSI_ATOMS,
}
PUBLISHED = {  # Wu, Köhler & Noé 2020, alanine dipeptide: per-torsion KL, five torsions
    "RealNVP": [1.71, 3.95, 0.81, 0.72, 0.87],
    "RealNVP + MC": [0.41, 0.20, 0.16, 0.08, 0.10],
}
BINS = 50
KERNEL = np.array([0.25, 0.5, 1.0, 0.5, 0.25])


def _smooth(h: np.ndarray) -> np.ndarray:
    """Periodic convolution with `KERNEL` (the authors' `periodic_convolution`)."""
    padded = np.convolve(np.concatenate([h, h, h]), KERNEL, mode="same")
    return padded[h.size : 2 * h.size]


def torsion_kl(reference: np.ndarray, generated: np.ndarray) -> tuple[float, float]:
    """`(paper, nats)`: the authors' KL of smoothed histogram densities, and the KL in nats of
    the same smoothed histograms normalized to bin probabilities (angles in rad)."""
    hist = [
        _smooth(np.histogram(a, BINS, range=(-np.pi, np.pi), density=True)[0])
        for a in (reference, generated)
    ]
    eps = 1e-5
    paper = float(np.sum(hist[0] * np.log((hist[0] + eps) / (hist[1] + eps))))
    p, q = (h / h.sum() for h in hist)
    keep = p > 0
    nats = float(np.sum(p[keep] * np.log(p[keep] / np.maximum(q[keep], 1e-300))))
    return paper, nats


def torsions(cartesian: torch.Tensor) -> dict[str, np.ndarray]:
    """Every angle of `TORSIONS` (rad) for Cartesians `[n, 66]` or `[n, 22, 3]`."""
    x = cartesian.reshape(cartesian.shape[0], -1, 3).double()
    return {name: dihedral(x, atoms).numpy() for name, atoms in TORSIONS.items()}


def samples(out: Path, target) -> torch.Tensor:
    """The run's unweighted samples in the target's coordinates `[n, 60]` (from samples.nc)."""
    post = read_groups(out / "samples.nc")["posterior"]
    cols = [np.asarray(post[name]).reshape(-1) for name in target.parameter_names]
    return torch.as_tensor(np.stack(cols, axis=1), dtype=torch.float64)


def measure(budget: str, seed: int, out: Path, workers: int | None, reuse: bool = False) -> dict:
    """Run both recipes and return their torsion KLs and weight statistics (`reuse`: read a
    recipe's finished run from `out/NAME` instead of running it again)."""
    recipe = load_recipe(RECIPES["flow"], budget)
    target = build_target(recipe, system_dir=recipe.folder)
    try:
        md = torsions(torch.as_tensor(np.concatenate(target.md_frames())))
        results = {}
        for label, name in RECIPES.items():
            t0 = time.perf_counter()
            done = out / name / "summary.json"
            reused = reuse and done.is_file()
            if reused:
                summary = json.loads(done.read_text())
                if (summary["budget"], summary["seed"]) != (budget, seed):
                    raise ValueError(f"{done}: budget {summary['budget']}, seed {summary['seed']}")
            else:
                summary = run(name, budget=budget, seed=seed, out=out / name, workers=workers)
            wall = float("nan") if reused else time.perf_counter() - t0
            with torch.no_grad():
                gen = torsions(target.to_cartesian(samples(out / name, target)))
            kls = {k: torsion_kl(md[k], gen[k]) for k in TORSIONS}
            sampling, training = summary["sampling"], summary["training"]
            ess = summary["reweighting"]["ess"]
            n_eval = sampling["energy_evaluations"]
            n_all = n_eval + training["energy_evaluations"]
            results[label] = {
                "system": name,
                "reused_run": reused,
                "kl_paper": {k: v[0] for k, v in kls.items()},
                "kl_nats": {k: v[1] for k, v in kls.items()},
                "ess": ess,
                "ess_fraction": summary["reweighting"]["ess_fraction"],
                "pareto_k": summary["reweighting"]["pareto_k"],
                "n_samples": sampling["n_samples"],
                "sampling_evaluations": n_eval,
                "training_evaluations": training["energy_evaluations"],
                "ess_per_evaluation": ess / n_eval,
                "ess_per_evaluation_with_training": ess / n_all,
                "alphaL_vs_rest": summary["free_energies"]["alphaL_vs_rest"],
                "wall_seconds": wall,
                "training_seconds": training["wall_seconds"],
                "sampling_seconds": sampling["wall_seconds"],
            }
        return {"budget": budget, "seed": seed, "n_md_frames": len(md["φ: C-N-CA-C"]), **results}
    finally:
        target.close()


def _per_all(r: dict) -> str:
    return f"{r['ess_per_evaluation_with_training']:.4f}"


def _delta_f(r: dict) -> str:
    f = r["alphaL_vs_rest"]
    return f"{f['mean']:.3f} ± {f['stderr']:.3f} (z = {f.get('z_score', float('nan')):+.2f})"


def _walls(r: dict) -> str:
    return f"{r['wall_seconds']:.0f} ({r['training_seconds']:.0f}, {r['sampling_seconds']:.0f})"


def table(res: dict) -> str:
    """The side-by-side markdown table."""
    a, b = res["flow"], res["flow + MC"]
    lines = [
        "| quantity | flow | flow + MC | published RealNVP | published RealNVP + MC |",
        "|---|---|---|---|---|",
    ]
    for i, name in enumerate(TORSIONS):
        pub = [f"{PUBLISHED[k][i]:.2f}" if i < 5 else "" for k in PUBLISHED]
        lines.append(
            f"| KL {name} (paper estimator; nats) | {a['kl_paper'][name]:.3f} "
            f"({a['kl_nats'][name]:.4f}) | {b['kl_paper'][name]:.3f} ({b['kl_nats'][name]:.4f}) "
            f"| {pub[0]} | {pub[1]} |"
        )
    rows = [
        ("ESS (fraction)", lambda r: f"{r['ess']:.0f} ({r['ess_fraction']:.3f})"),
        ("PSIS k̂", lambda r: f"{r['pareto_k']:.2f}"),
        ("sampling energy evaluations", lambda r: f"{r['sampling_evaluations']:,}"),
        ("training energy evaluations", lambda r: f"{r['training_evaluations']:,}"),
        ("ESS per sampling evaluation", lambda r: f"{r['ess_per_evaluation']:.4f}"),
        ("ESS per evaluation, training included", _per_all),
        ("ΔF(αL vs rest) kT (z vs umbrella)", _delta_f),
        ("run wall s (training, sampling)", _walls),
    ]
    for label, fmt in rows:
        lines.append(f"| {label} | {fmt(a)} | {fmt(b)} | | |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    """Command line: see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", default="default", choices=("smoke", "default", "long"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench-stochastic-alanine")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--reuse", action="store_true", help="read finished runs found in --out")
    args = p.parse_args(argv)
    out = Path(args.out)
    res = measure(args.budget, args.seed, out, args.workers, args.reuse)
    text = table(res)
    print(text)
    (out / "table.md").write_text(text + "\n")
    (out / "benchmark.json").write_text(json.dumps(res, indent=1, default=float))
    return res


if __name__ == "__main__":
    main()
