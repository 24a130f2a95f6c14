"""The alanine-dipeptide target on normalized internal coordinates."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from boltzflow.energies.openmm import kT_kJ_per_mol
from boltzflow.molecular import alanine as ala
from boltzflow.molecular.target import AlanineDipeptideTarget, force_field_normalization


@pytest.fixture(scope="module")
def y_sample(target, md_sample):
    return target.from_cartesian(md_sample[::15])


def test_layout_normalization_and_round_trip(target, y_sample, md_sample):
    assert target.event_shape == (60,) and len(target.parameter_names) == 60
    # periodic: φ, ψ, two ω and three methyl rotors; the 12 impropers are centred and scaled
    assert target.periodic_mask.sum() == 7 and target._wrapped.sum() == 12
    assert target.periodic_mask[[target.i_phi, target.i_psi]].all()
    # bonds and angles are ≈ N(0, 1) in MD data (thermal widths of the harmonic terms)
    z = target.zmatrix
    bonds_angles = y_sample[:, : z.torsion_slice.start]
    assert bonds_angles.mean(0).abs().max() < 1.5
    assert (bonds_angles.std(0) - 1).abs().max() < 0.3
    assert y_sample[:, target._wrapped].abs().max() < 5
    assert y_sample[:, target.periodic_mask].abs().max() <= math.pi
    back = target.from_cartesian(target.to_cartesian(y_sample))
    torch.testing.assert_close(back, y_sample)
    phi, psi = target.phi_psi(y_sample)
    ref = ala.phi_psi(torch.as_tensor(md_sample[::15], dtype=torch.float64))
    torch.testing.assert_close(phi, ref[0]) and torch.testing.assert_close(psi, ref[1])


def test_normalization_is_thermal_width_of_harmonic_terms(target):
    loc, scale = force_field_normalization(target.mol.system, target.zmatrix, 300.0)
    # C-H bonds: r0 = 0.109 nm, k = 2.845e5 kJ/mol/nm^2 (ff96)
    ch = target.zmatrix.bonds().index((0, 1))
    assert loc[ch] == pytest.approx(0.109)
    assert scale[ch] == pytest.approx(math.sqrt(kT_kJ_per_mol(300.0) / 284512.0), rel=1e-6)


def test_energy_is_cartesian_energy_minus_log_jacobians(target, y_sample):
    q = target.to_internal(y_sample)
    x, ladj = target.ict(q)
    u_x = target.cartesian.energy(x)
    expected = u_x - ladj - torch.log(target._scale).sum()
    torch.testing.assert_close(target.energy(y_sample), expected)
    hot = target.at_temperature(2.0)
    torch.testing.assert_close(
        hot.energy(y_sample), u_x / 2 - ladj - torch.log(target._scale).sum()
    )


@pytest.mark.parametrize("s", [1.0, 2.5])
def test_temperature_divides_the_openmm_energy_and_not_the_jacobian(target, md_sample, s):
    r"""``at_temperature(s).energy(y) = E(x)/(s k_B T) - \log|J(y)|`` from scratch: OpenMM's
    energy of the Cartesian frame, and :math:`\log|J| = \sum\log\sigma + \sum 2\log b +
    \sum\log\sin\theta` from the frame's bond lengths and angles (module docstring)."""
    import openmm
    import openmm.unit as unit

    frames = np.asarray(md_sample[:6], dtype=np.float64)  # [6, 22, 3] nm
    y = target.from_cartesian(frames)
    ctx = openmm.Context(
        target.mol.system,
        openmm.VerletIntegrator(0.001),
        openmm.Platform.getPlatformByName("Reference"),
    )
    kt = kT_kJ_per_mol(300.0)
    u_phys = []
    for f in frames:
        ctx.setPositions(f * unit.nanometer)
        e = ctx.getState(getEnergy=True).getPotentialEnergy()
        u_phys.append(e.value_in_unit(unit.kilojoule_per_mole) / kt)
    z = target.zmatrix
    b = np.stack([np.linalg.norm(frames[:, i] - frames[:, j], axis=-1) for i, j in z.bonds()], -1)
    cos = []
    for i, j, k in z.angles():
        u, v = frames[:, i] - frames[:, j], frames[:, k] - frames[:, j]
        cos.append((u * v).sum(-1) / np.linalg.norm(u, axis=-1) / np.linalg.norm(v, axis=-1))
    sin = np.sqrt(1 - np.stack(cos, -1) ** 2)
    _, scale = force_field_normalization(target.mol.system, z, 300.0)
    n_bonded = z.torsion_slice.start
    log_sigma = np.log(scale[:n_bonded]).sum() + 12 * math.log(0.12)  # 12 impropers
    log_j = log_sigma + 2 * np.log(b).sum(-1) + np.log(sin).sum(-1)
    expected = torch.as_tensor(np.asarray(u_phys) / s - log_j)
    torch.testing.assert_close(target.at_temperature(s).energy(y), expected, rtol=0, atol=1e-6)


def test_gradient_matches_finite_differences(target, y_sample):
    y = y_sample[:2].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(target.energy(y).sum(), y)
    d = torch.randn(y.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    h = 1e-5
    fd = (target.energy(y.detach() + h * d) - target.energy(y.detach() - h * d)) / (2 * h)
    torch.testing.assert_close((g * d).sum(-1), fd, rtol=1e-5, atol=1e-4)


def test_d_configurations_and_domain_violations_get_zero_density(target, y_sample):
    q = target.to_internal(y_sample[:4])
    for atoms in ((10, 8, 14, 6), (9, 8, 14, 6)):  # CB, HA impropers: mirror at Cα
        q[0, target.zmatrix.torsion_index(atoms)] *= -1
    y = target.from_internal(q)
    y[1, 0] = -1e3  # negative bond length
    y[2, target.zmatrix.angle_slice.start] = 1e3  # angle beyond π
    assert not target.is_l(y[:1]).item()
    yy = y.requires_grad_(True)
    u = target.energy(yy)
    assert torch.isposinf(u[:3]).all() and torch.isfinite(u[3])
    (g,) = torch.autograd.grad(u[3] + u[:3].clamp(max=0).sum(), yy)
    assert torch.isfinite(g).all() and (g[:3] == 0).all()
    # the mirror image (all torsions negated) is D with the same energy (achiral force field)
    q = target.to_internal(y_sample[:3])
    q[:, target.zmatrix.torsion_slice] *= -1
    mirror = target.from_internal(q)
    assert not target.is_l(mirror).any() and torch.isposinf(target.energy(mirror)).all()
    both = AlanineDipeptideTarget("vacuum", chirality=None)
    torch.testing.assert_close(both.energy(mirror), target.energy(y_sample[:3]), rtol=1e-6, atol=0)


def test_state_sets_and_observables_read_torsions(target, y_sample):
    phi, psi = target.phi_psi(y_sample)
    sets, obs = target.state_sets(), target.observables()
    a = sets["alphaL_vs_rest"]
    assert (a.in_a(y_sample) == ala.in_alpha_l(phi)).all()
    assert (a.in_a(y_sample) ^ a.in_b(y_sample)).all()
    r = sets["alphaR_vs_beta"]
    assert (r.in_a(y_sample) == ala.in_alpha_r(phi, psi)).all()
    assert (r.in_b(y_sample) == ala.in_beta(phi, psi)).all()
    total = sum(obs[k].fn(y_sample) for k in ("p_alphaL", "p_alphaR", "p_beta"))
    torch.testing.assert_close(total, torch.ones_like(total))


def test_training_data_from_file_and_figures(target, tmp_path, md_sample):
    data = target.training_data("md_sample.npy")
    assert data.shape == (1500, 60) and torch.isfinite(target.energy(data[:50])).all()
    from boltzflow.reporting.run_figures import draw_requested, write_report_data

    write_report_data(tmp_path, target.report_data(data[:300], torch.zeros(300)))
    out = draw_requested(tmp_path, target.report_figures(data[:300], torch.zeros(300)))
    assert (tmp_path / "ramachandran.png").stat().st_size > 1000
    info = json.loads((tmp_path / "molecular.json").read_text())
    assert info["chirality"]["d_fraction"] == 0.0 and list(out.values()) == ["ramachandran.png"]


def test_reference_free_energy_from_system_folder(tmp_path):
    src = ala.system_folder("vacuum")
    for f in ("alanine-dipeptide.prmtop", "alanine-dipeptide.crd"):
        shutil.copy(src / f, tmp_path / f)
    t = AlanineDipeptideTarget("vacuum", system_dir=tmp_path)
    with pytest.raises(KeyError):
        t.exact_free_energy("alphaL_vs_rest")
    ref = {"free_energies": {"alphaL_vs_rest": {"mean": 5.5, "stderr": 0.1, "unit": "kT"}}}
    (tmp_path / "umbrella_reference.json").write_text(json.dumps(ref))
    assert t.exact_free_energy("alphaL_vs_rest") == 5.5


def test_pool_backed_target_agrees_and_closes(target, y_sample):
    pooled = AlanineDipeptideTarget("vacuum", workers=1)
    try:
        torch.testing.assert_close(pooled.energy(y_sample), target.energy(y_sample))
    finally:
        pooled.close()
    assert np.isfinite(target.cartesian.kT)
