r"""Learnable contractions of a rigid crystal about its reference structure.

In a harmonic crystal at temperature $T$ the displacements from the lattice (positions and
small rotations alike) are Gaussian with covariance $\propto T$, so the map from $T_A$ to $T_B$
is a contraction of every displacement by $\sqrt{T_B/T_A}$. These layers express that map with
one learnable factor per axis (initialised to `scale`, $1$ = identity); spline couplings learn
the anharmonic rest.

* [`PositionContraction`][boltzflow.flows.rigid.contraction.PositionContraction]: with
  $u_i = \operatorname{mi}(\delta_i - \bar c)$ the displacement of molecule $i$ from its site
  relative to the crystal's centre $\bar c$ (`cluster_centre`; $\sum_i u_i = 0$),
  $r_i' = r_i - (1 - s)\odot u_i$. The centre is kept (the energy is invariant under
  translations, so the translation is not contracted, and a drifting crystal is handled) and
  the $3(N-1)$ relative displacements are contracted: $\mathrm{ladj} = (N-1)\sum_a \log s_a$.
  It is a bijection while the crystal stays compact (every $|u_{ia}| < L_a/2$). The sites are
  learnable (the mean structure at $T_B$ need not be the reference given).
* [`OrientationContraction`][boltzflow.flows.rigid.contraction.OrientationContraction]:
  $\rho_i' = s \odot \rho_i$ in the Rodrigues chart about the reference rotation $q_{0,i}$
  (a bijection of $S^3$, odd, so densities stay even), with
  $\mathrm{ladj} = N\sum_b \log s_b + \sum_i [2\log(1+|\rho_i|^2) - 2\log(1+|\rho'_i|^2)]$.
  Near $q_{0,i}$ this contracts the rotation angle by $s$.

Reference: Köhler et al. 2023, "Rigid body flows for sampling molecular crystal structures".
"""

from __future__ import annotations

import math

import torch
from torch import nn

from boltzflow.flows.base import TransformResult
from boltzflow.flows.rigid.charts import (
    from_rodrigues,
    join_state,
    rodrigues_log_volume,
    split_state,
    to_rodrigues,
)
from boltzflow.flows.rigid.couplings import RigidLayer

__all__ = ["PositionContraction", "OrientationContraction"]


class PositionContraction(RigidLayer):
    """Centroid-preserving contraction of displacements about the sites, factor $s_a$ per axis.

    Args:
        n_molecules, box, sites, orientations: as in
            [`RigidLayer`][boltzflow.flows.rigid.couplings.RigidLayer] (`sites` required).
        scale: initial factor $s$ (all axes).
    """

    def __init__(self, n_molecules, box, sites, orientations=None, scale: float = 1.0):
        super().__init__(n_molecules, box, sites, orientations)
        self.sites = nn.Parameter(self.sites)  # replaces the buffer: a learnable fixed point
        self.log_scale = nn.Parameter(torch.full((3,), math.log(float(scale))))

    def _map(self, x: torch.Tensor, sign: float) -> TransformResult:
        r, q = split_state(x)
        rel = self.relative_displacements(r)
        factor = torch.exp(sign * self.log_scale)
        ladj = sign * (self.n_molecules - 1) * self.log_scale.sum()
        return TransformResult(join_state(r - (1 - factor) * rel, q), ladj.expand(x.shape[0]))

    def forward(self, z: torch.Tensor) -> TransformResult:
        return self._map(z, 1.0)

    def inverse(self, x: torch.Tensor) -> TransformResult:
        return self._map(x, -1.0)


class OrientationContraction(RigidLayer):
    """Scaling $\\rho \\mapsto s \\odot \\rho$ of the Rodrigues vectors about the references.

    Args:
        n_molecules, box, sites, orientations: as in
            [`RigidLayer`][boltzflow.flows.rigid.couplings.RigidLayer].
        scale: initial factor $s$ (all three components).
    """

    def __init__(self, n_molecules, box, sites=None, orientations=None, scale: float = 1.0):
        super().__init__(n_molecules, box, sites, orientations)
        self.log_scale = nn.Parameter(torch.full((3,), math.log(float(scale))))

    def _map(self, x: torch.Tensor, sign: float) -> TransformResult:
        r, q = split_state(x)
        rho, hemisphere = to_rodrigues(q, self.rotations)
        new = rho * torch.exp(sign * self.log_scale)
        ladj = sign * self.n_molecules * self.log_scale.sum()
        ladj = ladj + (rodrigues_log_volume(new) - rodrigues_log_volume(rho)).sum(-1)
        return TransformResult(join_state(r, from_rodrigues(new, hemisphere, self.rotations)), ladj)

    def forward(self, z: torch.Tensor) -> TransformResult:
        return self._map(z, 1.0)

    def inverse(self, x: torch.Tensor) -> TransformResult:
        return self._map(x, -1.0)
