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

Usage::

    python benchmarks/smooth.py [--train-steps 1500] [--md-steps 10000] [--trajectories 32]
    python benchmarks/smooth.py --smoke
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-steps", type=int, default=1500)
    ap.add_argument("--md-steps", type=int, default=10_000)
    ap.add_argument("--trajectories", type=int, default=32)
    ap.add_argument("--dt", type=float, default=0.005)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (seconds)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
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
