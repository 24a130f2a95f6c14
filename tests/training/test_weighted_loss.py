"""A weighted sum of losses in one stage: from `train(...)`, from a recipe, tempered."""

from __future__ import annotations

import pytest
import torch

from boltzflow.energies.double_well import DoubleWell2D
from boltzflow.flows.snf import realnvp_flow
from boltzflow.runs.pipeline import _tempered_loss
from boltzflow.runs.recipes import RecipeError, load_recipe
from boltzflow.training import train
from boltzflow.training.losses import mixed_kl, nll, reverse_kl
from boltzflow.training.stages import Stage
from boltzflow.training.weighted import WeightedLoss, loss_label, needs_data


def _setup():
    target = DoubleWell2D()
    flow = realnvp_flow(target, num_layers=2, hidden=8, seed=0).double()
    x = target.sample(64, generator=torch.Generator().manual_seed(0)).double()
    return target, flow, x


def _grads(flow):
    return torch.cat([p.grad.flatten() for p in flow.parameters()])


@pytest.mark.parametrize("w", [0.3, 0.8])
def test_weighted_sum_equals_mixed_kl_value_and_gradient(w):
    """`{nll: w, reverse_kl: 1-w}` is `mixed_kl(weight_forward=w)`: same value, same gradient."""
    target, flow, x = _setup()
    ref = mixed_kl(flow, target, x, weight_forward=w, generator=torch.Generator().manual_seed(1))
    ref.loss.backward()
    g_ref = _grads(flow)
    flow.zero_grad()
    loss = WeightedLoss({"nll": w, "reverse_kl": 1 - w})
    out = loss(flow, target, x, generator=torch.Generator().manual_seed(1))
    out.loss.backward()
    assert float(out.loss.detach()) == pytest.approx(float(ref.loss.detach()), rel=1e-12)
    assert torch.allclose(_grads(flow), g_ref, rtol=1e-10, atol=1e-12)
    assert out.n_evaluations == ref.n_evaluations == 64
    # the weights matter: swapping them changes the value (this check can fail)
    swapped = WeightedLoss({"nll": 1 - w, "reverse_kl": w})
    other = swapped(flow, target, x, generator=torch.Generator().manual_seed(1)).loss
    fwd = float(nll(flow, target, x).loss.detach())
    rev = reverse_kl(flow, target, 64, generator=torch.Generator().manual_seed(1)).loss.item()
    assert float(other.detach()) == pytest.approx((1 - w) * fwd + w * rev, rel=1e-12)
    assert abs(float(other.detach()) - float(out.loss.detach())) > 1e-3


def test_energy_only_sum_takes_a_batch_size_and_filters_keywords():
    target, flow, _ = _setup()
    loss = WeightedLoss({"reverse_kl": 2.0, "snf_reverse_kl": 1.0})
    assert not loss.needs_data
    out = loss(flow, target, 32, generator=torch.Generator().manual_seed(3), energy_cap=50.0)
    assert out.n_evaluations == 64 and torch.isfinite(out.loss)
    with pytest.raises(ValueError, match=">= 0"):
        WeightedLoss({"nll": -1.0})
    with pytest.raises(ValueError, match="positive"):
        WeightedLoss({"nll": 0.0})


def test_train_accepts_a_weight_table_and_needs_data_for_it():
    target, flow, x = _setup()
    stage = {"loss": {"snf_nll": 0.5, "snf_reverse_kl": 0.5}, "data": x, "steps": 3,
             "batch_size": 16}  # fmt: skip
    result = train(flow, target, [stage], seed=0, progress=False)
    assert result.steps == 3 and result.energy_evaluations == 3 * 16
    assert Stage.from_dict(stage).fingerprint()["loss"] == "0.5*snf_nll+0.5*snf_reverse_kl"
    with pytest.raises(ValueError, match="needs data"):
        train(flow, target, [{**stage, "data": None}], seed=0, progress=False)


def test_recipe_weight_table_is_validated_and_tempered(tmp_path):
    text = load_recipe("double-well-snf", "smoke").path.read_text()
    table = "loss = { snf_reverse_kl = 0.5, reverse_kl = 0.5 }"
    good = text.replace('loss = "snf_reverse_kl"\ntemperature_scale', f"{table}\ntemperature_scale")
    assert good != text
    path = tmp_path / "good.toml"
    path.write_text(good)
    recipe = load_recipe(path, "smoke")
    assert recipe.stages[0]["loss"] == {"snf_reverse_kl": 0.5, "reverse_kl": 0.5}
    hot = _tempered_loss(recipe.stages[0]["loss"], DoubleWell2D().at_temperature(3.0))
    assert hot.__name__ == "0.5*snf_reverse_kl+0.5*reverse_kl@T=3" and not needs_data(hot)
    assert needs_data(_tempered_loss({"snf_nll": 1.0}, DoubleWell2D()))
    for bad, message in (("no_such_loss = 1.0", "unknown loss"), ("reverse_kl = -1", ">= 0")):
        broken = tmp_path / "bad.toml"
        broken.write_text(good.replace("reverse_kl = 0.5 }", f"{bad} }}"))
        with pytest.raises(RecipeError, match=message):
            load_recipe(broken, "smoke")
    assert loss_label({"nll": 1, "reverse_kl": 0.25}) == "1*nll+0.25*reverse_kl"
