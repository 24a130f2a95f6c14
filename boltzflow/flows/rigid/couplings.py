r"""Couplings over rigid molecules: positions given orientations, orientations given positions.

Both act on the rigid state `(batch, 7 N)` (layout in
[`boltzflow.flows.rigid.charts`][boltzflow.flows.rigid.charts]) and take their per-molecule
spline parameters from a permutation-equivariant
[`SetConditioner`][boltzflow.flows.rigid.conditioner.SetConditioner] of the coordinates they
keep fixed, so every molecule is conditioned on all the others.

* [`PositionCoupling`][boltzflow.flows.rigid.couplings.PositionCoupling] (no lattice sites: a
  liquid or a generic model) moves one box axis $a$ of every molecule given the other two axes
  and all orientations with circular splines on $2\pi r_{ia}/L_a \in [-\pi, \pi)$ (Rezende et
  al. 2020), diffeomorphisms of the periodic box coordinate; $\mathrm{ladj} = \sum_i \log
  \partial r'_{ia}/\partial r_{ia}$.
* [`CentredPositionCoupling`][boltzflow.flows.rigid.couplings.CentredPositionCoupling] (a
  crystal with lattice sites) moves the displacements $u_i = \operatorname{mi}(\delta_{ia} -
  \bar c_a)$ from the sites relative to the crystal's centre (see the charts module; they sum to
  zero) by a conditioned affine map followed by the projection $P = I - \frac1N 11^\top$ that
  keeps them zero-sum, $u' = P(s \odot u + t)$. The centre is unchanged, so the map commutes
  with translations of the crystal (MD without a centre-of-mass remover drifts), and on the
  zero-sum subspace $\det(P\,\mathrm{diag}(s)) = \prod_i s_i \cdot \frac1N \sum_i s_i^{-1}$:
  $\mathrm{ladj} = \sum_i \log s_i + \log \frac1N\sum_i s_i^{-1}$. Affine conditionals are
  exact for a harmonic crystal (Gaussian conditionals).
* [`OrientationCoupling`][boltzflow.flows.rigid.couplings.OrientationCoupling] moves the
  Rodrigues components $\rho_{ib}$, $b \in S$, of every molecule (relative to reference
  rotations $q_{0,i}$, the identity by default) with rational-quadratic splines with identity
  tails outside $[-B, B]$ (Durkan et al. 2019), given all positions and the other components.
  The map is odd on $S^3$ and its log-Jacobian with respect to the surface measure is
  $\sum_{i, b\in S} \log \partial\rho'_{ib}/\partial\rho_{ib}
  - 2\log(1+|\rho'_i|^2) + 2\log(1+|\rho_i|^2)$ (see the charts module).

The last layer of each conditioner starts at zero: a fresh coupling is the identity.
Reference: Köhler et al. 2023, "Rigid body flows for sampling molecular crystal structures".
"""

from __future__ import annotations

import math

import torch

from boltzflow.flows.base import Transform, TransformResult
from boltzflow.flows.circular import IDENTITY_DERIVATIVE, circular_rq_spline
from boltzflow.flows.rigid.charts import (
    cluster_centre,
    from_rodrigues,
    join_state,
    minimum_image,
    orientation_features,
    periodic_features,
    rodrigues_log_volume,
    split_state,
    to_rodrigues,
)
from boltzflow.flows.rigid.conditioner import SetConditioner
from boltzflow.flows.spline_slope import unconstrained_rq_spline

__all__ = ["RigidLayer", "PositionCoupling", "CentredPositionCoupling", "OrientationCoupling"]


class RigidLayer(Transform):
    """Common state of the rigid-body layers: the box and the optional reference structure.

    Args:
        n_molecules: $N$.
        box: orthorhombic box edges `(3,)` in nm.
        sites: reference positions `(N, 3)` nm (lattice sites), or `None` (no sites: zeros).
        orientations: reference rotations `(N, 4)`, or `None` (the identity).
    """

    def __init__(self, n_molecules: int, box, sites=None, orientations=None):
        super().__init__()
        dtype = torch.get_default_dtype()
        self.n_molecules = int(n_molecules)
        self.register_buffer("box", torch.as_tensor(box, dtype=dtype).reshape(3))
        if sites is None:
            sites = torch.zeros(self.n_molecules, 3)
        if orientations is None:
            orientations = torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(self.n_molecules, 4)
        self.register_buffer("sites", torch.as_tensor(sites, dtype=dtype).reshape(-1, 3).clone())
        q0 = torch.as_tensor(orientations, dtype=dtype).reshape(-1, 4)
        self.register_buffer("orientations", (q0 / q0.norm(dim=-1, keepdim=True)).clone())
        if (
            self.sites.shape[0] != self.n_molecules
            or self.orientations.shape[0] != self.n_molecules
        ):
            raise ValueError("sites and orientations need one row per molecule")

    @property
    def rotations(self) -> torch.Tensor:
        """The reference rotations `(N, 4)`, renormalised (exactly unit in the current dtype)."""
        return self.orientations / self.orientations.norm(dim=-1, keepdim=True)

    def displacements(self, r: torch.Tensor) -> torch.Tensor:
        """Minimum-image displacements `(batch, N, 3)` of positions from the sites."""
        return minimum_image(r - self.sites, self.box)

    def relative_displacements(self, r: torch.Tensor) -> torch.Tensor:
        """Displacements from the sites relative to the crystal's centre, `(batch, N, 3)`,
        zero-sum over molecules (`cluster_centre`)."""
        delta = self.displacements(r)
        return minimum_image(delta - cluster_centre(delta, self.box), self.box)

    def pair_features(self, r: torch.Tensor, axes: list[int]) -> torch.Tensor:
        """$(\\cos, \\sin)(2\\pi (r_j - r_i)/L)$ on `axes`: `(batch, N, N, 2 len(axes))`."""
        ra = r[..., axes]
        return periodic_features(ra[:, None, :, :] - ra[:, :, None, :], self.box[axes])


class PositionCoupling(RigidLayer):
    """Circular splines of box axis `axis` of every molecule given the other axes and all
    orientations (no lattice sites).

    Args:
        n_molecules, box, orientations: as in `RigidLayer` (orientations enter the conditioner
            relative to these reference rotations).
        axis: the box axis moved (0, 1 or 2).
        num_bins, hidden, depth: spline bins $K$ and conditioner size.
    """

    def __init__(
        self, n_molecules, box, *, axis: int, orientations=None, num_bins: int = 8,
        hidden: int = 64, depth: int = 2,
    ):  # fmt: skip
        super().__init__(n_molecules, box, None, orientations)
        self.axis, self.others = int(axis), [b for b in range(3) if b != int(axis)]
        self.num_bins = int(num_bins)
        self.net = SetConditioner(4 + 9, 4, 3 * self.num_bins, hidden, depth)

    def _map(self, x: torch.Tensor, inverse: bool) -> TransformResult:
        r, q = split_state(x)
        d = minimum_image(r, self.box)
        node = [periodic_features(d[..., self.others], self.box[self.others])]
        node.append(orientation_features(q, self.rotations))
        params = self.net(torch.cat(node, dim=-1), self.pair_features(r, self.others))
        k, active = self.num_bins, d[..., self.axis]
        w, h, s = (
            params[..., :k],
            params[..., k : 2 * k],
            params[..., 2 * k :] + IDENTITY_DERIVATIVE,
        )
        scale = float(self.box[self.axis]) / (2 * math.pi)
        moved, lad = circular_rq_spline(active / scale, w, h, s, inverse=inverse)
        shift = torch.zeros_like(r)
        shift[..., self.axis] = moved * scale - active
        return TransformResult(join_state(r + shift, q), lad.sum(-1))

    def forward(self, z: torch.Tensor) -> TransformResult:
        return self._map(z, inverse=False)

    def inverse(self, x: torch.Tensor) -> TransformResult:
        return self._map(x, inverse=True)


class CentredPositionCoupling(RigidLayer):
    """Centre-preserving affine map of the displacements along box axis `axis` from the sites,
    conditioned on the other axes, all orientations and the sites (a crystal).

    Args:
        n_molecules, box, sites, orientations: as in `RigidLayer` (`sites` required).
        axis: the box axis moved (0, 1 or 2).
        scale: length scale (nm) of the displacement features and of the shifts $t$.
        hidden, depth: conditioner size.
    """

    def __init__(
        self, n_molecules, box, sites, orientations=None, *, axis: int, scale: float = 0.05,
        hidden: int = 64, depth: int = 2,
    ):  # fmt: skip
        super().__init__(n_molecules, box, sites, orientations)
        self.axis, self.others = int(axis), [b for b in range(3) if b != int(axis)]
        self.scale = float(scale)
        self.net = SetConditioner(2 + 9 + 6, 4, 2, hidden, depth)

    def _map(self, x: torch.Tensor, inverse: bool) -> TransformResult:
        r, q = split_state(x)
        rel = self.relative_displacements(r)
        node = [rel[..., self.others] / self.scale, orientation_features(q, self.rotations)]
        node.append(periodic_features(self.sites, self.box).expand(r.shape[0], -1, -1))
        params = self.net(torch.cat(node, dim=-1), self.pair_features(r, self.others))
        log_s, t = 2.0 * torch.tanh(0.5 * params[..., 0]), self.scale * params[..., 1]
        u = rel[..., self.axis]
        ladj = log_s.sum(-1) + torch.logsumexp(-log_s, -1) - math.log(self.n_molecules)
        if inverse:
            v = (u - t) * torch.exp(-log_s)
            moved = v - torch.exp(-log_s) * v.sum(-1, keepdim=True) / torch.exp(-log_s).sum(
                -1, keepdim=True
            )
            ladj = -ladj
        else:
            v = torch.exp(log_s) * u + t
            moved = v - v.mean(-1, keepdim=True)
        shift = torch.zeros_like(r)
        shift[..., self.axis] = moved - u
        return TransformResult(join_state(r + shift, q), ladj)

    def forward(self, z: torch.Tensor) -> TransformResult:
        return self._map(z, inverse=False)

    def inverse(self, x: torch.Tensor) -> TransformResult:
        return self._map(x, inverse=True)


class OrientationCoupling(RigidLayer):
    """Splines of Rodrigues components `components` of every molecule given all positions
    and the other components.

    Args:
        n_molecules, box, sites, orientations: as in `RigidLayer`.
        components: the Rodrigues components moved (a subset of `(0, 1, 2)`).
        bound: half-width $B$ of the spline interval in the chart ($B = \\tan(\\phi/2)$ for a
            rotation by $\\phi$); identity outside.
        position_scale: length scale (nm) of the displacement features when there are sites.
        num_bins, hidden, depth: spline bins $K$ and conditioner size.

    Without sites the conditioner sees $(\\cos, \\sin)(2\\pi r_i/L)$ of each molecule; with sites
    it sees the displacements relative to the crystal's centre (translation-invariant) and the
    sites themselves.
    """

    def __init__(
        self, n_molecules, box, *, components=(0, 1, 2), sites=None, orientations=None,
        bound: float = 2.0, position_scale: float = 0.05, num_bins: int = 8, hidden: int = 64,
        depth: int = 2,
    ):  # fmt: skip
        super().__init__(n_molecules, box, sites, orientations)
        self.components = sorted(int(c) for c in components)
        if not self.components or not set(self.components) <= {0, 1, 2}:
            raise ValueError("components must be a non-empty subset of (0, 1, 2)")
        self.rest = [b for b in range(3) if b not in self.components]
        self.bound, self.num_bins = float(bound), int(num_bins)
        self.has_sites, self.position_scale = sites is not None, float(position_scale)
        n_node = 6 + len(self.rest) + (3 if self.has_sites else 0)
        n_params = len(self.components) * (3 * self.num_bins - 1)
        self.net = SetConditioner(n_node, 6, n_params, hidden, depth)

    def _params(self, r: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
        if self.has_sites:
            node = [self.relative_displacements(r) / self.position_scale]
            node.append(periodic_features(self.sites, self.box).expand(r.shape[0], -1, -1))
        else:
            node = [periodic_features(r, self.box)]
        node.append(torch.atan(rho[..., self.rest]))
        return self.net(torch.cat(node, dim=-1), self.pair_features(r, [0, 1, 2]))

    def _map(self, x: torch.Tensor, inverse: bool) -> TransformResult:
        r, q = split_state(x)
        rho, sign = to_rodrigues(q, self.rotations)
        k, n = self.num_bins, len(self.components)
        params = self._params(r, rho).reshape(*rho.shape[:2], n, 3 * k - 1)
        w, h, s = (
            params[..., :k],
            params[..., k : 2 * k],
            params[..., 2 * k :] + IDENTITY_DERIVATIVE,
        )
        active = rho[..., self.components]
        moved, lad = unconstrained_rq_spline(active, w, h, s, inverse, self.bound)
        new = rho.clone()
        new[..., self.components] = moved
        ladj = lad.sum((-1, -2)) + (rodrigues_log_volume(new) - rodrigues_log_volume(rho)).sum(-1)
        return TransformResult(join_state(r, from_rodrigues(new, sign, self.rotations)), ladj)

    def forward(self, z: torch.Tensor) -> TransformResult:
        return self._map(z, inverse=False)

    def inverse(self, x: torch.Tensor) -> TransformResult:
        return self._map(x, inverse=True)
