"""Name → builder registries used by recipes (``systems/*/system.toml``).

Entries are ``"module:attribute"`` strings so that heavy optional modules (OpenMM, dask)
are imported only when a recipe uses them. A recipe may also give a full
``"package.module:attribute"`` path instead of a registered name.

Builder contracts:

* ``TARGETS[kind](**params) -> Energy``
* ``FLOWS[kind](target, **params) -> Flow``
* ``SAMPLERS[method](flow, target, *, n_samples, seed, **params) -> SamplingResult``
* ``LOSSES[name](flow, target, batch, **params) -> scalar``
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

__all__ = ["TARGETS", "FLOWS", "SAMPLERS", "LOSSES", "resolve"]

TARGETS: dict[str, str] = {
    "double-well": "boltzflow.energies.double_well:DoubleWell2D",
    "many-well": "boltzflow.energies.double_well:ManyWell",
    "gmm": "boltzflow.energies.gaussians:GaussianMixture",
    "gmm40": "boltzflow.energies.gaussians:gmm40",
    "funnel": "boltzflow.energies.gaussians:Funnel",
    "correlated-gaussian": "boltzflow.energies.gaussians:CorrelatedGaussian",
    "phi4": "boltzflow.energies.lattice:Phi4",
    "u1": "boltzflow.energies.lattice:U1Wilson",
    "alanine-dipeptide": "boltzflow.molecular.target:AlanineDipeptideTarget",
    "pta-sim": "boltzflow.energies.astro_pta:PTAPosterior",
    "rv-kepler": "boltzflow.energies.astro_rv:RVPosterior",
}

FLOWS: dict[str, str] = {
    "spline-coupling": "boltzflow.flows.builders:spline_coupling_flow",
    "spline-autoregressive": "boltzflow.flows.builders:spline_autoregressive_flow",
    "maf": "boltzflow.flows.builders:maf_flow",
    "circular-spline-coupling": "boltzflow.flows.builders:circular_spline_flow",
    "internal-coordinates": "boltzflow.molecular.flows:internal_coordinate_flow",
    "smooth-coupling": "boltzflow.flows.smooth_coupling:smooth_coupling_flow",
    "phi4-checkerboard": "boltzflow.flows.lattice:phi4_flow",
    "u1-gauge": "boltzflow.flows.lattice_gauge:u1_gauge_flow",
}

SAMPLERS: dict[str, str] = {
    "importance": "boltzflow.sampling.runners:importance_sampling",
    "imh": "boltzflow.sampling.runners:flow_imh",
    "lattice-hmc": "boltzflow.sampling.lattice_hmc:hmc",
    "lattice-flow-hmc": "boltzflow.sampling.lattice_hmc:flow_hmc",
    "hybrid": "boltzflow.sampling.hybrid:hybrid",
    "neutra": "boltzflow.sampling.hybrid:neutra",
    "emcee": "boltzflow.sampling.emcee_move:emcee_sampler",
    "flow-emcee": "boltzflow.sampling.emcee_move:flow_emcee",
    "annealed-flow": "boltzflow.sampling.bayes_anneal:annealed_flow",
}

LOSSES: dict[str, str] = {
    "reverse_kl": "boltzflow.training.losses:reverse_kl",
    "nll": "boltzflow.training.losses:nll",
    "mixed": "boltzflow.training.losses:mixed_kl",
    "force_matching": "boltzflow.training.force_matching:force_matching",
    "nll_force_matching": "boltzflow.training.force_matching:nll_force_matching",
}


def resolve(registry: dict[str, str], name: str, what: str = "entry") -> Callable:
    """Look ``name`` up in ``registry`` (or import it if it is ``"module:attr"``).

    Raises:
        KeyError: naming the unknown entry and the known ones.
    """
    target = registry.get(name)
    if target is None:
        if ":" not in name:
            known = ", ".join(sorted(registry))
            raise KeyError(f"unknown {what} '{name}' (known: {known})")
        target = name
    module, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise KeyError(f"{what} '{name}' could not be loaded from '{target}': {exc}") from exc
