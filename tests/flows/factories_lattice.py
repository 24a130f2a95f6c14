"""Lattice flows for the flow property registry (discovered by ``registry.py``)."""

from __future__ import annotations

from boltzflow.flows.lattice import phi4_flow
from boltzflow.flows.lattice_gauge import u1_gauge_flow

from .registry import perturbed

SMALL = dict(hidden=[4], kernel_size=3)

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
    "u1-gauge-tree-loops-L4": lambda seed: perturbed(
        u1_gauge_flow(L=4, num_layers=4, num_bins=4, seed=seed, **SMALL), seed
    ),
}
