"""The flow-fitting loop of the samplers: what it drops, early stopping, identity starts."""

import math

import torch

from boltzflow.flows.builders import spline_coupling_flow
from boltzflow.training.fit import Validation, fit_nll, weighted_nll


def test_non_finite_data_points_are_counted_and_reported(caplog, float64):
    flow = spline_coupling_flow((2,), num_layers=2, hidden=8, seed=0)
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    bad = data.clone()
    bad[::4] = torch.nan  # a quarter of the points have no density
    g = torch.Generator().manual_seed(1)
    with caplog.at_level("WARNING", logger="boltzflow.training.fit"):
        losses = fit_nll(flow, bad, 20, 32, 1e-3, g)
    (record,) = caplog.records
    msg = record.getMessage()
    assert record.levelname == "WARNING" and "of 640 data points" in msg
    dropped = int(msg.split("dropped ")[1].split(" ")[0])
    assert 100 < dropped < 220  # about a quarter of 640 draws
    assert len(losses) == 20 and all(torch.isfinite(torch.tensor(losses)))
    caplog.clear()  # negative control: clean data, nothing to report
    with caplog.at_level("WARNING", logger="boltzflow.training.fit"):
        fit_nll(flow, data, 20, 32, 1e-3, g)
    assert not caplog.records


def _overfit(validation: bool) -> tuple[float, float]:
    """Fits an identity-initialised spline flow to 256 draws of N(0, I_12) for 300 steps;
    returns (held-out NLL at the start, at the end) on 4,096 fresh draws."""
    gen = torch.Generator().manual_seed(0)
    train, val, test = (
        torch.randn(n, 12, generator=gen, dtype=torch.float64) for n in (256, 128, 4096)
    )
    flow = spline_coupling_flow(12, num_layers=4, hidden=64, seed=0, identity_init=True).double()
    start = weighted_nll(flow, test)
    check = Validation(val, check_every=5) if validation else None
    fit_nll(flow, train, 300, 128, 3e-3, torch.Generator().manual_seed(1), validation=check)
    return start, weighted_nll(flow, test)


def test_early_stopping_keeps_the_held_out_nll_near_its_best():
    """Without validation the flow overfits (control: held-out NLL up by > 1 nat); with it the
    fit ends near the identity start, which is exact here (held-out NLL within 0.1)."""
    start, end = _overfit(validation=False)
    assert end > start + 1.0
    start, end = _overfit(validation=True)
    assert end < start + 0.1


def test_identity_init_is_the_identity():
    x = torch.randn(64, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 3
    flow = spline_coupling_flow(7, num_layers=3, hidden=16, seed=0, identity_init=True).double()
    exact = -0.5 * (x**2).sum(1) - 3.5 * math.log(2 * math.pi)
    assert torch.allclose(flow.log_prob(x), exact, atol=1e-6)
    # control: nflows' default initialisation is not the identity
    flow = spline_coupling_flow(7, num_layers=3, hidden=16, seed=0).double()
    assert (flow.log_prob(x) - exact).abs().max() > 0.01
