"""Explicit block positions and fixed λ / step sizes of `add_stochastic_blocks`."""

from __future__ import annotations

import math

import pytest
import torch

from boltzflow.energies.double_well import DoubleWell2D
from boltzflow.flows.snf import add_stochastic_blocks, realnvp_flow
from boltzflow.flows.stochastic import MetropolisBlock


def _snf(placement, **kw):
    target = DoubleWell2D()
    flow = realnvp_flow(target, num_layers=6, hidden=8, affine=False, seed=0).double()
    kw = {"count": 4, "steps": 2, "lambdas": [0.0, 0.0, 0.5, 1.0], **kw}
    return target, flow, add_stochastic_blocks(flow, target, placement=placement, **kw)


def test_listed_positions_put_blocks_before_between_and_after_the_layers():
    """The published SNF layout: a block on the base samples, after couplings 2 and 4, and at
    the end; λ and the step size stay fixed when asked."""
    target, flow, snf = _snf([0, 2, 4, 6], train_lambda=False, train_step_size=False)
    mods = list(snf.transform.transforms)
    is_block = [isinstance(m, MetropolisBlock) for m in mods]
    assert is_block == [True, False, False, True, False, False, True, False, False, True]
    assert [float(m.lam) for m in mods if isinstance(m, MetropolisBlock)] == [0, 0, 0.5, 1]
    layers = [m for m in mods if not isinstance(m, MetropolisBlock)]
    assert layers == list(flow.transform.transforms)  # the same layers, in their order
    blocks = [m for m in mods if isinstance(m, MetropolisBlock)]
    assert not any(p.requires_grad for b in blocks for p in b.parameters())
    assert all(float(b.step_size) == pytest.approx(0.25) for b in blocks)
    s = snf.sample(256, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(s.log_q).all()
    # the first block runs on the base samples: at λ = 0 it leaves N(0, I) invariant, so its
    # increment is u_0(y_K) - u_0(y_0) with u_0 = |y|²/2 + const (path log_q stays finite)
    y, delta = blocks[0](s.z, generator=torch.Generator().manual_seed(1))
    half = 0.5 * (y * y).sum(-1) - 0.5 * (s.z * s.z).sum(-1)
    assert torch.allclose(delta, half, atol=1e-12)
    trainable = _snf([0, 2, 4, 6])[2]
    assert any(p.requires_grad for m in trainable.modules() if isinstance(m, MetropolisBlock)
               for p in m.parameters())  # fmt: skip


@pytest.mark.parametrize(
    ("placement", "message"),
    [
        ([0, 2, 4], "4 non-decreasing"),
        ([2, 0, 4, 6], "non-decreasing"),
        ([0, 2, 4, 7], r"\[0, 6\]"),
        ("middle", "'interleave', 'end' or a list"),
    ],  # fmt: skip
)
def test_bad_positions_are_refused(placement, message):
    with pytest.raises(ValueError, match=message):
        _snf(placement)


def test_interleave_and_end_are_unchanged():
    _, _, snf = _snf("interleave")
    kinds = [isinstance(m, MetropolisBlock) for m in snf.transform.transforms]
    # 6 layers, 4 blocks: after layers ceil(6k/4) = 2, 3, 5, 6
    assert kinds == [False, False, True, False, True, False, False, True, False, True]
    _, _, snf = _snf("end")
    assert [isinstance(m, MetropolisBlock) for m in snf.transform.transforms][-4:] == [True] * 4
    assert math.isclose(float(snf.transform.transforms[-1].lam), 1.0)
