"""Registry of flow factories checked by ``test_flow_registry.py``.

A factory is ``factory(seed: int) -> Flow``: it builds a small float64 flow whose parameters
are perturbed away from their initialisation (so that the checks can fail), deterministically
in ``seed``. Transforms are wrapped in a :class:`~boltzflow.flows.base.Flow` with a base that
matches their domain (a ``UniformTorus``/``MixedNormalTorus`` base marks periodic coordinates,
which the periodicity check then tests).

Other flow families add their own entries without editing this file: put a module
``tests/flows/factories_<family>.py`` next to it that defines ``FACTORIES: dict[str, factory]``;
it is imported and merged here.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from pathlib import Path

import torch

from boltzflow.flows import nflows_adapter as nfa
from boltzflow.flows.affine import DenseAffine, ElementwiseAffine
from boltzflow.flows.base import Compose, Flow, InverseTransform
from boltzflow.flows.builders import (
    circular_spline_flow,
    maf_flow,
    spline_autoregressive_flow,
    spline_coupling_flow,
)
from boltzflow.flows.circular import CircularShift, CircularSpline, CircularSplineCoupling
from boltzflow.flows.distributions import MixedNormalTorus, StandardNormal, UniformTorus

__all__ = ["FLOW_FACTORIES", "perturbed", "register"]

FlowFactory = Callable[[int], Flow]
FLOW_FACTORIES: dict[str, FlowFactory] = {}

SMALL = dict(hidden=8, num_blocks=1)
SPLINE = dict(num_bins=4, tail_bound=3.0)


def perturbed(flow: Flow, seed: int, scale: float = 0.2) -> Flow:
    """Cast to float64 and add ``scale``-sized Gaussian noise to every parameter."""
    flow = flow.double()
    gen = torch.Generator().manual_seed(10_000 + seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return flow


def register(name: str) -> Callable[[FlowFactory], FlowFactory]:
    """Decorator adding ``factory`` to :data:`FLOW_FACTORIES` under ``name``."""

    def add(factory: FlowFactory) -> FlowFactory:
        if name in FLOW_FACTORIES:
            raise KeyError(f"flow factory {name!r} registered twice")
        FLOW_FACTORIES[name] = factory
        return factory

    return add


def _seeded_layer(seed: int, make):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def _builder(name: str, build: Callable[..., Flow], *args, **kwargs) -> None:
    register(name)(lambda seed: perturbed(build(*args, seed=seed, **kwargs), seed))


def _layer(name: str, base: Callable[[], torch.nn.Module], make) -> None:
    def factory(seed: int) -> Flow:
        return perturbed(Flow(base(), Compose(_seeded_layer(seed, make))), seed)

    register(name)(factory)


MIXED = [True, False, True, False]

# Builders (the flows recipes use).
_builder("spline-coupling-1d", spline_coupling_flow, 1, **SPLINE)
_builder("spline-coupling-2d", spline_coupling_flow, 2, num_layers=2, **SMALL, **SPLINE)
_builder("spline-coupling-2x3", spline_coupling_flow, (2, 3), num_layers=3, **SMALL, **SPLINE)
_builder("spline-autoregressive-3d", spline_autoregressive_flow, 3, num_layers=2, **SMALL, **SPLINE)
_builder(
    "spline-iaf-3d",
    spline_autoregressive_flow,
    3,
    num_layers=2,
    inverse_autoregressive=True,
    permutation="random",
    **SMALL,
    **SPLINE,
)
_builder(
    "spline-coupling-dense-3d",
    spline_coupling_flow,
    3,
    num_layers=2,
    identity_init=True,
    affine="dense",
    loc=0.5,
    scale=1.5,
    **SMALL,
    **SPLINE,
)
_builder("maf-3d", maf_flow, 3, num_layers=2, **SMALL)
_builder("maf-1d", maf_flow, 1, loc=1.0, scale=2.0)
_builder("circular-spline-1d", circular_spline_flow, 1, num_bins=4)
_builder("circular-coupling-3d", circular_spline_flow, 3, num_layers=3, **SMALL, num_bins=4)
_builder(
    "mixed-coupling-4d",
    spline_coupling_flow,
    4,
    periodic=MIXED,
    num_layers=4,
    loc=0.5,
    scale=1.5,
    **SMALL,
    **SPLINE,
)

# Single transforms.
_layer("rq-coupling", lambda: StandardNormal(3), lambda: nfa.rq_coupling([1, 0, 1], 8, 1, 4, 3.0))
_layer("rq-elementwise", lambda: StandardNormal(2), lambda: nfa.rq_elementwise(2, 4, 3.0))
_layer("maf-layer", lambda: StandardNormal(3), lambda: nfa.maf(3, 8, 1))
_layer("rq-autoregressive", lambda: StandardNormal(3), lambda: nfa.rq_autoregressive(3, 8, 1, 4))
_layer("iaf-layer", lambda: StandardNormal(3), lambda: InverseTransform(nfa.maf(3, 8, 1)))
_layer("reverse-permutation", lambda: StandardNormal(3), lambda: nfa.reverse_permutation(3))
_layer(
    "random-permutation",
    lambda: StandardNormal(4),
    lambda: nfa.random_permutation(4, torch.Generator().manual_seed(3)),
)
_layer("dense-affine", lambda: StandardNormal(4), lambda: DenseAffine(4, loc=1.0, scale=0.5))
_layer(
    "elementwise-affine",
    lambda: StandardNormal((2, 2)),
    lambda: ElementwiseAffine((2, 2), loc=torch.tensor([[0.0, 1.0], [2.0, 3.0]]), scale=0.5),
)
_layer(
    "elementwise-affine-masked",
    lambda: MixedNormalTorus(MIXED),
    lambda: ElementwiseAffine(4, loc=1.0, scale=2.0, active=[not p for p in MIXED]),
)
_layer("circular-spline", lambda: UniformTorus(3), lambda: CircularSpline(3, num_bins=5))
_layer(
    "circular-shift",
    lambda: MixedNormalTorus(MIXED),
    lambda: CircularShift(torch.tensor([2.0, 0.0, -1.0, 0.0]) * math.pi / 3, MIXED),
)
_layer(
    "circular-spline-coupling",
    lambda: MixedNormalTorus(MIXED),
    lambda: CircularSplineCoupling([1, 1, 0, 0], MIXED, 8, 1, 4, 3.0),
)
_layer(
    "circular-spline-coupling-periodic-condition",
    lambda: UniformTorus(3),
    lambda: CircularSplineCoupling([0, 1, 0], [True] * 3, 8, 1, 4, 3.0),
)


def _discover() -> None:
    for path in sorted(Path(__file__).parent.glob("factories_*.py")):
        module = importlib.import_module(f"{__package__}.{path.stem}")
        for name, factory in getattr(module, "FACTORIES", {}).items():
            register(name)(factory)


_discover()
