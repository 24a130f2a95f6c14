"""MixedNormalTorus: density formula, support, and calibrated sampling (KS tests)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from boltzflow.flows.distributions import MixedNormalTorus, StandardNormal, UniformTorus

MASK = torch.tensor([[True, False], [False, True]])


def test_log_prob_is_the_product_of_marginals():
    base = MixedNormalTorus(MASK).double()
    z = base.sample(50, generator=torch.Generator().manual_seed(0))
    flat, mask = z.reshape(50, -1), MASK.reshape(-1)
    expected = StandardNormal(2).double().log_prob(flat[:, ~mask]) + UniformTorus(2).log_prob(
        flat[:, mask]
    )
    torch.testing.assert_close(base.log_prob(z), expected, rtol=0, atol=1e-12)
    assert z.dtype == torch.float64 and z.shape == (50, 2, 2)


def test_outside_the_torus_has_zero_density():
    base = MixedNormalTorus([True, False])
    z = torch.tensor([[3.5, 0.0], [0.0, 10.0], [-math.pi, -3.5]])
    lp = base.log_prob(z)
    assert lp[0] == -math.inf and torch.isfinite(lp[1:]).all()


def test_marginals_are_calibrated():
    base = MixedNormalTorus([True, False]).double()
    z = base.sample(4000, generator=torch.Generator().manual_seed(1)).numpy()
    uniform = stats.uniform(loc=-math.pi, scale=2 * math.pi).cdf
    assert stats.kstest(z[:, 0], uniform).pvalue > 1e-3
    assert stats.kstest(z[:, 1], stats.norm.cdf).pvalue > 1e-3
    # negative control: the marginals are told apart
    assert stats.kstest(z[:, 0], stats.norm.cdf).pvalue < 1e-6
    assert stats.kstest(z[:, 1], uniform).pvalue < 1e-6


def test_rejects_empty_interval():
    with pytest.raises(ValueError):
        MixedNormalTorus([True], low=1.0, high=1.0)
