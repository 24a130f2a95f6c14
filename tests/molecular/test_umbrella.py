"""MBAR on umbrella windows: exact synthetic answer (calibrated), negative control, real run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from boltzflow.molecular import alanine as ala
from boltzflow.molecular.umbrella import UmbrellaSamples, mbar_free_energies, run_umbrella

pytest.importorskip("pymbar")

KT = 2.5  # kJ/mol
GRID = np.linspace(-np.pi, np.pi, 20001)


def _free_energy(phi):
    """A double-well PMF on the circle (kT): minima near -90° and +60°."""
    return 3.0 * np.cos(phi + 0.3) + 1.5 * np.cos(2 * phi) - 1.2 * np.sin(phi)


def _window_samples(center, kappa, n, rng):
    d = GRID - center
    d = d - 2 * np.pi * np.round(d / (2 * np.pi))
    logp = -_free_energy(GRID) - 0.5 * kappa * d**2 / KT
    cdf = np.cumsum(np.exp(logp - logp.max()))
    return np.interp(rng.random(n), cdf / cdf[-1], GRID)


def _synthetic(kappa=100.0, windows=24, n=200, seed=0):
    rng = np.random.default_rng(seed)
    centers = -np.pi + 2 * np.pi * np.arange(windows) / windows
    cvs = [
        np.stack([_window_samples(c, kappa, n, rng), rng.uniform(-np.pi, np.pi, n)], -1)
        for c in centers
    ]
    return UmbrellaSamples(centers, kappa, KT, cvs)


def _sets():
    def make(fn, negate=False):
        return lambda cv: (
            fn(torch.as_tensor(cv[:, 0]), torch.as_tensor(cv[:, 1])) ^ negate
        ).numpy()

    return {
        "alphaL_vs_rest": (make(ala.in_alpha_l), make(ala.in_alpha_l, True)),
        "alphaR_vs_beta": (make(ala.in_alpha_r), make(ala.in_beta)),
    }


def _exact():
    p = np.exp(-_free_energy(GRID))
    a = (GRID > 0) & (GRID < math.radians(120))
    df_l = -math.log(p[a].sum() / p[~a].sum())
    df_r = -math.log(200.0 / 160.0)  # ψ uniform: αR covers (-125°, 75°]
    return {"alphaL_vs_rest": df_l, "alphaR_vs_beta": df_r}


@pytest.mark.parametrize("seed", [0, 1])
def test_mbar_recovers_exact_free_energies_within_errors(seed):
    res = mbar_free_energies(_synthetic(seed=seed), _sets())
    for name, exact in _exact().items():
        est = res["free_energies"][name]
        assert 0 < est["stderr"] < 0.3
        assert abs(est["mean"] - exact) / est["stderr"] < 4.0, (name, est, exact)
    pmf = np.array(res["pmf"]["F"])
    assert np.isfinite(pmf).all() and pmf.min() == 0.0
    assert max(res["statistical_inefficiency"]) < 2.0  # i.i.d. windows


@pytest.mark.slow
def test_mbar_bootstrap_errors_agree_with_analytic():
    s = _synthetic(seed=2)
    boot = mbar_free_energies(s, _sets(), uncertainty="bootstrap", n_bootstrap=60, seed=3)
    ana = mbar_free_energies(s, _sets())
    for name, exact in _exact().items():
        b, a = boot["free_energies"][name], ana["free_energies"][name]
        assert abs(b["mean"] - a["mean"]) < 0.3 * a["stderr"]  # analytic subsamples by g
        assert 0.6 < b["stderr"] / a["stderr"] < 1.6
        assert abs(b["mean"] - exact) / b["stderr"] < 4.0


def test_wrong_bias_constant_is_detected():
    """Negative control: reweighting with a misstated force constant is biased."""
    s = _synthetic()
    wrong = UmbrellaSamples(s.centers, 0.25 * s.kappa, s.kT, s.cvs)
    e = mbar_free_energies(wrong, _sets())["free_energies"]["alphaL_vs_rest"]
    assert abs(e["mean"] - _exact()["alphaL_vs_rest"]) / e["stderr"] > 4.0
    with pytest.raises(ValueError, match="uncertainty"):
        mbar_free_energies(s, _sets(), uncertainty="jackknife")


def test_real_umbrella_windows_hold_their_centres():
    from boltzflow.parallel import SystemSpec

    mol = ala.load_alanine_dipeptide("vacuum")
    s = run_umbrella(
        SystemSpec.from_system(mol.system),
        mol.positions,
        ala.PHI_ATOMS,
        observed=(ala.PSI_ATOMS,),
        windows=4,
        ns_per_window=0.004,
        interval_ps=0.05,
        equilibration_ps=4.0,
    )
    assert len(s.cvs) == 4 and s.cvs[0].shape == (80, 2)
    for c, cv in zip(s.centers, s.cvs, strict=True):
        d = np.angle(np.exp(1j * (cv[:, 0] - c)))
        assert np.degrees(np.abs(d).mean()) < 25.0
    assert s.reduced_bias(np.array([s.centers[1]]))[1, 0] == 0.0


def test_umbrella_subcommand_is_registered(capsys):
    from boltzflow.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["umbrella", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--windows" in out and "--write-reference" in out
