"""The MBAR ladder of the ice reference against a system with a known free energy, with a
mutant that drops the temperature scaling; the shipped reference at smoke size (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from boltzflow.energies.openmm import kT_kJ_per_mol
from boltzflow.molecular.ice_reference import (
    ladder_free_energy,
    ladder_temperatures,
    reduced_potentials,
)

E0, DOF, N_MOL = -987.0, 96, 16  # ground-state energy (kJ/mol) and degrees of freedom of ice


def _harmonic_ladder(temps, n=400, seed=0):
    r"""Exact samples of $E = E_0 + \tfrac12 \sum_{i \le d} y_i^2$ (a harmonic crystal):
    $\beta (E - E_0) \sim \mathrm{Gamma}(d/2)$, so $f(\beta) = \beta E_0 + \tfrac d2 \ln\beta$
    + const."""
    rng = np.random.default_rng(seed)
    return [E0 + kT_kJ_per_mol(t) * rng.gamma(DOF / 2, size=n) for t in temps]


def _exact(t_high, t_low):
    b_hi, b_lo = 1 / kT_kJ_per_mol(t_high), 1 / kT_kJ_per_mol(t_low)
    return (E0 * (b_lo - b_hi) + DOF / 2 * np.log(b_lo / b_hi)) / N_MOL


def test_ladder_mbar_recovers_the_harmonic_free_energy():
    temps = ladder_temperatures(250.0, 100.0, 6)
    np.testing.assert_allclose(temps[[0, -1]], [250.0, 100.0])
    energies = _harmonic_ladder(temps)
    res = ladder_free_energy(reduced_potentials(energies, temps), [400] * 6, N_MOL)
    exact = _exact(250.0, 100.0)
    z = (res["delta_f_per_molecule"] - exact) / res["stderr_per_molecule"]
    assert abs(z) < 3, (res["delta_f_per_molecule"], exact, res["stderr_per_molecule"])
    assert 0 < res["stderr_per_molecule"] < 0.05
    assert all(0.05 < o <= 0.5 for o in res["neighbour_overlap"])


def test_dropping_the_temperature_scaling_is_detected():
    """Mutant: every rung's reduced potential at the top temperature's kT."""
    temps = ladder_temperatures(250.0, 100.0, 6)
    energies = _harmonic_ladder(temps, seed=1)
    u_kn = reduced_potentials(energies, [250.0] * 6)
    u_kn[0] *= 1.0 + 1e-9  # not exactly equal rows, so pymbar solves
    res = ladder_free_energy(u_kn, [400] * 6, N_MOL)
    z = (res["delta_f_per_molecule"] - _exact(250.0, 100.0)) / max(res["stderr_per_molecule"], 1e-3)
    assert abs(z) > 10


@pytest.mark.slow
def test_smoke_reference_is_reproducible(tmp_path, monkeypatch):
    """`ice_reference("smoke")` twice, each from an empty MD cache, gives the same result (to
    MBAR's solver tolerance, far below its error)."""
    from boltzflow.molecular.ice_reference import ice_reference

    monkeypatch.setenv("BOLTZFLOW_CACHE", str(tmp_path / "a"))
    a = ice_reference("smoke", workers=2)
    monkeypatch.setenv("BOLTZFLOW_CACHE", str(tmp_path / "b"))
    b = ice_reference("smoke", workers=2)
    assert a["n_uncorrelated"] == b["n_uncorrelated"]
    assert abs(a["delta_f_per_molecule"] - b["delta_f_per_molecule"]) < 1e-6
    assert a["min_neighbour_overlap"] > 0.05


@pytest.mark.slow
def test_an_independent_ladder_agrees_with_the_shipped_reference(tmp_path, monkeypatch):
    """The `check` ladder (another MD seed, 50 ps per rung) lies within 3 combined standard
    errors of `systems/ice-xi-16/reference.json`."""
    from boltzflow.molecular.ice import REFERENCE_FILE, _system_folder
    from boltzflow.molecular.ice_reference import ice_reference

    monkeypatch.setenv("BOLTZFLOW_CACHE", str(tmp_path))
    a = ice_reference("check", workers=2, seed=1)
    shipped = json.loads((_system_folder() / REFERENCE_FILE).read_text())
    err = np.hypot(a["stderr_per_molecule"], shipped["stderr_per_molecule"])
    z = (a["delta_f_per_molecule"] - shipped["delta_f_per_molecule"]) / err
    assert abs(z) < 3, (a["delta_f_per_molecule"], shipped["delta_f_per_molecule"], err)
