r"""boltzflow: Boltzmann generators for scientific sampling.

Train a normalizing flow $q_\theta$ towards an unnormalized target
$p(x) \propto e^{-u(x)}$ (energies in kT), then correct it exactly, by importance
weights $\log w = -u(x) - \log q_\theta(x)$ or inside MCMC. `import boltzflow as bf`
gives the names most work needs; everything else lives in the subpackages
(`boltzflow.energies`, `boltzflow.flows`, `boltzflow.training`,
`boltzflow.sampling`).

=============================  ===========================================================
targets                        [`Energy`][boltzflow.energies.base.Energy] (the base class),
[`from_log_prob`][boltzflow.energies.posterior.from_log_prob] flows
[`spline_coupling_flow`][boltzflow.flows.builders.spline_coupling_flow],
[`spline_autoregressive_flow`][boltzflow.flows.builders.spline_autoregressive_flow] training
                               [`train`][boltzflow.training.trainer.train],
                               [`Stage`][boltzflow.training.stages.Stage] independent draws
                               [`importance_sampling`][boltzflow.sampling.runners.importance_sampling],
                               [`reweight`][boltzflow.sampling.reweighting.reweight],
                               [`free_energy_difference`][boltzflow.sampling.reweighting.free_energy_difference]
MCMC                           [`imh`][boltzflow.sampling.runners.flow_imh],
                               [`hmc`][boltzflow.sampling.lattice_hmc.hmc],
                               [`neutra`][boltzflow.sampling.neutra.neutra],
                               [`hybrid`][boltzflow.sampling.hybrid.hybrid],
                               [`smc`][boltzflow.sampling.smc.smc] (gradient-free),
                               [`FlowMove`][boltzflow.sampling.emcee_move.FlowMove] (an emcee move)
checkpoints                    [`load_checkpoint`][boltzflow.io.load_checkpoint]
=============================  ===========================================================

The names are imported on first use, so `import boltzflow` stays light.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("boltzflow")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.1.0"

_PUBLIC = {
    "Energy": "boltzflow.energies.base:Energy",
    "from_log_prob": "boltzflow.energies.posterior:from_log_prob",
    "spline_coupling_flow": "boltzflow.flows.builders:spline_coupling_flow",
    "spline_autoregressive_flow": "boltzflow.flows.builders:spline_autoregressive_flow",
    "train": "boltzflow.training.trainer:train",
    "Stage": "boltzflow.training.stages:Stage",
    "importance_sampling": "boltzflow.sampling.runners:importance_sampling",
    "reweight": "boltzflow.sampling.reweighting:reweight",
    "free_energy_difference": "boltzflow.sampling.reweighting:free_energy_difference",
    "imh": "boltzflow.sampling.runners:flow_imh",
    "hmc": "boltzflow.sampling.lattice_hmc:hmc",
    "neutra": "boltzflow.sampling.neutra:neutra",
    "hybrid": "boltzflow.sampling.hybrid:hybrid",
    "smc": "boltzflow.sampling.smc:smc",
    "FlowMove": "boltzflow.sampling.emcee_move:FlowMove",
    "load_checkpoint": "boltzflow.io:load_checkpoint",
}
"""Public name -> ``"module:attribute"`` it comes from."""

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    """Import a public name on first access (PEP 562)."""
    where = _PUBLIC.get(name)
    if where is None:
        raise AttributeError(f"module 'boltzflow' has no attribute {name!r}")
    module, _, attr = where.partition(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
