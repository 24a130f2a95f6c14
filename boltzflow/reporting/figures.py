"""Report figures (matplotlib): training curve, log-weights, marginals, histograms.

Each function takes plain arrays/tensors and a path, writes a PNG and returns the path.
Figures are built with [`new_figure`][boltzflow.reporting.figures.new_figure] (object-oriented
matplotlib, no pyplot), so writing a report neither selects nor switches the matplotlib backend of
the calling program.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "new_figure",
    "normalized_weights",
    "plot_training",
    "plot_log_weights",
    "plot_marginals",
    "plot_samples_2d",
    "plot_histogram",
]


def new_figure(nrows: int = 1, ncols: int = 1, *, figsize=(5.0, 3.5), **subplots_kw):
    """A new figure and its `nrows x ncols` axes, independent of pyplot.

    Built as `matplotlib.figure.Figure` directly: no backend is selected, pyplot is not
    imported, the figure is not registered anywhere (nothing to close; it is freed with its
    last reference) and `fig.savefig(path)` renders with matplotlib's own Agg canvas.

    Args:
        nrows, ncols: the axes grid.
        figsize: `(width, height)` in inches.
        **subplots_kw: passed to `matplotlib.figure.Figure.subplots` (`squeeze`,
            `sharex`, `sharey`, ...).

    Returns:
        `(fig, axes)` as from `subplots`.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **subplots_kw)


def _np(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def normalized_weights(log_w) -> np.ndarray:
    """Importance weights `w / Σw` from log-weights (non-finite → 0; all-zero stays zero)."""
    lw = _np(log_w).reshape(-1)
    lw = np.where(np.isfinite(lw), lw, -np.inf)
    if not np.isfinite(lw).any():
        return np.zeros_like(lw)
    w = np.exp(lw - lw.max())
    return w / w.sum()


def plot_training(history: Mapping[str, Sequence[float]], path) -> Path:
    r"""Loss (and held-out ESS fraction, when recorded) against the training step; below it,
    when recorded, the gradient variance $\operatorname{tr}\Sigma$ of the path and standard
    estimators (`grad_var_step`, `grad_var_path`, `grad_var_standard`)."""
    variance = len(history.get("grad_var_path", [])) > 0
    if variance:
        fig, (ax, ax_var) = new_figure(2, 1, figsize=(6, 5.5), sharex=True)
        steps_var = history["grad_var_step"]
        ax_var.semilogy(steps_var, history["grad_var_standard"], "s-", ms=3, label="standard")
        ax_var.semilogy(steps_var, history["grad_var_path"], "o-", ms=3, label="path")
        ax_var.set_ylabel(r"gradient variance tr$\Sigma$")
        ax_var.set_xlabel("step")
        ax_var.legend(fontsize=8)
    else:
        fig, ax = new_figure(figsize=(6, 3.5))
    steps = np.asarray(history.get("step", range(len(history.get("loss", [])))))
    loss = np.asarray(history.get("loss", []), dtype=float)
    if loss.size:
        ax.plot(steps[: loss.size], loss, lw=0.8, color="C0", label="loss")
    ax.set_xlabel("" if variance else "step")
    ax.set_ylabel("loss")
    if history.get("ess_fraction"):
        ax2 = ax.twinx()
        ax2.plot(history["ess_step"], history["ess_fraction"], "o-", color="C1", ms=3)
        ax2.set_ylabel("held-out ESS fraction", color="C1")
        ax2.set_ylim(0, 1)
    ax.set_title("Training")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_log_weights(log_w, path) -> Path:
    """Histogram of finite log-weights relative to their maximum (a spike at 0 is ideal)."""
    lw = _np(log_w).reshape(-1)
    finite = lw[np.isfinite(lw)]
    fig, ax = new_figure(figsize=(5, 3.5))
    if finite.size:
        rel = finite - finite.max()
        ax.hist(rel, bins=80, color="C0", alpha=0.8)
    ax.set_xlabel(r"$\log w - \max \log w$")
    ax.set_ylabel("count")
    ax.set_title(f"Log-weights ({lw.size - finite.size} non-finite)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_marginals(
    x, log_w, path, reference=None, max_dims: int = 4, labels: Sequence[str] | None = None
) -> Path:
    """1-D marginals: raw flow samples, reweighted samples and (optional) exact reference.

    Args:
        x: samples `[n, d]`.
        log_w: log-weights `[n]` (zeros for MCMC samples).
        reference: exact samples `[m, d]` from the target, if available.
    """
    x = _np(x).reshape(len(_np(log_w).reshape(-1)), -1)
    w = normalized_weights(log_w)
    d = min(x.shape[1], max_dims)
    fig, axes = new_figure(1, d, figsize=(3.2 * d, 3), squeeze=False)
    ref = None if reference is None else _np(reference).reshape(-1, x.shape[1])
    for i, ax in enumerate(axes[0]):
        lo, hi = np.percentile(x[:, i], [0.1, 99.9])
        bins = np.linspace(lo, hi, 70)
        ax.hist(x[:, i], bins=bins, density=True, histtype="step", label="flow", color="C0")
        ax.hist(
            x[:, i],
            bins=bins,
            weights=w,
            density=True,
            histtype="step",
            label="reweighted",
            color="C1",
        )
        if ref is not None:
            ax.hist(
                ref[:, i],
                bins=bins,
                density=True,
                histtype="stepfilled",
                alpha=0.25,
                color="k",
                label="exact",
            )
        ax.set_xlabel(labels[i] if labels else f"x[{i}]")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_samples_2d(
    x, log_w, path, centers=None, dims=(0, 1), labels: Sequence[str] | None = None
) -> Path:
    """2-D histograms of flow samples and of reweighted samples (log colour scale).

    Args:
        x: samples `[n, d]`; `dims` picks the two plotted columns.
        log_w: log-weights `[n]`.
        centers: mode centres `[m, d]` to mark, or `None`.
        labels: one name per column of `x` (default `x[i]`).
    """
    from matplotlib.colors import LogNorm

    x = _np(x).reshape(len(_np(log_w).reshape(-1)), -1)[:, list(dims)]
    w = normalized_weights(log_w)
    fig, axes = new_figure(1, 2, figsize=(9, 4), sharex=True, sharey=True)
    rng = [np.percentile(x[:, k], [0.05, 99.95]) for k in range(2)]
    for ax, ww, title in ((axes[0], None, "flow samples"), (axes[1], w, "reweighted")):
        ax.hist2d(x[:, 0], x[:, 1], bins=120, range=rng, weights=ww, norm=LogNorm(), cmap="viridis")
        if centers is not None:
            c = _np(centers)
            ax.plot(c[:, dims[0]], c[:, dims[1]], "r+", ms=6)
        ax.set_title(title)
        ax.set_xlabel(labels[dims[0]] if labels else f"x[{dims[0]}]")
    axes[0].set_ylabel(labels[dims[1]] if labels else f"x[{dims[1]}]")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_histogram(path, label: str, values, log_w, discrete: bool = False) -> Path:
    """Flow (unweighted) and reweighted histograms of a scalar observable `values [n]`.

    Args:
        path: output PNG.
        label: x-axis label (observable and unit).
        values: the observable on the flow samples.
        log_w: their importance log-weights (non-finite count as zero).
        discrete: integer-valued observable: one bin per integer.
    """
    v = _np(values).reshape(-1)
    w = normalized_weights(log_w)
    if discrete:
        lo, hi = int(v.min()), int(v.max())
        bins = [b - 0.5 for b in range(lo, hi + 2)]
    else:
        bins = 60
    fig, ax = new_figure(figsize=(5, 3.5))
    ax.hist(v, bins=bins, density=True, histtype="step", label="flow q")
    ax.hist(v, bins=bins, weights=w, density=True, histtype="step", label="reweighted to p")
    ax.set_xlabel(label)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)
