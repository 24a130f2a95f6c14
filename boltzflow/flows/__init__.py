"""Normalizing flows: the Transform/Flow contract, nflows adapters and builders."""

from boltzflow.flows.base import (
    Compose,
    Flow,
    FlowSample,
    InverseTransform,
    Transform,
    TransformResult,
)
from boltzflow.flows.distributions import StandardNormal, UniformTorus

__all__ = [
    "Compose",
    "Flow",
    "FlowSample",
    "InverseTransform",
    "Transform",
    "TransformResult",
    "StandardNormal",
    "UniformTorus",
]
