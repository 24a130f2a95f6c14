"""From a recipe to a report: what ``boltzflow run`` does.

* :mod:`boltzflow.runs.recipes` -- read and validate ``systems/<name>/system.toml``;
* :mod:`boltzflow.runs.registry` -- names of targets, flows, samplers and losses (built-in and
  plugins' entry points) that recipes and checkpoints refer to;
* :mod:`boltzflow.runs.pipeline` -- build the target and flow, train, sample, reweight, and
  hand the results to :mod:`boltzflow.reporting` (``summary.json``, ``samples.nc``, figures,
  ``report.md``).
"""
