r"""Importance reweighting of flow samples: weights, ESS, log Z, PSIS k̂, expectations, ΔF.

For samples $x_i \sim q$ with unnormalized target $p(x) \propto e^{-u(x)}$,

$$
\log w_i = -u(x_i) - \log q(x_i), \qquad
\hat Z = \frac1N \sum_i w_i, \qquad
\mathrm{ESS} = \frac{(\sum_i w_i)^2}{\sum_i w_i^2}\ \text{(Kish 1965)}.
$$

Log-weights, their rule for non-finite values (NaN and $\pm\infty$ give weight 0 and are
counted in `n_nonfinite`, never NaN) and the Kish ESS live in
[`boltzflow.weights`][boltzflow.weights]; [`log_weights`][boltzflow.weights.log_weights],
[`sanitize_log_weights`][boltzflow.weights.sanitize_log_weights] and
[`kish_ess`][boltzflow.weights.kish_ess] are re-exported here. The log Z standard error is a
bootstrap over samples (scipy); PSIS k̂ (Vehtari et al. 2024, "Pareto smoothed importance sampling")
comes from arviz through [`boltzflow.arviz_compat.psis`][boltzflow.arviz_compat.psis] -- k̂ > 0.7
flags an unreliable importance estimate and is logged as a warning.

Free energies between state sets `A` and `B` (in kT):
$\Delta F_{AB} = -\ln(\sum_{i\in A} w_i / \sum_{i\in B} w_i)$.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from scipy import stats
from scipy.special import logsumexp

from boltzflow.weights import as_float64_numpy, kish_ess, log_weights, sanitize_log_weights

__all__ = [
    "Estimate",
    "ReweightingResult",
    "log_weights",
    "sanitize_log_weights",
    "kish_ess",
    "log_mean_exp",
    "pareto_k",
    "reweight",
    "expectation",
    "free_energy_difference",
    "free_energy_difference_chains",
]

logger = logging.getLogger(__name__)


class Estimate(NamedTuple):
    """A point estimate with its standard error."""

    mean: float
    stderr: float


class ReweightingResult(NamedTuple):
    """Summary of one importance-sampling run (see module docstring for definitions)."""

    n: int
    ess: float
    ess_fraction: float
    log_z: Estimate
    pareto_k: float
    n_nonfinite: int

    def as_dict(self) -> dict:
        """JSON-ready dict in the `summary.json` layout."""
        return {
            "n": self.n,
            "ess": self.ess,
            "ess_fraction": self.ess_fraction,
            "log_z": {"mean": self.log_z.mean, "stderr": self.log_z.stderr},
            "pareto_k": self.pareto_k,
            "n_nonfinite": self.n_nonfinite,
        }


def log_mean_exp(log_w) -> float:
    """`log((1/N) Σ exp(log_w))` computed stably; `-inf` if every weight is zero."""
    lw = as_float64_numpy(log_w).reshape(-1)
    if lw.size == 0:
        raise ValueError("log_mean_exp of an empty array")
    if not np.isfinite(lw).any():
        return -math.inf
    return float(logsumexp(lw) - math.log(lw.size))


def pareto_k(log_w) -> float:
    """PSIS Pareto shape k̂ of the weights
    ([`boltzflow.arviz_compat.psis`][boltzflow.arviz_compat.psis]).

    Returns `inf` with fewer than 10 non-zero weights, and 0 when all non-zero weights are
    equal (an exact flow: the tail has no spread, so no Pareto fit exists and none is needed).
    """
    lw, _ = sanitize_log_weights(log_w)
    finite = lw[np.isfinite(lw)]
    if finite.size < 10:
        return math.inf
    if np.ptp(finite) <= 1e-12 * max(1.0, float(np.abs(finite).max())):
        return 0.0
    from boltzflow.arviz_compat import psis

    _, k = psis(lw)
    return k if math.isfinite(k) else math.inf


def _bootstrap_stderr(data: tuple, statistic: Callable, n_bootstrap: int, seed) -> float:
    """Bootstrap standard error of `statistic(*data, axis=-1)` (`scipy.stats.bootstrap`)."""
    n = data[0].shape[-1]
    batch = max(1, min(n_bootstrap, int(2e7 // max(n, 1))))
    # A resample holding only zero weights has log Z = -inf: its statistic is -inf, quantiles
    # through it are NaN (numpy's invalid-value warning, then scipy's DegenerateDataWarning)
    # and the standard error becomes inf, which is returned. Both warnings are expected here.
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = stats.bootstrap(
            data,
            statistic,
            n_resamples=n_bootstrap,
            paired=True,
            vectorized=True,
            method="percentile",
            batch=batch,
            rng=np.random.default_rng(seed),
        )
    se = float(res.standard_error)
    return se if math.isfinite(se) else math.inf


def _log_mean_exp_axis(lw, axis=-1):
    with np.errstate(divide="ignore", invalid="ignore"):
        return logsumexp(lw, axis=axis) - math.log(lw.shape[axis])


def reweight(log_w, *, n_bootstrap: int = 200, seed: int | None = 0) -> ReweightingResult:
    """Summarise importance weights: ESS, ESS fraction, log Z ± bootstrap stderr, k̂.

    Args:
        log_w: log-weights `[n]` (tensor or array; any shape is flattened). NaN and ±inf
            count as non-finite (weight 0).
        n_bootstrap: bootstrap resamples for the log Z standard error.
        seed: seed of the bootstrap RNG.

    Returns:
        [`ReweightingResult`][boltzflow.sampling.reweighting.ReweightingResult]. `log_z.mean`
        estimates $\\log Z_p - \\log Z_q$ (= log Z of `exp(-u)` for a normalized flow).
    """
    lw, n_bad = sanitize_log_weights(log_w)
    n = lw.size
    if n == 0:
        raise ValueError("reweight needs at least one log-weight")
    if n_bad:
        logger.warning("%d of %d samples have non-finite log-weights (weight 0)", n_bad, n)
    ess = kish_ess(lw)
    log_z = log_mean_exp(lw)
    if math.isfinite(log_z) and n > 1:
        stderr = _bootstrap_stderr((lw,), _log_mean_exp_axis, n_bootstrap, seed)
    else:
        stderr = math.inf
    k = pareto_k(lw)
    if k > 0.7:
        logger.warning("PSIS k-hat = %.2f > 0.7: importance estimates are unreliable", k)
    return ReweightingResult(n, ess, ess / n, Estimate(log_z, stderr), k, n_bad)


def expectation(values, log_w) -> Estimate:
    r"""Self-normalized importance estimate of $E_p[f]$ with delta-method stderr.

    $$
    \hat\mu = \frac{\sum w_i f_i}{\sum w_i}, \qquad
    \widehat{se}^2 = \frac{\sum w_i^2 (f_i - \hat\mu)^2}{(\sum w_i)^2}
    $$

    (Owen 2013, *Monte Carlo theory, methods and examples*, ch. 9). `values` is `[n]`.
    """
    f = as_float64_numpy(values).reshape(-1)
    lw, _ = sanitize_log_weights(log_w)
    if f.shape != lw.shape:
        raise ValueError(f"values {f.shape} and log_w {lw.shape} must have the same length")
    keep = np.isfinite(lw)
    if not keep.any():
        return Estimate(math.nan, math.inf)
    w = np.exp(lw[keep] - lw[keep].max())
    w /= w.sum()
    fk = f[keep]
    if not np.isfinite(fk[w > 0]).all():
        raise ValueError("observable values must be finite where the weight is non-zero")
    mu = float(np.sum(w * fk))
    se = float(np.sqrt(np.sum(w**2 * (fk - mu) ** 2)))
    return Estimate(mu, se)


def _delta_f_axis(lw, in_a, in_b, axis=-1):
    with np.errstate(divide="ignore", invalid="ignore"):
        la = logsumexp(np.where(in_a > 0, lw, -np.inf), axis=axis)
        lb = logsumexp(np.where(in_b > 0, lw, -np.inf), axis=axis)
    return -(la - lb)


def free_energy_difference(
    in_a, in_b, log_w, *, n_bootstrap: int = 200, seed: int | None = 0
) -> Estimate:
    r"""`ΔF_AB = -ln(Σ_A w / Σ_B w)` in kT, with a bootstrap standard error.

    Args:
        in_a, in_b: boolean indicators `[n]` of membership in the state sets `A` and `B`.
        log_w: log importance weights `[n]` (all zeros for unweighted MCMC samples).

    Returns `Estimate(inf, inf)` if `A` has no weight, `(-inf, inf)` if `B` has none.
    The bootstrap treats samples as independent; for correlated MCMC samples thin first.
    """
    a = as_float64_numpy(in_a).reshape(-1).astype(np.float64)
    b = as_float64_numpy(in_b).reshape(-1).astype(np.float64)
    lw, _ = sanitize_log_weights(log_w)
    if not (a.shape == b.shape == lw.shape):
        raise ValueError("in_a, in_b and log_w must have the same length")
    df = float(_delta_f_axis(lw, a, b))
    if not math.isfinite(df):
        return Estimate(df, math.inf)
    se = _bootstrap_stderr((lw, a, b), _delta_f_axis, n_bootstrap, seed)
    return Estimate(df, se)


def free_energy_difference_chains(in_a, in_b) -> Estimate:
    r"""`ΔF_AB = -ln(P_A / P_B)` in kT from unweighted MCMC draws `[chains, draws]`.

    The error is the delta method applied to the Monte Carlo standard error of the series
    $g_t = 1_A(x_t)/P_A - 1_B(x_t)/P_B$ (so that $\delta\Delta F \approx -\overline{g - E g}$),
    which accounts for autocorrelation through the ESS
    ([`boltzflow.sampling.diagnostics.mcse`][boltzflow.sampling.diagnostics.mcse]).
    """
    from boltzflow.sampling.diagnostics import mcse

    a = as_float64_numpy(in_a).astype(np.float64)
    b = as_float64_numpy(in_b).astype(np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError("in_a and in_b must both be [chains, draws]")
    pa, pb = a.mean(), b.mean()
    if pa == 0 or pb == 0:
        return Estimate(math.inf if pa == 0 else -math.inf, math.inf)
    g = a / pa - b / pb
    se = float(mcse(g[..., None])[0]) if np.ptp(g) > 0 else 0.0
    return Estimate(float(-math.log(pa / pb)), se)
