"""Tests for the shared Metropolis–Hastings acceptance."""

import math

import pytest
import torch
from scipy import stats

from boltzflow.rng import make_generator
from boltzflow.sampling.base import log_acceptance_ratio, metropolis_hastings_accept

D = torch.float64


def test_log_acceptance_ratio_formula():
    u_old = torch.tensor([1.0, 2.0, 0.5], dtype=D)
    u_new = torch.tensor([0.5, 3.0, 0.5], dtype=D)
    lq = torch.tensor([0.1, -0.2, 0.0], dtype=D)
    torch.testing.assert_close(log_acceptance_ratio(u_old, u_new, lq), u_old - u_new + lq)
    torch.testing.assert_close(log_acceptance_ratio(u_old, u_new), u_old - u_new)


def test_nonfinite_proposals_rejected_and_never_nan():
    inf, nan = math.inf, math.nan
    u_old = torch.tensor([0.0, 0.0, 0.0, 0.0, inf], dtype=D)
    u_new = torch.tensor([inf, nan, -inf, 0.0, inf], dtype=D)
    lq = torch.tensor([0.0, 0.0, 0.0, nan, 0.0], dtype=D)
    la = log_acceptance_ratio(u_old, u_new, lq)
    assert not torch.isnan(la).any()
    assert torch.all(la == -inf)
    acc, prob = metropolis_hastings_accept(la, make_generator(0))
    assert not acc.any() and torch.all(prob == 0)


def test_nonfinite_current_state_escapes_to_finite_proposal():
    u_old = torch.tensor([math.inf, math.nan], dtype=D)
    u_new = torch.tensor([3.0, 3.0], dtype=D)
    la = log_acceptance_ratio(u_old, u_new, torch.zeros(2, dtype=D))
    assert torch.all(la == math.inf)
    acc, prob = metropolis_hastings_accept(la, make_generator(0))
    assert acc.all() and torch.all(prob == 1)


def test_nan_log_alpha_rejects():
    la = torch.tensor([math.nan, math.inf, -math.inf], dtype=D)
    acc, prob = metropolis_hastings_accept(la, make_generator(0))
    assert acc.tolist() == [False, True, False]
    assert prob.tolist() == [0.0, 1.0, 0.0]


@pytest.mark.parametrize("alpha", [0.05, 0.3, 0.8])
def test_acceptance_frequency_is_calibrated(alpha):
    """Accept frequency of ``min(1, α)`` matches α (binomial z below 4); a wrong α is detected."""
    n = 200_000
    la = torch.full((n,), math.log(alpha), dtype=D)
    acc, prob = metropolis_hastings_accept(la, make_generator(1))
    torch.testing.assert_close(prob, torch.full_like(prob, alpha))
    freq = acc.double().mean().item()

    def z(p):
        return abs(freq - p) / math.sqrt(p * (1 - p) / n)

    assert z(alpha) < 4.0
    assert z(alpha * 1.1) > 4.0  # negative control: a 10 % error in α is visible


def test_accept_is_deterministic_given_generator_and_keeps_dtype():
    la = torch.randn(100, generator=make_generator(3), dtype=torch.float32)
    a1, p1 = metropolis_hastings_accept(la, make_generator(7))
    a2, p2 = metropolis_hastings_accept(la, make_generator(7))
    assert torch.equal(a1, a2) and torch.equal(p1, p2)
    assert p1.dtype == torch.float32 and a1.dtype == torch.bool


def test_accept_compares_one_uniform_per_chain():
    """``accepted == (u < α)`` for the uniforms ``u`` drawn from the same generator."""
    n = 50_000
    u = torch.rand(n, generator=make_generator(11), dtype=D)
    for a in (0.1, 0.5, 0.9):
        acc, _ = metropolis_hastings_accept(
            torch.full((n,), math.log(a), dtype=D), make_generator(11)
        )
        assert torch.equal(acc, u < a)
    assert stats.kstest(u.numpy(), "uniform").pvalue > 1e-3
