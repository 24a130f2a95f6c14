"""Lattice flows for the flow property registry (discovered by ``registry.py``)."""

from __future__ import annotations

import torch

from boltzflow.flows.base import Compose, Flow
from boltzflow.flows.distributions import UniformTorus
from boltzflow.flows.lattice import phi4_flow
from boltzflow.flows.lattice_gauge import (
    GaugeEquivariantCoupling,
    u1_gauge_flow,
)
from boltzflow.flows.lattice_tree import (
    PlaquetteTreeSpline,
    SinkSpline,
)

from .registry import perturbed

SMALL = dict(hidden=[4], kernel_size=3)


def _tree_flow(seed: int) -> Flow:
    """Tree and sink layers (unit parameter scale, so that perturbations stay moderate) followed
    by masked couplings with loop features and positional biases."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers = [PlaquetteTreeSpline(4, 4, 2, param_scale=1.0), SinkSpline(4, 4, 2, 1.0)]
        layers += [
            GaugeEquivariantCoupling(4, mu, 0, 4, [4], 3, positional=True, loops=True)
            for mu in (0, 1)
        ]
    return perturbed(Flow(UniformTorus((2, 4, 4)), Compose(layers)), seed)


FACTORIES = {
    "phi4-affine-L4": lambda seed: perturbed(
        phi4_flow(L=4, num_layers=2, coupling="affine", seed=seed, **SMALL), seed
    ),
    "phi4-spline-L4": lambda seed: perturbed(
        phi4_flow(L=4, num_layers=2, coupling="spline", num_bins=4, seed=seed, **SMALL), seed
    ),
    "u1-gauge-L4": lambda seed: perturbed(
        u1_gauge_flow(
            L=4,
            num_layers=4,
            num_bins=4,
            positional=False,
            loops=False,
            descending=False,
            tree=False,
            seed=seed,
            **SMALL,
        ),
        seed,
    ),
    "u1-gauge-tree-loops-L4": _tree_flow,
}
