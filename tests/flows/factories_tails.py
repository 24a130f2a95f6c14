"""Tail-adaptive flows for the flow property registry (discovered by ``registry.py``)."""

from __future__ import annotations

import torch

from boltzflow.flows.base import Compose, Flow
from boltzflow.flows.builders import spline_coupling_flow
from boltzflow.flows.distributions import StandardNormal
from boltzflow.flows.tail_builders import tail_adaptive_flow
from boltzflow.flows.tails import GroupLinear, StudentTNormal, TailTransform

from .registry import perturbed

SMALL = dict(num_layers=2, hidden=8, num_blocks=1, num_bins=4, tail_bound=3.0)
HEAVY = [True, False, True, True]


def _layers(base, make):
    def factory(seed: int) -> Flow:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return perturbed(Flow(base(), Compose(make(seed))), seed)

    return factory


def _builder(*args, **kwargs):
    return lambda seed: perturbed(tail_adaptive_flow(*args, seed=seed, **kwargs), seed)


FACTORIES = {
    "tails-student-t-base-group-linear": _layers(
        lambda: StudentTNormal(HEAVY, df=[0.7, 1.5, 3.0]),
        lambda seed: [GroupLinear([1, 0, 1, 1], generator=torch.Generator().manual_seed(seed))],
    ),
    "tails-tail-transform": _layers(
        lambda: StandardNormal(3),
        lambda seed: [TailTransform(3, tail_weights=[[0.3, 1.0, 0.05], [0.8, 0.2, 1.5]], loc=0.3)],
    ),
    "tails-tail-transform-fixed": _layers(
        lambda: StandardNormal(2),
        lambda seed: [TailTransform(2, tail_weights=0.5, learnable_tails=False)],
    ),
    # Both orientations: the MAF one here, the inverse-autoregressive default below. df >= 2
    # keeps base draws moderate: the perturbed random conditioners amplify float64 round-off
    # of Cauchy-sized inputs in the d-pass inverse past the checks' 1e-8 absolute tolerance.
    "tails-mtaf-3d": _builder(
        3,
        tails="mtaf",
        heavy=[True, False, True],
        df=[2.0, 3.0],
        inverse_autoregressive=False,
        **SMALL,
    ),
    "tails-mtaf-3d-neutral": _builder(3, tails="mtaf", tail_index="neutral", **SMALL),
    "tails-ttf-3d": _builder(3, tails="ttf", heavy=[False, True, True], df=[1.0, 2.0], **SMALL),
    "tails-ttf-coupling-4d": lambda seed: perturbed(
        spline_coupling_flow(4, tails="ttf", seed=seed, **SMALL), seed
    ),
}
