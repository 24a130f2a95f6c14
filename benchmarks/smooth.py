"""Smooth flow vs spline flow as MD potentials, and the cost of the root-finding inverse.

On the 2-D double well (Wu, Köhler & Noé 2020) a smooth coupling flow (C∞ mixtures,
Köhler, Krämer & Noé 2021) and a rational-quadratic spline coupling flow (C¹ splines, ReLU
conditioners; Durkan et al. 2019) of about the same number of parameters are trained for the
same number of NLL steps on exact samples. Then, in the same run:

* **MD on u_q = -log q.** NVE velocity Verlet from the same initial conditions (exact target
  samples, Maxwell-Boltzmann velocities at kT = 1, unit mass) for ``--md-steps`` steps; the
  total-energy drift (RMS over trajectories of the least-squares slope) is reported per 10⁴
  steps, with the ratio spline/smooth (goal: ≥ 5).
* **Inverse cost.** Wall time of the smooth flow's root-finding direction (sampling, with
  ``fast="density"``) relative to its closed-form direction (``log_prob``), per batch.

With ``--alanine``, instead: alanine dipeptide in vacuum (ff96, 300 K, 60 normalized internal
coordinates, the target and MD training data of the ``alanine-dipeptide-vacuum`` recipe at
``default``), the recipe's spline flow (internal-coordinate couplings, trained by NLL) beside a
smooth flow with the same coupling structure (``masks="structured"``) trained by NLL alone and
by NLL + force matching (forces from the force field at the MD frames), with the same steps
and batches. Reported: the force RMSE on held-out MD frames
(the last 10% of the unbiased trajectory and of the αL trajectories) per coordinate kind
(bonds kT/nm, angles and torsions kT/rad), the importance-sampling ESS, and the free energies
of the target's state sets with bootstrap errors.

Usage::

    python benchmarks/smooth.py [--train-steps 1500] [--md-steps 10000] [--trajectories 32]
    python benchmarks/smooth.py --smoke
    python benchmarks/smooth.py --alanine [--ala-steps 3000] [--weight-force 1.0]
"""

from __future__ import annotations

import argparse
import time

import torch

from boltzflow.dynamics import FlowPotential, energy_drift, maxwell_boltzmann, velocity_verlet
from boltzflow.energies import DoubleWell2D
from boltzflow.flows.builders import spline_coupling_flow
from boltzflow.flows.smooth_coupling import smooth_coupling_flow
from boltzflow.sampling.reweighting import log_weights, reweight
from boltzflow.training import train


def n_params(flow) -> int:
    return sum(p.numel() for p in flow.parameters())


def build(kind: str, layers: int):
    target = DoubleWell2D()
    if kind == "smooth":
        flow = smooth_coupling_flow(
            target, num_layers=layers, hidden=38, num_blocks=2, num_components=8, seed=0
        )
    else:
        flow = spline_coupling_flow(
            target, num_layers=layers, hidden=32, num_blocks=1, num_bins=8, tail_bound=4.0, seed=0
        )
    return flow.double(), target


def timed(fn, repeats=5) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


#: A smooth flow with the same coupling structure as the alanine recipe's spline flow
#: (two blocks of four couplings: torsion halves, then stiff halves given all torsions).
SMOOTH_ALA = dict(
    num_layers=8, hidden=128, num_blocks=2, num_components=8, masks="structured", seed=0
)


def _chunked(fn, x, chunk=2048):
    return torch.cat([fn(x[i : i + chunk]) for i in range(0, len(x), chunk)])


def alanine(args) -> None:
    """The molecular comparison (module docstring)."""
    from boltzflow.molecular.target import AlanineDipeptideTarget
    from boltzflow.runs.pipeline import build_flow, build_target
    from boltzflow.runs.recipes import load_recipe
    from boltzflow.sampling.reweighting import free_energy_difference
    from boltzflow.training.force_matching import force_rmse, stack_positions_forces

    dtype = torch.float32
    recipe = load_recipe("alanine-dipeptide-vacuum", "default")
    target = build_target(recipe)
    assert isinstance(target, AlanineDipeptideTarget)
    main, alpha = (torch.as_tensor(f) for f in target.md_frames())
    cut_m, cut_a = int(0.9 * len(main)), int(0.9 * len(alpha))
    y_train = target.from_cartesian(torch.cat([main[:cut_m], alpha[:cut_a]]))
    y_held = target.from_cartesian(torch.cat([main[cut_m:], alpha[cut_a:]]))
    f_train, f_held = _chunked(target.force, y_train), _chunked(target.force, y_held)
    # dy/dq = 1/σ per coordinate: forces in internal units are F_y / σ.
    sigma = target.to_internal(torch.ones(1, 60, dtype=torch.float64))[0]
    sigma = sigma - target.to_internal(torch.zeros(1, 60, dtype=torch.float64))[0]
    z = target.zmatrix
    kinds = {"bonds kT/nm": z.bond_slice, "angles kT/rad": z.angle_slice}
    kinds["torsions kT/rad"] = z.torsion_slice
    print(f"alanine: {len(y_train)} training / {len(y_held)} held-out frames")

    stage = dict(steps=args.ala_steps, batch_size=args.ala_batch, lr=1e-3, warmup_steps=50)
    runs = {
        "spline NLL": (
            lambda: build_flow(recipe, target, seed=0),
            dict(stage, loss="nll", data=y_train.to(dtype)),
        ),
        "smooth NLL": (
            lambda: smooth_coupling_flow(target, **SMOOTH_ALA),
            dict(stage, loss="nll", data=y_train.to(dtype)),
        ),
        "smooth NLL+FM": (
            lambda: smooth_coupling_flow(target, **SMOOTH_ALA),
            dict(
                stage,
                loss="nll_force_matching",
                data=stack_positions_forces(y_train, f_train).to(dtype),
                weight_force=args.weight_force,
            ),
        ),
    }
    only = set(args.only.split(",")) if args.only else set(runs)
    for name, (make, spec) in runs.items():
        if name not in only:
            continue
        flow = make().to(dtype)
        t0 = time.perf_counter()
        train(flow, target, [spec], seed=0, progress=False)
        train_s = time.perf_counter() - t0
        flow.eval()
        fh = f_held.to(dtype)
        rmse = {"all": force_rmse(flow, y_held.to(dtype), fh)}
        fq = torch.cat(
            [
                flow_force_chunk(flow, y_held[i : i + 1024].to(dtype))
                for i in range(0, len(y_held), 1024)
            ]
        ).double()
        for kind, idx in kinds.items():
            err = (fq - f_held)[:, idx] / sigma[idx]
            rmse[kind] = float(err.pow(2).mean().sqrt())
        t0 = time.perf_counter()
        with torch.no_grad():
            s = [
                flow.sample(2000, generator=torch.Generator().manual_seed(10 + i))
                for i in range(10)
            ]
        x = torch.cat([si.x for si in s]).double()
        log_q = torch.cat([si.log_q for si in s]).double()
        lw = log_weights(target, x, log_q)
        r = reweight(lw, seed=0)
        line = (
            f"{name:14s} {n_params(flow)} params, train {train_s:6.0f} s, sample+score "
            f"{time.perf_counter() - t0:5.0f} s | ESS fraction {r.ess_fraction:.4f} "
            f"(non-finite {r.n_nonfinite}) | held-out force RMSE "
            + ", ".join(f"{k} {v:.3f}" for k, v in rmse.items())
        )
        for sname, sets in target.state_sets().items():
            df = free_energy_difference(sets.in_a(x), sets.in_b(x), lw, seed=0)
            line += f" | dF {sname} {df.mean:.3f} ± {df.stderr:.3f} kT"
        print(line, flush=True)


def flow_force_chunk(flow, y):
    from boltzflow.training.force_matching import flow_force

    return flow_force(flow, y, create_graph=False)[0].detach()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-steps", type=int, default=1500)
    ap.add_argument("--md-steps", type=int, default=10_000)
    ap.add_argument("--trajectories", type=int, default=32)
    ap.add_argument("--dt", type=float, default=0.005)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (seconds)")
    ap.add_argument("--alanine", action="store_true", help="the alanine-dipeptide comparison")
    ap.add_argument("--ala-steps", type=int, default=3000)
    ap.add_argument("--ala-batch", type=int, default=256)
    ap.add_argument("--weight-force", type=float, default=1.0)
    ap.add_argument("--only", default="", help="comma-separated subset of the alanine runs")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.alanine:
        return alanine(args)
    if args.smoke:
        args.train_steps, args.md_steps, args.trajectories = 50, 200, 4

    flows = {}
    for kind in ("smooth", "spline"):
        flow, target = build(kind, args.layers)
        stage = dict(loss="nll", data="exact", steps=args.train_steps, batch_size=256, lr=3e-3)
        t0 = time.perf_counter()
        train(flow, target, [stage], seed=0, progress=False)
        train_s = time.perf_counter() - t0
        with torch.no_grad():
            s = flow.sample(20_000, generator=torch.Generator().manual_seed(1))
        r = reweight(log_weights(target, s.x, s.log_q), seed=0)
        flows[kind] = flow
        print(
            f"{kind:6s}: {n_params(flow):6d} parameters, NLL training {train_s:6.1f} s, "
            f"ESS fraction {r.ess_fraction:.3f}"
        )

    # Cost of the inverse (root finding) relative to the closed-form direction.
    smooth = flows["smooth"]
    gen = torch.Generator().manual_seed(2)
    x = smooth.sample(4096, generator=gen).x.detach()
    z = smooth.base.sample(4096, generator=gen)
    with torch.no_grad():
        t_density = timed(lambda: smooth.log_prob(x))
        t_sample = timed(lambda: smooth.forward(z))
        t_spline = timed(lambda: flows["spline"].log_prob(x))
    print(
        f"smooth log_prob (closed form) {1e3 * t_density:7.2f} ms / 4096, "
        f"sample (root finding) {1e3 * t_sample:7.2f} ms: inverse/forward = "
        f"{t_sample / t_density:.1f}x; spline log_prob {1e3 * t_spline:7.2f} ms"
    )

    # NVE MD on u_q = -log q from identical initial conditions.
    target = DoubleWell2D()
    x0 = target.sample(args.trajectories, generator=torch.Generator().manual_seed(3)).double()
    v0 = maxwell_boltzmann(x0, generator=torch.Generator().manual_seed(4))
    drifts = {}
    for kind, flow in flows.items():
        t0 = time.perf_counter()
        traj = velocity_verlet(FlowPotential(flow), x0, v0, args.dt, args.md_steps, record_every=10)
        d = energy_drift(traj, per_steps=10_000)
        drifts[kind] = d
        print(
            f"{kind:6s} NVE: drift {d.rms:.3e} kT / 1e4 steps (mean {d.mean:+.2e} ± "
            f"{d.stderr:.1e}), fluctuation {d.fluctuation:.2e} kT, "
            f"{d.n_nonfinite} non-finite, {time.perf_counter() - t0:.1f} s"
        )
    ratio = drifts["spline"].rms / drifts["smooth"].rms
    print(
        f"drift ratio spline/smooth = {ratio:.1f} (goal >= 5), dt = {args.dt}, "
        f"{args.md_steps} steps, {args.trajectories} trajectories"
    )


if __name__ == "__main__":
    main()
