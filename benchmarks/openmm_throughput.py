"""OpenMM energy + force throughput: worker pool vs a raw single-Context loop.

For both alanine-dipeptide systems (vacuum on ``Reference``, OBC implicit solvent on ``CPU``
with one thread), on the same platform and the same positions, in one run:

* ``raw``: one ``openmm.Context`` in this process (pinned to one core), ``setPositions`` +
  ``getState(getEnergy, getForces)`` per configuration;
* ``pool1`` / ``pool2``: :class:`boltzflow.parallel.EnergyPool` with 1 and 2 local workers,
  whole batches sent as one chunk per worker.

Prints evaluations/s and the ratios ``pool1/raw`` (goal ≥ 0.9) and ``pool2/raw`` (goal ≥ 1.7,
which needs two otherwise idle cores). Usage::

    python benchmarks/openmm_throughput.py [--seconds 3] [--batch 4096] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def raw_loop(system, platform, props, positions, seconds):
    import openmm

    ctx = openmm.Context(
        system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform), props
    )
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for p in positions:
            ctx.setPositions(p)
            state = ctx.getState(getEnergy=True, getForces=True)
            state.getPotentialEnergy()
            state.getForces(asNumpy=True)
        n += len(positions)
    return n / (time.perf_counter() - t0)


def pool_rate(pool, spec, positions, seconds):
    pool.evaluate(spec, positions[:64])  # build the Contexts in the workers
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        pool.evaluate(spec, positions)
        n += len(positions)
    return n / (time.perf_counter() - t0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    ap.add_argument("--batch", type=int, default=4096, help="configurations per pool call")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats (best is kept)")
    args = ap.parse_args(argv)

    from boltzflow.energies.openmm import default_platform
    from boltzflow.molecular.alanine import load_alanine_dipeptide
    from boltzflow.parallel import EnergyPool, SystemSpec

    print(f"cores allowed: {sorted(os.sched_getaffinity(0))}; load average {os.getloadavg()}")
    print(
        f"{'system':10s} {'platform':10s} {'raw/s':>9s} {'pool1/s':>9s} {'pool2/s':>9s}"
        f" {'pool1/raw':>9s} {'pool2/raw':>9s}"
    )
    rng = np.random.default_rng(0)
    for solvent in ("vacuum", "implicit"):
        mol = load_alanine_dipeptide(solvent)
        platform, props = default_platform(mol.system)
        spec = SystemSpec.from_system(mol.system, platform, props)
        batch = args.batch if platform == "Reference" else args.batch // 4
        positions = mol.positions[None] + 0.005 * rng.standard_normal((batch, 22, 3))

        allowed = os.sched_getaffinity(0)
        best = {"raw": 0.0, 1: 0.0, 2: 0.0}
        pools = {w: EnergyPool(workers=w) for w in (1, 2)}
        try:
            for _ in range(args.repeats):  # interleaved, best of: robust to other load
                os.sched_setaffinity(0, {min(allowed)})
                try:
                    raw = raw_loop(mol.system, platform, props, positions[:512], args.seconds)
                finally:
                    os.sched_setaffinity(0, allowed)
                best["raw"] = max(best["raw"], raw)
                for w, pool in pools.items():
                    best[w] = max(best[w], pool_rate(pool, spec, positions, args.seconds))
        finally:
            for pool in pools.values():
                pool.close()
        raw, rates = best["raw"], [best[1], best[2]]
        print(
            f"{solvent:10s} {platform:10s} {raw:9.0f} {rates[0]:9.0f} {rates[1]:9.0f}"
            f" {rates[0] / raw:9.2f} {rates[1] / raw:9.2f}"
        )


if __name__ == "__main__":
    main()
