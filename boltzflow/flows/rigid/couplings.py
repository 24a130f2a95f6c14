r"""Couplings over rigid molecules: positions given orientations, orientations given positions.

Both act on the rigid state `(batch, 7 N)` (layout in
[`boltzflow.flows.rigid.charts`][boltzflow.flows.rigid.charts]) and take their per-molecule
spline parameters from a permutation-equivariant
[`SetConditioner`][boltzflow.flows.rigid.conditioner.SetConditioner] of the coordinates they
keep fixed, so every molecule is conditioned on all the others.

* [`PositionCoupling`][boltzflow.flows.rigid.couplings.PositionCoupling] moves one box axis
  $a$ of every molecule, $d_{ia} = \operatorname{mi}(r_{ia} - c_{ia})$ (the minimum-image
  displacement from a site $c_i$, zero without reference sites), given the other two axes and
  all orientations. Without a `window`, $d_{ia}$ is mapped by a circular spline on
  $2\pi d/L_a \in [-\pi, \pi)$ (Rezende et al. 2020), a diffeomorphism of the periodic box
  coordinate; with a `window` $W < L_a/2$ (crystals: displacements about lattice sites), by a
  rational-quadratic spline on $[-W, W]$ with identity tails, which is again a diffeomorphism
  of the circle. $r_{ia} \mapsto r_{ia} + d'_{ia} - d_{ia}$, $\mathrm{ladj} = \sum_i \log
  \partial d'_{ia}/\partial d_{ia}$.
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
from nflows.transforms.splines.rational_quadratic import unconstrained_rational_quadratic_spline

from boltzflow.flows.base import Transform, TransformResult
from boltzflow.flows.circular import IDENTITY_DERIVATIVE, circular_rq_spline
from boltzflow.flows.rigid.charts import (
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

__all__ = ["RigidLayer", "PositionCoupling", "OrientationCoupling"]


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

    def pair_features(self, r: torch.Tensor, axes: list[int]) -> torch.Tensor:
        """$(\\cos, \\sin)(2\\pi (r_j - r_i)/L)$ on `axes`: `(batch, N, N, 2 len(axes))`."""
        ra = r[..., axes]
        return periodic_features(ra[:, None, :, :] - ra[:, :, None, :], self.box[axes])


class PositionCoupling(RigidLayer):
    """Splines of box axis `axis` of every molecule given the other axes and all orientations.

    Args:
        n_molecules, box, sites, orientations: as in `RigidLayer`.
        axis: the box axis moved (0, 1 or 2).
        window: half-width $W$ (nm) of the spline interval about each site, or `None` for a
            circular spline over the whole box edge.
        num_bins, hidden, depth: spline bins $K$ and conditioner size.
    """

    def __init__(
        self, n_molecules, box, *, axis: int, sites=None, orientations=None, window=None,
        num_bins: int = 8, hidden: int = 64, depth: int = 2,
    ):  # fmt: skip
        super().__init__(n_molecules, box, sites, orientations)
        self.axis, self.others = int(axis), [b for b in range(3) if b != int(axis)]
        self.window = None if window is None else float(window)
        if self.window is not None and not 0 < self.window < 0.5 * float(self.box[axis]):
            raise ValueError("the spline window must lie within half the box edge")
        self.num_bins = int(num_bins)
        n_params = 3 * self.num_bins - (0 if self.window is None else 1)
        n_node = 4 + 9 + (0 if self.window is None else 2)
        self.net = SetConditioner(n_node, 4, n_params, hidden, depth)

    def _params(self, r: torch.Tensor, q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        frozen = d[..., self.others]
        node = [
            periodic_features(frozen, self.box[self.others]),
            orientation_features(q, self.rotations),
        ]
        if self.window is not None:
            node.append(torch.tanh(frozen / self.window))
        return self.net(torch.cat(node, dim=-1), self.pair_features(r, self.others))

    def _map(self, x: torch.Tensor, inverse: bool) -> TransformResult:
        r, q = split_state(x)
        d = self.displacements(r)
        params = self._params(r, q, d)
        k, active = self.num_bins, d[..., self.axis]
        w, h, s = (
            params[..., :k],
            params[..., k : 2 * k],
            params[..., 2 * k :] + IDENTITY_DERIVATIVE,
        )
        if self.window is None:
            scale = float(self.box[self.axis]) / (2 * math.pi)
            moved, lad = circular_rq_spline(active / scale, w, h, s, inverse=inverse)
            moved = moved * scale
        else:
            moved, lad = unconstrained_rational_quadratic_spline(
                active, w, h, s, inverse=inverse, tails="linear", tail_bound=self.window
            )
        shift = torch.zeros_like(r)
        shift[..., self.axis] = moved - active
        return TransformResult(join_state(r + shift, q), lad.sum(-1))

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
        position_window: scale (nm) of the local displacement features, or `None`.
        num_bins, hidden, depth: spline bins $K$ and conditioner size.
    """

    def __init__(
        self, n_molecules, box, *, components=(0, 1, 2), sites=None, orientations=None,
        bound: float = 2.0, position_window=None, num_bins: int = 8, hidden: int = 64,
        depth: int = 2,
    ):  # fmt: skip
        super().__init__(n_molecules, box, sites, orientations)
        self.components = sorted(int(c) for c in components)
        if not self.components or not set(self.components) <= {0, 1, 2}:
            raise ValueError("components must be a non-empty subset of (0, 1, 2)")
        self.rest = [b for b in range(3) if b not in self.components]
        self.bound, self.num_bins = float(bound), int(num_bins)
        self.position_window = None if position_window is None else float(position_window)
        n_node = 6 + len(self.rest) + (0 if self.position_window is None else 3)
        n_params = len(self.components) * (3 * self.num_bins - 1)
        self.net = SetConditioner(n_node, 6, n_params, hidden, depth)

    def _params(self, r: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
        d = self.displacements(r)
        node = [periodic_features(d, self.box), torch.atan(rho[..., self.rest])]
        if self.position_window is not None:
            node.append(torch.tanh(d / self.position_window))
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
        moved, lad = unconstrained_rational_quadratic_spline(
            active, w, h, s, inverse=inverse, tails="linear", tail_bound=self.bound
        )
        new = rho.clone()
        new[..., self.components] = moved
        ladj = lad.sum((-1, -2)) + (rodrigues_log_volume(new) - rodrigues_log_volume(rho)).sum(-1)
        return TransformResult(join_state(r, from_rodrigues(new, sign, self.rotations)), ladj)

    def forward(self, z: torch.Tensor) -> TransformResult:
        return self._map(z, inverse=False)

    def inverse(self, x: torch.Tensor) -> TransformResult:
        return self._map(x, inverse=True)
