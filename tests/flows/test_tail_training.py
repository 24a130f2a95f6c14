"""Negative control on the ν = 1 product-of-Cauchy target (d = 5).

A Gaussian-base spline flow has light tails: its importance weights for a Cauchy target have
infinite variance, and PSIS k̂ > 0.7 must flag it. The tail transform flow, same layers and
budget, must come out below 0.7; so must mTAF (slow). The mutant TTF with its tails pinned
light (tail weight 10⁻³, not learnable: the tail term dropped) must be flagged like the
Gaussian base (slow).
"""

from __future__ import annotations

import logging

import pytest
import torch

from boltzflow.energies.heavy_tails import ProductStudentT
from boltzflow.flows.builders import spline_autoregressive_flow
from boltzflow.flows.tail_builders import tail_adaptive_flow
from boltzflow.sampling.reweighting import reweight
from boltzflow.sampling.runners import importance_sampling
from boltzflow.training import train

TARGET = ProductStudentT(5, df=1.0)
COMMON = dict(num_layers=2, hidden=16, num_blocks=1, seed=0)
STAGE = dict(loss="reverse_kl", steps=150, batch_size=256, lr=3e-3)


def _flow(kind: str):
    if kind == "gaussian":
        return spline_autoregressive_flow(TARGET, inverse_autoregressive=True, **COMMON)
    if kind == "ttf-pinned-light":
        light = dict(heavy=[False] * 5, df=[], learn_tails=False)
        return tail_adaptive_flow(TARGET, tails="ttf", **light, **COMMON)
    return tail_adaptive_flow(TARGET, tails=kind, **COMMON)


def _k_hat(kind: str, caplog) -> tuple[float, bool]:
    flow = _flow(kind)
    with torch.random.fork_rng(devices=[]):
        train(flow, TARGET, [STAGE], seed=0, progress=False)
    draws = importance_sampling(flow, TARGET, n_samples=100_000, seed=1)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="boltzflow.sampling.reweighting"):
        k = reweight(draws.log_weight).pareto_k
    return k, "k-hat" in caplog.text


def test_untrained_light_tails_are_flagged_and_cauchy_tails_are_not(caplog):
    """Fast version, no training: standard normal draws scaled by 2 (Gaussian tails) or
    pushed through a fixed tail transform with λ = 1 (Cauchy-like tails)."""
    from boltzflow.flows.affine import ElementwiseAffine
    from boltzflow.flows.base import Compose, Flow
    from boltzflow.flows.distributions import StandardNormal
    from boltzflow.flows.tails import TailTransform

    def k_hat(flow):
        draws = importance_sampling(flow, TARGET, n_samples=50_000, seed=1)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="boltzflow.sampling.reweighting"):
            k = reweight(draws.log_weight, n_bootstrap=20).pareto_k
        return k, "k-hat" in caplog.text

    light = ElementwiseAffine(5, scale=2.0, learnable=False)
    k, warned = k_hat(Flow(StandardNormal(5), Compose(light)))
    assert k > 0.7 and warned
    heavy = TailTransform(5, tail_weights=1.0, learnable_tails=False)
    k, warned = k_hat(Flow(StandardNormal(5), Compose(heavy)))
    assert k < 0.7 and not warned


@pytest.mark.slow
def test_gaussian_base_is_flagged_and_tail_transform_is_not(caplog):
    k_gauss, warned = _k_hat("gaussian", caplog)
    assert k_gauss > 0.7 and warned
    k_ttf, warned = _k_hat("ttf", caplog)
    assert k_ttf < 0.7 and not warned


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "heavy"), [("mtaf", True), ("ttf-pinned-light", False)])
def test_mtaf_passes_and_pinned_light_tails_fail(kind, heavy, caplog):
    k, warned = _k_hat(kind, caplog)
    assert (k < 0.7) == heavy and warned == (not heavy)
