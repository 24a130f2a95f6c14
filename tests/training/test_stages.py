"""Stage specification, learning-rate schedule and the epoch minibatch stream."""

from __future__ import annotations

import pytest
import torch

from boltzflow.training.stages import EpochSampler, Stage, cosine_warmup, seed_for


def test_epoch_sampler_covers_each_epoch_once_and_reshuffles():
    sampler = EpochSampler(10, key=(0, 3, 0))
    rows = torch.cat([sampler.indices(step, 3) for step in range(7)])  # epochs 0, 1, part of 2
    assert torch.equal(rows[:10].sort().values, torch.arange(10))
    assert torch.equal(rows[10:20].sort().values, torch.arange(10))
    assert not torch.equal(rows[:10], rows[10:20])
    # a pure function of the step: a fresh sampler, queried out of order, agrees
    assert torch.equal(EpochSampler(10, key=(0, 3, 0)).indices(4, 3), rows[12:15])
    assert not torch.equal(EpochSampler(10, key=(1, 3, 0)).indices(0, 10), rows[:10])
    big = EpochSampler(4, key=(0,)).indices(0, 9)  # a batch larger than the data
    assert big.shape == (9,) and torch.equal(big[:4].sort().values, torch.arange(4))


def test_seed_for_separates_streams():
    assert seed_for(0, 1) == seed_for(0, 1)
    assert len({seed_for(0, i) for i in range(100)}) == 100
    assert 0 <= seed_for(5) < 2**63


def test_cosine_warmup_schedule():
    f = cosine_warmup(100, warmup_steps=10, min_factor=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.1 + 0.9 * 0.5)
    assert f(100) == pytest.approx(0.1)
    assert cosine_warmup(100, 0, cosine=False)(70) == 1.0


def test_stage_from_dict_routes_unknown_keys_to_the_loss():
    s = Stage.from_dict({"loss": "reverse_kl", "steps": 5, "energy_cap": 1e3})
    assert s.loss_kwargs == {"energy_cap": 1e3} and s.steps == 5
    assert s.fingerprint() == {"loss": "reverse_kl", "steps": 5, "batch_size": 256}
