"""Flow checkpoints (state_dict + JSON) and trainer-state files, loaded with weights_only=True."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from torch import nn

from boltzflow.flows.base import Flow, Transform, TransformResult
from boltzflow.flows.distributions import StandardNormal
from boltzflow.io import (
    checkpoint_paths,
    load_checkpoint,
    load_trainer_state,
    save_checkpoint,
    save_trainer_state,
)

torch.set_num_threads(1)


class Scale(Transform):
    """``x = exp(s) ⊙ z``."""

    def __init__(self, dim: int, init: float = 0.0):
        super().__init__()
        self.log_scale = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, z):
        return TransformResult(z * self.log_scale.exp(), self.log_scale.sum().expand(len(z)))

    def inverse(self, x):
        return TransformResult(x * (-self.log_scale).exp(), -self.log_scale.sum().expand(len(x)))


def make_flow(event_shape, init: float = 0.0) -> Flow:
    """Builder with the ``FLOWS`` contract: ``build(target_or_event_shape, **params)``."""
    dim = event_shape[0] if isinstance(event_shape, (tuple, list)) else event_shape.dim
    return Flow(StandardNormal(dim), Scale(dim, init))


def trained_flow():
    flow = make_flow((3,), init=0.5).double()
    with torch.no_grad():
        flow.transform.log_scale.add_(torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64))
    return flow


META = {"builder": f"{__name__}:make_flow", "builder_kwargs": {"init": 0.5}, "seed": 7}


def test_round_trip_rebuilds_flow_from_metadata(tmp_path):
    flow = trained_flow()
    pt, js = save_checkpoint(tmp_path, flow, META)
    assert (pt.name, js.name) == ("flow.pt", "flow.json")
    meta = json.loads(js.read_text())
    assert meta["builder"] == META["builder"] and meta["seed"] == 7
    assert meta["dtype"] == "float64" and meta["event_shape"] == [3] and meta["n_parameters"] == 3

    loaded = load_checkpoint(tmp_path)
    assert loaded.metadata["builder_kwargs"] == {"init": 0.5}
    for (k, v), (k2, v2) in zip(
        flow.state_dict().items(), loaded.flow.state_dict().items(), strict=True
    ):
        assert k == k2 and v.dtype == v2.dtype and torch.equal(v, v2)
    x = torch.randn(5, 3, dtype=torch.float64)
    assert torch.equal(flow.log_prob(x), loaded.flow.log_prob(x))


def test_weights_file_is_plain_tensors(tmp_path):
    pt, _ = save_checkpoint(tmp_path / "model", trained_flow(), META)
    assert pt == tmp_path / "model.pt"
    state = torch.load(pt, weights_only=True)
    assert set(state) == {"transform.log_scale"}


def test_load_refuses_pickled_objects(tmp_path):
    """Negative control: weights_only=True must reject arbitrary pickled objects."""
    pt, _ = save_checkpoint(tmp_path, trained_flow(), META)
    torch.save({"transform.log_scale": torch.zeros(3), "payload": Flow}, pt)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(tmp_path)


def test_load_into_existing_flow_and_builder_override(tmp_path):
    flow = trained_flow()
    save_checkpoint(tmp_path / "ck.pt", flow, {})
    target = make_flow((3,)).double()
    out = load_checkpoint(tmp_path / "ck", flow=target)
    assert out.flow is target and torch.equal(target.transform.log_scale, flow.transform.log_scale)
    with pytest.raises(ValueError, match="builder"):
        load_checkpoint(tmp_path / "ck")
    rebuilt = load_checkpoint(tmp_path / "ck.json", builder=make_flow).flow
    assert torch.equal(rebuilt.transform.log_scale, flow.transform.log_scale)


def test_checkpoint_paths_and_bad_metadata(tmp_path):
    assert checkpoint_paths(tmp_path) == (tmp_path / "flow.pt", tmp_path / "flow.json")
    assert checkpoint_paths(tmp_path / "a.json") == (tmp_path / "a.pt", tmp_path / "a.json")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="not a boltzflow"):
        load_checkpoint(tmp_path / "x")
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "y", trained_flow(), {"bad": object()})


def test_trainer_state_round_trip(tmp_path):
    flow = trained_flow()
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    flow.log_prob(torch.randn(4, 3, dtype=torch.float64)).mean().backward()
    opt.step()
    g = torch.Generator().manual_seed(3)
    state = {
        "flow": flow.state_dict(),
        "optimizer": opt.state_dict(),
        "rng": g.get_state(),
        "history": [{"step": 1, "loss": 0.5, "ess_fraction": None}],
    }
    path = save_trainer_state(tmp_path / "sub" / "state.pt", state)
    back = load_trainer_state(path)
    assert back["history"] == state["history"]
    assert torch.equal(back["rng"], g.get_state())
    opt2 = torch.optim.Adam(make_flow((3,)).double().parameters(), lr=1.0)
    opt2.load_state_dict(back["optimizer"])
    assert opt2.param_groups[0]["lr"] == 1e-3
    torch.save({"flow": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="trainer state"):
        load_trainer_state(tmp_path / "other.pt")
