"""DoubleWell2D and ManyWell against hand formulas, 2-D grid quadrature and calibrated tests.

Statistical tests are seeded; thresholds are calibrated (KS p > 1e-3, |z| < 4), so each fails
with probability <= 1e-3 under a correct implementation and the negative controls show that
the same checks reject a slightly wrong target.
"""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from boltzflow.energies import DoubleWell2D, ManyWell

torch.set_num_threads(1)
F64 = torch.float64


def u1(x, a=-0.5, b=-6.0, c=1.0):
    return a * x + b * x**2 + c * x**4


def grid_quadrature(energy, lim1=4.0, lim2=12.0, n=2001):
    """log Z, log Z(x1<0), log Z(x1>=0), E[x1] by 2-D Simpson on the energy's own grid."""
    x1 = torch.linspace(-lim1, lim1, n, dtype=F64)
    x2 = torch.linspace(-lim2, lim2, n, dtype=F64)
    g1, g2 = torch.meshgrid(x1, x2, indexing="ij")
    u = energy.energy(torch.stack([g1.reshape(-1), g2.reshape(-1)], -1)).reshape(n, n).numpy()
    shift = u.min()
    f = np.exp(-(u - shift))
    fx1 = integrate.simpson(f, x=x2.numpy(), axis=1)  # marginal of x1, unnormalized
    xs = x1.numpy()
    half = n // 2  # x1[half] == 0
    z = integrate.simpson(fx1, x=xs)
    z_left = integrate.simpson(fx1[: half + 1], x=xs[: half + 1])
    z_right = integrate.simpson(fx1[half:], x=xs[half:])
    mean = integrate.simpson(xs * fx1, x=xs) / z
    return -shift + math.log(z), -shift + math.log(z_left), -shift + math.log(z_right), mean


def x1_cdf(a=-0.5, b=-6.0, c=1.0, beta=1.0):
    """CDF of x1 from 1-D cumulative Simpson of exp(-beta u1) on a fine grid."""
    x = np.linspace(-6.0, 6.0, 60001)
    logf = -beta * u1(x, a, b, c)
    f = np.exp(logf - logf.max())
    cdf = integrate.cumulative_simpson(f, x=x, initial=0.0)
    cdf /= cdf[-1]
    return lambda t: np.interp(t, x, cdf)


def test_energy_matches_formula():
    g = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(50, 2, generator=g, dtype=F64)
    e = DoubleWell2D(a=0.3, b=-2.0, c=0.7)
    expected = 0.3 * x[:, 0] - 2.0 * x[:, 0] ** 2 + 0.7 * x[:, 0] ** 4 + 0.5 * x[:, 1] ** 2
    torch.testing.assert_close(e.energy(x), expected, rtol=1e-14, atol=1e-12)
    assert e.n_evaluations == 50


def test_many_well_energy_is_sum_over_pairs():
    g = torch.Generator().manual_seed(1)
    x = 2 * torch.randn(7, 8, generator=g, dtype=F64)
    e = ManyWell(dim=8)
    expected = sum(u1(x[:, 2 * i]) + 0.5 * x[:, 2 * i + 1] ** 2 for i in range(4))
    torch.testing.assert_close(e.energy(x), expected, rtol=1e-14, atol=1e-12)


@pytest.mark.parametrize(
    "params, temperature",
    [
        ((-0.5, -6.0, 1.0), 1.0),
        ((-0.5, -6.0, 1.0), 2.0),
        ((-0.5, -6.0, 1.0), 0.7),
        ((0.3, -3.0, 0.5), 1.0),
    ],
)
def test_exact_quantities_match_2d_grid_quadrature(params, temperature):
    e = DoubleWell2D(*params).at_temperature(temperature)
    log_z, log_z_left, log_z_right, mean = grid_quadrature(e, lim2=12.0 * math.sqrt(temperature))
    assert abs(e.log_z - log_z) < 1e-11
    assert abs(e.exact_free_energy("left_vs_right") - (log_z_right - log_z_left)) < 1e-10
    assert abs(e.exact_observable("x1") - mean) < 1e-10


def test_grid_check_detects_a_wrong_log_z():
    """Negative control: a 1% error in one coefficient is far outside the tolerance."""
    grid = grid_quadrature(DoubleWell2D())[0]
    assert abs(DoubleWell2D(c=1.01).log_z - grid) > 1e6 * 1e-11
    assert abs(DoubleWell2D(a=-0.505).log_z - grid) > 1e6 * 1e-11


def test_default_numbers():
    e = DoubleWell2D()
    dF = e.exact_free_energy("left_vs_right")
    assert dF == pytest.approx(math.log(e.marginal.p_right / (1 - e.marginal.p_right)), rel=1e-10)
    assert 1.5 < dF < 1.9  # right well lower by about 2|a|sqrt(3) kT
    assert e.marginal.acceptance > 0.98


def test_many_well_log_z_and_modes():
    e = ManyWell(dim=32)
    assert e.n_modes == 65536
    assert e.log_z == pytest.approx(16 * DoubleWell2D().log_z, rel=1e-14)
    e2 = e.at_temperature(1.5)
    assert e2.log_z == pytest.approx(16 * DoubleWell2D().at_temperature(1.5).log_z, rel=1e-14)
    assert e.log_z != e2.log_z and e.temperature_scale == 1.0
    assert e2.exact_free_energy("first_pair_left_vs_right") == pytest.approx(
        DoubleWell2D(temperature_scale=1.5).exact_free_energy("left_vs_right"), rel=1e-12
    )


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sampler_ks_and_moments(temperature):
    e = DoubleWell2D().at_temperature(temperature)
    g = torch.Generator().manual_seed(2024)
    n = 20000
    x = e.sample(n, g).numpy()
    assert stats.kstest(x[:, 0], x1_cdf(beta=1 / temperature)).pvalue > 1e-3
    assert stats.kstest(x[:, 1] / math.sqrt(temperature), "norm").pvalue > 1e-3
    z = (x[:, 0].mean() - e.exact_observable("x1")) / (x[:, 0].std() / math.sqrt(n))
    assert abs(z) < 4
    p = e.marginal.p_right
    z = ((x[:, 0] >= 0).mean() - p) / math.sqrt(p * (1 - p) / n)
    assert abs(z) < 4


def test_sampler_negative_control():
    """Samples of a slightly different well (a = -0.4) are rejected by the same KS test."""
    x = DoubleWell2D(a=-0.4).sample(20000, torch.Generator().manual_seed(2024)).numpy()
    assert stats.kstest(x[:, 0], x1_cdf()).pvalue < 1e-3


def test_sampler_is_reproducible_and_typed():
    e = DoubleWell2D()
    a = e.sample(100, torch.Generator().manual_seed(5))
    b = e.sample(100, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == (100, 2) and a.dtype == F64
    assert e.sample(3, torch.Generator().manual_seed(5), dtype=torch.float32).dtype == torch.float32


def test_many_well_sampler():
    e = ManyWell(dim=16)
    n = 5000
    x = e.sample(n, torch.Generator().manual_seed(7))
    assert x.shape == (n, 16)
    x1 = x[:, 0::2].numpy()
    assert stats.kstest(x1.reshape(-1), x1_cdf()).pvalue > 1e-3
    assert stats.kstest(x[:, 1::2].reshape(-1).numpy(), "norm").pvalue > 1e-3
    frac = e.observables()["frac_x1_positive"].fn(x).numpy()
    p = e.exact_observable("frac_x1_positive")
    z = (frac.mean() - p) / math.sqrt(p * (1 - p) / (n * 8))
    assert abs(z) < 4
    # wells are independent: correlation of the signs of neighbouring wells vanishes
    s = np.sign(x1)
    r = np.corrcoef(s[:, 0], s[:, 1])[0, 1]
    assert abs(r) * math.sqrt(n) < 4


def test_state_sets_and_observables():
    e = ManyWell(dim=4)
    x = torch.tensor([[-1.0, 0.0, 2.0, 0.0], [1.0, 0.0, -2.0, 0.0]], dtype=F64)
    sets = e.state_sets()["first_pair_left_vs_right"]
    assert sets.in_a(x).tolist() == [True, False] and sets.in_b(x).tolist() == [False, True]
    torch.testing.assert_close(
        e.observables()["frac_x1_positive"].fn(x), torch.full((2,), 0.5, dtype=F64)
    )
    with pytest.raises(KeyError, match="unknown name"):
        e.exact_free_energy("nope")
    with pytest.raises(KeyError, match="unknown name"):
        DoubleWell2D().exact_observable("x3")


def test_invalid_parameters_raise():
    with pytest.raises(ValueError, match="even dimension"):
        ManyWell(dim=5)
    with pytest.raises(ValueError, match="c must be > 0"):
        DoubleWell2D(c=0.0)


@pytest.mark.slow
def test_sampler_large_sample():
    """10^6 draws: a sharper version of the KS and P(x1 >= 0) checks (the sampler is exact)."""
    e = DoubleWell2D()
    n = 1_000_000
    x = e.sample(n, torch.Generator().manual_seed(99))[:, 0].numpy()
    assert stats.kstest(x, x1_cdf()).pvalue > 1e-3
    p = e.marginal.p_right
    assert abs(((x >= 0).mean() - p) / math.sqrt(p * (1 - p) / n)) < 4
