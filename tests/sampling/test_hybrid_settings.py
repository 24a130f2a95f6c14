"""The hybrid sampler's settings records and the flat keys recipes use."""

import inspect

import pytest

from boltzflow.sampling.hybrid import (
    FLAT_KEYS,
    Evidence,
    GlobalMoves,
    LocalMoves,
    Schedule,
    hybrid,
    hybrid_sampler,
    hybrid_settings,
)


def test_flat_keys_land_in_their_records():
    s = hybrid_settings(
        local="hmc", metric="dense", local_steps=30, chains=4, repeats=[1, 0], global_steps=0,
        lr=3e-4, evidence_samples=500, evidence_train_steps=50,
    )  # fmt: skip
    assert s["local"] == LocalMoves(kind="hmc", metric="dense", steps=30)
    assert s["schedule"] == Schedule(chains=4, repeats=(1, 0))
    assert s["global_moves"] == GlobalMoves(steps=0, lr=3e-4)
    assert s["evidence"] == Evidence(samples=500, train_steps=50)
    assert set(s) == set(inspect.signature(hybrid).parameters) - {"flow", "target"} - {
        "n_samples",
        "seed",
    }


def test_unknown_flat_key_is_named():
    with pytest.raises(TypeError, match="'local_step'"):
        hybrid_settings(local_step=3)


def test_recipe_entry_point_lists_every_flat_key_with_its_default():
    params = inspect.signature(hybrid_sampler).parameters
    assert set(FLAT_KEYS) <= set(params)
    assert params["local"].default == "mala" and params["warmup_rounds"].default == 8
    assert params["evidence_samples"].default == 0


@pytest.mark.parametrize(
    "bad", [dict(local="nuts"), dict(metric="full"), dict(warmup_rounds=0), dict(local_steps=0)]
)
def test_invalid_values_are_rejected(bad):
    with pytest.raises(ValueError):
        hybrid_settings(**bad)
