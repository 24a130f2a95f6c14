"""A targeted free-energy run end to end: alanine dipeptide vacuum → implicit solvent.

State A is the vacuum molecule (shipped MD frames at 300 K), state B the OBC1 implicit-solvent
molecule on the same internal coordinates. The run trains a learnable elementwise affine map with
the `targeted_fep` loss on half of the frames and reports ΔF on the other half, with plain FEP
beside it. Plain FEP is checked against the same estimate computed independently from the two
OpenMM Cartesian energies of each held-out frame, ΔF = -ln mean exp(-(E_B - E_A)/kT).
"""

from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("openmm")

RECIPE = """
[system]
name = "alanine-vacuum-to-implicit"
description = "targeted FEP, alanine dipeptide vacuum -> implicit solvent (test)"
dtype = "float64"

[target]
kind = "alanine-dipeptide"
solvent = "implicit"
temperature = 300.0

[base]
kind = "samples"
state = { solvent = "vacuum" }
data = "frames.npy"
holdout = 0.5

[flow]
kind = "identity"
affine = true

[[training.stages]]
loss = "targeted_fep"
data = "base"
steps = 30
batch_size = 100
lr = 1e-3

[sampling]
method = "importance"
n_samples = 400

[reweighting]
n_bootstrap = 50
"""

N_FRAMES = 400


@pytest.fixture(scope="module")
def recipe_dir(tmp_path_factory):
    from boltzflow.runs.recipes import systems_dir

    folder = tmp_path_factory.mktemp("alanine-targeted")
    source = systems_dir() / "alanine-dipeptide-vacuum"
    for name in ("alanine-dipeptide.prmtop", "alanine-dipeptide.crd"):
        shutil.copy(source / name, folder / name)
    # the β/αR trajectory of the shipped sample (the αL-seeded frames are not state A)
    frames = np.load(source / "md_sample.npy")[:1000:2][:N_FRAMES]
    np.save(folder / "frames.npy", frames)
    (folder / "system.toml").write_text(RECIPE)
    return folder


@pytest.fixture(scope="module")
def summary(recipe_dir, tmp_path_factory):
    from boltzflow.runs.pipeline import run

    out = tmp_path_factory.mktemp("run")
    result = run(str(recipe_dir / "system.toml"), budget="smoke", seed=0, out=out)
    return result, out


@pytest.mark.slow
def test_run_reports_targeted_and_plain_fep(summary):
    result, out = summary
    on_disk = json.loads((out / "summary.json").read_text())
    free = on_disk["free_energies"]
    for key in ("delta_f", "delta_f_plain_fep"):
        entry = free[key]
        assert math.isfinite(entry["mean"]) and 0 < entry["stderr"] < 1.0
        assert entry["n"] == N_FRAMES // 2 and 0 < entry["ess_fraction"] <= 1
        assert entry["unit"] == "kT"
    # the ordinary importance weights of the run are the targeted ones: log Z = -ΔF
    assert on_disk["reweighting"]["log_z"]["mean"] == pytest.approx(
        -free["delta_f"]["mean"], abs=4 * free["delta_f"]["stderr"]
    )
    report = (out / "report.md").read_text()
    assert "delta_f_plain_fep" in report and "ESS fraction" in report


@pytest.mark.slow
def test_plain_fep_matches_the_cartesian_energies(recipe_dir, summary):
    from boltzflow.molecular.target import AlanineDipeptideTarget

    result, _ = summary
    frames = np.load(recipe_dir / "frames.npy")[N_FRAMES // 2 :]
    x = torch.as_tensor(frames, dtype=torch.float64).reshape(len(frames), -1)
    u = []
    for solvent in ("vacuum", "implicit"):
        t = AlanineDipeptideTarget(solvent, system_dir=recipe_dir)
        u.append(t.cartesian.energy(x).double())
    du = (u[1] - u[0]).numpy()
    exact = -(np.logaddexp.reduce(-du) - math.log(len(du)))
    plain = result["free_energies"]["delta_f_plain_fep"]
    # the same frames and Hamiltonians: the internal-coordinate measure terms cancel, up to the
    # round trip of the float32 frames through internal coordinates (~1e-5 kT)
    assert plain["mean"] == pytest.approx(exact, abs=1e-4)
    # and solvation lowers the free energy by many kT (OBC1, a polar dipeptide)
    assert plain["mean"] < -10


@pytest.mark.parametrize(
    "bad, message",
    [
        ('kind = "gaussian"', "kind must be 'samples'"),
        ('kind = "samples"\nholdout = 1.5', "holdout must lie in (0, 1)"),
        ('kind = "samples"\nframes = 3', "unknown key 'frames'"),
    ],
)
def test_bad_base_tables_are_recipe_errors(recipe_dir, tmp_path, bad, message):
    from boltzflow.runs.recipes import RecipeError, load_recipe

    for name in ("alanine-dipeptide.prmtop", "alanine-dipeptide.crd"):
        shutil.copy(recipe_dir / name, tmp_path / name)
    text = re.sub(r"\[base\][^\[]*", f"[base]\n{bad}\n\n", RECIPE)
    (tmp_path / "system.toml").write_text(text)
    with pytest.raises(RecipeError, match=re.escape(message)):
        load_recipe(str(tmp_path / "system.toml"), "smoke")
