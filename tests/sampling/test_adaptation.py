"""Warm-up adaptation: the multiplicative step rule and blockwise runs."""

import torch

from boltzflow.energies import CorrelatedGaussian
from boltzflow.sampling.adaptation import (
    adapt_step_size,
    adaptation_blocks,
    run_adapting_step_size,
)
from boltzflow.sampling.kernels import MALA


def test_step_grows_when_accepting_too_often_and_shrinks_otherwise():
    step = torch.full((3, 1), 0.1, dtype=torch.float64)
    new = adapt_step_size(step, torch.tensor([0.9, 0.57, 0.0], dtype=torch.float64), 0.57)
    assert new[0, 0] > 0.1 and new[1, 0] == 0.1 and new[2, 0] < 0.1
    assert float(new.max() / 0.1) <= 5.0 and float(new.min() / 0.1) >= 0.2


def test_blocks_cover_the_steps():
    assert adaptation_blocks(25, 10) == [10, 10, 5] and adaptation_blocks(20, 10) == [10, 10]


def test_adapting_run_concatenates_blocks_and_reaches_the_target(float64):
    target = CorrelatedGaussian(mean=torch.zeros(2), cov=torch.eye(2))
    step = torch.full((8, 1), 1e-3, dtype=torch.float64)
    state = MALA(target, step).init(torch.zeros(8, 2, dtype=torch.float64), seed=0)
    res, new = run_adapting_step_size(lambda eps: MALA(target, eps), state, 300, step, 0.57)
    assert res.x.shape == (8, 300, 2) and res.accepted.shape == (8, 300)
    assert 0.3 < float(res.acceptance_prob[:, -100:].mean()) < 0.8  # adapted from 1e-3
    assert float(new.median()) > 0.1
