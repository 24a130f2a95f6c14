"""Langevin MD: determinism, cache, restraints, equipartition at the set temperature."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from boltzflow.molecular import alanine as ala
from boltzflow.molecular.md import MDSettings, Restraint, cache_dir, cached_md, run_md
from boltzflow.parallel import SystemSpec


@pytest.fixture(scope="module")
def vac():
    mol = ala.load_alanine_dipeptide("vacuum")
    return mol, SystemSpec.from_system(mol.system)


def test_run_md_is_deterministic_and_finite(vac):
    mol, spec = vac
    s = MDSettings(n_frames=20, interval_ps=0.05, equilibration_ps=0.5, seed=3)
    a, b = run_md(spec, mol.positions, s), run_md(spec, mol.positions, s)
    assert a.shape == (20, 22, 3) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    c = run_md(spec, mol.positions, MDSettings(n_frames=20, interval_ps=0.05, seed=4))
    assert not np.array_equal(a, c)


def test_cache_is_keyed_by_settings_and_read_back(vac):
    mol, spec = vac
    s = MDSettings(n_frames=5, interval_ps=0.02, equilibration_ps=0.1, seed=1)
    first = cached_md(spec, mol.positions, s)
    files = sorted((cache_dir() / "md").glob("*.npy"))
    assert len(files) == 1 and files[0].with_suffix(".json").is_file()
    marked = first.copy()
    marked[0, 0, 0] = 123.0
    np.save(files[0], marked)  # a cache hit returns the stored file, not a new run
    assert cached_md(spec, mol.positions, s)[0, 0, 0] == 123.0
    cached_md(spec, mol.positions, MDSettings(n_frames=5, interval_ps=0.02, seed=2))
    assert len(list((cache_dir() / "md").glob("*.npy"))) == 2


def _bond_energy_per_kT(frames, system, kT):
    """Mean of k (b - b0)^2 / kT over the C-H bonds: 1 per bond at equipartition."""
    import openmm

    hb = next(f for f in system.getForces() if isinstance(f, openmm.HarmonicBondForce))
    vals = []
    x = frames.astype(np.float64)
    for n in range(hb.getNumBonds()):
        i, j, r0, k = hb.getBondParameters(n)
        if k._value > 2.8e5:  # the stiff X-H bonds
            b = np.linalg.norm(x[:, i] - x[:, j], axis=-1)
            vals.append(k._value * (b - r0._value) ** 2 / kT)
    return float(np.mean(vals))


def test_langevin_md_equipartition_at_set_temperature(vac):
    """⟨k (b-b0)^2⟩ = kT for stiff harmonic bonds; a run at 600 K gives twice that."""
    from boltzflow.energies.openmm import kT_kJ_per_mol

    mol, spec = vac
    kT = kT_kJ_per_mol(300.0)
    cold = run_md(spec, mol.positions, MDSettings(300.0, 1500, 0.013, equilibration_ps=2))
    hot = run_md(spec, mol.positions, MDSettings(600.0, 1500, 0.013, equilibration_ps=2))
    r_cold = _bond_energy_per_kT(cold, mol.system, kT)
    r_hot = _bond_energy_per_kT(hot, mol.system, kT)
    assert 0.85 < r_cold < 1.15
    assert 1.7 < r_hot < 2.3  # negative control: the measurement resolves temperature


def test_dihedral_restraint_holds_and_releases(vac):
    mol, spec = vac
    center = math.radians(60.0)
    held = MDSettings(
        n_frames=50,
        interval_ps=0.1,
        equilibration_ps=5,
        restraint=Restraint(ala.PHI_ATOMS, center, 2000.0),
    )
    phi, _ = ala.phi_psi(torch.as_tensor(run_md(spec, mol.positions, held), dtype=torch.float64))
    assert abs(float(torch.rad2deg(phi).mean()) - 60.0) < 10.0
    free = run_md(spec, mol.positions, MDSettings(n_frames=50, interval_ps=0.1))
    phi, _ = ala.phi_psi(torch.as_tensor(free, dtype=torch.float64))
    assert not ala.in_alpha_l(phi).any()
    with pytest.raises(ValueError, match="share"):
        run_md(
            spec,
            mol.positions,
            MDSettings(
                restraint=(
                    Restraint(ala.PHI_ATOMS, 0.0, 1.0, steps=1),
                    Restraint(ala.PSI_ATOMS, 0.0, 1.0),
                )
            ),
        )


def test_md_command_generates_the_recipe_data(tmp_path, capsys):
    from boltzflow.cli import main

    out = tmp_path / "frames.npy"
    rc = main(
        [
            "md",
            "alanine-dipeptide-vacuum",
            "--budget",
            "smoke",
            "--ns",
            "0.002",
            "--alpha-l-ns",
            "0.002",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    frames = np.load(out)
    assert frames.shape[1:] == (22, 3) and len(frames) == 20 + 2 * 10
    assert "cache:" in capsys.readouterr().out
