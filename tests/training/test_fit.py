"""The flow-fitting loop of the samplers reports what it drops."""

import torch

from boltzflow.flows.builders import spline_coupling_flow
from boltzflow.training.fit import fit_nll


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
