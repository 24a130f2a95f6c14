"""From a recipe to a report: what `boltzflow run` does.

* [`boltzflow.runs.recipes`][boltzflow.runs.recipes] -- read and validate
  `systems/<name>/system.toml`;
* [`boltzflow.runs.registry`][boltzflow.runs.registry] -- names of targets, flows, samplers and
  losses (built-in and plugins' entry points) that recipes and checkpoints refer to;
* [`boltzflow.runs.pipeline`][boltzflow.runs.pipeline] -- build the target and flow, train, sample,
  reweight, and hand the results to [`boltzflow.reporting`][boltzflow.reporting] (`summary.json`,
  `samples.nc`, figures, `report.md`).
"""
