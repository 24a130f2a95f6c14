r"""MBAR reference of the ice XI free energy between 250 K and 100 K (regenerate:
`python -m boltzflow.molecular.ice_reference`).

**Convention.** With the rigid-state measure of
[`boltzflow.coordinates.rigid`][boltzflow.coordinates.rigid], the reduced free energy of the
crystal at temperature $T$ is $f(T) = -\ln Z(T)$,
$Z(T) = \int e^{-E(x)/k_B T}\, dx$, and the reported value is

$$
\Delta F / N = \frac{f(100\,\mathrm{K}) - f(250\,\mathrm{K})}{N},
$$

dimensionless ("reduced units per molecule"; each $f$ is in units of its own $k_BT$), for
$N = 16$ molecules. It does not depend on the constant of the measure, which cancels.
Köhler et al. 2023 report $-41.86$ in these units for their ice XI system (their water model
and cutoffs may differ). It equals the log-weight average of targeted free-energy perturbation
from 250 K samples to the 100 K state.

**Method.** One Langevin trajectory per temperature of a geometric ladder
$T_k = T_\mathrm{high} (T_\mathrm{low}/T_\mathrm{high})^{k/(K-1)}$ (cached MD from
[`IceXITarget.md_states`][boltzflow.molecular.ice.IceXITarget.md_states]); the potential energy
$E_n$ of every stored frame (through the rigid map); each trajectory subsampled to
uncorrelated frames with the statistical inefficiency of its energy series
(`pymbar.timeseries`); then MBAR (Shirts & Chodera 2008, J. Chem. Phys. 129, 124105; the
package's wrapper in [`boltzflow.molecular.umbrella`][boltzflow.molecular.umbrella]) on the reduced
potentials $u_k(x_n) = E_n / k_B T_k$. The error is MBAR's asymptotic standard error of
$f_{K-1} - f_0$, divided by $N$. The overlap of neighbouring rungs is reported as the MBAR
overlap-matrix element $O_{k,k+1}$ (0: none; 0.5 is the maximum for two identical states).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np

from boltzflow.energies.openmm import kT_kJ_per_mol

__all__ = [
    "LADDERS",
    "ladder_temperatures",
    "reduced_potentials",
    "ladder_free_energy",
    "ice_reference",
    "main",
]

LADDERS = {
    "smoke": dict(n_temperatures=5, md_ns=0.005, md_interval_ps=0.1, md_equilibration_ps=2.0),
    "check": dict(n_temperatures=6, md_ns=0.05, md_interval_ps=0.25, md_equilibration_ps=10.0),
    "default": dict(n_temperatures=6, md_ns=0.5, md_interval_ps=0.5, md_equilibration_ps=20.0),
}
"""Ladder sizes: `default` is the shipped reference (3.1 ns of MD in all); `check` (0.36 ns)
is the independent repeat the slow test compares with it; `smoke` (5 ps per rung) only shows
that the pipeline runs (too short to be unbiased: −42.06 ± 0.04 against −41.82)."""


def ladder_temperatures(t_high: float = 250.0, t_low: float = 100.0, n: int = 8) -> np.ndarray:
    """Geometric ladder `float[n]` from `t_high` down to `t_low` (K), both included."""
    return t_high * (t_low / t_high) ** (np.arange(n) / (n - 1))


def reduced_potentials(energies_kj: list[np.ndarray], temperatures) -> np.ndarray:
    r"""`u_kn [K, N_total]`: $u_k(x_n) = E_n / k_B T_k$ of all pooled frames at every rung."""
    e = np.concatenate([np.asarray(x, dtype=np.float64) for x in energies_kj])
    kt = np.array([kT_kJ_per_mol(t) for t in temperatures])
    return e[None, :] / kt[:, None]


def _decorrelate(energies_kj: list[np.ndarray]) -> tuple[list[np.ndarray], list[float]]:
    from pymbar import timeseries

    out, g = [], []
    for e in energies_kj:
        gi = max(1.0, float(timeseries.statistical_inefficiency(e)))
        out.append(e[timeseries.subsample_correlated_data(e, g=gi)])
        g.append(gi)
    return out, g


def _initial_f(u_kn: np.ndarray, n_k) -> np.ndarray:
    r"""Starting point for MBAR from thermodynamic integration, $df/d\beta = \langle E \rangle$.

    The rungs differ only in $\beta$, so $u_k = \beta_k E$; $\beta_k E_n$ is read off the
    pooled `u_kn` by the ratio of rows. Without this start pymbar's solvers stall on ladders
    whose $f_k$ span hundreds of kT.
    """
    starts = np.concatenate([[0], np.cumsum(n_k)])
    mean_u = np.array([u_kn[k, starts[k] : starts[k + 1]].mean() for k in range(len(n_k))])
    beta = u_kn[:, 0] / u_kn[0, 0]  # beta_k / beta_0 (every rung sees the same E_0)
    mean_e = mean_u / beta  # <E>_k in units of 1/beta_0
    f = np.concatenate([[0.0], np.cumsum(0.5 * (mean_e[1:] + mean_e[:-1]) * np.diff(beta))])
    return f


def ladder_free_energy(u_kn: np.ndarray, n_k, n_molecules: int) -> dict:
    r"""MBAR on a ladder: reduced free energies, $\Delta F/N$ between the last and first rung.

    Args:
        u_kn: reduced potentials `[K, N]` of the pooled, uncorrelated samples.
        n_k: samples per rung (`N = sum(n_k)`, in pooled order).
        n_molecules: $N$ for the per-molecule value.

    Returns:
        `{"f_k", "delta_f_per_molecule", "stderr_per_molecule", "neighbour_overlap"}`.
    """
    from boltzflow.molecular.umbrella import _mbar

    u_kn = np.asarray(u_kn, dtype=np.float64)
    mbar = _mbar(u_kn, np.asarray(n_k, dtype=float), f0=_initial_f(u_kn, n_k))
    res = mbar.compute_free_energy_differences()
    f, df = np.asarray(res["Delta_f"]), np.asarray(res["dDelta_f"])
    overlap = np.asarray(mbar.compute_overlap()["matrix"])
    k = len(n_k)
    return {
        "f_k": f[0].tolist(),
        "delta_f_per_molecule": float(f[0, k - 1] / n_molecules),
        "stderr_per_molecule": float(df[0, k - 1] / n_molecules),
        "neighbour_overlap": [float(overlap[i, i + 1]) for i in range(k - 1)],
    }


def _structure(target, states) -> dict:
    """Drift diagnostics per rung: largest O displacement from the start (nm, centre of mass
    motion removed) and largest rotation of a molecule from its start orientation (deg)."""
    import torch

    from boltzflow.coordinates.rigid import rigid_view

    ref = rigid_view(target.ice.rigid)[0]
    out = {"max_oxygen_displacement_nm": [], "max_rotation_deg": []}
    for s in states:
        v = rigid_view(s)
        d = v[..., :3] - ref[:, :3]
        d = d - d.mean(1, keepdim=True)
        dot = (v[..., 3:] * ref[:, 3:]).sum(-1).abs().clamp(max=1.0)
        out["max_oxygen_displacement_nm"].append(float(d.norm(dim=-1).max()))
        out["max_rotation_deg"].append(float(torch.rad2deg(2 * torch.acos(dot)).max()))
    return out


def ice_reference(
    budget: str = "default",
    *,
    t_high: float = 250.0,
    t_low: float = 100.0,
    workers: int | None = None,
    seed: int = 0,
    system_dir=None,
) -> dict:
    """Run (or read from the MD cache) the ladder and return the reference document.

    Args:
        budget: a key of [`LADDERS`][boltzflow.molecular.ice_reference.LADDERS].
        workers: local processes for MD and energies (`None`: all cores).
        seed: MD seed of every rung.
    """
    from boltzflow.molecular.ice import IceXITarget

    ladder = LADDERS[budget]
    temps = ladder_temperatures(t_high, t_low, ladder["n_temperatures"])
    md = {k: v for k, v in ladder.items() if k.startswith("md_")}
    t0, c0 = time.time(), time.process_time()
    workers = workers or len(os.sched_getaffinity(0))
    target = IceXITarget(t_high, system_dir=system_dir, workers=workers, md_seed=seed, **md)
    try:
        states = target.md_states([float(t) for t in temps])
        energies = [target.potential_energy(s) for s in states]
    finally:
        target.close()
    uncorrelated, g = _decorrelate(energies)
    n_k = [len(e) for e in uncorrelated]
    result = ladder_free_energy(reduced_potentials(uncorrelated, temps), n_k, target.n_molecules)
    settings = dict(md, timestep_fs=2.0, friction_per_ps=1.0, seed=seed, platform="CPU")
    return {
        "delta_f_per_molecule": result["delta_f_per_molecule"],
        "stderr_per_molecule": result["stderr_per_molecule"],
        "convention": "(f(T_low) - f(T_high)) / N with f = -ln Z at each temperature "
        "(reduced units per molecule; rigid-state measure, constant cancels)",
        "temperatures_K": temps.tolist(),
        "f_k": result["f_k"],
        "neighbour_overlap": result["neighbour_overlap"],
        "min_neighbour_overlap": min(result["neighbour_overlap"]),
        "statistical_inefficiency": g,
        "n_uncorrelated": n_k,
        "n_frames": [len(e) for e in energies],
        "mean_energy_per_molecule_kJ_mol": [float(e.mean() / target.n_molecules) for e in energies],
        "structure": _structure(target, states),
        "settings": {"budget": budget, "n_molecules": target.n_molecules, **settings},
        "command": f"python -m boltzflow.molecular.ice_reference --budget {budget}",
        "wall_s": round(time.time() - t0, 1),
        "cpu_s_main_process": round(time.process_time() - c0, 1),
        "published": {"koehler2023_mbar": -41.8569, "koehler2023_flow": -41.8647},
    }


def main(argv=None) -> int:
    """`python -m boltzflow.molecular.ice_reference [--budget B] [--workers N] [--out PATH]`."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", choices=sorted(LADDERS), default="default")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="default: <system>/reference.json")
    args = p.parse_args(argv)
    doc = ice_reference(args.budget, workers=args.workers, seed=args.seed)
    if args.out is None:
        from boltzflow.molecular.ice import REFERENCE_FILE, _system_folder

        args.out = _system_folder() / REFERENCE_FILE
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    dF, err = doc["delta_f_per_molecule"], doc["stderr_per_molecule"]
    print(f"ΔF/N = {dF:.4f} ± {err:.4f} (min neighbour overlap {doc['min_neighbour_overlap']:.3f})")
    print(f"written to {args.out}")
    return 0 if math.isfinite(dF) else 1


if __name__ == "__main__":
    raise SystemExit(main())
