"""Targeted and plain FEP estimates against the exact ΔF of two Gaussians, with mutants.

State A is N(MU_A, SIGMA_A² I), state B is N(MU_B, SIGMA_B² I), both as unnormalized reduced
energies u = |x - μ|² / (2σ²), so ΔF_AB = -ln(Z_B / Z_A) = -D ln(SIGMA_B / SIGMA_A) exactly.
Each calibration repeats the estimate on independent sample sets and checks the z-scores
(estimate minus exact over the estimated error) against a standard normal.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from boltzflow.energies import CallableEnergy
from boltzflow.flows.affine import ElementwiseAffine
from boltzflow.flows.base import Compose, Flow
from boltzflow.flows.sample_set import SampleSetBase, identity_flow
from boltzflow.sampling.targeted_fep import (
    fep_estimate,
    fep_log_weights,
    flow_fep_log_weights,
    targeted_and_plain_fep,
)

D = 2
MU_A, SIGMA_A = torch.tensor([0.0, 0.0], dtype=torch.float64), 1.0
MU_B, SIGMA_B = torch.tensor([0.4, -0.2], dtype=torch.float64), 0.7
EXACT = -D * math.log(SIGMA_B / SIGMA_A)
REPEATS, N = 40, 1000


def _u(mu, sigma):
    return lambda x: 0.5 * (((x - mu.to(x)) / sigma) ** 2).sum(-1)


U_A, U_B = _u(MU_A, SIGMA_A), _u(MU_B, SIGMA_B)
TARGET_B = CallableEnergy(U_B, event_shape=D)


def _samples_a(seed: int, n: int = N) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return MU_A + SIGMA_A * torch.randn(n, D, generator=g, dtype=torch.float64)


def _with_base(flow: Flow, x_a: torch.Tensor) -> Flow:
    flow.base = SampleSetBase(x_a, energy=U_A)
    return flow.double()


def _affine(scale: float, loc) -> Flow:
    layer = ElementwiseAffine(D).double()
    with torch.no_grad():  # set in float64 (the constructor rounds through the default dtype)
        layer.loc.copy_(torch.as_tensor(loc, dtype=torch.float64))
        layer.log_scale.fill_(math.log(scale))
    return Flow(SampleSetBase(_samples_a(0, 4), energy=U_A), Compose(layer)).double()


def _z_scores(make_flow, mutate=None) -> np.ndarray:
    z = []
    for r in range(REPEATS):
        x = _samples_a(100 + r)
        flow = _with_base(make_flow(), x)
        log_w = flow_fep_log_weights(flow, TARGET_B, x)
        if mutate is not None:
            log_w = mutate(flow, x, log_w)
        est = fep_estimate(log_w, n_bootstrap=200, seed=r).delta_f
        z.append((est.mean - EXACT) / est.stderr)
    return np.asarray(z)


def _calibrated(z: np.ndarray) -> bool:
    return (
        np.isfinite(z).all()
        and abs(z.mean()) < 3.0 / math.sqrt(len(z)) + 0.15
        and 0.6 < z.std() < 1.5
        and np.abs(z).max() < 4.0
    )


def _imperfect():
    return _affine(0.8, [0.3, -0.1])


def test_a_equals_b_with_identity_every_weight_is_one():
    x = _samples_a(0, 500)
    flow = _with_base(identity_flow(D), x)
    target_a = CallableEnergy(U_A, event_shape=D)
    log_w = flow_fep_log_weights(flow, target_a, x)
    assert torch.equal(log_w, torch.zeros_like(log_w))
    res = fep_estimate(log_w)
    assert res.delta_f.mean == 0.0 and res.delta_f.stderr == 0.0
    assert res.ess == pytest.approx(500) and res.ess_fraction == pytest.approx(1.0)
    assert res.pareto_k == 0.0 and res.n_nonfinite == 0


def test_exact_affine_map_gives_equal_weights_and_the_exact_delta_f():
    s = SIGMA_B / SIGMA_A
    flow = _affine(s, MU_B - s * MU_A)
    x = _samples_a(1)
    flow = _with_base(flow, x)
    res = targeted_and_plain_fep(flow, TARGET_B, x, n_bootstrap=50)
    assert res["flow"].delta_f.mean == pytest.approx(EXACT, abs=1e-12)
    assert res["flow"].ess_fraction == pytest.approx(1.0)
    assert res["plain"].ess_fraction < 0.9  # plain FEP on the same samples is worse


@pytest.mark.parametrize(
    "make_flow", [lambda: identity_flow(D), _imperfect], ids=["plain", "affine"]
)
def test_fep_estimate_is_calibrated(make_flow):
    assert _calibrated(_z_scores(make_flow))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda flow, x, lw: lw - flow.forward(x)[1],  # the log-det dropped
        lambda flow, x, lw: lw + flow.base.log_prob(x),  # the u_A term dropped
        lambda flow, x, lw: lw - 2 * flow.forward(x)[1],  # the log-det with the wrong sign
    ],
    ids=["no-logdet", "no-u_a", "logdet-sign"],
)
def test_negative_control_mutated_weights_fail_the_calibration(mutate):
    z = _z_scores(_imperfect, mutate)
    assert not _calibrated(z)
    assert abs(z.mean()) > 5


def test_plain_fep_helper_matches_the_identity_flow_and_nonfinite_weights_count():
    x = _samples_a(2, 200)
    flow = _with_base(identity_flow(D), x)
    lw = flow_fep_log_weights(flow, TARGET_B, x)
    assert torch.allclose(lw, fep_log_weights(torch.as_tensor(U_A(x)), U_B(x)))
    u_b = U_B(x).clone()
    u_b[:3] = math.nan
    res = fep_estimate(fep_log_weights(U_A(x), u_b))
    assert res.n_nonfinite == 3 and math.isfinite(res.delta_f.mean)


def test_per_molecule_divides_mean_and_error():
    res = fep_estimate(fep_log_weights(U_A(_samples_a(3)), U_B(_samples_a(3))))
    per = res.per_molecule(4)
    assert per.mean == pytest.approx(res.delta_f.mean / 4)
    assert per.stderr == pytest.approx(res.delta_f.stderr / 4)
    d = res.as_dict(n_molecules=4)
    assert d["per_molecule"]["mean"] == pytest.approx(per.mean) and d["unit"] == "kT"
