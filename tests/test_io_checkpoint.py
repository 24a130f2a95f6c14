"""Flow checkpoints (state_dict + JSON) and trainer-state files, loaded with weights_only=True."""

from __future__ import annotations

import json
import pickle
import sys

import pytest
import torch
from torch import nn

from boltzflow.flows.base import Flow, Transform, TransformResult
from boltzflow.flows.builders import spline_coupling_flow
from boltzflow.flows.distributions import StandardNormal
from boltzflow.io import (
    checkpoint_paths,
    load_checkpoint,
    load_trainer_state,
    save_checkpoint,
    save_trainer_state,
)
from boltzflow.runs.registry import FLOWS, registered, resolve

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


META = {"builder": "demo-scale", "builder_kwargs": {"init": 0.5}, "seed": 7}

PLUGIN = """
import torch
from torch import nn
from boltzflow.flows.base import Flow, Transform, TransformResult
from boltzflow.flows.distributions import StandardNormal


class Scale(Transform):
    def __init__(self, dim, init=0.0):
        super().__init__()
        self.log_scale = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, z):
        return TransformResult(z * self.log_scale.exp(), self.log_scale.sum().expand(len(z)))

    def inverse(self, x):
        return TransformResult(x * (-self.log_scale).exp(), -self.log_scale.sum().expand(len(x)))


def build(event_shape, init=0.0):
    return Flow(StandardNormal(event_shape[0]), Scale(event_shape[0], init))
"""


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """An installed plugin distribution registering the flow ``demo-scale`` by entry point.

    A real ``*.dist-info`` folder on ``sys.path``, read by :mod:`importlib.metadata` exactly
    as for a ``pip install``-ed package.
    """
    root = tmp_path / "site"
    info = root / "boltzflow_demo_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: boltzflow-demo-plugin\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text(
        "[boltzflow.flows]\ndemo-scale = boltzflow_demo_plugin:build\n"
    )
    (root / "boltzflow_demo_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(root))
    yield
    sys.modules.pop("boltzflow_demo_plugin", None)


def test_round_trip_rebuilds_flow_from_metadata(tmp_path, plugin):
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


def test_plugin_flows_are_registered_and_recipes_may_name_import_paths(plugin):
    assert registered(FLOWS)["demo-scale"] == "boltzflow_demo_plugin:build"
    assert callable(resolve(FLOWS, "demo-scale", "flow", allow_import=False))
    assert resolve(FLOWS, "spline-coupling") is spline_coupling_flow
    assert resolve(FLOWS, f"{__name__}:make_flow") is make_flow  # recipes are code
    with pytest.raises(KeyError, match="not registered"):
        resolve(FLOWS, f"{__name__}:make_flow", "flow", allow_import=False)


HOSTILE = [
    {"builder": "builtins:print", "event_shape": ["attacker", "chosen"]},
    {"builder": "subprocess:run", "event_shape": ["sh", "-c", "touch {marker}"]},
    {"builder": "boltzflow_payload:run", "event_shape": [3]},
    {"builder": "spline-coupling", "event_shape": ["sh", "-c", "true"]},
    {"builder": "spline-coupling", "event_shape": [2], "dtype": "load"},
    {"builder": "spline-coupling", "event_shape": [2], "builder_kwargs": ["x"]},
]


@pytest.mark.parametrize("hostile", HOSTILE, ids=lambda h: h["builder"])
def test_hostile_metadata_is_refused_before_anything_runs(hostile, tmp_path, monkeypatch, capfd):
    """A ``flow.json`` naming an importable callable must not import, call or print anything."""
    marker = tmp_path / "pwned"
    payload = tmp_path / "payload"
    payload.mkdir()
    (payload / "boltzflow_payload.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\ndef run(*a, **k):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(payload))
    save_checkpoint(tmp_path / "ck", trained_flow(), {})
    meta = json.loads((tmp_path / "ck.json").read_text())
    meta.update({k: v for k, v in hostile.items() if k != "event_shape"})
    meta["event_shape"] = [
        d.format(marker=marker) if isinstance(d, str) else d for d in hostile["event_shape"]
    ]
    (tmp_path / "ck.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="refusing|event_shape|dtype|builder_kwargs"):
        load_checkpoint(tmp_path / "ck")
    assert not marker.exists()
    assert "boltzflow_payload" not in sys.modules
    assert capfd.readouterr().out == ""


def test_weights_file_is_plain_tensors(tmp_path):
    pt, _ = save_checkpoint(tmp_path / "model", trained_flow(), META)
    assert pt == tmp_path / "model.pt"
    state = torch.load(pt, weights_only=True)
    assert set(state) == {"transform.log_scale"}


def test_load_refuses_pickled_objects(tmp_path, plugin):
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
