"""A recipe that runs end to end in a few seconds, for tests of the run machinery."""

import pytest

TINY_RECIPE = """
[system]
name = "tiny-double-well"
description = "a few seconds of the double well"

[target]
kind = "double-well"

[flow]
kind = "spline-coupling"
num_layers = 2
hidden = 8

[[training.stages]]
loss = "forward_kl_is"
steps = 40
batch_size = 128
lr = 1e-3

[sampling]
method = "importance"
n_samples = 500
"""


@pytest.fixture
def tiny_recipe(tmp_path):
    """Folder holding the tiny double-well ``system.toml``."""
    folder = tmp_path / "tiny-double-well"
    folder.mkdir()
    (folder / "system.toml").write_text(TINY_RECIPE)
    return folder
