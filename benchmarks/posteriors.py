"""Posterior benchmark: five standard posteriors, every sampler at its default settings.

The posteriors are `boltzflow.energies.standard_posteriors` (eight schools non-centred,
GARCH(1,1), ARMA(1,1), linear regression, a 2-d two-mode mixture), each a torch `log_prob`
wrapped in one line with `from_log_prob`. References: closed form (regression, mixture), 2-d
quadrature plus closed-form conditionals (eight schools), 3-d and 4-d quadrature (GARCH, ARMA;
`_posteriors_reference.py`, about 35 s and 60 s on one core, cached in
`benchmarks/posteriors_reference.json`, `--reference-cache`).

Samplers, each with its defaults; only the number of draws is set (and, for the two
gradient-based runners, the evidence is asked for):

* `emcee`: `emcee_sampler(None, post, n_samples=N)`, stretch move;
* `hmc`: `hybrid` with dense-metric HMC and the flow moves off (`local="hmc", metric="dense",
  global_steps=0, train_steps=0, repeats=(1, 0)`), the package's plain HMC;
* `hybrid`: `hybrid_sampler(flow, post, n_samples=N)` (MALA + flow moves);
* `smc`: `bf.smc(None, post)` (2,048 particles, 16 islands), gradient-free;
* `dynesty`: dynesty's static nested sampler with its defaults, as an evidence baseline
  (`pip install boltzflow[benchmarks]`; skipped with a message when absent).

For `hmc` and `hybrid` the evidence is flow importance sampling after the chains
(`evidence_samples=4000, evidence_train_steps=300`, the flow refitted on the finished chains,
with the coverage check); those 4,000 draws are not in the cost per ESS.

Printed per posterior x sampler: max R-hat and min bulk ESS over the named parameters (arviz,
chains / walkers / SMC islands as chains); evaluations per ESS in plain-likelihood-evaluation
equivalents (a gradient evaluation counts `grad_cost` plain ones, measured on this machine as
the CPU time of `energy + backward` over that of `energy` on a batch of 32); wall and CPU
seconds; max |z| of the means and of the sds against the reference (z = (estimate - ref) /
MCSE, arviz's MCSE of the mean and of the sd; for dynesty sd / sqrt(Kish ESS)); log Z ±
error and its z against the reference, or "flagged" when the coverage check flags it.

Usage: ``python benchmarks/posteriors.py [--budget smoke|default] [--only NAME]
[--samplers KIND] [--out FILE.json] [--reference-cache FILE.json]``; ``--merge A.json B.json
--out ALL.json`` joins runs made side by side (e.g. one per posterior). The smoke budget
shrinks the runs (a check that everything runs); the default budget runs the samplers' defaults.

Results (`--budget default`, seed 0, one thread per process on the 2-core development machine;
docs/posteriors.md has the table): `smc` (the recommended sampler, `RECOMMENDED`) has R-hat
<= 1.008, means and sds within 2.6 MCSE and log Z within 1.7 errors on all five posteriors;
every other log Z is within 3 errors or flagged by the coverage check (`acceptance.all_ok`).
emcee's 4,000 draws end with R-hat 1.5-2.1 everywhere; plain dense HMC with R-hat 1.07-1.58,
its evidence flagged on eight schools, GARCH and the mixture; `hybrid` with R-hat
1.002-1.017, except 1.115 on eight schools (evidence flagged).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _posteriors_reference import quadrature_reference  # noqa: E402

from boltzflow import arviz_compat  # noqa: E402
from boltzflow.energies.standard_posteriors import STANDARD_POSTERIORS, standard_posterior  # noqa: E402
from boltzflow.flows.builders import spline_coupling_flow  # noqa: E402
from boltzflow.sampling.emcee_move import emcee_sampler  # noqa: E402
from boltzflow.sampling.hybrid import hybrid_sampler  # noqa: E402
from boltzflow.sampling.smc import smc  # noqa: E402

HERE = Path(__file__).resolve().parent
SAMPLERS = ("emcee", "hmc", "hybrid", "smc", "dynesty")
RECOMMENDED = "smc"
QUADRATURE_POINTS = {"garch": 41, "arma": 25}
EVIDENCE = dict(evidence_samples=4000, evidence_train_steps=300)
PLAIN_HMC = dict(local="hmc", metric="dense", global_steps=0, train_steps=0, repeats=(1, 0))
SETTINGS = {
    "default": {"n": 4000, "hybrid": {}, "smc": {}, "dynesty": {}},
    "smoke": {  # shrunk: a check that everything runs
        "n": 256,
        "hybrid": dict(
            warmup_rounds=2,
            local_steps=20,
            train_steps=20,
            evidence_samples=500,
            evidence_train_steps=30,
        ),
        "smc": dict(n_samples=512, train_steps=10, prior_steps=30, max_steps=10),
        "dynesty": dict(nlive=40),
    },
}


class Counted:
    """Counts the rows a posterior's `energy` is called on, with and without autograd."""

    def __init__(self, post):
        self.plain = self.grad = 0
        self.energy = post.energy
        post.energy = self

    def __call__(self, x):
        if torch.is_grad_enabled() and x.requires_grad:
            self.grad += int(x.shape[0])
        else:
            self.plain += int(x.shape[0])
        return self.energy(x)


def grad_cost(post, batch: int = 32, blocks: int = 4, block_seconds: float = 0.25) -> dict:
    """CPU seconds per call of `energy` and of `energy` + backward on `batch` points near the
    origin: alternating blocks of calls, each at least `block_seconds` of CPU time (CPU time, so
    that other jobs on the machine do not enter; alternating, so that drifts cancel)."""
    y = 0.1 * torch.randn(batch, post.dim, generator=torch.Generator().manual_seed(0))

    def plain():
        with torch.no_grad():
            post.energy(y)

    def with_grad():
        yr = y.clone().requires_grad_(True)
        post.energy(yr).sum().backward()

    spent = {plain: [0.0, 0], with_grad: [0.0, 0]}
    plain(), with_grad()
    for _ in range(blocks):
        for fn in (plain, with_grad):
            t0 = time.process_time()
            while time.process_time() - t0 < block_seconds:
                fn()
                spent[fn][1] += 1
            spent[fn][0] += time.process_time() - t0
    t_plain, t_grad = (spent[f][0] / spent[f][1] for f in (plain, with_grad))
    return {
        "batch": batch,
        "seconds_energy": t_plain,
        "seconds_energy_grad": t_grad,
        "grad_cost": t_grad / t_plain,
    }


def reference(name: str, sp, cache: Path | None, recompute: bool) -> dict:
    """The exact moments where known, else quadrature (read from / written to `cache`)."""
    if sp.mean is not None:
        return {"mean": list(sp.mean), "sd": list(sp.sd), "log_z": sp.log_z, "source": "exact"}
    stored = json.loads(cache.read_text()) if cache and cache.is_file() else {}
    if name not in stored or recompute:
        stored[name] = quadrature_reference(sp.post, n=QUADRATURE_POINTS[name])
        if cache:
            cache.write_text(json.dumps(stored, indent=1) + "\n")
    return stored[name]


def run_sampler(kind: str, sp, cfg: dict, seed: int):
    """One run; returns `(theta [chains, draws, n] or weighted, info dict)`."""
    post, n = sp.post, cfg["n"]
    if kind == "emcee":
        res = emcee_sampler(None, post, n_samples=n, seed=seed)
    elif kind in ("hmc", "hybrid"):
        flow = spline_coupling_flow(post, seed=seed).double()
        extra = {**EVIDENCE, **cfg["hybrid"]}
        if kind == "hmc":
            extra.update(PLAIN_HMC)
        res = hybrid_sampler(flow, post, n_samples=n, seed=seed, **extra)
    elif kind == "smc":
        res = smc(None, post, seed=seed, **cfg["smc"])
    else:
        return run_dynesty(sp, cfg, seed)
    with torch.no_grad():
        theta = post.constrain(res.x.reshape(-1, post.dim)).theta
    theta = theta.reshape(*res.x.shape[:2], -1).numpy()
    ev = res.info.get("evidence") or {}
    out = {"evidence_evaluations": int(ev.get("n", 0)), "info": res.info}
    if kind == "smc":
        out["log_z"] = res.info["log_z"]
    elif ev:
        out["log_z"] = {**ev["log_z"], "flagged": bool(ev.get("flagged")),
                        "coverage": ev.get("coverage"), "pareto_k": ev.get("pareto_k")}  # fmt: skip
    return theta, out


def run_dynesty(sp, cfg: dict, seed: int):
    try:
        import dynesty
    except ImportError:
        return None, {"skipped": "dynesty is not installed (pip install boltzflow[benchmarks])"}
    d = sp.post.dim
    rng = np.random.default_rng(seed)
    nested = dynesty.NestedSampler
    sampler = nested(sp.nested_log_likelihood, sp.prior_transform, d, rstate=rng, **cfg["dynesty"])
    sampler.run_nested(print_progress=False)
    r = sampler.results
    w = np.exp(r.logwt - r.logz[-1])
    w = w / w.sum()
    return (r.samples, w), {
        "log_z": {"mean": float(r.logz[-1]), "stderr": float(r.logzerr[-1])},
        "nested_calls": int(np.sum(r.ncall)),
    }


def score(theta, out: dict, ref: dict, counted: Counted, cost: dict) -> dict:
    """The row of the table for one run (module docstring)."""
    mean_ref, sd_ref = np.asarray(ref["mean"]), np.asarray(ref["sd"])
    row = {}
    if isinstance(theta, tuple):  # dynesty: weighted draws
        x, w = theta
        mean = w @ x
        sd = np.sqrt(w @ (x - mean) ** 2)
        ess = 1.0 / np.sum(w**2)
        row.update(kish_ess=float(ess), evaluations=out["nested_calls"])
        z_mean, z_sd = (mean - mean_ref) / (sd / math.sqrt(ess)), None
    else:
        rhat = arviz_compat.rhat(theta)
        ess = arviz_compat.ess(theta)
        z_mean = (theta.mean((0, 1)) - mean_ref) / arviz_compat.mcse(theta, "mean")
        sd = theta.reshape(-1, theta.shape[-1]).std(0, ddof=1)
        z_sd = (sd - sd_ref) / arviz_compat.mcse(theta, "sd")
        plain = counted.plain - out["evidence_evaluations"]
        equiv = plain + cost["grad_cost"] * counted.grad
        row.update(
            rhat_max=float(rhat.max()), ess_bulk_min=float(ess.min()),
            evaluations_plain=plain, evaluations_grad=counted.grad,
            evaluations_equivalent=float(equiv), evaluations_per_ess=float(equiv / ess.min()),
            evidence_evaluations=out["evidence_evaluations"],
        )  # fmt: skip
    row["max_abs_z_mean"] = float(np.max(np.abs(z_mean)))
    row["max_abs_z_sd"] = None if z_sd is None else float(np.max(np.abs(z_sd)))
    if "log_z" in out:
        lz = dict(out["log_z"])
        lz["z"] = (lz["mean"] - ref["log_z"]) / lz["stderr"] if lz["stderr"] > 0 else math.inf
        row["log_z"] = lz
    return row


def fmt_row(sampler: str, r: dict) -> str:
    if "skipped" in r:
        return f"  {sampler:8s} skipped: {r['skipped']}"
    lz = r.get("log_z")
    if lz is None:
        lz_s = "-"
    elif lz.get("flagged"):
        lz_s = f"{lz['mean']:.3f} ± {lz['stderr']:.3f} flagged"
    else:
        lz_s = f"{lz['mean']:.3f} ± {lz['stderr']:.3f} (z {lz['z']:+.1f})"
    zsd = "-" if r["max_abs_z_sd"] is None else f"{r['max_abs_z_sd']:.1f}"
    if "rhat_max" in r:
        head = f"R-hat {r['rhat_max']:.3f}  ESS {r['ess_bulk_min']:7.0f}  " \
               f"eval/ESS {r['evaluations_per_ess']:8.0f}"  # fmt: skip
    else:
        head = f"{'Kish ESS':>24s} {r['kish_ess']:6.0f}  calls {r['evaluations']:8d}"
    return (f"  {sampler:8s} {head}  {r['wall_seconds']:6.1f} s  |z| mean "
            f"{r['max_abs_z_mean']:5.1f} sd {zsd:>5s}  log Z {lz_s}")  # fmt: skip


def benchmark(names, budget, cache, recompute, seed=0, samplers=SAMPLERS, out_file=None) -> dict:
    """Run `samplers` on the posteriors `names`; the JSON is rewritten after every run."""
    cfg = SETTINGS[budget]
    out = {"budget": budget, "recommended": RECOMMENDED, "posteriors": {}}
    for name in names:
        sp = standard_posterior(name)
        ref = reference(name, sp, cache, recompute)
        cost = grad_cost(sp.post)
        entry = {"reference": {"log_z": ref["log_z"], "source": ref["source"]},
                 "grad_cost": cost, "dim": sp.post.dim, "samplers": {}}  # fmt: skip
        print(f"{name} (dim {sp.post.dim}; reference {ref['source']}, log Z {ref['log_z']:.4f};"
              f" a gradient costs {cost['grad_cost']:.1f} evaluations)", flush=True)  # fmt: skip
        out["posteriors"][name] = entry
        for kind in samplers:
            counted = Counted(sp.post)
            t0, c0 = time.perf_counter(), time.process_time()
            theta, res = run_sampler(kind, sp, cfg, seed)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            sp.post.energy = counted.energy
            if theta is None:
                row = {"skipped": res["skipped"]}
            else:
                row = score(theta, res, ref, counted, cost)
                row.update(wall_seconds=wall, cpu_seconds=cpu)
            entry["samplers"][kind] = row
            print(fmt_row(kind, row), flush=True)
            if out_file:
                out_file.write_text(json.dumps(out, indent=1, default=float) + "\n")
    out["acceptance"] = acceptance(out)
    return out


def merge(files) -> dict:
    """Join the JSON of several runs (e.g. one per posterior, run side by side)."""
    out = {"posteriors": {}}
    for f in files:
        part = json.loads(Path(f).read_text())
        out.update({k: v for k, v in part.items() if k not in ("posteriors", "acceptance")})
        for name, entry in part["posteriors"].items():
            have = out["posteriors"].setdefault(name, {**entry, "samplers": {}})
            have["samplers"].update(entry["samplers"])
    for name, entry in out["posteriors"].items():
        print(name)
        for kind in SAMPLERS:
            if kind in entry["samplers"]:
                print(fmt_row(kind, entry["samplers"][kind]))
    out["acceptance"] = acceptance(out)
    return out


def acceptance(out: dict) -> dict:
    """The recommended sampler's means and sds within 3 MCSE and R-hat < 1.01; every log Z
    within 3 errors of the reference or flagged."""
    rec, lz = {}, []
    for name, e in out["posteriors"].items():
        r = e["samplers"].get(RECOMMENDED, {})
        if "rhat_max" in r:
            rec[name] = r["rhat_max"] < 1.01 and r["max_abs_z_mean"] < 3 and r["max_abs_z_sd"] < 3
        for kind, row in e["samplers"].items():
            if "log_z" in row:
                ok = row["log_z"].get("flagged") or abs(row["log_z"]["z"]) < 3
                lz.append({"posterior": name, "sampler": kind, "ok": bool(ok)})
    return {"recommended_ok": rec, "log_z": lz,
            "all_ok": all(rec.values()) and all(x["ok"] for x in lz)}  # fmt: skip


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", choices=sorted(SETTINGS), default="default")
    p.add_argument("--only", choices=sorted(STANDARD_POSTERIORS), action="append")
    p.add_argument("--out", type=Path)
    p.add_argument("--reference-cache", type=Path, default=HERE / "posteriors_reference.json")
    p.add_argument("--recompute-reference", action="store_true")
    p.add_argument("--samplers", choices=SAMPLERS, action="append")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--merge", nargs="+", type=Path, help="join these JSON outputs; run nothing")
    a = p.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    names = a.only or list(STANDARD_POSTERIORS)
    if a.merge:
        out = merge(a.merge)
    else:
        args = (a.reference_cache, a.recompute_reference, a.seed, a.samplers or SAMPLERS, a.out)
        out = benchmark(names, a.budget, *args)
        out["command"] = "python benchmarks/posteriors.py " + " ".join(argv or sys.argv[1:])
    print("acceptance:", json.dumps(out["acceptance"]))
    if a.out:
        a.out.write_text(json.dumps(out, indent=1, default=float) + "\n")
    return out


if __name__ == "__main__":
    main()
