"""Name → builder registries: built-in entries plus plugins from package entry points.

Built-in entries are `"module:attribute"` strings so that heavy optional modules (OpenMM,
dask) are imported only when a recipe uses them. Third-party packages add their own targets,
flows, samplers and losses through package entry points, the ecosystem's plugin convention:

    # the plugin's pyproject.toml
    [project.entry-points."boltzflow.flows"]
    my-flow = "my_package.flows:build_my_flow"

Groups: `boltzflow.targets`, `boltzflow.flows`, `boltzflow.samplers`,
`boltzflow.losses` (each [`Registry`][boltzflow.runs.registry.Registry]'s `group`). A plugin cannot
override a built-in name.

Two levels of trust:

* **Recipes are code.** A recipe (`system.toml`) may name a registered entry or give a full
  `"package.module:attribute"` path, which is imported and called (`allow_import=True`,
  the default). Run recipes only from sources you trust, as you would a script.
* **Checkpoints are data.** [`boltzflow.io.load_checkpoint`][boltzflow.io.load_checkpoint] resolves
  the `builder` saved in `flow.json` with `allow_import=False`: only registered names are accepted,
  and nothing is imported or called for a name that is not registered.

Builder contracts:

* `TARGETS[kind](**params) -> Energy`
* `FLOWS[kind](target, **params) -> Flow`
* `SAMPLERS[method](flow, target, *, n_samples, seed, **params) -> SamplingResult`
* `LOSSES[name](flow, target, batch, **params) -> scalar`
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib import metadata

__all__ = ["Registry", "TARGETS", "FLOWS", "SAMPLERS", "LOSSES", "registered", "resolve"]


class Registry(dict):
    """Built-in `{name: "module:attr"}` entries of one kind, and its entry-point `group`."""

    def __init__(self, group: str, entries: dict[str, str]):
        super().__init__(entries)
        self.group = group


TARGETS = Registry(
    "boltzflow.targets",
    {
        "double-well": "boltzflow.energies.double_well:DoubleWell2D",
        "many-well": "boltzflow.energies.double_well:ManyWell",
        "gmm": "boltzflow.energies.gaussians:GaussianMixture",
        "gmm40": "boltzflow.energies.gaussians:gmm40",
        "funnel": "boltzflow.energies.gaussians:Funnel",
        "correlated-gaussian": "boltzflow.energies.gaussians:CorrelatedGaussian",
        "phi4": "boltzflow.energies.lattice:Phi4",
        "u1": "boltzflow.energies.lattice:U1Wilson",
        "alanine-dipeptide": "boltzflow.molecular.target:AlanineDipeptideTarget",
        "ice-xi-16": "boltzflow.molecular.ice:IceXITarget",
        "pta-sim": "boltzflow.energies.astro_pta:PTAPosterior",
        "rv-kepler": "boltzflow.energies.astro_rv:RVPosterior",
        "product-student-t": "boltzflow.energies.heavy_tails:ProductStudentT",
        "t-regression": "boltzflow.energies.heavy_tails:StudentTRegression",
    },
)

FLOWS = Registry(
    "boltzflow.flows",
    {
        "spline-coupling": "boltzflow.flows.builders:spline_coupling_flow",
        "realnvp": "boltzflow.flows.snf:realnvp_flow",
        "spline-autoregressive": "boltzflow.flows.builders:spline_autoregressive_flow",
        "maf": "boltzflow.flows.builders:maf_flow",
        "circular-spline-coupling": "boltzflow.flows.builders:circular_spline_flow",
        "internal-coordinates": "boltzflow.molecular.flows:internal_coordinate_flow",
        "smooth-coupling": "boltzflow.flows.smooth_coupling:smooth_coupling_flow",
        "phi4-checkerboard": "boltzflow.flows.lattice:phi4_flow",
        "u1-gauge": "boltzflow.flows.lattice_gauge:u1_gauge_flow",
        "tail-adaptive": "boltzflow.flows.tail_builders:tail_adaptive_flow",
        "rigid-body": "boltzflow.flows.rigid.builder:rigid_body_flow",
        "identity": "boltzflow.flows.sample_set:identity_flow",
    },
)

SAMPLERS = Registry(
    "boltzflow.samplers",
    {
        "importance": "boltzflow.sampling.runners:importance_sampling",
        "imh": "boltzflow.sampling.runners:flow_imh",
        "lattice-hmc": "boltzflow.sampling.lattice_hmc:hmc",
        "lattice-flow-hmc": "boltzflow.sampling.lattice_hmc:flow_hmc",
        "hybrid": "boltzflow.sampling.hybrid:hybrid_sampler",
        "neutra": "boltzflow.sampling.neutra:neutra",
        "emcee": "boltzflow.sampling.emcee_move:emcee_sampler",
        "flow-emcee": "boltzflow.sampling.emcee_move:flow_emcee",
        "annealed-flow": "boltzflow.sampling.bayes_anneal:annealed_flow",
        "smc": "boltzflow.sampling.smc:smc",
    },
)

LOSSES = Registry(
    "boltzflow.losses",
    {
        "reverse_kl": "boltzflow.training.losses:reverse_kl",
        "nll": "boltzflow.training.losses:nll",
        "mixed": "boltzflow.training.losses:mixed_kl",
        "forward_kl_is": "boltzflow.training.losses:forward_kl_is",
        "snf_reverse_kl": "boltzflow.training.losses:snf_reverse_kl",
        "snf_nll": "boltzflow.training.losses:snf_nll",
        "path_reverse_kl": "boltzflow.training.path_gradients:path_reverse_kl",
        "path_nll": "boltzflow.training.path_gradients:path_nll",
        "snf_layers_nll": "boltzflow.training.losses:snf_layers_nll",
        "force_matching": "boltzflow.training.force_matching:force_matching",
        "nll_force_matching": "boltzflow.training.force_matching:nll_force_matching",
        "targeted_fep": "boltzflow.training.targeted:targeted_fep",
    },
)


def _plugins(group: str) -> dict[str, str]:
    """`{name: "module:attr"}` declared by installed packages in entry-point `group`.

    Reading entry points imports nothing: only the distributions' metadata is read.
    """
    return {ep.name: ep.value for ep in metadata.entry_points(group=group)}


def registered(registry: dict[str, str]) -> dict[str, str]:
    """Every name `registry` accepts: the plugins' entry points, then the built-ins.

    Built-in names win over a plugin of the same name.
    """
    plugins = _plugins(registry.group) if isinstance(registry, Registry) else {}
    return {**plugins, **registry}


def resolve(
    registry: dict[str, str], name: str, what: str = "entry", *, allow_import: bool = True
) -> Callable:
    """Look `name` up among the registered entries and return the object it names.

    Args:
        registry: one of `TARGETS`, `FLOWS`, `SAMPLERS`, `LOSSES`.
        name: a registered name (built-in or entry point), or, when `allow_import`, a
            `"package.module:attribute"` path.
        what: what the name is, for error messages (`"flow"`, `"loss"`, ...).
        allow_import: accept unregistered `"module:attr"` paths. `False` for untrusted
            input such as checkpoint metadata: an unregistered name is refused before anything
            is imported.

    Raises:
        KeyError: an unknown name (the message lists the known ones), a refused import path,
            or an entry that cannot be loaded.
    """
    entries = registered(registry)
    location = entries.get(str(name))
    if location is None:
        known = ", ".join(sorted(entries))
        if ":" not in str(name):
            raise KeyError(f"unknown {what} '{name}' (known: {known})")
        if not allow_import:
            group = getattr(registry, "group", "boltzflow.<kind>")
            raise KeyError(
                f"{what} '{name}' is not registered, and import paths are not accepted here "
                f"(known: {known}). Register it under the entry-point group '{group}' or pass "
                "the callable explicitly."
            )
        location = str(name)
    module, _, attr = location.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise KeyError(f"{what} '{name}' could not be loaded from '{location}': {exc}") from exc
