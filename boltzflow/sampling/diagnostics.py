r"""MCMC diagnostics on `[chains, draws, *event]` arrays: τ_int, ESS, R-hat, MCSE.

Nothing here re-implements an autocorrelation estimator:

* [`integrated_time`][boltzflow.sampling.diagnostics.integrated_time] -- integrated autocorrelation
  time $\tau_{int} = 1 + 2\sum_{t\ge1}\rho(t)$ with Sokal's automatic window `M ≥ c·τ`
  (Sokal 1997, "Monte Carlo methods in statistical mechanics"; Goodman & Weare 2010), computed
  by `emcee.autocorr.integrated_time` with the autocorrelation averaged over chains;
* [`ess`][boltzflow.sampling.diagnostics.ess] and [`rhat`][boltzflow.sampling.diagnostics.rhat] --
  bulk/tail effective sample size and rank-normalized split R-hat from arviz, through
  [`boltzflow.arviz_compat`][boltzflow.arviz_compat] (Vehtari, Gelman, Simpson, Carpenter & Bürkner
  2021, "Rank-normalization, folding, and localization: an improved R-hat", Bayesian Analysis 16,
  667);
* [`mcse`][boltzflow.sampling.diagnostics.mcse] -- Monte Carlo standard error of the mean,
  `sd / sqrt(ESS)`;
* [`calibrated_z`][boltzflow.sampling.diagnostics.calibrated_z] -- `|mean - truth| / MCSE` per
  coordinate, the calibrated test statistic used against exact answers (≈ `|N(0, 1)|` for a correct
  sampler);
* [`chain_diagnostics`][boltzflow.sampling.diagnostics.chain_diagnostics] -- the worst R-hat and ESS
  over coordinates, as runners report them.

Inputs may be torch tensors or numpy arrays of shape `[chains, draws, *event]` (a 1-D array
is one chain); outputs are float64 numpy arrays of shape `event` (scalars for scalar chains).
"""

from __future__ import annotations

from typing import NamedTuple

import emcee
import numpy as np
import torch

from boltzflow import arviz_compat

__all__ = [
    "as_chains",
    "integrated_time",
    "ess",
    "rhat",
    "mcse",
    "calibrated_z",
    "ChainSummary",
    "summarize",
    "chain_diagnostics",
]


def as_chains(samples) -> np.ndarray:
    """`samples` as a float64 numpy array `[chains, draws, *event]` (1-D → one chain)."""
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().cpu().to(torch.float64).numpy()
    a = np.asarray(samples, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim < 2:
        raise ValueError(f"expected [chains, draws, *event], got shape {a.shape}")
    return a


def _flat_event(a: np.ndarray) -> np.ndarray:
    """`[chains, draws, *event]` → `[chains, draws, dim]`."""
    return a.reshape(a.shape[0], a.shape[1], -1)


def _event_shape(a: np.ndarray) -> tuple[int, ...]:
    return a.shape[2:]


def integrated_time(samples, c: float = 5.0) -> np.ndarray:
    r"""Integrated autocorrelation time $\tau_{int}$ per coordinate (in steps).

    Uses `emcee.autocorr.integrated_time` (`quiet=True`: a chain shorter than
    `50 τ` gives an estimate and a logged warning, not an error), averaging the normalized
    autocorrelation function over chains. For an AR(1) process with coefficient ρ,
    $\tau_{int} = (1 + \rho) / (1 - \rho)$.
    """
    a = as_chains(samples)
    flat = _flat_event(a)
    tau = emcee.autocorr.integrated_time(
        np.transpose(flat, (1, 0, 2)), c=c, quiet=True, has_walkers=True
    )
    return np.asarray(tau, dtype=np.float64).reshape(_event_shape(a))


def _arviz(samples, fn, **kwargs) -> np.ndarray:
    a = as_chains(samples)
    return fn(_flat_event(a), **kwargs).reshape(_event_shape(a))


def ess(samples, method: str = "bulk") -> np.ndarray:
    """Effective sample size per coordinate (arviz's `ess`).

    `method`: `"bulk"` (rank-normalized, default), `"tail"` (5 % and 95 % quantiles),
    `"mean"` (the plain ESS that governs the error of the mean), or any arviz method.
    """
    return _arviz(samples, arviz_compat.ess, method=method)


def rhat(samples, method: str = "rank") -> np.ndarray:
    """Rank-normalized split R-hat per coordinate (arviz's `rhat`; needs ≥ 2 chains
    for between-chain information; values above ~1.01 signal non-convergence)."""
    return _arviz(samples, arviz_compat.rhat, method=method)


def mcse(samples, method: str = "mean") -> np.ndarray:
    r"""Monte Carlo standard error of the mean, $\mathrm{sd}/\sqrt{\mathrm{ESS}}$.

    `sd` pools all draws (`ddof=1`); `ESS` is [`ess`][boltzflow.sampling.diagnostics.ess] with
    `method` (`"mean"` by default, matching arviz's `mcse`; `"bulk"` is more robust to heavy tails).
    """
    a = as_chains(samples)
    flat = _flat_event(a)
    sd = flat.reshape(-1, flat.shape[-1]).std(axis=0, ddof=1).reshape(_event_shape(a))
    return sd / np.sqrt(ess(a, method=method))


def calibrated_z(samples, truth, method: str = "mean") -> np.ndarray:
    r"""`|mean - truth| / MCSE` per coordinate.

    For a correct sampler and a long enough run this is approximately `|N(0, 1)|`; compare it
    with a normal quantile (Bonferroni-corrected over coordinates). A biased sampler or a wrong
    target makes it grow like `sqrt(ESS)`.

    Args:
        samples: `[chains, draws, *event]`.
        truth: exact expectations, broadcastable to `event`.
        method: ESS method for [`mcse`][boltzflow.sampling.diagnostics.mcse].
    """
    a = as_chains(samples)
    mean = _flat_event(a).mean(axis=(0, 1)).reshape(_event_shape(a))
    truth = np.asarray(truth.detach().cpu() if isinstance(truth, torch.Tensor) else truth)
    return np.abs(mean - truth.astype(np.float64)) / mcse(a, method=method)


class ChainSummary(NamedTuple):
    """Per-coordinate summary of `[chains, draws, *event]` draws (numpy arrays of `event`)."""

    mean: np.ndarray
    sd: np.ndarray
    mcse: np.ndarray
    ess_bulk: np.ndarray
    ess_tail: np.ndarray
    rhat: np.ndarray
    tau_int: np.ndarray


def summarize(samples) -> ChainSummary:
    """Mean, sd, MCSE, bulk/tail ESS, R-hat and τ_int of each coordinate."""
    a = as_chains(samples)
    flat = _flat_event(a).reshape(-1, int(np.prod(_event_shape(a), dtype=int)))
    shape = _event_shape(a)
    return ChainSummary(
        flat.mean(0).reshape(shape),
        flat.std(0, ddof=1).reshape(shape),
        mcse(a),
        ess(a, "bulk"),
        ess(a, "tail"),
        rhat(a),
        integrated_time(a),
    )


def chain_diagnostics(x) -> dict:
    """`{"rhat_max", "ess_bulk_min", "ess_tail_min"}` over the coordinates of draws
    `x [chains, draws, *event]` ([`rhat`][boltzflow.sampling.diagnostics.rhat],
    [`ess`][boltzflow.sampling.diagnostics.ess]); `{}` with fewer than 4 draws.

    These are the diagnostic keys of [`SamplingResult`][boltzflow.sampling.runners.SamplingResult]'s
    `info`.
    """
    a = (
        x.detach().cpu().double().numpy()
        if isinstance(x, torch.Tensor)
        else np.asarray(x, np.float64)
    )
    if a.shape[1] < 4:
        return {}
    return {
        "rhat_max": float(np.max(rhat(a))),
        "ess_bulk_min": float(np.min(ess(a, "bulk"))),
        "ess_tail_min": float(np.min(ess(a, "tail"))),
    }
