"""The one rule for log-weights: non-finite (NaN, -inf and +inf) gives weight 0, counted."""

import math

import numpy as np
import pytest
import torch

from boltzflow.energies import CorrelatedGaussian
from boltzflow.weights import (
    clean_log_weights,
    count_nonfinite,
    importance_log_weights,
    kish_ess,
    log_weights,
    sanitize_log_weights,
)

INF = math.inf


def test_plus_infinity_gets_weight_zero_like_nan_and_minus_infinity():
    energy = torch.tensor([1.0, 2.0, -INF, math.nan, INF, 0.0], dtype=torch.float64)
    log_q = torch.tensor([0.5, -INF, 0.0, 0.0, 0.0, math.nan], dtype=torch.float64)
    lw = importance_log_weights(energy, log_q)
    assert lw[0] == -1.5 and bool((lw[1:] == -INF).all())
    assert count_nonfinite(-energy - log_q) == 5 and count_nonfinite(lw) == 5
    assert not bool(torch.isnan(lw).any())


def test_tensor_and_numpy_forms_agree():
    raw = torch.tensor([0.3, INF, -INF, math.nan, -2.0], dtype=torch.float64)
    lw, n_bad = sanitize_log_weights(raw)
    np.testing.assert_array_equal(lw, clean_log_weights(raw).numpy())
    assert n_bad == 3 == count_nonfinite(raw.numpy())


def test_log_weights_use_the_target_energy():
    target = CorrelatedGaussian(mean=torch.zeros(2), cov=torch.eye(2))
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    log_q = torch.zeros(5, dtype=torch.float64)
    torch.testing.assert_close(log_weights(target, x, log_q), -target.energy(x))


def test_kish_ess_ignores_invalid_weights_and_sees_unequal_ones():
    assert kish_ess([0.0, 0.0, INF, math.nan]) == pytest.approx(2.0)
    assert kish_ess([-INF, math.nan]) == 0.0
    assert kish_ess([0.0, math.log(3.0)]) < 2.0  # negative control: unequal weights lose ESS
