"""The targeted FEP loss: its value, its registration, training to the exact map, and the
sample-set base it reads u_A from. Gaussians as in ``tests/sampling/test_targeted_fep.py``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from boltzflow.energies import CallableEnergy
from boltzflow.flows.affine import ElementwiseAffine
from boltzflow.flows.base import Compose, Flow
from boltzflow.flows.sample_set import SampleSetBase, identity_flow
from boltzflow.runs.registry import LOSSES, resolve
from boltzflow.sampling.targeted_fep import fep_estimate, flow_fep_log_weights
from boltzflow.training import train
from boltzflow.training.targeted import targeted_fep, targeted_log_weights
from boltzflow.training.weighted import needs_data

D = 2
MU_B, SIGMA_B = torch.tensor([0.4, -0.2], dtype=torch.float64), 0.7
EXACT = -D * math.log(SIGMA_B)  # A = N(0, I): ΔF = -ln(Z_B / Z_A)


def U_A(x):
    return 0.5 * (x**2).sum(-1)


def U_B(x):
    return 0.5 * (((x - MU_B.to(x)) / SIGMA_B) ** 2).sum(-1)


TARGET_B = CallableEnergy(U_B, event_shape=D)


def _x(seed, n):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _affine_flow(x_train):
    base = SampleSetBase(x_train, energy=U_A)
    return Flow(base, Compose(ElementwiseAffine(D))).double()


def test_registered_as_a_data_loss():
    assert resolve(LOSSES, "targeted_fep", "loss") is targeted_fep
    assert needs_data(targeted_fep)


def test_loss_is_the_mean_of_minus_log_w_and_has_gradients():
    x = _x(0, 64)
    flow = _affine_flow(x)
    with torch.no_grad():
        flow.transform.transforms[0].loc.fill_(0.1)
        flow.transform.transforms[0].log_scale.fill_(-0.2)
    out = targeted_fep(flow, TARGET_B, x)
    y = 0.1 + math.exp(-0.2) * x
    expected = (U_B(y) - U_A(x) - D * (-0.2)).mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-12)
    assert out.n_evaluations == 64 and int(out.n_nonfinite) == 0
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in flow.parameters())
    assert flow.base.n_evaluated == 0  # u_A read from the set, not evaluated again


def test_nonfinite_target_energies_are_dropped_with_finite_gradients():
    x = _x(1, 32)
    flow = _affine_flow(x)
    bad = CallableEnergy(lambda y: torch.where(y[:, 0] > 1.0, math.nan, U_B(y)), event_shape=D)
    out = targeted_fep(flow, bad, x)
    out.loss.backward()
    n_bad = int((x[:, 0] > 1.0).sum())
    assert int(out.n_nonfinite) == n_bad > 0 and math.isfinite(out.loss.item())
    assert all(torch.isfinite(p.grad).all() for p in flow.parameters())


def test_identity_flow_with_a_equal_b_gives_loss_zero():
    x = _x(2, 50)
    flow = identity_flow(D).double()
    flow.base = SampleSetBase(x, energy=U_A)
    log_w, _ = targeted_log_weights(flow, CallableEnergy(U_A, event_shape=D), x)
    assert torch.equal(log_w, torch.zeros_like(log_w))


def test_training_reaches_the_exact_map_and_the_held_out_estimate_is_calibrated():
    torch.manual_seed(0)
    x_train = _x(3, 2000)
    flow = _affine_flow(x_train)
    stage = dict(loss="targeted_fep", data=x_train, steps=300, batch_size=256, lr=2e-2)
    result = train(flow, TARGET_B, [stage], seed=0, progress=False)
    layer = flow.transform.transforms[0]
    assert torch.allclose(layer.loc.detach(), MU_B, atol=0.05)
    assert torch.allclose(
        layer.log_scale.detach().exp(), torch.full((D,), SIGMA_B, dtype=torch.float64), atol=0.05
    )
    assert result.history[-1]["loss"] == pytest.approx(EXACT, abs=0.1)  # the bound, tight
    z, ess = [], []
    for r in range(20):  # held-out sets, independent of the training samples
        x = _x(100 + r, 1000)
        flow.base = SampleSetBase(x, energy=U_A).double()
        est = fep_estimate(flow_fep_log_weights(flow, TARGET_B, x), seed=r)
        z.append((est.delta_f.mean - EXACT) / est.delta_f.stderr)
        ess.append(est.ess_fraction)
    z = np.asarray(z)
    assert np.abs(z).max() < 4 and abs(z.mean()) < 3 / math.sqrt(len(z)) + 0.2
    assert min(ess) > 0.95


def test_sample_set_base_draws_each_row_once_and_evaluates_only_new_points():
    x = _x(4, 10)
    base = SampleSetBase(x, energy=U_A)
    drawn = base.sample(10, generator=torch.Generator().manual_seed(0))
    assert sorted(map(tuple, drawn.tolist())) == sorted(map(tuple, x.tolist()))
    assert base.sample(25, generator=torch.Generator().manual_seed(1)).shape == (25, D)
    assert torch.equal(base.log_prob(drawn), -U_A(drawn))
    assert base.n_evaluated == 0
    new = _x(5, 3)
    assert torch.allclose(base.log_prob(new), -U_A(new)) and base.n_evaluated == 3
    with pytest.raises(KeyError):
        SampleSetBase(x, energies=U_A(x)).log_prob(new)


def test_known_rows_are_read_but_never_drawn():
    held_out, train_x = _x(6, 8), _x(7, 12)
    base = SampleSetBase(held_out, energy=U_A, known=(train_x, U_A(train_x)))
    drawn = base.sample(40, generator=torch.Generator().manual_seed(0))
    rows = {tuple(r) for r in held_out.tolist()}
    assert all(tuple(r) in rows for r in drawn.tolist())
    assert torch.equal(base.log_prob(train_x), -U_A(train_x)) and base.n_evaluated == 0
    with pytest.raises(ValueError, match="do not match"):
        SampleSetBase(held_out, energy=U_A, known=(train_x, U_A(train_x)[:3]))
