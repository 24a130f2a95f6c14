"""SNF losses, the `[flow.stochastic]` recipe table and path weights through a run."""

from __future__ import annotations

import pytest
import torch

from boltzflow.energies.double_well import DoubleWell2D
from boltzflow.flows.snf import add_stochastic_blocks, realnvp_flow
from boltzflow.flows.stochastic import LangevinBlock, MetropolisBlock, StochasticBlock
from boltzflow.runs.pipeline import build_flow
from boltzflow.runs.recipes import RecipeError, load_recipe
from boltzflow.training.losses import nll, reverse_kl, snf_nll, snf_reverse_kl


def _flows():
    target = DoubleWell2D()
    flow = realnvp_flow(target, num_layers=2, hidden=8, seed=0).double()
    return target, flow


def test_snf_losses_equal_the_plain_losses_for_a_deterministic_flow():
    target, flow = _flows()
    x = target.sample(64, generator=torch.Generator().manual_seed(0))
    plain, path = nll(flow, target, x).loss.detach(), snf_nll(flow, target, x).loss.detach()
    assert float(path) == float(plain)
    a = snf_reverse_kl(flow, target, 32, generator=torch.Generator().manual_seed(1))
    b = reverse_kl(flow, target, 32, generator=torch.Generator().manual_seed(1))
    assert float(a.loss.detach()) == float(b.loss.detach())
    assert a.n_evaluations == b.n_evaluations == 32


def test_snf_losses_count_block_evaluations_and_train_lambda_and_step_size():
    target, flow = _flows()
    snf = add_stochastic_blocks(flow, target, kind=["metropolis", "langevin"], count=2, steps=3)
    blocks = [m for m in snf.modules() if isinstance(m, StochasticBlock)]
    assert [type(b) for b in blocks] == [MetropolisBlock, LangevinBlock]
    assert [float(b.lam.detach()) for b in blocks] == pytest.approx([0.5, 1.0], abs=1e-6)
    g = torch.Generator().manual_seed(2)
    out = snf_reverse_kl(snf, target, 16, generator=g)
    # 16 end points + (3 + 1) per block for Metropolis and Langevin
    assert out.n_evaluations == 16 + 2 * 4 * 16
    out.loss.backward()
    assert float(blocks[0].lambda_logit.grad.abs()) > 0
    assert all(float(b.log_step_size.grad.abs()) > 0 for b in blocks)
    hot = snf_reverse_kl(snf, target.at_temperature(3.0), 16, generator=g)
    assert hot.n_evaluations == 16 + 2 * 4 * 16  # blocks count on their own target
    x = target.sample(16, generator=g).double()
    back = snf_nll(snf, target, x, generator=g)
    assert back.n_evaluations == 2 * 4 * 16 and torch.isfinite(back.loss)


def test_recipe_stochastic_table_builds_blocks_and_is_validated(tmp_path):
    recipe = load_recipe("double-well-snf", "smoke")
    flow = build_flow(recipe, DoubleWell2D(), seed=0)
    assert flow.is_stochastic
    assert sum(isinstance(m, StochasticBlock) for m in flow.modules()) == 3
    text = (recipe.path).read_text()
    for bad, message in (("placement", "unknown key 'placements'"), ("metropolis", "unknown kind")):
        broken = tmp_path / f"{bad}.toml"
        if bad == "placement":
            broken.write_text(text.replace('placement = "interleave"', 'placements = "x"'))
        else:
            broken.write_text(text.replace('kind = "metropolis"', 'kind = "gibbs"'))
        with pytest.raises(RecipeError, match=message):
            load_recipe(broken, "smoke")


def test_a_stochastic_run_checkpoint_rebuilds_with_its_blocks(tmp_path):
    from boltzflow.io import load_checkpoint, save_checkpoint

    recipe = load_recipe("double-well-snf", "smoke")
    target = DoubleWell2D()
    flow = build_flow(recipe, target, seed=0)
    kwargs = {k: v for k, v in recipe.flow.items() if k != "kind"}
    save_checkpoint(tmp_path, flow, {"builder": recipe.flow["kind"], "builder_kwargs": kwargs})
    with pytest.raises(ValueError, match="target="):
        load_checkpoint(tmp_path)
    loaded = load_checkpoint(tmp_path, target=target).flow
    assert loaded.is_stochastic
    saved, back = flow.state_dict(), loaded.state_dict()
    assert saved.keys() == back.keys()
    assert all(torch.equal(saved[k], back[k]) for k in saved)
