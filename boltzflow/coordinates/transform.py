r"""Internal ↔ Cartesian coordinates as a boltzflow [`Transform`][boltzflow.flows.base.Transform].

`forward` maps internal coordinates $q \in \mathbb R^{3N-6}$ (bonds, angles,
torsions; layout of [`ZMatrix`][boltzflow.coordinates.zmatrix.ZMatrix]) to Cartesian positions
`x [batch, 3N]` in nm, in a canonical frame:

* atom `a0` at the origin;
* atom `a1` on the +x axis, $x_{a1} = (b_1, 0, 0)$;
* atom `a2` in the xy-plane with positive y,
  $x_{a2} = x_{a1} + b_2(-\cos\theta_2, \sin\theta_2, 0)$;
* every other atom by `place_atom` (NeRF).

Reference measure and log-det. The 6 external degrees of freedom are not represented. Write
a general configuration as $x = R(\alpha, \beta, \gamma)\, Q\, X(q) + t$ with translation
$t$, ZYZ Euler angles and a fixed rotation $Q$ taking +x to +z; the Jacobian of
this map from $(t, \alpha, \beta, \gamma, q)$ is

$$
\bigl|\det \partial x / \partial(t, \alpha,\beta,\gamma, q)\bigr|
= \sin\beta \cdot b_1^2 \cdot \prod_{m \ge 2} b_m^2 \sin\theta_m
\;=\; \sin\beta \cdot e^{\mathrm{ladj}(q)},
$$

(spherical coordinates of every atom around its bond partner; Noé et al. 2019, "Boltzmann
generators", Science 365, eaaw1147, supplementary). Since $u(x)$ is invariant under
rigid motions, integrating out $t$ over a box of volume $V$ and the rotation
($\int \sin\beta\, d\alpha\, d\beta\, d\gamma = 8\pi^2$) gives the density of the internal
coordinates with respect to the Lebesgue measure $dq$:

$$
p(q) \propto \exp\bigl(-u(X(q)) + \mathrm{ladj}(q)\bigr), \qquad
\mathrm{ladj}(q) = \sum_{m=1}^{N-1} 2\log b_m + \sum_{m=2}^{N-1} \log\sin\theta_m,
$$

so that $\log Z_q = \log Z_x - \log(8\pi^2 V)$; ratios, expectations of internal
observables and free-energy differences are unchanged. `forward` returns this `ladj` and
`inverse` returns `-ladj`: the transform is an isometry-free bijection between
$q$-space and Cartesian configurations in the canonical frame (`inverse` accepts
any frame, since internal coordinates are rigid-motion invariant).

Domain: bonds $b > 0$, angles $\theta \in (0, \pi)$, torsions periodic. Outside
it `forward` still returns a finite value (`|b|`, `|\sin\theta|` in the log-det); targets
should give such points zero density.
"""

from __future__ import annotations

import torch

from boltzflow.coordinates.geometry import angle, dihedral, distance, place_atom
from boltzflow.coordinates.zmatrix import ZMatrix
from boltzflow.flows.base import Transform, TransformResult

__all__ = ["InternalCoordinateTransform"]


class InternalCoordinateTransform(Transform):
    """Bijection internal coordinates `[batch, 3N-6]` → Cartesian `[batch, 3N]` (nm).

    Args:
        zmatrix: the coordinate definition (e.g. from
            [`zmatrix_from_topology`][boltzflow.coordinates.zmatrix.zmatrix_from_topology]).

    Examples:
        >>> from boltzflow.coordinates.zmatrix import zmatrix_from_bonds
        >>> t = InternalCoordinateTransform(zmatrix_from_bonds(4, [(0, 1), (1, 2), (2, 3)]))
        >>> q = torch.tensor([[0.15, 0.15, 0.15, 1.9, 1.9, 1.0]], dtype=torch.float64)
        >>> x, ladj = t(q)
        >>> torch.allclose(t.inverse(x).y, q)
        True
    """

    def __init__(self, zmatrix: ZMatrix):
        super().__init__()
        self.zmatrix = zmatrix
        self.n_atoms = zmatrix.n_atoms
        z = zmatrix
        self.register_buffer("_rows", torch.as_tensor(z.rows), persistent=False)
        bonds = torch.as_tensor(z.bonds())
        angles = torch.as_tensor(z.angles())
        self.register_buffer("_bond_atoms", bonds, persistent=False)
        self.register_buffer("_angle_atoms", angles, persistent=False)
        self.register_buffer("_torsion_atoms", torch.as_tensor(z.rows), persistent=False)
        self._row_list = [tuple(int(a) for a in r) for r in z.rows]

    @property
    def n_dof(self) -> int:
        return self.zmatrix.n_dof

    def log_det(self, q: torch.Tensor) -> torch.Tensor:
        """`ladj(q) = Σ 2 log b + Σ log sin θ`, `[batch]` (absolute values off-domain)."""
        b = q[:, self.zmatrix.bond_slice]
        th = q[:, self.zmatrix.angle_slice]
        return 2 * torch.log(b.abs()).sum(-1) + torch.log(torch.sin(th).abs()).sum(-1)

    def forward(self, q: torch.Tensor) -> TransformResult:
        """Internal coordinates → canonical-frame Cartesians `[batch, 3N]` and `ladj`."""
        z = self.zmatrix
        b = q[:, z.bond_slice]
        th = q[:, z.angle_slice]
        tau = q[:, z.torsion_slice]
        zero = torch.zeros_like(b[:, 0])
        a0, a1, a2 = z.root
        pos: list[torch.Tensor | None] = [None] * self.n_atoms
        pos[a0] = torch.stack([zero, zero, zero], dim=-1)
        pos[a1] = torch.stack([b[:, 0], zero, zero], dim=-1)
        pos[a2] = pos[a1] + b[:, 1:2] * torch.stack(
            [-torch.cos(th[:, 0]), torch.sin(th[:, 0]), zero], dim=-1
        )
        for r, (i, j, k, l) in enumerate(self._row_list):
            pos[i] = place_atom(pos[j], pos[k], pos[l], b[:, 2 + r], th[:, 1 + r], tau[:, r])
        x = torch.stack(pos, dim=1).reshape(q.shape[0], 3 * self.n_atoms)
        return TransformResult(x, self.log_det(q))

    def internal(self, x: torch.Tensor) -> torch.Tensor:
        """Internal coordinates `[batch, 3N-6]` of Cartesians `[batch, 3N]` (any frame)."""
        p = x.reshape(x.shape[0], self.n_atoms, 3)
        bi, ai, ti = self._bond_atoms, self._angle_atoms, self._torsion_atoms
        bonds = distance(p[:, bi[:, 0]], p[:, bi[:, 1]])
        angles = angle(p[:, ai[:, 0]], p[:, ai[:, 1]], p[:, ai[:, 2]])
        torsions = dihedral(p[:, ti[:, 0]], p[:, ti[:, 1]], p[:, ti[:, 2]], p[:, ti[:, 3]])
        return torch.cat([bonds, angles, torsions], dim=-1)

    def inverse(self, x: torch.Tensor) -> TransformResult:
        """Cartesians `[batch, 3N]` → internal coordinates and `-ladj`."""
        q = self.internal(x)
        return TransformResult(q, -self.log_det(q))
