"""Force matching: the formula against closed forms, the oracle (exact flow: zero loss and zero
gradient; perturbed: non-zero), batch layouts, non-finite handling, mixing with NLL and reverse
KL, and the registry/trainer integration."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from boltzflow.dynamics import FlowPotential
from boltzflow.flows.smooth_coupling import smooth_coupling_flow
from boltzflow.runs.registry import LOSSES, resolve
from boltzflow.training import train
from boltzflow.training.force_matching import (
    flow_force,
    force_matching,
    force_rmse,
    nll_force_matching,
    stack_positions_forces,
)
from boltzflow.training.losses import nll, reverse_kl

from .helpers import COV, MEAN, affine_flow, exact_flow, gaussian_target

D = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _grads(flow):
    return torch.cat([p.grad.reshape(-1) for p in flow.parameters() if p.grad is not None])


def test_loss_is_the_mean_squared_force_error_per_coordinate():
    flow, target = affine_flow(), gaussian_target()  # q = N(0, I), p = N(MEAN, COV)
    x = target.sample(64, generator=_gen())
    expected_fq = -x  # ∇ log N(0, I)
    expected_f = -(x - MEAN) @ torch.linalg.inv(COV)  # Σ symmetric
    torch.testing.assert_close(flow_force(flow, x)[0], expected_fq)
    out = force_matching(flow, target, x)
    torch.testing.assert_close(out.loss, ((expected_fq - expected_f) ** 2).mean())
    assert out.n_evaluations == 64 and out.n_nonfinite == 0
    assert force_rmse(flow, x, expected_f) == pytest.approx(out.loss.item() ** 0.5, rel=1e-12)


def test_exact_affine_flow_has_zero_loss_and_zero_gradient():
    flow, target = exact_flow(), gaussian_target()
    x = target.sample(128, generator=_gen(1))
    out = force_matching(flow, target, x)
    out.loss.backward()
    assert out.loss.item() < 1e-24 and _grads(flow).abs().max() < 1e-12


@pytest.mark.parametrize("fast", ["density", "sampling"])
def test_oracle_smooth_flow_zero_when_exact_nonzero_when_perturbed(fast):
    flow = smooth_coupling_flow(
        3,
        num_layers=2,
        hidden=8,
        num_components=3,
        periodic=[True, False, False],
        fast=fast,
        seed=0,
    ).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=_gen(2), dtype=D))
    target = FlowPotential(copy.deepcopy(flow))  # p = q exactly, by construction
    x = flow.sample(32, generator=_gen(3)).x.detach()
    out = force_matching(flow, target, x)
    out.loss.backward()
    assert out.loss.item() < 1e-20 and _grads(flow).abs().max() < 1e-9
    with torch.no_grad():
        next(flow.parameters()).add_(0.05)
    flow.zero_grad()
    out = force_matching(flow, target, x)
    out.loss.backward()
    assert out.loss.item() > 1e-6 and _grads(flow).abs().max() > 1e-5


def test_stored_forces_layouts_agree_with_target_forces():
    flow, target = affine_flow(), gaussian_target()
    x = target.sample(16, generator=_gen(4))
    f = target.force(x)
    from_target = force_matching(flow, target, x)
    stacked = force_matching(flow, None, stack_positions_forces(x, f))
    pair = force_matching(flow, None, (x, f))
    for out in (stacked, pair):
        assert out.n_evaluations == 0
        torch.testing.assert_close(out.loss, from_target.loss, rtol=0, atol=0)
    wrong = force_matching(flow, None, stack_positions_forces(x, -f))
    assert wrong.loss.item() > from_target.loss.item() + 1.0
    with pytest.raises(ValueError, match="stored forces"):
        force_matching(flow, target, x, forces="data")
    with pytest.raises(ValueError, match="needs a target"):
        force_matching(flow, None, x)


def test_flow_samples_batch_uses_target_forces():
    flow, target = exact_flow(), gaussian_target()
    out = force_matching(flow, target, 32, generator=_gen(5))
    assert out.n_evaluations == 32 and out.loss.item() < 1e-24
    out = force_matching(affine_flow(), target, 32, generator=_gen(5))
    assert out.loss.item() > 0.1


def test_nonfinite_forces_are_dropped_counted_and_keep_gradients_finite():
    flow, target = affine_flow(), gaussian_target()
    x = target.sample(8, generator=_gen(6))
    f = target.force(x)
    f[2, 0], f[5, 1] = math.nan, math.inf
    out = force_matching(flow, None, (x, f))
    out.loss.backward()
    keep = torch.ones(8, dtype=torch.bool)
    keep[[2, 5]] = False
    clean = force_matching(flow, None, (x[keep], f[keep]))
    assert out.n_nonfinite == 2
    torch.testing.assert_close(out.loss, clean.loss)
    assert torch.isfinite(_grads(flow)).all()


def test_nll_force_matching_is_the_weighted_sum_of_its_terms():
    flow, target = affine_flow(), gaussian_target()
    with torch.no_grad():
        flow.transform.shift.add_(0.3)
    x = target.sample(64, generator=_gen(7))
    fm, nl = force_matching(flow, target, x), nll(flow, target, x)
    out = nll_force_matching(flow, target, x, weight_force=0.3, weight_nll=2.0)
    torch.testing.assert_close(out.loss, 0.3 * fm.loss + 2.0 * nl.loss)
    assert out.n_evaluations == 64
    stored = nll_force_matching(flow, None, stack_positions_forces(x, target.force(x)), 0.3, 2.0)
    torch.testing.assert_close(stored.loss, out.loss)
    assert stored.n_evaluations == 0
    rev = reverse_kl(flow, target, 16, generator=_gen(8))
    mixed = nll_force_matching(
        flow, target, x, 0.3, 2.0, weight_reverse_kl=0.5, batch_size=16, generator=_gen(8)
    )
    torch.testing.assert_close(mixed.loss, out.loss + 0.5 * rev.loss)
    with pytest.raises(ValueError, match="needs data"):
        nll_force_matching(flow, target, 16)
    with pytest.raises(ValueError, match="non-negative"):
        nll_force_matching(flow, target, x, weight_force=-1.0)


def test_registered_and_trainable_from_stored_forces():
    assert resolve(LOSSES, "force_matching") is force_matching
    assert resolve(LOSSES, "nll_force_matching") is nll_force_matching
    target = gaussian_target()
    x = target.sample(512, generator=_gen(9))
    data = stack_positions_forces(x, target.force(x))
    flow = affine_flow()
    before = force_rmse(flow, x, data[:, 1])
    stage = {"loss": "force_matching", "data": data, "steps": 150, "batch_size": 128, "lr": 0.05}
    result = train(flow, target, [stage], seed=0, eval_every=None, progress=False)
    assert result.energy_evaluations == 0
    assert force_rmse(flow, x, data[:, 1]) < 0.1 * before
