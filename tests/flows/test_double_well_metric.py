"""The double-well free-energy-profile errors of `benchmarks/stochastic.py` (Wu, Köhler & Noé
2020, Table 1): the authors' estimator on the fixed interval (-2.25, 2.25) judges the weights,
not the sample range."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from boltzflow.energies.double_well import DoubleWell2D
from boltzflow.rng import make_generator

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
dwp = pytest.importorskip("_double_well_profile")

SAMPLES, REPEATS = 20_000, 8


def _repeats(target, tilt=0.0, straggler=None):
    """Exact draws with log-weights $-\\text{tilt}\\cdot x_1$ (0: exact weights), optionally
    one extra zero-weight sample at $x_1 =$ `straggler[r]` in repeat `r`."""
    g = make_generator(3)
    rows = []
    for r in range(REPEATS):
        x1 = target.sample(SAMPLES, generator=g)[:, 0].double().numpy()
        lw = -tilt * x1
        if straggler is not None:
            x1, lw = np.append(x1, straggler[r]), np.append(lw, -np.inf)
        rows.append(dwp.histograms(x1, lw))
    return dwp.metrics(target, rows, SAMPLES)


def test_a_zero_weight_straggler_moves_the_notebook_metric_but_not_the_interval_one():
    """One weightless sample per repeat, drawn from N(0, 3²): the fixed-interval estimator and
    the fixed bins are unchanged to rounding, the range-following (notebook) one jumps (its
    bins move from repeat to repeat)."""
    target = DoubleWell2D()
    far_x = np.random.default_rng(0).normal(0.0, 3.0, REPEATS)
    clean, far = _repeats(target), _repeats(target, straggler=far_x)
    for key in ("interval", "fixed_bins"):
        assert far[key]["error"] == pytest.approx(clean[key]["error"], rel=1e-9)
    assert far["notebook"]["error"] > 3 * clean["notebook"]["error"]


def test_wrong_weights_raise_the_interval_error_above_the_exact_floor():
    """Negative control: exact samples with weights tilted by $e^{-0.5 x_1}$ (a profile off by
    $0.5 x_1$ kT, up to 1.1 kT at the interval's ends) score far above exact weights."""
    target = DoubleWell2D()
    floor, tilted = _repeats(target)["interval"], _repeats(target, tilt=0.5)["interval"]
    assert np.isfinite(floor["error"]) and floor["bins"] >= 20
    assert tilted["bias"] > 0.3 > floor["bias"]
    assert tilted["error"] > floor["error"] + 0.2


def test_no_bin_to_judge_is_nan_not_a_number_to_average():
    target = DoubleWell2D()
    centres = np.linspace(5.0, 9.0, 30)  # every centre outside (-2.25, 2.25)
    out = dwp.authors_error(target, centres, np.zeros((3, 30)))
    assert out["bins"] == 0 and np.isnan(out["error"])
