r"""The one place boltzflow calls arviz: PSIS, ESS/R-hat/MCSE, and the `samples.nc` file.

`pip install boltzflow` gets arviz 0.x on Python 3.10-3.11 (`InferenceData`,
`az.psislw`) and arviz 1.x on Python >= 3.12 (`xarray.DataTree`; PSIS and diagnostics in
arviz-stats; plotting in arviz-plots). The functions here give the same results under both, on
plain numpy arrays:

* [`psis`][boltzflow.arviz_compat.psis] -- Pareto-smoothed importance sampling (Vehtari, Simpson,
  Gelman, Yao & Gabry 2024, JMLR 25(72)): log-weights `[n]` -> normalized smoothed log-weights `[n]`
  and the Pareto shape k̂ of the right tail of the weights;
* [`ess`][boltzflow.arviz_compat.ess], [`rhat`][boltzflow.arviz_compat.rhat],
  [`mcse`][boltzflow.arviz_compat.mcse] -- on `[chains, draws, dim]` -> `[dim]`;
* [`from_dict`][boltzflow.arviz_compat.from_dict],
  [`write_netcdf`][boltzflow.arviz_compat.write_netcdf],
  [`read_netcdf`][boltzflow.arviz_compat.read_netcdf], [`group`][boltzflow.arviz_compat.group] --
  the samples
  file: an `InferenceData` (0.x) or `DataTree` (1.x) with `posterior` and
  `sample_stats` groups, written to netCDF4/HDF5 (h5netcdf) so that the installed arviz
  reads it back (`az.from_netcdf`; `xarray.open_datatree` in 1.x);
* [`read_groups`][boltzflow.arviz_compat.read_groups] -- the same file as `{group: xarray.Dataset}`
  through xarray alone.

arviz is imported on first use, so `import boltzflow` stays light. Importing arviz (either
line) also imports `matplotlib.pyplot`; [`read_groups`][boltzflow.arviz_compat.read_groups] avoids
that for code that only reads the file, such as the report figures.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping

import numpy as np
from scipy.special import logsumexp

__all__ = ["is_arviz_1", "psis", "ess", "rhat", "mcse", "from_dict", "write_netcdf"]
__all__ += ["read_netcdf", "read_groups", "group", "group_names"]


@functools.cache
def _az():
    import arviz

    return arviz


def is_arviz_1() -> bool:
    """True for arviz >= 1 (DataTree based, statistics from arviz-stats)."""
    return int(str(_az().__version__).split(".")[0]) >= 1


# ------------------------------------------------------------------------- PSIS
def psis(log_w) -> tuple[np.ndarray, float]:
    r"""Pareto-smoothed importance sampling of one set of log-weights.

    The largest $M \approx \min(n/5, 3\sqrt n)$ weights are replaced by the expected
    order statistics of a generalized Pareto distribution fitted to them; k̂ is its shape.
    If $w$ has a tail $P(w > t) \sim t^{-\alpha}$, then $\hat k \to 1/\alpha$.
    k̂ < 0.5: variance finite; 0.5-0.7: usable; > 0.7: the importance estimate is unreliable.

    Args:
        log_w: log-weights `[n]` (finite or `-inf` for zero weight; no NaN, no `+inf`).

    Returns:
        `(smoothed, k)`: smoothed log-weights `[n]` normalized to
        $\log\sum_i e^{\cdot} = 0$, and k̂ (`inf` when the tail has fewer than five
        distinct values, so that no Pareto fit exists).
    """
    lw = np.array(log_w, dtype=np.float64).reshape(-1)
    az = _az()
    with warnings.catch_warnings():
        # arviz 0.x's GPD fit computes 1/Σexp(Δ) with Δ up to ~1e3; the overflow gives the
        # intended weight 0 and is not a problem with the data.
        warnings.filterwarnings(
            "ignore", "overflow encountered in exp", RuntimeWarning, r"arviz(\.|$)"
        )
        if not is_arviz_1():
            smoothed, k = az.psislw(lw.copy(), reff=1.0)
        else:
            from arviz_stats.base import array_stats

            try:
                # arviz-stats takes log-likelihoods (PSIS-LOO): its raw log-weights are -ary.
                smoothed, k = array_stats.psislw(-lw, r_eff=1.0)
            except ValueError as exc:  # the whole tail holds one value: no GPD fit
                if "tail values are the same" not in str(exc):
                    raise
                return lw - logsumexp(lw), math.inf
    return np.asarray(smoothed, dtype=np.float64), float(np.asarray(k))


# ------------------------------------------------------------------ diagnostics
def _diagnostic(name: str, a, method: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 3:
        raise ValueError(f"expected [chains, draws, dim], got shape {a.shape}")
    fn = getattr(_az(), name)
    if is_arviz_1():
        # arviz 0.x's default tail quantiles; the 1.x array path needs them spelled out
        kw = {"prob": (0.05, 0.95)} if method == "tail" else {}
        out = fn(a, chain_axis=0, draw_axis=1, method=method, **kw)
    else:
        out = fn(_az().convert_to_dataset({"x": a}), method=method)["x"].values
    return np.asarray(out, dtype=np.float64).reshape(a.shape[2])


def ess(a, method: str = "bulk") -> np.ndarray:
    """Effective sample size (Vehtari et al. 2021) of `a [chains, draws, dim]` -> `[dim]`.

    `method`: `"bulk"` (rank-normalized), `"tail"`, `"mean"`, or another arviz method.
    """
    return _diagnostic("ess", a, method)


def rhat(a, method: str = "rank") -> np.ndarray:
    """Split R-hat of `[chains, draws, dim]` -> `[dim]` (`"rank"`: rank-normalized,
    folded; Vehtari et al. 2021)."""
    return _diagnostic("rhat", a, method)


def mcse(a, method: str = "mean") -> np.ndarray:
    """arviz's Monte Carlo standard error (of the mean by default): `[chains, draws, dim]`
    -> `[dim]`."""
    return _diagnostic("mcse", a, method)


# ----------------------------------------------------------------- samples file
def from_dict(
    posterior: Mapping[str, np.ndarray],
    sample_stats: Mapping[str, np.ndarray] | None = None,
    attrs: Mapping[str, int | float | str] | None = None,
):
    """An `InferenceData` (0.x) or `DataTree` (1.x) with `posterior` and `sample_stats`.

    Args:
        posterior: `{name: array [chains, draws, *shape]}`.
        sample_stats: `{name: array [chains, draws]}` (`log_weight`, `energy`, ...).
        attrs: metadata added to the attributes of every group.
    """
    groups = {"posterior": dict(posterior)}
    if sample_stats:
        groups["sample_stats"] = dict(sample_stats)
    az = _az()
    data = az.from_dict(groups) if is_arviz_1() else az.from_dict(**groups)
    for name in group_names(data):
        data[name].attrs.update(dict(attrs or {}))
    return data


def group_names(data) -> list[str]:
    """Names of the groups of an `InferenceData`, a `DataTree` or a `{name: Dataset}`."""
    if callable(getattr(data, "groups", None)):  # arviz 0.x InferenceData
        return list(data.groups())
    if hasattr(data, "children"):  # xarray.DataTree (arviz 1.x)
        return list(data.children)
    return list(data)


def group(data, name: str):
    """Group `name` as an `xarray.Dataset`, or `None` if `data` has none.

    `data`: an `InferenceData`, a `DataTree` or a `{name: Dataset}` from
    [`read_groups`][boltzflow.arviz_compat.read_groups].
    """
    if name not in group_names(data):
        return None
    g = data[name]
    return g.to_dataset() if hasattr(g, "to_dataset") else g


def write_netcdf(data, path) -> None:
    """Write every group to one netCDF4/HDF5 file (engine `h5netcdf`)."""
    data.to_netcdf(str(path), engine="h5netcdf")


def read_netcdf(path):
    """Read a samples file with the installed arviz (loaded into memory, file closed)."""
    data = _az().from_netcdf(str(path))
    if is_arviz_1():
        data = data.load()
        data.close()
    return data


def read_groups(path) -> dict:
    """Every group of a samples file as `{name: xarray.Dataset}` (in memory), read by xarray
    and h5netcdf without importing arviz."""
    import h5netcdf
    import xarray as xr

    with h5netcdf.File(str(path), "r") as f:
        names = list(f.groups)
    out = {}
    for name in names:
        with xr.open_dataset(str(path), group=name, engine="h5netcdf") as ds:
            out[name] = ds.load()
    return out
