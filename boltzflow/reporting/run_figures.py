"""The figures of a run: the generic ones, then those the target requests.

A target asks for figures with [`report_figures`][boltzflow.energies.base.Energy.report_figures], a
sequence of [`FigureRequest`][boltzflow.energies.base.FigureRequest] `(kind, data)`. Each `kind` is
a key of `DRAWERS`, whose function is called as `draw(out_dir, **data)` and returns
`{caption: PNG file name}` for `report.md`. JSON documents from
[`report_data`][boltzflow.energies.base.Energy.report_data] are written beside them.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from boltzflow.reporting import figures

__all__ = ["DRAWERS", "draw_requested", "write_report_data", "run_figures"]


def _histogram(out_dir, filename, title, label, values, log_weight, discrete=False) -> dict:
    figures.plot_histogram(Path(out_dir) / filename, label, values, log_weight, discrete)
    return {title: filename}


def _ramachandran(out_dir, filename, title, angles, log_weight, md=None) -> dict:
    from boltzflow.reporting.figures_molecular import plot_ramachandran

    plot_ramachandran(Path(out_dir) / filename, angles, log_weight, md=md)
    return {title: filename}


def _posterior(out_dir, names) -> dict:
    from boltzflow.reporting.figures_bayes import posterior_figures

    return posterior_figures(out_dir, names)


DRAWERS: dict[str, Callable[..., Mapping[str, str]]] = {
    "histogram": _histogram,
    "ramachandran": _ramachandran,
    "posterior": _posterior,
}
"""Figure kinds a target may request: ``kind -> draw(out_dir, **data) -> {caption: file}``.
``histogram``: ``filename, title, label, values [n], log_weight [n], discrete``;
``ramachandran``: ``filename, title, angles (phi, psi) in rad, log_weight, md`` (MD angles
or ``None``); ``posterior``: ``names`` (pair and trace plots from ``samples.nc``)."""


def draw_requested(out_dir, requests: Sequence) -> dict[str, str]:
    """Draw [`FigureRequest`][boltzflow.energies.base.FigureRequest] s; `{caption: file name}`."""
    out = {}
    for req in requests:
        if req.kind not in DRAWERS:
            raise KeyError(f"unknown figure kind {req.kind!r}; known: {sorted(DRAWERS)}")
        out.update(DRAWERS[req.kind](out_dir, **req.data) or {})
    return out


def write_report_data(out_dir, documents: Mapping[str, Mapping]) -> list[Path]:
    """Write `{file name: JSON-able mapping}` into `out_dir` (indented JSON)."""
    paths = []
    for name, doc in documents.items():
        path = Path(out_dir) / name
        path.write_text(json.dumps(doc, indent=1))
        paths.append(path)
    return paths


def run_figures(target, history: Mapping, importance, out_dir, seed: int) -> dict[str, str]:
    """Every figure of a run, in report order; `{caption: file name}`.

    Args:
        target: the run's [`Energy`][boltzflow.energies.base.Energy].
        history: training-curve columns (`step`, `loss`, `ess_step`, `ess_fraction`);
            empty if the run did not train.
        importance: the flow's importance draws, `x [1, n, *event]` and `log_weight [1, n]`.
        out_dir: the run directory (`samples.nc` is already written).
        seed: seeds the target's exact reference samples for the marginals figure.

    The figures the target requests
    ([`report_figures`][boltzflow.energies.base.Energy.report_figures]) come first; the
    marginals and 2-D sample figures show the target's named coordinates
    ([`plot_coordinates`][boltzflow.energies.base.Energy.plot_coordinates]) when it has them.
    """
    out_dir = Path(out_dir)
    x, log_w = importance.x[0], importance.log_weight[0]
    # the target's own figures (Ramachandran plot, charge history, corner plot) lead the report
    figs = dict(draw_requested(out_dir, target.report_figures(x, log_w)))
    if len(history.get("loss", [])):
        figures.plot_training(history, out_dir / "training.png")
        figs["Training curve"] = "training.png"
    figures.plot_log_weights(importance.log_weight, out_dir / "log_weights.png")
    figs["Log-weights"] = "log_weights.png"
    named = target.plot_coordinates(x)
    if named is not None:
        values, labels = named
        figures.plot_marginals(
            values, log_w, out_dir / "marginals.png", labels=labels, max_dims=len(labels)
        )
        figs["Marginals: flow and reweighted (" + ", ".join(labels) + ")"] = "marginals.png"
        if len(labels) >= 2:
            figures.plot_samples_2d(values, log_w, out_dir / "samples_2d.png", labels=labels)
            figs[f"Samples: {labels[1]} against {labels[0]}"] = "samples_2d.png"
    elif x.dim() == 2 and x.shape[1] <= 64:
        ref = None
        with contextlib.suppress(NotImplementedError):
            # deliberate CPU generator: reference draws for a figure, plotted on the host
            ref = target.sample(
                min(20000, x.shape[0]), generator=torch.Generator().manual_seed(seed)
            )
        figures.plot_marginals(x, log_w, out_dir / "marginals.png", reference=ref)
        figs["Marginals: flow, reweighted, exact"] = "marginals.png"
        if x.shape[1] >= 2:
            figures.plot_samples_2d(x, log_w, out_dir / "samples_2d.png", centers=target.means)
            figs["Samples (first two coordinates)"] = "samples_2d.png"
    write_report_data(out_dir, target.report_data(x, log_w))
    return figs
