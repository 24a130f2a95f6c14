"""Structured internal-coordinate flow: masks, invertibility, log-det vs autograd (float64)."""

from __future__ import annotations

import math

import torch

from boltzflow.molecular.flows import internal_coordinate_flow, structured_masks


class _Event:
    def __init__(self, periodic):
        self.periodic_mask = torch.as_tensor(periodic, dtype=torch.bool)
        self.event_shape = torch.Size([len(periodic)])


PERIODIC = [1, 0, 0, 1, 0, 1, 0, 0, 0, 1]


def test_masks_separate_torsions_from_stiff_coordinates():
    per = torch.tensor(PERIODIC, dtype=torch.bool)
    masks = structured_masks(per, 2, torch.Generator().manual_seed(0))
    assert len(masks) == 8
    for b in range(2):
        block = masks[4 * b : 4 * b + 4]
        assert all(not (m & per).any() or not (m & ~per).any() for m in block)
        assert not block[0][~per].any() and not block[2][per].any()
        assert (sum(m.int() for m in block) == 1).all()  # every feature once per block


def test_round_trip_and_log_det_against_autograd(float64):
    flow = internal_coordinate_flow(_Event(PERIODIC), num_blocks=2, hidden=16, seed=0)
    z = flow.base.sample(4, generator=torch.Generator().manual_seed(1))
    x, ladj = flow.forward(z)
    z2, ladj_inv = flow.inverse(x)
    diff = torch.remainder(z2 - z + math.pi, 2 * math.pi) - math.pi
    assert diff.abs().max() < 1e-8
    torch.testing.assert_close(ladj_inv, -ladj)
    for n in range(2):
        jac = torch.autograd.functional.jacobian(lambda v: flow.forward(v[None]).y[0], z[n])
        torch.testing.assert_close(torch.linalg.slogdet(jac)[1], ladj[n])


def test_every_parameter_gets_a_gradient_and_seed_is_deterministic():
    a = internal_coordinate_flow(_Event(PERIODIC), num_blocks=1, hidden=8, seed=3)
    b = internal_coordinate_flow(_Event(PERIODIC), num_blocks=1, hidden=8, seed=3)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)
    s = a.sample(16, generator=torch.Generator().manual_seed(0))
    (s.x.square().sum() + s.log_q.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in a.parameters())
