"""OpenMMEnergy on the real alanine-dipeptide systems (no mocks)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

openmm = pytest.importorskip("openmm")

from boltzflow.energies.openmm import OpenMMEnergy, default_platform, kT_kJ_per_mol  # noqa: E402
from boltzflow.molecular.alanine import load_alanine_dipeptide  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module", params=["vacuum", "implicit"])
def mol(request):
    return load_alanine_dipeptide(request.param)


@pytest.fixture(scope="module")
def vacuum():
    return load_alanine_dipeptide("vacuum")


def _perturbed(mol, n, scale=0.005, seed=0):
    rng = np.random.default_rng(seed)
    return mol.positions[None] + scale * rng.standard_normal((n, *mol.positions.shape))


def _direct(system, positions, platform="Reference"):
    """Energy (kJ/mol) and forces from a fresh Context, one configuration at a time."""
    ctx = openmm.Context(
        system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform)
    )
    es, fs = [], []
    for p in positions:
        ctx.setPositions(p)
        s = ctx.getState(getEnergy=True, getForces=True)
        es.append(s.getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole))
        fs.append(
            s.getForces(asNumpy=True).value_in_unit(
                openmm.unit.kilojoule_per_mole / openmm.unit.nanometer
            )
        )
    return np.array(es), np.array(fs)


def test_kT_matches_openmm_units():
    R = openmm.unit.MOLAR_GAS_CONSTANT_R.value_in_unit(
        openmm.unit.kilojoule_per_mole / openmm.unit.kelvin
    )
    assert kT_kJ_per_mol(300.0) == pytest.approx(R * 300.0, rel=1e-9)


def test_default_platform_is_measured_choice(vacuum):
    assert default_platform(vacuum.system) == ("Reference", {})
    implicit = load_alanine_dipeptide("implicit")
    assert default_platform(implicit.system) == ("CPU", {"Threads": "1"})


def test_energy_and_force_match_openmm_in_kT(mol):
    target = OpenMMEnergy(mol.system, temperature=300.0, platform="Reference")
    pos = _perturbed(mol, 5)
    e_ref, f_ref = _direct(mol.system, pos)
    x = torch.as_tensor(pos, dtype=torch.float64).reshape(5, -1)
    u = target.energy(x)
    assert u.shape == (5,)
    kT = kT_kJ_per_mol(300.0)
    np.testing.assert_allclose(u.numpy(), e_ref / kT, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(target.force(x).numpy(), f_ref.reshape(5, -1) / kT, atol=1e-9)
    assert target.n_evaluations == 10


def test_autograd_gradient_is_minus_openmm_force(mol):
    target = OpenMMEnergy(mol.system)
    x = torch.as_tensor(_perturbed(mol, 3), dtype=torch.float64).reshape(3, -1)
    x.requires_grad_(True)
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    (g,) = torch.autograd.grad((w * target.energy(x)).sum(), x)
    f = target.force(x.detach())
    torch.testing.assert_close(g, -w[:, None] * f)


def test_force_is_derivative_of_energy_by_finite_differences(vacuum):
    """Central differences along a random direction, float64: |error| ~ h^2 * u'''."""
    target = OpenMMEnergy(vacuum.system)
    x = torch.as_tensor(_perturbed(vacuum, 1, seed=3), dtype=torch.float64).reshape(1, -1)
    d = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d /= d.norm()
    h = 1e-6
    fd = (target.energy(x + h * d) - target.energy(x - h * d)) / (2 * h)
    analytic = -(target.force(x) * d).sum()
    assert float(fd) == pytest.approx(float(analytic), rel=1e-5, abs=1e-4)
    # negative control: a wrong direction sign is detected
    assert abs(float(fd) + float(analytic)) > 1e-2 * abs(float(analytic))


def test_temperature_scaling_divides_energy_and_force(vacuum):
    target = OpenMMEnergy(vacuum.system, temperature=300.0)
    hot = target.at_temperature(2.0)
    other = OpenMMEnergy(vacuum.system, temperature=600.0)
    x = torch.as_tensor(_perturbed(vacuum, 2), dtype=torch.float64).reshape(2, -1)
    torch.testing.assert_close(hot.energy(x), target.energy(x) / 2)
    torch.testing.assert_close(hot.energy(x), other.energy(x))
    torch.testing.assert_close(hot.force(x), target.force(x) / 2)


def test_float32_and_shapes(vacuum):
    target = OpenMMEnergy(vacuum.system)
    x = torch.as_tensor(_perturbed(vacuum, 4), dtype=torch.float32).reshape(4, -1)
    u, f = target.energy_and_force(x)
    assert u.dtype == torch.float32 and u.shape == (4,)
    assert f.dtype == torch.float32 and f.shape == (4, 66)
    with pytest.raises(ValueError, match="expects x of shape"):
        target.energy(x.reshape(4, 22, 3))


@pytest.mark.parametrize("platform", ["Reference", "CPU"])
def test_nan_positions_give_inf_and_zero_gradient_never_previous_result(mol, platform):
    """NaN positions raise inside the CPU platform: caught per configuration."""
    target = OpenMMEnergy(mol.system, platform=platform, platform_properties={})
    pos = _perturbed(mol, 4, seed=7)
    pos[1, 3, 0] = np.nan
    x = torch.as_tensor(pos, dtype=torch.float64).reshape(4, -1).requires_grad_(True)
    u = target.energy(x)
    assert torch.isinf(u[1]) and u[1] > 0
    assert torch.isfinite(u[[0, 2, 3]]).all()
    (g,) = torch.autograd.grad(u.sum(), x)
    assert torch.isfinite(g).all() and (g[1] == 0).all()
    # the configuration after the NaN one gets its own energy, not the previous result
    e_ref, _ = _direct(mol.system, pos[[0, 2, 3]], platform="Reference")
    # (CPU platform is mixed precision: agree to 1e-3 kJ/mol; configurations differ by > 1)
    np.testing.assert_allclose(u[[0, 2, 3]].detach().numpy() * target.kT, e_ref, atol=1e-3)
    assert target.n_nonfinite == 1


def test_overlapping_atoms_are_inf_counted_and_gradient_finite(vacuum):
    target = OpenMMEnergy(vacuum.system)
    pos = _perturbed(vacuum, 3, seed=2)
    pos[0, 7] = pos[0, 6]  # N-H on top of each other (opposite charges: NaN on Reference)
    pos[1, 19] = pos[1, 0]  # two methyl H of different caps (like charges: +inf)
    x = torch.as_tensor(pos, dtype=torch.float64).reshape(3, -1).requires_grad_(True)
    u = target.energy(x)
    assert torch.isposinf(u[:2]).all() and torch.isfinite(u[2])
    (g,) = torch.autograd.grad(u.sum(), x)
    assert torch.isfinite(g).all() and (g[:2] == 0).all() and (g[2] != 0).any()
    assert target.n_nonfinite == 2
    # importance log-weights of these configurations are -inf, never NaN
    log_w = -u.detach()
    assert not torch.isnan(log_w).any() and torch.isneginf(log_w[:2]).all()


def test_absurd_energies_are_capped_to_inf(vacuum):
    target = OpenMMEnergy(vacuum.system, max_energy=1e2)
    pos = _perturbed(vacuum, 2, seed=4)
    pos[1, 0] = pos[1, 1] + 0.02  # H1 2 pm from its carbon: ~500 kT, finite
    u = target.energy(torch.as_tensor(pos).reshape(2, -1))
    assert torch.isfinite(u[0]) and torch.isposinf(u[1])
    assert target.n_nonfinite == 1
    lenient = OpenMMEnergy(vacuum.system, max_energy=1e12)
    assert torch.isfinite(lenient.energy(torch.as_tensor(pos).reshape(2, -1))).all()


def test_pickle_drops_pool_and_keeps_spec(vacuum):
    target = OpenMMEnergy(vacuum.system)
    clone = pickle.loads(pickle.dumps(target))
    assert clone.pool is None and clone.spec.key == target.spec.key
    x = torch.as_tensor(vacuum.positions).reshape(1, -1)
    torch.testing.assert_close(clone.energy(x), target.energy(x))
