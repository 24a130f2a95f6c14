"""Flows on $(\\mathbb{R}^3 \\times S^3)^N$ for rigid molecules: orientation and position
transforms, couplings with a permutation-equivariant conditioner, and the builder."""

from boltzflow.flows.rigid.builder import rigid_body_flow
from boltzflow.flows.rigid.charts import mean_structure
from boltzflow.flows.rigid.conditioner import SetConditioner
from boltzflow.flows.rigid.contraction import OrientationContraction, PositionContraction
from boltzflow.flows.rigid.couplings import (
    CentredPositionCoupling,
    OrientationCoupling,
    PositionCoupling,
    RigidLayer,
)
from boltzflow.flows.rigid.distribution import RigidBodyBase

__all__ = [
    "rigid_body_flow",
    "RigidBodyBase",
    "RigidLayer",
    "PositionCoupling",
    "CentredPositionCoupling",
    "OrientationCoupling",
    "PositionContraction",
    "OrientationContraction",
    "SetConditioner",
    "mean_structure",
]
