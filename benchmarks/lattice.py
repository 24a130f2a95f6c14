"""Lattice field theory benchmark: flow IMH quality and topological autocorrelations vs HMC.

In one run, through the recipes of ``boltzflow run`` (so the numbers are those of the
catalogue systems):

* **phi4-L8** (m² = -4, λ = 8, no-½ convention): flow-IMH acceptance and ESS fraction
  (published 0.46 with affine couplings, Albergo et al. 2021; acceptance point ≥ 0.5);
* **u1-L8-b2**: ESS fraction (point ≥ 0.4) and flow-IMH acceptance (point ≥ 0.3);
* **u1-L16-b6** (frozen topology for HMC): HMC, flow IMH and flow HMC each get ``--seconds``
  of wall time, starting from flow samples; τ_int(Q) of each, in draws and in seconds (pooled
  over chains, :func:`~boltzflow.sampling.lattice_hmc.pooled_integrated_time`), and the ratios
  τ_int(Q)·(s/draw) of HMC over each flow sampler (point ≥ 10). Where HMC never decorrelates Q
  within the budget, its τ and the ratio are lower bounds (marked ≥).

Usage::

    python benchmarks/lattice.py [--budget default] [--seconds 300] [--out runs/bench-lattice]
    python benchmarks/lattice.py --budget smoke --seconds 10
    python benchmarks/lattice.py --systems u1-L16-b6
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from boltzflow.energies.lattice import topological_charge
from boltzflow.io import load_checkpoint
from boltzflow.runs.pipeline import build_flow, build_target, run
from boltzflow.runs.recipes import load_recipe
from boltzflow.sampling.lattice_hmc import flow_hmc, hmc, pooled_integrated_time
from boltzflow.sampling.runners import flow_imh


def trained(system: str, budget: str, seed: int, out: Path):
    """Run the recipe end to end; return its summary, target and trained flow."""
    t0, c0 = time.perf_counter(), time.process_time()
    summary = run(system, budget=budget, seed=seed, out=out / system)
    recipe = load_recipe(system, budget)
    target = build_target(recipe)
    flow = build_flow(recipe, target, seed)
    flow = flow.to(getattr(torch, recipe.system.get("dtype", "float32")))
    load_checkpoint(out / system, flow=flow)
    flow.eval()
    summary["total_seconds"] = time.perf_counter() - t0
    summary["cpu_seconds"] = time.process_time() - c0
    return summary, target, flow


def quality(summary: dict) -> dict:
    return {
        "imh_acceptance": summary["sampling"]["acceptance_rate"],
        "ess_fraction": summary["reweighting"]["ess_fraction"],
        "log_z": summary["reweighting"]["log_z"],
        "train_seconds": round(summary["training"]["wall_seconds"], 1),
        "total_seconds": round(summary["total_seconds"], 1),
        "cpu_seconds": round(summary["cpu_seconds"], 1),
    }


def seconds_per_step(r) -> float:
    """Wall seconds per step of all chains, warm-up steps included."""
    return r.wall_seconds / (r.x.shape[1] + int(r.info.get("n_warmup", 0)))


def timed(sampler, seconds: float, pilot: int):
    """Run ``sampler(n)`` once with ``pilot`` draws, then with as many as fit in ``seconds``."""
    r = sampler(pilot)
    if seconds <= r.wall_seconds:
        return r
    steps = seconds / seconds_per_step(r) - int(r.info.get("n_warmup", 0))
    chains = r.x.shape[0]
    return sampler(max(pilot, int(steps) * chains))


def topology(target, flow, seconds: float, chains: int, seed: int) -> dict:
    samplers = {
        "hmc": lambda n: hmc(
            flow, target, n_samples=n, chains=chains, step_size=0.1, n_leapfrog=10, seed=seed
        ),
        "flow-imh": lambda n: flow_imh(flow, target, n_samples=n, chains=chains, seed=seed),
        "flow-hmc": lambda n: flow_hmc(
            flow, target, n_samples=n, chains=chains, step_size=0.005, n_leapfrog=8, seed=seed
        ),
    }
    pilots = {"hmc": 20 * chains, "flow-imh": 200 * chains, "flow-hmc": 5 * chains}
    out = {}
    for name, sampler in samplers.items():
        r = timed(sampler, seconds, pilots[name])
        q = topological_charge(r.x.reshape(-1, *r.x.shape[2:])).reshape(r.x.shape[:2])
        tau = pooled_integrated_time(q)
        sec_per_draw = seconds_per_step(r)
        out[name] = {
            "seconds_per_draw": sec_per_draw,
            "draws_per_chain": int(r.x.shape[1]),
            "wall_seconds": round(r.wall_seconds, 1),
            "acceptance": float(r.accepted.double().mean()),
            "tau_int_Q_draws": tau.tau,
            "tau_int_Q_seconds": tau.tau * sec_per_draw,
            "lower_bound": tau.lower_bound,
            "q2": float((q.double() ** 2).mean()),
        }
    base = out["hmc"]
    for name in ("flow-imh", "flow-hmc"):
        ratio = base["tau_int_Q_seconds"] / out[name]["tau_int_Q_seconds"]
        out[name]["hmc_over_this"] = ratio
        out[name]["ratio_is_lower_bound"] = base["lower_bound"] and not out[name]["lower_bound"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="default", choices=["smoke", "default", "long"])
    ap.add_argument("--seconds", type=float, default=300.0, help="wall time per sampler (L=16)")
    ap.add_argument("--chains", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/bench-lattice")
    ap.add_argument(
        "--systems", default="phi4-L8,u1-L8-b2,u1-L16-b6", help="comma-separated subset to run"
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    report = {"budget": args.budget, "seconds_per_sampler": args.seconds}

    systems = [name.strip() for name in args.systems.split(",") if name.strip()]
    unknown = set(systems) - {"phi4-L8", "u1-L8-b2", "u1-L16-b6"}
    if unknown:
        ap.error(f"unknown systems {sorted(unknown)}")
    for system in (s for s in ("phi4-L8", "u1-L8-b2") if s in systems):
        summary, _, _ = trained(system, args.budget, args.seed, out)
        report[system] = quality(summary)
        print(f"{system}: {json.dumps(report[system])}", flush=True)

    if "u1-L16-b6" in systems:
        summary, target, flow = trained("u1-L16-b6", args.budget, args.seed, out)
        report["u1-L16-b6"] = quality(summary)
        report["u1-L16-b6"]["exact_q2"] = target.exact.q2
        report["u1-L16-b6"]["topology"] = topology(
            target, flow, args.seconds, args.chains, args.seed + 1
        )
        print(f"u1-L16-b6: {json.dumps(report['u1-L16-b6'])}", flush=True)

    print("\nsummary (acceptance points in brackets)")
    for system, point in (("phi4-L8", 0.5), ("u1-L8-b2", 0.3)):
        if system in report:
            acc = report[system]["imh_acceptance"]
            print(f"  {system:10s} IMH acceptance {acc:.3f} [≥ {point}]")
    for system, point in (("phi4-L8", None), ("u1-L8-b2", 0.4)):
        if system in report:
            ess = report[system]["ess_fraction"]
            print(f"  {system:10s} ESS fraction   {ess:.3f}" + (f" [≥ {point}]" if point else ""))
    for name in ("flow-imh", "flow-hmc") if "u1-L16-b6" in report else ():
        t = report["u1-L16-b6"]["topology"][name]
        bound = "≥ " if t["ratio_is_lower_bound"] else ""
        print(
            f"  u1-L16-b6  tau_int(Q) HMC / {name}: {bound}{t['hmc_over_this']:.1f} "
            f"at equal wall time [≥ 10]"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "lattice_benchmark.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
