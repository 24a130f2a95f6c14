"""Internal coordinates for molecules: Z-matrices, the internal ↔ Cartesian transform, chirality."""

from boltzflow.coordinates.chirality import alpha_carbon_quads, chiral_volume, is_l_chirality
from boltzflow.coordinates.transform import InternalCoordinateTransform
from boltzflow.coordinates.zmatrix import ZMatrix, zmatrix_from_bonds, zmatrix_from_topology

__all__ = [
    "ZMatrix",
    "zmatrix_from_bonds",
    "zmatrix_from_topology",
    "InternalCoordinateTransform",
    "chiral_volume",
    "is_l_chirality",
    "alpha_carbon_quads",
]
