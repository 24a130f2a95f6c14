"""Samples as arviz data (written to `samples.nc`).

An `arviz.InferenceData` under arviz 0.x and an `xarray.DataTree` under arviz 1.x, built and
read through [`boltzflow.arviz_compat`][boltzflow.arviz_compat]; the file is netCDF4/HDF5 either
way.

Layout (the run contract in DESIGN.md):

* `posterior`: the samples (`x` with dims `chain, draw, x_dim_0, ...`, or one variable
  per parameter when `names` are given) and scalar observables `[chain, draw]`;
* `sample_stats`: `log_weight` (importance log-weights; zeros for exact MCMC output),
  `energy` (reduced, kT) and `accepted` where MCMC was used.

arviz has no first-class sample weights; `sample_stats.log_weight` is the convention.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from boltzflow import arviz_compat

__all__ = ["to_inference_data", "posterior_inference_data", "write_samples", "read_samples"]


def _np(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu()
        return t.numpy() if t.dtype == torch.bool else t.double().numpy()
    return np.asarray(t)


def to_inference_data(
    result,
    observables: Mapping[str, torch.Tensor] | None = None,
    names: Sequence[str] | None = None,
    attrs: Mapping | None = None,
):
    """arviz data (InferenceData or DataTree) from a
    [`SamplingResult`][boltzflow.sampling.runners.SamplingResult].

    Args:
        result: samples `x [chains, draws, *event]` with `log_weight`, `energy` and
            optionally `accepted` (all `[chains, draws]`).
        observables: extra posterior variables `{name: Tensor[chains, draws]}`.
        names: if given (flat events only), one posterior variable per coordinate.
        attrs: metadata stored on every group (system, method, budget, ...).
    """
    x = _np(result.x)
    if x.ndim < 2:
        raise ValueError(f"samples must be [chains, draws, ...], got shape {x.shape}")
    posterior: dict[str, np.ndarray] = {}
    if names is not None:
        if x.ndim != 3 or x.shape[-1] != len(names):
            raise ValueError(f"{len(names)} names for samples of shape {x.shape}")
        for i, n in enumerate(names):
            posterior[str(n)] = x[..., i]
    else:
        posterior["x"] = x
    for name, val in (observables or {}).items():
        if name in posterior:
            raise ValueError(f"observable '{name}' clashes with a sample variable")
        posterior[name] = _np(val).reshape(x.shape[:2])
    stats = {"log_weight": _np(result.log_weight), "energy": _np(result.energy)}
    if result.accepted is not None:
        stats["accepted"] = _np(result.accepted).astype(bool)
    meta = {
        str(k): (v if isinstance(v, (int, float, str)) else str(v))
        for k, v in (attrs or {}).items()
    }
    return arviz_compat.from_dict(posterior, stats, attrs=meta)


def write_samples(idata, path) -> None:
    """Write arviz data to netCDF (`samples.nc`)."""
    arviz_compat.write_netcdf(idata, path)


def read_samples(path):
    """Read `samples.nc` back with the installed arviz (InferenceData or DataTree); its
    groups as `xarray.Dataset` via
    [`boltzflow.arviz_compat.group`][boltzflow.arviz_compat.group]."""
    return arviz_compat.read_netcdf(path)


def posterior_inference_data(posterior, result, attrs: Mapping | None = None):
    """arviz data with one variable per named constrained parameter of a posterior, and the
    unconstrained coordinates alongside as `y_<name>` (the layout of a run's `samples.nc`).

    Args:
        posterior: a [`Posterior`][boltzflow.energies.posterior.Posterior] (its `constrain` and
            `names`).
        result: a [`SamplingResult`][boltzflow.sampling.runners.SamplingResult] (or any NamedTuple
            with `x [chains, draws, dim]`, `log_weight`, `energy`, `accepted`) in the
            unconstrained coordinates.
        attrs: metadata stored on every group.
    """
    x = torch.as_tensor(result.x).detach()
    chains, draws = x.shape[:2]
    with torch.no_grad():
        theta = posterior.constrain(x.reshape(chains * draws, -1)).theta
    theta = theta.reshape(chains, draws, -1)
    unconstrained = {n: x[..., i] for i, n in enumerate(posterior.parameter_names)}
    return to_inference_data(
        result._replace(x=theta), unconstrained, names=posterior.names, attrs=attrs
    )
