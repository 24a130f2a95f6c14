r"""Umbrella sampling along a dihedral with MBAR (command:
[`boltzflow.cli.umbrella`][boltzflow.cli.umbrella]).

Windows $k = 1..K$ restrain the dihedral $\tau$ (e.g. $\phi$) around
centres $\tau_k$ spread evenly over the circle with the periodic harmonic bias

$$
b_k(\tau) = \tfrac{1}{2}\,\kappa\, \Delta(\tau - \tau_k)^2 / k_BT
\quad(\text{reduced}),\qquad \Delta(a) = a - 2\pi\,\mathrm{round}(a/2\pi),
$$

(Torrie & Valleau 1977, J. Comput. Phys. 23, 187). Each window is an independent Langevin
trajectory ([`boltzflow.molecular.md.run_md`][boltzflow.molecular.md.run_md], cached, run in
parallel on a worker pool). The pooled samples are combined with MBAR (Shirts & Chodera 2008, J.
Chem. Phys. 129, 124105; `pymbar`): with window free energies $f_k$, the unbiased weight of sample
$n$ is

$$
w_n \propto \Bigl[\sum_k N_k \exp(f_k - b_k(\tau_n))\Bigr]^{-1},
$$

and the free energy of state set A vs B is $\Delta F = -\ln(\sum_{A} w_n / \sum_B w_n)$
in kT. Errors: MBAR's asymptotic covariance on windows subsampled to uncorrelated frames
(statistical inefficiency from `pymbar.timeseries`), or a block bootstrap within each
window; both account for time correlation.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from boltzflow.coordinates.geometry import dihedral
from boltzflow.molecular.md import MDSettings, Restraint, cached_md_many

__all__ = [
    "UmbrellaSamples",
    "run_umbrella",
    "mbar_free_energies",
    "alanine_umbrella",
]

log = logging.getLogger(__name__)


@dataclass
class UmbrellaSamples:
    """Collective variables of every window.

    Attributes:
        centers: `float[K]` restraint centres (rad).
        kappa: force constant (kJ/mol/rad²).
        kT: thermal energy (kJ/mol).
        cvs: list over windows of `float[n_k, n_cv]` dihedrals (rad); column 0 is biased.
    """

    centers: np.ndarray
    kappa: float
    kT: float
    cvs: list[np.ndarray]

    def reduced_bias(self, tau: np.ndarray) -> np.ndarray:
        """`b_k(τ_n)` for all windows and samples, `[K, n]`."""
        d = tau[None, :] - self.centers[:, None]
        d = d - 2 * np.pi * np.round(d / (2 * np.pi))
        return 0.5 * self.kappa * d**2 / self.kT


def run_umbrella(
    spec,
    positions: np.ndarray,
    biased: tuple[int, int, int, int],
    *,
    observed: tuple[tuple[int, int, int, int], ...] = (),
    windows: int = 36,
    kappa: float = 300.0,
    ns_per_window: float = 0.5,
    interval_ps: float = 0.5,
    temperature: float = 300.0,
    equilibration_ps: float = 30.0,
    seed: int = 0,
    pool=None,
) -> UmbrellaSamples:
    """Run (or load from the MD cache) `windows` restrained trajectories.

    Args:
        spec: [`SystemSpec`][boltzflow.parallel.SystemSpec] of the unbiased system.
        positions: start positions `[n_atoms, 3]` (nm); the restraint pulls each window to
            its centre during equilibration.
        biased: atoms of the restrained dihedral.
        observed: further dihedrals to record (e.g. ψ).
        kappa: force constant in kJ/mol/rad².
    """
    from boltzflow.energies.openmm import kT_kJ_per_mol

    centers = -np.pi + 2 * np.pi * np.arange(windows) / windows
    n_frames = max(2, round(ns_per_window * 1000.0 / interval_ps))
    jobs = []
    for k, c in enumerate(centers):
        s = MDSettings(
            temperature,
            n_frames,
            interval_ps,
            equilibration_ps=equilibration_ps,
            seed=seed + k,
            restraint=Restraint(tuple(biased), float(c), float(kappa)),
        )
        jobs.append((positions, s))
    trajs = cached_md_many(spec, jobs, pool=pool)
    quads = [tuple(biased), *observed]
    cvs = []
    for fr in trajs:
        p = torch.as_tensor(fr, dtype=torch.float64)
        cvs.append(torch.stack([dihedral(*(p[:, a] for a in q)) for q in quads], -1).numpy())
    return UmbrellaSamples(centers, float(kappa), kT_kJ_per_mol(temperature), cvs)


def _unbiased_log_weights(bias: np.ndarray, n_k: np.ndarray, f_k: np.ndarray) -> np.ndarray:
    from scipy.special import logsumexp

    return -logsumexp(np.log(n_k)[:, None] + f_k[:, None] - bias, axis=0)


def _mbar(bias: np.ndarray, n_k: np.ndarray, f0=None):
    import pymbar

    return pymbar.MBAR(bias, n_k, initial_f_k=f0, verbose=False)


def _log_ratio(in_a, in_b, log_w) -> float:
    """`-ln(Σ_A w / Σ_B w)` from unnormalized log-weights."""
    from scipy.special import logsumexp

    la = logsumexp(log_w[in_a]) if in_a.any() else -np.inf
    lb = logsumexp(log_w[in_b]) if in_b.any() else -np.inf
    return float(lb - la)


def _inefficiency(c: np.ndarray) -> float:
    """Statistical inefficiency of a window from the periodic biased coordinate."""
    from pymbar import timeseries

    return max(1.0, float(timeseries.statistical_inefficiency(np.cos(c) + 2.0 * np.sin(c))))


def mbar_free_energies(
    samples: UmbrellaSamples,
    sets: Mapping[str, tuple[Callable, Callable]],
    *,
    uncertainty: str = "analytic",
    n_bootstrap: int = 100,
    seed: int = 0,
    pmf_bins: int = 36,
) -> dict:
    r"""MBAR free energies `ΔF = -ln(P_A / P_B)` (kT) of state sets, with standard errors.

    Args:
        samples: from [`run_umbrella`][boltzflow.molecular.umbrella.run_umbrella].
        sets: `{name: (in_a, in_b)}`, each a function of `cvs [n, n_cv]` → `bool[n]`.
        uncertainty: `"analytic"`: each window is first subsampled to uncorrelated frames
            (stride = statistical inefficiency $g$), then MBAR's asymptotic covariance
            of $(P_A, P_B)$ under the unbiased state gives
            $\sigma^2_{\Delta F} = \sigma_A^2/P_A^2 + \sigma_B^2/P_B^2 - 2\sigma_{AB}/(P_A P_B)$.
            `"bootstrap"`: all frames, and `n_bootstrap` block-bootstrap replicas (blocks of
            $\lceil g \rceil$ frames per window).

    Returns:
        `{"free_energies": {name: {"mean", "stderr", "unit"}}, "pmf": {"phi", "F"},
        "statistical_inefficiency": [...], "n_samples": N}`.
    """
    if uncertainty not in ("analytic", "bootstrap"):
        raise ValueError(f"uncertainty must be 'analytic' or 'bootstrap', got {uncertainty!r}")
    g = [_inefficiency(c[:, 0]) for c in samples.cvs]
    if uncertainty == "analytic":
        from pymbar import timeseries

        cvs = [
            c[timeseries.subsample_correlated_data(c[:, 0], g=gi)]
            for c, gi in zip(samples.cvs, g, strict=True)
        ]
    else:
        cvs = samples.cvs
    n_k = np.array([len(c) for c in cvs], dtype=float)
    all_cv = np.concatenate(cvs)
    bias = samples.reduced_bias(all_cv[:, 0])
    mbar = _mbar(bias, n_k)
    f_k = np.asarray(mbar.f_k)
    log_w = _unbiased_log_weights(bias, n_k, f_k)
    masks = {
        name: (np.asarray(a(all_cv), bool), np.asarray(b(all_cv), bool))
        for name, (a, b) in sets.items()
    }
    free = {}
    for name, (a, b) in masks.items():
        mean = _log_ratio(a, b, log_w)
        if uncertainty == "analytic":
            # the unbiased state restricted to A and to B (u = 1e6 kT outside the set)
            u_ln = np.stack([np.where(a, 0.0, 1e6), np.where(b, 0.0, 1e6)])
            res = mbar.compute_perturbed_free_energies(u_ln)
            stderr = float(res["dDelta_f"][0, 1])
        else:
            stderr = math.nan
        free[name] = {"mean": mean, "stderr": stderr, "unit": "kT"}
    if uncertainty == "bootstrap" and n_bootstrap > 1:
        rng = np.random.default_rng(seed)
        boots = {name: [] for name in sets}
        for _ in range(int(n_bootstrap)):
            idx, start = [], 0
            for c, gi in zip(cvs, g, strict=True):
                n, block = len(c), max(1, int(math.ceil(gi)))
                starts = rng.integers(0, max(1, n - block + 1), size=int(math.ceil(n / block)))
                idx.append(start + (starts[:, None] + np.arange(block)).reshape(-1)[:n])
                start += n
            idx = np.concatenate(idx)
            fb = np.asarray(_mbar(bias[:, idx], n_k, f0=f_k).f_k)
            lw = _unbiased_log_weights(bias[:, idx], n_k, fb)
            for name, (a, b) in masks.items():
                boots[name].append(_log_ratio(a[idx], b[idx], lw))
        for name in sets:
            free[name]["stderr"] = float(np.std(boots[name], ddof=1))
    edges = np.linspace(-np.pi, np.pi, pmf_bins + 1)
    which = np.clip(np.digitize(all_cv[:, 0], edges) - 1, 0, pmf_bins - 1)
    from scipy.special import logsumexp

    p = np.array(
        [logsumexp(log_w[which == i]) if (which == i).any() else -np.inf for i in range(pmf_bins)]
    )
    return {
        "free_energies": free,
        "pmf": {"phi": (0.5 * (edges[1:] + edges[:-1])).tolist(), "F": (p.max() - p).tolist()},
        "statistical_inefficiency": g,
        "n_samples": int(len(all_cv)),
    }


def alanine_umbrella(target, **kwargs) -> dict:
    """Umbrella sampling along φ for an alanine-dipeptide target; MBAR ΔFs of its states."""
    from boltzflow.molecular import alanine as ala

    n_boot = kwargs.pop("n_bootstrap", 100)
    uncertainty = kwargs.pop("uncertainty", "analytic")
    seed = kwargs.get("seed", 0)
    samples = run_umbrella(
        target.cartesian.spec,
        target.mol.positions,
        ala.PHI_ATOMS,
        observed=(ala.PSI_ATOMS,),
        temperature=target.temperature,
        pool=target.pool,
        **kwargs,
    )

    def sets(fn, negate=False):
        return lambda cv: (
            fn(torch.as_tensor(cv[:, 0]), torch.as_tensor(cv[:, 1])) ^ negate
        ).numpy()

    result = mbar_free_energies(
        samples,
        {
            "alphaL_vs_rest": (sets(ala.in_alpha_l), sets(ala.in_alpha_l, True)),
            "alphaR_vs_beta": (sets(ala.in_alpha_r), sets(ala.in_beta)),
        },
        uncertainty=uncertainty,
        n_bootstrap=n_boot,
        seed=seed,
    )
    result["settings"] = {
        "kappa_kJ_per_mol_rad2": samples.kappa,
        "windows": len(samples.centers),
        "temperature_K": target.temperature,
        **kwargs,
    }
    return result
