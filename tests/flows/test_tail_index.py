"""Tail-index estimators: calibrated recovery of known ν, light vs heavy, and a mutant."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from boltzflow.energies.gaussians import Funnel
from boltzflow.energies.heavy_tails import ProductStudentT
from boltzflow.flows import tail_index as ti

Z_CRIT = 3.5
REPLICATES, N = 30, 5000


def _replicates(nu: float, estimator, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array(
        [estimator(np.abs(stats.t(nu).rvs(size=N, random_state=rng))) for _ in range(REPLICATES)]
    )


def _hill_selected(a):
    return ti.hill(a, ti.select_k(a, max_fraction=0.05))


def _z(values: np.ndarray, truth: float) -> float:
    return (values.mean() - truth) / (values.std(ddof=1) / math.sqrt(values.size))


@pytest.mark.parametrize("nu", [0.5, 1.0, 2.0])
def test_hill_with_data_driven_threshold_recovers_nu(nu):
    """z-test of the mean of ξ̂ = 1/ν̂ across replicates, with their own spread."""
    xi = _replicates(nu, _hill_selected)
    assert abs(_z(xi, 1 / nu)) < Z_CRIT


@pytest.mark.parametrize("nu", [1.0, 2.0])
def test_moment_estimator_cross_checks(nu):
    def moment(a):
        return ti.moment_estimator(a, ti.select_k(a, max_fraction=0.2))

    assert abs(_z(_replicates(nu, moment, seed=1), 1 / nu)) < Z_CRIT


def test_mutant_without_threshold_selection_fails():
    """Dropping the data-driven threshold (k = n/2) biases the Hill estimate: detected."""
    xi = _replicates(2.0, lambda a: ti.hill(a, a.size // 2))
    assert abs(_z(xi, 0.5)) > Z_CRIT


def test_gaussian_is_light_and_student_t_heavy():
    rng = np.random.default_rng(2)
    x = np.concatenate(
        [rng.normal(size=(N, 3)), stats.t(1.0).rvs(size=(N, 2), random_state=rng)], 1
    )
    est = ti.estimate_tail_index(x)
    assert est.heavy.tolist() == [False, False, False, True, True]
    assert np.isinf(est.df[:3]).all() and np.all(np.abs(est.df[3:] - 1) < 0.3)


def test_energy_growth_reads_the_tail_index():
    target = ProductStudentT(5, df=[0.5, 1.0, 2.0], n_heavy=3)
    est = ti.energy_tail_index(target)
    assert est.heavy.tolist() == [True, True, True, False, False]
    np.testing.assert_allclose(est.df[:3], [0.5, 1.0, 2.0], rtol=1e-3)


def test_energy_growth_sees_only_the_conditional_tails():
    """A funnel's x_i are heavy in the marginal but Gaussian along the axis: all light."""
    assert not ti.energy_tail_index(Funnel(dim=5)).heavy.any()
