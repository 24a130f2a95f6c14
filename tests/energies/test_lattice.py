"""φ⁴ and U(1) lattice energies: conventions, symmetries, observables, exact samples."""

import math

import pytest
import torch

from boltzflow.energies import lattice_exact as ex
from boltzflow.energies.lattice import (
    Phi4,
    U1Wilson,
    binder_cumulant,
    from_half_normalized,
    from_hopping,
    gauge_transform,
    phi4_action,
    plaquettes,
    to_half_normalized,
    to_hopping,
    topological_charge,
    wrap_angle,
)

DT = torch.float64


def _rand(shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(shape, generator=g, dtype=DT)


def test_phi4_no_half_action_by_hand():
    phi = _rand((3, 4, 4))
    m2, lam = -4.0, 8.0
    by_hand = torch.zeros(3, dtype=DT)
    for i in range(4):
        for j in range(4):
            p = phi[:, i, j]
            kin = (phi[:, (i + 1) % 4, j] - p) ** 2 + (phi[:, i, (j + 1) % 4] - p) ** 2
            by_hand += kin + m2 * p**2 + lam * p**4
    torch.testing.assert_close(Phi4(4, m2, lam).energy(phi), by_hand)


@pytest.mark.parametrize(
    ("convert", "convention", "params"),
    [(from_half_normalized, "half", (1.3, 2.4)), (from_hopping, "hopping", (0.22, 0.7))],
)
def test_phi4_converters_preserve_the_action(convert, convention, params):
    conv = convert(*params)
    phi = _rand((5, 6, 6))
    s_other = phi4_action(conv.field_scale * phi, *params, convention=convention)
    torch.testing.assert_close(s_other, phi4_action(phi, conv.m2, conv.lam))


def test_phi4_converters_round_trip():
    m2, lam = -4.0, 8.0
    half = to_half_normalized(m2, lam)
    assert from_half_normalized(half.m2, half.lam)[:2] == pytest.approx((m2, lam))
    hop = to_hopping(m2, lam)
    assert hop.m2 == pytest.approx(0.25)  # κ of the lattice-tutorial point
    assert from_hopping(hop.m2, hop.lam)[:2] == pytest.approx((m2, lam))
    assert from_hopping(*to_hopping(1.25, 0.0)[:2])[:2] == pytest.approx((1.25, 0.0))
    with pytest.raises(ValueError):
        to_hopping(-5.0, 0.0)


def test_phi4_free_log_z_in_other_conventions():
    # log Z_other = log Z_no½ + V log(field_scale): the REFERENCE free field (½-normalised).
    conv = from_half_normalized(1.25, 0.0)
    assert Phi4(8, conv.m2, 0.0).log_z + 64 * math.log(conv.field_scale) == pytest.approx(
        8.608334, abs=1e-6
    )
    assert Phi4(8, -4.0, 8.0).log_z is None
    with pytest.raises(ValueError):
        Phi4(8, -1.0, 0.0)


def test_phi4_z2_symmetry_and_shapes():
    target = Phi4(6, -4.0, 8.0)
    phi = _rand((7, 6, 6))
    torch.testing.assert_close(target.energy(phi), target.energy(-phi))
    for name, obs in target.observables().items():
        assert obs.fn(phi).shape == (7,), name
    assert target.energy(phi.float()).dtype == torch.float32


def test_phi4_free_exact_sampler_moments():
    L, m2, n = 8, 0.5, 20_000
    target = Phi4(L, m2, 0.0)
    g = torch.Generator().manual_seed(3)
    x = target.sample(n, generator=g).double()
    obs = target.observables()
    checks = {
        name: target.exact_observable(name)
        for name in ("susceptibility", "abs_magnetization", "magnetization_4", "action_density")
    }
    assert checks["susceptibility"] == ex.free_field_susceptibility(m2)
    assert checks["action_density"] == 0.5  # equipartition: ⟨S⟩ = V/2
    for name, truth in checks.items():
        v = obs[name].fn(x)
        z = (v.mean().item() - truth) / (v.std().item() / math.sqrt(n))
        assert abs(z) < 4.0, (name, z)
    v = (x**2).mean(dim=(1, 2))
    z = (v.mean().item() - ex.free_field_phi2(L, m2)) / (v.std().item() / math.sqrt(n))
    assert abs(z) < 4.0
    # negative control: samples at another mass are rejected
    wrong = Phi4(L, 0.6, 0.0).sample(n, generator=g).double()
    v = obs["susceptibility"].fn(wrong)
    z = (v.mean().item() - checks["susceptibility"]) / (v.std().item() / math.sqrt(n))
    assert abs(z) > 4.0
    with pytest.raises(NotImplementedError):
        Phi4(L, -4.0, 8.0).sample(2)
    with pytest.raises(KeyError):
        Phi4(L, -4.0, 8.0).exact_observable("susceptibility")


def test_binder_cumulant_limits():
    g = torch.Generator().manual_seed(0)
    gauss = torch.randn((200_000, 1, 1), generator=g, dtype=DT)
    assert binder_cumulant(gauss) == pytest.approx(0.0, abs=0.02)  # Gaussian: U = 0
    ordered = torch.sign(gauss)
    assert binder_cumulant(ordered) == pytest.approx(2.0 / 3.0)  # two δ-peaks: U = 2/3
    # importance weights that turn the Gaussian into ±1 are honoured
    log_w = torch.where(gauss.abs().flatten() > 0.99, 0.0, -1e9).to(DT)
    log_w = torch.where(gauss.abs().flatten() < 1.01, log_w, torch.full_like(log_w, -1e9))
    assert binder_cumulant(gauss, log_w) == pytest.approx(2.0 / 3.0, abs=1e-3)


def _instanton(L, q):
    """Links with all plaquettes equal to 2πq/V (so Q = q and S = -βV cos(2πq/V))."""
    x0 = torch.arange(L, dtype=DT).view(L, 1).expand(L, L)
    x1 = torch.arange(L, dtype=DT).view(1, L).expand(L, L)
    t0 = -2 * math.pi * q * x1 / L**2
    t1 = torch.where(x1 == L - 1, 2 * math.pi * q * x0 / L, torch.zeros_like(x0))
    return wrap_angle(torch.stack([t0, t1]).unsqueeze(0))


@pytest.mark.parametrize("q", [-2, -1, 0, 1, 3])
def test_u1_instanton_charge_and_action(q):
    L, beta = 6, 1.7
    x = _instanton(L, q)
    torch.testing.assert_close(
        wrap_angle(plaquettes(x)), torch.full((1, L, L), 2 * math.pi * q / L**2, dtype=DT)
    )
    assert topological_charge(x).item() == q
    expected = -beta * L * L * math.cos(2 * math.pi * q / L**2)
    assert U1Wilson(L, beta).energy(x).item() == pytest.approx(expected)


def test_u1_gauge_invariance_of_action_and_charge():
    L = 8
    target = U1Wilson(L, 2.0)
    x = wrap_angle(_rand((16, 2, L, L), seed=1, scale=3.0))
    alpha = _rand((16, L, L), seed=2, scale=3.0)
    y = gauge_transform(x, alpha)
    assert (y - x).abs().max() > 1.0
    torch.testing.assert_close(target.energy(y), target.energy(x))
    torch.testing.assert_close(topological_charge(y), topological_charge(x))
    # negative control: a random link perturbation is not a gauge transformation
    z = x.clone()
    z[:, 0, 2, 3] += 0.5
    assert (target.energy(z) - target.energy(x)).abs().min() > 1e-6


def test_u1_periodicity_observables_and_log_z():
    L = 4
    target = U1Wilson(L, 1.5)
    x = _rand((5, 2, L, L), seed=4, scale=2.0)
    torch.testing.assert_close(target.energy(x + 2 * math.pi), target.energy(x))
    obs = target.observables()
    for name, o in obs.items():
        assert o.fn(x).shape == (5,), name
    q = obs["topological_charge"].fn(x)
    assert torch.equal(q, torch.round(q))
    assert target.log_z == pytest.approx(ex.u1_log_z(L, 1.5, measure="flat"))
    assert target.exact.q2 == pytest.approx(ex.u1_topological_q2(L, 1.5))
    assert target.exact_observable("topological_susceptibility") == target.exact.q2 / L**2
    assert target.exact_observable("action_density") == -1.5 * target.exact.mean_plaquette
    assert target.period == pytest.approx(2 * math.pi)


def test_report_figures(tmp_path):
    x = wrap_angle(_rand((50, 2, 4, 4), seed=5, scale=2.0))
    from boltzflow.reporting.run_figures import draw_requested

    requests = U1Wilson(4, 1.0).report_figures(x, torch.zeros(50, dtype=DT))
    figs = draw_requested(tmp_path, requests)
    assert all((tmp_path / f).stat().st_size > 0 for f in figs.values())
    requests = Phi4(4, 1.0, 0.0).report_figures(_rand((50, 4, 4)), _rand((50,), seed=6))
    figs = draw_requested(tmp_path, requests)
    assert all((tmp_path / f).stat().st_size > 0 for f in figs.values())
