"""RealNVP for the flow property registry (discovered by `registry.py`): round trip, log-det
against the autograd Jacobian in float64, gradients to every parameter."""

from __future__ import annotations

from boltzflow.flows.snf import realnvp_flow

from .registry import perturbed


def _builder(*args, **kwargs):
    return lambda seed: perturbed(realnvp_flow(*args, seed=seed, **kwargs), seed)


FACTORIES = {
    "realnvp-2d": _builder(2, num_layers=2, hidden=8, num_blocks=1),
    "realnvp-5d": _builder(5, num_layers=4, hidden=8, num_blocks=1, loc=0.5, scale=1.5),
}
