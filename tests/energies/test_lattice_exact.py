"""Exact free-field and 2-D U(1) formulas, checked against independent computations."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special

from boltzflow.energies import lattice_exact as ex
from boltzflow.energies.lattice import U1Wilson, phi4_action, plaquettes, topological_charge


def test_free_field_log_z_matches_dense_determinant():
    L, m2 = 4, 0.7
    V = L * L
    hess = torch.autograd.functional.hessian(
        lambda p: phi4_action(p.reshape(1, L, L), m2, 0.0).sum(),
        torch.zeros(V, dtype=torch.float64),
    )
    # ∫ exp(-φᵀHφ/2) dφ = (2π)^{V/2} det(H)^{-1/2}
    dense = 0.5 * V * math.log(2 * math.pi) - 0.5 * torch.logdet(hess).item()
    assert ex.free_field_log_z(L, m2) == pytest.approx(dense, abs=1e-10)
    cov = torch.linalg.inv(hess).diagonal().mean().item()
    assert ex.free_field_phi2(L, m2) == pytest.approx(cov, rel=1e-10)
    chi = torch.linalg.inv(hess).sum().item() / V
    assert ex.free_field_susceptibility(m2) == pytest.approx(chi, rel=1e-10)


def test_free_field_reference_example_half_convention():
    # REFERENCE: ½-normalised action, L = 8, m² = 1.25 -> log Z = 8.608334; φ_half = √2 φ.
    log_z_half = ex.free_field_log_z(8, 1.25) + 64 * 0.5 * math.log(2.0)
    assert log_z_half == pytest.approx(8.608334, abs=1e-6)


def test_free_field_rejects_massless():
    with pytest.raises(ValueError):
        ex.free_field_log_z(8, 0.0)


def test_u1_reference_examples():
    e = ex.u1_exact(8, 2.0)
    assert e.q2 == pytest.approx(1.2393, abs=1e-4)
    assert e.log_z_haar == pytest.approx(52.7356, abs=1e-4)
    assert e.log_z_flat - e.log_z_haar == pytest.approx(128 * math.log(2 * math.pi))


@pytest.mark.parametrize(("L", "beta"), [(2, 0.7), (4, 1.5), (8, 2.0), (16, 6.0)])
def test_u1_plaquette_is_beta_derivative_of_log_z(L, beta):
    h = 1e-5
    fd = (ex.u1_log_z(L, beta + h) - ex.u1_log_z(L, beta - h)) / (2 * h) / (L * L)
    assert ex.u1_mean_plaquette(L, beta) == pytest.approx(fd, abs=1e-7)


def test_u1_plaquette_infinite_volume_limit():
    beta = 3.0
    assert ex.u1_mean_plaquette(64, beta) == pytest.approx(
        special.iv(1, beta) / special.iv(0, beta), abs=1e-12
    )
    assert abs(ex.u1_mean_plaquette(2, beta) - special.iv(1, beta) / special.iv(0, beta)) > 1e-3


def _log_z_theta(L, beta, theta):
    """log Z(θ) from an independent quadrature of g_ν at non-integer ν."""
    V = L * L
    total = 0.0
    for n in range(-6, 7):
        nu = n + theta / (2 * math.pi)
        g, _ = integrate.quad(
            lambda p, nu=nu: math.exp(beta * (math.cos(p) - 1)) * math.cos(nu * p),
            0,
            math.pi,
            epsabs=1e-13,
            epsrel=1e-12,
            limit=200,
        )
        total += (g / math.pi) ** V  # V is even here, so negative g_ν is harmless
    return math.log(total) + V * beta


@pytest.mark.parametrize(("L", "beta"), [(2, 1.0), (4, 2.0), (8, 2.0)])
def test_u1_q2_is_theta_curvature(L, beta):
    h = 2e-3
    curv = (
        _log_z_theta(L, beta, h) - 2 * _log_z_theta(L, beta, 0.0) + _log_z_theta(L, beta, -h)
    ) / h**2
    assert ex.u1_topological_q2(L, beta) == pytest.approx(-curv, rel=1e-5)
    assert ex.u1_log_z(L, beta) == pytest.approx(_log_z_theta(L, beta, 0.0), abs=1e-10)


def _uniform_links_estimates(L, beta, n, seed):
    """Brute force: Haar-uniform links reweighted by exp(-S); returns (value, stderr) triples."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand((n, 2, L, L), generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    target = U1Wilson(L, beta)
    log_w = -target.energy(x)
    w = torch.exp(log_w - log_w.max())
    z_hat = w.mean()
    log_z = (torch.log(z_hat) + log_w.max()).item()
    log_z_err = (w.std() / math.sqrt(n) / z_hat).item()
    out = {"log_z": (log_z, log_z_err)}
    wn = w / w.sum()
    for name, f in (
        ("plaquette", torch.cos(plaquettes(x)).mean(dim=(1, 2))),
        ("q2", topological_charge(x) ** 2),
    ):
        mean = (wn * f).sum()
        err = torch.sqrt((wn**2 * (f - mean) ** 2).sum())  # delta-method SNIS error
        out[name] = (mean.item(), err.item())
    return out


def test_u1_formulas_against_brute_force_sampling():
    L, beta = 2, 1.0
    est = _uniform_links_estimates(L, beta, 200_000, seed=1)
    exact = ex.u1_exact(L, beta)
    for name, truth in (
        ("log_z", exact.log_z_haar),
        ("plaquette", exact.mean_plaquette),
        ("q2", exact.q2),
    ):
        mean, err = est[name]
        assert abs(mean - truth) / err < 4.0, (name, mean, truth, err)
    # negative control: the formula at a different coupling is rejected by the same estimates
    wrong = ex.u1_exact(L, 1.2)
    assert abs(est["plaquette"][0] - wrong.mean_plaquette) / est["plaquette"][1] > 4.0
    assert abs(est["log_z"][0] - wrong.log_z_haar) / est["log_z"][1] > 4.0


def test_u1_rejects_bad_arguments():
    with pytest.raises(ValueError):
        ex.u1_exact(1, 2.0)
    with pytest.raises(ValueError):
        ex.u1_log_z(4, 1.0, measure="other")


def test_momenta():
    k2 = ex.lattice_momenta_sq(4)
    assert k2.shape == (4, 4) and k2[0, 0] == 0.0
    assert np.isclose(k2.max(), 8.0)
