r"""Ramachandran figures: MD vs flow vs reweighted flow on a log-density colour scale.

Each panel is a 2-D histogram of $(\phi, \psi)$ on $[-180°, 180°)^2$ (64 × 64
bins, the grid of Midgley et al. 2023), normalized to a probability density in 1/rad², shown
with a logarithmic colour scale so that sparsely populated basins (αL) stay visible. The
reweighted panel uses self-normalized importance weights $w_i \propto e^{\log w_i}$
(non-finite log-weights count as zero). Dashed lines mark the state boundaries of
[`boltzflow.molecular.alanine`][boltzflow.molecular.alanine].
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from boltzflow.reporting.figures import new_figure, normalized_weights

__all__ = ["plot_ramachandran", "ramachandran_histogram"]


def _np(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def ramachandran_histogram(phi, psi, weights=None, bins: int = 64) -> np.ndarray:
    """Normalized density `[bins, bins]` (1/rad², indexed `[phi, psi]`) of angles in rad."""
    edges = np.linspace(-math.pi, math.pi, bins + 1)
    w = None if weights is None else _np(weights)
    h, _, _ = np.histogram2d(_np(phi), _np(psi), bins=[edges, edges], weights=w)
    total = h.sum()
    return h / (total * (2 * math.pi / bins) ** 2) if total > 0 else h


def plot_ramachandran(path, flow_angles, log_w=None, md=None, bins: int = 64) -> Path:
    """Write a 2- or 3-panel Ramachandran figure (MD if given, flow, reweighted flow).

    Args:
        path: output PNG.
        flow_angles: `(phi, psi)` of flow samples in rad.
        log_w: importance log-weights of the flow samples (reweighted panel if given).
        md: `(phi, psi)` of MD frames in rad, or `None`.
    """
    from matplotlib.colors import LogNorm

    panels = []
    if md is not None:
        panels.append(("MD (training data)", ramachandran_histogram(*md, bins=bins)))
    panels.append(("flow", ramachandran_histogram(*flow_angles, bins=bins)))
    if log_w is not None:
        w = normalized_weights(log_w)
        panels.append(("flow, reweighted", ramachandran_histogram(*flow_angles, w, bins=bins)))
    positive = [h[h > 0] for _, h in panels if (h > 0).any()]
    vmax = max(p.max() for p in positive) if positive else 1.0
    vmin = max(vmax * 1e-5, min(p.min() for p in positive)) if positive else 1e-5
    fig, axes = new_figure(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    ext = (-180, 180, -180, 180)
    for ax, (title, h) in zip(axes[0], panels, strict=True):
        im = ax.imshow(
            np.where(h > 0, h, np.nan).T,
            origin="lower",
            extent=ext,
            aspect="equal",
            norm=LogNorm(vmin=vmin, vmax=vmax),
            cmap="viridis",
        )
        for v in (0, 120):
            ax.axvline(v, color="w", lw=0.6, ls="--")
        ax.hlines([-125, 75], [-180, -180], [0, 0], colors="w", lw=0.6, ls="--")
        ax.hlines([-125, 75], [120, 120], [180, 180], colors="w", lw=0.6, ls="--")
        ax.set_title(title)
        ax.set_xlabel(r"$\phi$ (deg)")
        ax.set_ylabel(r"$\psi$ (deg)")
    fig.colorbar(im, ax=axes[0].tolist(), label=r"density (rad$^{-2}$)", shrink=0.85)
    fig.savefig(path, dpi=110)
    return Path(path)
