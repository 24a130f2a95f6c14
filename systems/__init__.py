"""The systems catalogue, installed as the package data ``boltzflow.systems``.

One folder per system: ``system.toml`` (the recipe), ``README.md`` (physics, units,
references) and small data files. Locate it with :func:`boltzflow.runs.recipes.systems_dir`.
"""
