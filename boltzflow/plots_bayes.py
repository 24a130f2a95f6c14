"""Posterior figures from an InferenceData (arviz): a corner/pair plot and a trace plot.

Used by :meth:`boltzflow.energies.posterior.Posterior.extra_figures`, which the run pipeline
calls after writing ``samples.nc``. MCMC output (``sample_stats.accepted`` present) is plotted
as is; importance samples are plotted after resampling by their ``log_weight``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

__all__ = ["pair_plot", "trace_plot", "posterior_figures"]


def _az():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az
    return az


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _resampled(idata, seed: int = 0):
    """Equal-weight draws: ``idata`` itself for MCMC, a weighted resample for importance draws."""
    stats = getattr(idata, "sample_stats", None)
    if stats is None or "log_weight" not in stats or "accepted" in stats:
        return idata
    lw = np.asarray(stats["log_weight"]).reshape(-1)
    if not np.any(np.isfinite(lw)) or np.ptp(lw[np.isfinite(lw)]) == 0:
        return idata
    w = np.exp(lw - np.max(lw[np.isfinite(lw)]))
    w = np.where(np.isfinite(w), w, 0.0)
    idx = np.random.default_rng(seed).choice(len(w), size=len(w), p=w / w.sum())
    post = {
        k: np.asarray(v).reshape(-1)[idx][None]
        for k, v in idata.posterior.data_vars.items()
        if np.asarray(v).ndim == 2
    }
    return _az().from_dict(posterior=post)


def pair_plot(idata, path, var_names=None, max_vars: int = 8) -> None:
    """Corner plot (scatter pairs, KDE marginals on the diagonal) of up to ``max_vars`` names."""
    az, plt = _az(), _plt()
    data = _resampled(idata)
    names = list(var_names or [v for v in data.posterior.data_vars if data.posterior[v].ndim == 2])[
        :max_vars
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = az.plot_pair(
            data,
            var_names=names,
            kind="scatter",
            marginals=True,
            figsize=(2.2 * len(names), 2.2 * len(names)),
        )
    fig = np.ravel(axes)[0].get_figure()
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


def trace_plot(idata, path, var_names=None, max_vars: int = 8) -> None:
    """Trace plot: per-chain marginal densities and traces of up to ``max_vars`` variables."""
    az, plt = _az(), _plt()
    names = list(
        var_names or [v for v in idata.posterior.data_vars if idata.posterior[v].ndim == 2]
    )[:max_vars]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = az.plot_trace(idata, var_names=names, combined=True, figsize=(10, 1.6 * len(names)))
    fig = np.ravel(axes)[0].get_figure()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def posterior_figures(out_dir, var_names, samples_file: str = "samples.nc") -> dict[str, str]:
    """Write ``pair.png`` and ``trace.png`` from ``out_dir/samples_file``; ``{title: file}``."""
    out_dir = Path(out_dir)
    path = out_dir / samples_file
    if not path.exists():
        return {}
    idata = _az().from_netcdf(str(path))
    names = [n for n in var_names if n in idata.posterior.data_vars]
    figs = {"Posterior pair plot": "pair.png"}
    pair_plot(idata, out_dir / "pair.png", names)
    if idata.posterior.sizes.get("draw", 0) > 1 and "accepted" in getattr(
        idata, "sample_stats", {}
    ):
        trace_plot(idata, out_dir / "trace.png", names)
        figs["Trace plot"] = "trace.png"
    return figs
