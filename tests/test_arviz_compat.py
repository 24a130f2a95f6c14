"""arviz_compat against exact and independent answers; the same checks hold on arviz 0.x and 1.x."""

import logging
import math
import warnings

import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

from boltzflow import arviz_compat
from boltzflow.sampling.reweighting import pareto_k, reweight

N = 100_000


def pareto_log_weights(k: float, n: int = N, seed: int = 0) -> np.ndarray:
    """log w for w ~ Pareto(α = 1/k): P(w > t) = t^(-α), t ≥ 1, so log w = Exp(1) / α."""
    return np.random.default_rng(seed).exponential(size=n) * k


def gpd_mle_shape(log_w: np.ndarray) -> tuple[float, int]:
    """Independent k̂: maximum-likelihood GPD fit (scipy) to the exceedances of the M = 3√n
    largest weights over the next one, as PSIS selects its tail; returns ``(k̂, M)``."""
    m = int(3 * math.sqrt(log_w.size))
    w = np.sort(np.exp(log_w - log_w.max()))
    shape, _, _ = stats.genpareto.fit(w[-m:] - w[-m - 1], floc=0)
    return float(shape), m


@pytest.mark.parametrize("k_true", [0.3, 0.5, 1.0])
def test_psis_k_of_pareto_weights(k_true):
    lw = pareto_log_weights(k_true)
    smoothed, k = arviz_compat.psis(lw)
    k_mle, m = gpd_mle_shape(lw)
    # the same tail fitted by plain maximum likelihood (PSIS adds a weak prior at 0.5)
    assert abs(k - k_mle) < 0.02, (k, k_mle)
    # and the known shape, within 4 asymptotic standard errors (1 + k) / sqrt(M) of the MLE
    assert abs(k - k_true) < 4 * (1 + k_true) / math.sqrt(m), (k, k_true)
    assert pareto_k(lw) == pytest.approx(k, abs=1e-12)
    # smoothed log-weights: normalized, in the same order, the body only shifted
    assert logsumexp(smoothed) == pytest.approx(0.0, abs=1e-10)
    order = np.argsort(lw, kind="stable")
    assert np.all(np.diff(smoothed[order]) >= -1e-12)
    body = order[: N - 2 * m]
    shift = lw[body] - smoothed[body]
    np.testing.assert_allclose(shift, shift[0], atol=1e-9)
    # the smoothed tail is never above the largest raw weight
    assert smoothed.max() <= lw.max() - shift[0] + 1e-9


def test_psis_zero_weights_and_degenerate_tail():
    lw = pareto_log_weights(0.5, n=4000)
    lw[:100] = -np.inf  # zero weights stay zero
    smoothed, k = arviz_compat.psis(lw)
    assert np.all(np.isneginf(smoothed[:100])) and np.isfinite(smoothed[100:]).all()
    assert 0.2 < k < 0.8
    # the whole tail at one value: no Pareto fit exists, k̂ = inf on both arviz lines
    flat = np.concatenate([np.zeros(500), -np.random.default_rng(1).random(9500)])
    smoothed, k = arviz_compat.psis(flat)
    assert k == math.inf and logsumexp(smoothed) == pytest.approx(0.0, abs=1e-10)


def test_reweight_logs_large_k_and_leaks_no_warning(caplog):
    lw = pareto_log_weights(1.0, n=5000)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        res = reweight(lw, n_bootstrap=50)
    assert res.pareto_k > 0.7
    assert any("k-hat" in r.getMessage() for r in caplog.records)
    assert [str(w.message) for w in caught] == []


def test_ess_rhat_mcse_of_independent_chains():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 2000, 3)) * np.array([1.0, 2.0, 0.1])
    n = 4 * 2000
    for method in ("bulk", "tail", "mean"):
        ess = arviz_compat.ess(a, method)
        assert ess.shape == (3,)
        assert np.all(np.abs(ess / n - 1) < 0.15), (method, ess)
    rhat = arviz_compat.rhat(a)
    assert rhat.shape == (3,) and np.all(np.abs(rhat - 1) < 0.01)
    sd = a.reshape(n, 3).std(0, ddof=1)
    np.testing.assert_allclose(
        arviz_compat.mcse(a), sd / np.sqrt(arviz_compat.ess(a, "mean")), rtol=1e-10
    )
    # a chain stuck elsewhere is flagged
    a[0] += 3.0
    assert np.all(arviz_compat.rhat(a) > 1.1)


def test_samples_file_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 30, 3))
    stats_in = {
        "log_weight": rng.standard_normal((2, 30)),
        "energy": rng.standard_normal((2, 30)),
        "accepted": rng.random((2, 30)) < 0.5,
    }
    data = arviz_compat.from_dict({"x": x, "m": x[..., 0]}, stats_in, attrs={"system": "t"})
    assert arviz_compat.group_names(data) == ["posterior", "sample_stats"]
    path = tmp_path / "samples.nc"
    arviz_compat.write_netcdf(data, path)
    # read back by the installed arviz, and by xarray alone
    for back in (arviz_compat.read_netcdf(path), arviz_compat.read_groups(path)):
        post = arviz_compat.group(back, "posterior")
        ss = arviz_compat.group(back, "sample_stats")
        assert dict(post.sizes) == {"chain": 2, "draw": 30, "x_dim_0": 3}
        np.testing.assert_array_equal(post["x"].values, x)
        np.testing.assert_array_equal(post["m"].values, x[..., 0])
        for name, val in stats_in.items():
            np.testing.assert_array_equal(ss[name].values, val)
        assert ss["accepted"].dtype == bool
        assert post.attrs["system"] == "t" and ss.attrs["system"] == "t"
        assert arviz_compat.group(back, "warmup_posterior") is None
