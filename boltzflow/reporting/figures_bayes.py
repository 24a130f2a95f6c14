"""Posterior figures from a samples file: a corner (pair) plot and a trace plot.

Drawn for the `"posterior"` figure request of
[`boltzflow.energies.posterior.Posterior.report_figures`][boltzflow.energies.posterior.Posterior.report_figures],
after the run has written `samples.nc`. MCMC output (`sample_stats.accepted` present) is plotted
as is; importance samples are plotted after resampling by their `log_weight`.

The figures are plain matplotlib
([`boltzflow.reporting.figures.new_figure`][boltzflow.reporting.figures.new_figure]), drawn from the
`[chains, draws]` arrays of the `posterior` group, so they look the same under arviz 0.x and 1.x and
leave the caller's matplotlib backend alone.
[`posterior_figures`][boltzflow.reporting.figures_bayes.posterior_figures] reads the file with
xarray ([`boltzflow.arviz_compat.read_groups`][boltzflow.arviz_compat.read_groups]), without
importing arviz.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from boltzflow import arviz_compat
from boltzflow.reporting.figures import new_figure

__all__ = ["pair_plot", "trace_plot", "posterior_figures"]


def _scalar_variables(idata, var_names: Sequence[str] | None, max_vars: int) -> dict:
    """`{name: array [chains, draws]}` of up to `max_vars` scalar posterior variables."""
    post = arviz_compat.group(idata, "posterior")
    names = var_names or [v for v in post.data_vars if post[v].ndim == 2]
    return {str(n): np.asarray(post[n].values, dtype=np.float64) for n in list(names)[:max_vars]}


def _equal_weight(arrays: Mapping[str, np.ndarray], idata, seed: int = 0) -> dict:
    """Equal-weight draws: MCMC output as is, importance draws resampled by `log_weight`.

    Returns `{name: array [chains, draws]}` (one chain after resampling).
    """
    stats = arviz_compat.group(idata, "sample_stats")
    if stats is None or "log_weight" not in stats or "accepted" in stats:
        return dict(arrays)
    lw = np.asarray(stats["log_weight"].values, dtype=np.float64).reshape(-1)
    finite = np.isfinite(lw)
    if not finite.any() or np.ptp(lw[finite]) == 0:
        return dict(arrays)
    w = np.where(finite, np.exp(lw - np.max(lw[finite])), 0.0)
    idx = np.random.default_rng(seed).choice(len(w), size=len(w), p=w / w.sum())
    return {k: v.reshape(-1)[idx][None] for k, v in arrays.items()}


def _limits(v: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(v[np.isfinite(v)], [0.5, 99.5])
    pad = 0.05 * (hi - lo) if hi > lo else 0.5 * max(abs(lo), 1.0)
    return float(lo - pad), float(hi + pad)


def pair_plot(idata, path, var_names=None, max_vars: int = 8, bins: int = 40) -> Path:
    """Corner plot of up to `max_vars` scalar posterior variables.

    Diagonal: 1-D density histograms; below it: 2-D histograms of each pair (counts, grey
    scale); above it: empty. Axis ranges are the 0.5-99.5 % quantiles with a 5 % margin.

    Args:
        idata: the samples file's contents: arviz data (InferenceData or DataTree) or
            `{group: xarray.Dataset}` from
            [`boltzflow.arviz_compat.read_groups`][boltzflow.arviz_compat.read_groups].
        path: output PNG.
        var_names: variables to plot (default: every `[chain, draw]` variable).
        bins: histogram bins per axis.
    """
    data = _equal_weight(_scalar_variables(idata, var_names, max_vars), idata)
    names = list(data)
    k = len(names)
    flat = {n: data[n].reshape(-1) for n in names}
    lims = {n: _limits(flat[n]) for n in names}
    fig, axes = new_figure(k, k, figsize=(2.2 * k + 0.4, 2.2 * k + 0.4), squeeze=False)
    for i, yn in enumerate(names):
        for j, xn in enumerate(names):
            ax = axes[i][j]
            if j > i:
                ax.set_axis_off()
                continue
            if i == j:
                ax.hist(flat[xn], bins=bins, range=lims[xn], density=True, histtype="step")
                ax.set_yticks([])
            else:
                ax.hist2d(flat[xn], flat[yn], bins=bins, range=[lims[xn], lims[yn]], cmap="Greys")
                ax.set_ylim(*lims[yn])
            ax.set_xlim(*lims[xn])
            if i == k - 1:
                ax.set_xlabel(xn)
            else:
                ax.set_xticklabels([])
            if j == 0 and i > 0:
                ax.set_ylabel(yn)
            elif j > 0:
                ax.set_yticklabels([])
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return Path(path)


def trace_plot(idata, path, var_names=None, max_vars: int = 8, bins: int = 40) -> Path:
    """Trace plot: per variable, per-chain density histograms (left) and traces (right).

    Args:
        idata: the samples file's contents: arviz data (InferenceData or DataTree) or
            `{group: xarray.Dataset}` from
            [`boltzflow.arviz_compat.read_groups`][boltzflow.arviz_compat.read_groups].
        path: output PNG.
        var_names: variables to plot (default: every `[chain, draw]` variable).
    """
    data = _scalar_variables(idata, var_names, max_vars)
    fig, axes = new_figure(
        len(data),
        2,
        figsize=(10, 1.6 * len(data) + 0.4),
        squeeze=False,
        gridspec_kw={"width_ratios": [1, 2]},
    )
    for (name, v), (ax_d, ax_t) in zip(data.items(), axes, strict=True):
        lims = _limits(v.reshape(-1))
        draws = np.arange(v.shape[1])
        for c in range(v.shape[0]):
            color = f"C{c % 10}"
            ax_d.hist(v[c], bins=bins, range=lims, density=True, histtype="step", color=color)
            ax_t.plot(draws, v[c], lw=0.4, alpha=0.8, color=color)
        ax_d.set_xlim(*lims)
        ax_d.set_yticks([])
        ax_d.set_ylabel(name)
        ax_t.set_ylim(*lims)
    axes[-1][1].set_xlabel("draw")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return Path(path)


def posterior_figures(out_dir, var_names, samples_file: str = "samples.nc") -> dict[str, str]:
    """Write `pair.png` and `trace.png` from `out_dir/samples_file`; `{title: file}`.

    The trace plot is written only for MCMC output (`sample_stats.accepted`) with more
    than one draw per chain.
    """
    out_dir = Path(out_dir)
    path = out_dir / samples_file
    if not path.exists():
        return {}
    idata = arviz_compat.read_groups(path)
    post = arviz_compat.group(idata, "posterior")
    names = [n for n in var_names if n in post.data_vars]
    figs = {"Posterior pair plot": "pair.png"}
    pair_plot(idata, out_dir / "pair.png", names)
    stats = arviz_compat.group(idata, "sample_stats")
    if post.sizes.get("draw", 0) > 1 and stats is not None and "accepted" in stats:
        trace_plot(idata, out_dir / "trace.png", names)
        figs["Trace plot"] = "trace.png"
    return figs
