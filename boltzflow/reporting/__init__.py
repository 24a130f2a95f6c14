"""Reports of a run: figures, ``samples.nc``, ``summary.json`` and ``report.md``.

Targets compute; this package draws and writes. A target declares the figures and JSON
documents it wants through :meth:`~boltzflow.energies.base.Energy.report_figures` and
:meth:`~boltzflow.energies.base.Energy.report_data`, and :mod:`.run_figures` draws them.

* :mod:`.figures`: the generic figures (training curve, log-weights, marginals, histograms);
* :mod:`.figures_bayes`: posterior pair and trace plots from ``samples.nc``;
* :mod:`.figures_molecular`: Ramachandran plots;
* :mod:`.idata`: arviz data for ``samples.nc``;
* :mod:`.report`: ``summary.json`` and ``report.md``;
* :mod:`.run_figures`: every figure of a run, including the ones targets request.

Importing the package is light: matplotlib and arviz are imported when a figure is drawn or
a samples file is written.
"""
