"""Reports of a run: figures, `samples.nc`, `summary.json` and `report.md`.

Targets compute; this package draws and writes. A target declares the figures and JSON
documents it wants through [`report_figures`][boltzflow.energies.base.Energy.report_figures] and
[`report_data`][boltzflow.energies.base.Energy.report_data], and
[`run_figures`][boltzflow.reporting.run_figures] draws them.

* [`figures`][boltzflow.reporting.figures]: the generic figures (training curve, log-weights,
  marginals, histograms);
* `figures_bayes`: posterior pair and trace plots from `samples.nc`;
* `figures_molecular`: Ramachandran plots;
* `idata`: arviz data for `samples.nc`;
* `report`: `summary.json` and `report.md`;
* [`run_figures`][boltzflow.reporting.run_figures]: every figure of a run, including the ones
  targets request.

Importing the package is light: matplotlib and arviz are imported when a figure is drawn or
a samples file is written.
"""
