"""A run leaves the caller's process as it found it."""

import torch

from boltzflow.runs.pipeline import run


def test_run_leaves_the_global_rng_and_default_dtype_alone(tiny_recipe, tmp_path):
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    first = run(str(tiny_recipe), budget="smoke", seed=0, out=tmp_path / "a")
    assert torch.equal(torch.get_rng_state(), state)  # the caller's stream is untouched
    assert torch.get_default_dtype() == torch.float32
    torch.manual_seed(99)  # a different caller state gives the same seeded run
    again = run(str(tiny_recipe), budget="smoke", seed=0, out=tmp_path / "b")
    assert again["reweighting"]["log_z"] == first["reweighting"]["log_z"]
