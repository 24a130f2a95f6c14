"""Normalizing flows: the Transform/Flow contract, nflows adapters and builders."""

from boltzflow.flows.affine import ElementwiseAffine
from boltzflow.flows.base import (
    Compose,
    Flow,
    FlowSample,
    InverseTransform,
    Transform,
    TransformResult,
)
from boltzflow.flows.builders import (
    circular_spline_flow,
    maf_flow,
    spline_autoregressive_flow,
    spline_coupling_flow,
)
from boltzflow.flows.circular import (
    CircularShift,
    CircularSpline,
    CircularSplineCoupling,
    circular_rq_spline,
    wrap_angle,
)
from boltzflow.flows.distributions import MixedNormalTorus, StandardNormal, UniformTorus
from boltzflow.flows.nflows_adapter import NflowsTransform, to_nflows
from boltzflow.flows.smooth import SigmoidToInterval, SmoothMixture
from boltzflow.flows.smooth_coupling import SmoothCoupling, smooth_coupling_flow

__all__ = [
    "Compose",
    "Flow",
    "FlowSample",
    "InverseTransform",
    "Transform",
    "TransformResult",
    "StandardNormal",
    "UniformTorus",
    "MixedNormalTorus",
    "ElementwiseAffine",
    "NflowsTransform",
    "to_nflows",
    "CircularShift",
    "CircularSpline",
    "CircularSplineCoupling",
    "circular_rq_spline",
    "wrap_angle",
    "spline_coupling_flow",
    "circular_spline_flow",
    "spline_autoregressive_flow",
    "maf_flow",
    "SmoothMixture",
    "SigmoidToInterval",
    "SmoothCoupling",
    "smooth_coupling_flow",
]
