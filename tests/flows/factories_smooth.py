"""Smooth mixture flows for the flow property registry (discovered by ``registry.py``)."""

from __future__ import annotations

import torch

from boltzflow.flows.base import Compose, Flow, InverseTransform
from boltzflow.flows.distributions import MixedNormalTorus, UniformTorus
from boltzflow.flows.smooth import SmoothMixture
from boltzflow.flows.smooth_coupling import SmoothCoupling, smooth_coupling_flow

from .registry import perturbed

SMALL = dict(hidden=8, num_blocks=1, num_components=3)
MIXED = [True, False, True, False]


def _layer(base, make):
    def factory(seed: int) -> Flow:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return perturbed(Flow(base(), Compose(make())), seed)

    return factory


def _builder(*args, **kwargs):
    return lambda seed: perturbed(smooth_coupling_flow(*args, seed=seed, **kwargs), seed)


FACTORIES = {
    "smooth-1d": _builder(1, num_components=3),
    "smooth-circle-1d": _builder(1, periodic=True, num_components=3),
    "smooth-coupling-2d": _builder(2, num_layers=2, **SMALL),
    "smooth-coupling-3d-sampling": _builder(3, num_layers=3, fast="sampling", **SMALL),
    "smooth-torus-3d": _builder(3, num_layers=3, periodic=True, **SMALL),
    "smooth-mixed-4d": _builder(4, num_layers=4, periodic=MIXED, loc=0.5, scale=1.5, **SMALL),
    "smooth-mixed-4d-structured": _builder(
        4, num_layers=4, periodic=MIXED, masks="structured", **SMALL
    ),
    "smooth-mixture-circle": _layer(
        lambda: UniformTorus(3), lambda: SmoothMixture(3, 3, circular=True)
    ),
    "smooth-coupling-torus-layer": _layer(
        lambda: MixedNormalTorus([True, True, False]),
        lambda: SmoothCoupling([1, 0, 0], [True, True, False], 8, 1, 3),
    ),
    "smooth-coupling-torus-layer-inverse": _layer(
        lambda: UniformTorus(3),
        lambda: InverseTransform(SmoothCoupling([0, 1, 1], [True] * 3, 8, 1, 3)),
    ),
}
