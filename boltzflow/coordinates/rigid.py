r"""Rigid molecules: the rigid state $(r_i, q_i)_{i=1..N}$ and its atom coordinates.

**State layout** (the Flow/Energy boundary of the rigid-body flows, Köhler et al. 2023,
"Rigid body flows for sampling molecular crystal structures"). A configuration of $N$ rigid
molecules is a tensor `x` of shape `(batch, 7 N)`; molecule $i$ occupies `x[:, 7i:7i+7]`:
its position $r_i$ (3 numbers, nm, Cartesian, the position of its first site, the oxygen of a
water; in an orthorhombic box, not necessarily wrapped), then its orientation, a unit quaternion
$q_i = (w, x, y, z)$ (scalar first) that rotates the body-frame geometry into the lab frame.
[`rigid_view`][boltzflow.coordinates.rigid.rigid_view] gives the `(batch, N, 7)` view.

**Atom coordinates.** With body-frame site positions $b_k$ (`body`, `(n_sites, 3)` nm,
$b_0 = 0$), site $k$ of molecule $i$ sits at

$$
a_{ik} = r_i + R(q_i)\, b_k ,
$$

with $R(q) = R(-q)$ the rotation matrix of $q/|q|$
([`quaternion_to_matrix`][boltzflow.coordinates.quaternion.quaternion_to_matrix]).
Quaternions are normalised inside the map, so a gradient with respect to $q$ is tangent to
$S^3$. The inverse ([`atoms_to_rigid`][boltzflow.coordinates.rigid.atoms_to_rigid]) takes
$r_i = a_{i0}$ and the rotation that best fits $R\, b_k$ to $a_{ik} - a_{i0}$ (Kabsch), which
is exact on rigid molecules; it returns $w \ge 0$.

**Measure and Jacobian.** Log-densities of rigid states are with respect to Lebesgue measure on
each $r_i$ (nm³) times the surface measure on $S^3$ for each $q_i$ (total area $2\pi^2$). The
map $(r, q) \mapsto (a_{ik})$ onto the constraint manifold of rigid molecules is a local
isometry up to a constant factor: a tangent vector $(\dot r, \dot q)$ with
$\dot q = \tfrac12 (0, \omega)\, q$ moves the sites by $\dot r + \omega \times (a_{ik} - r_i)$,
so the induced metric is a constant quadratic form in $(\dot r, \omega)$ (it depends only on
$b_k$), and $|\omega| = 2|\dot q|$. The volume element of the constraint manifold is therefore
$c^N\, d^3 r\, dS(q)$ with a constant $c$, and $q, -q$ give the same atoms (a 2:1 cover of
$\mathbb{R}^3 \times SO(3)$). For rigid bodies the mass-metric determinant is constant as well,
so constrained Langevin dynamics (SETTLE) samples $p(r, q) \propto e^{-u(a(r, q))}$ in this
measure with no Jacobian term. Free-energy differences between thermodynamic states
evaluated with the same measure do not depend on $c$.

**Generalized forces.** For site forces $F_{ik} = -\partial u/\partial a_{ik}$ (kT/nm), the
force on $r_i$ is $\sum_k F_{ik}$ and the torque is $\tau_i = \sum_k (a_{ik} - r_i) \times
F_{ik}$; the gradient of $-u$ on $S^3$ in ambient coordinates is $2\,(0, \tau_i)\, q_i$
(a tangent vector at $q_i$; [`generalized_forces`][boltzflow.coordinates.rigid.generalized_forces]).
Autograd through [`rigid_to_atoms`][boltzflow.coordinates.rigid.rigid_to_atoms] gives the same.

**Water geometry.** [`rigid_water_geometry`][boltzflow.coordinates.rigid.rigid_water_geometry]
reads the O–H and H–H constraint distances and the virtual-site weights of a 4-site water model
(TIP4P-Ew: $d_{OH} = 0.09572$ nm, $\angle HOH = 104.52°$, M = 0.786646558 O + 0.106676721
(H1 + H2)) from an `openmm.System`. Body frame: O at the origin, the molecule in the $xz$
plane, the H–O–H bisector along $+z$, H1 at $+x$.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from boltzflow.coordinates.quaternion import (
    matrix_to_quaternion,
    quaternion_apply,
    quaternion_multiply,
)

__all__ = [
    "RigidGeometry",
    "rigid_view",
    "flat_rigid",
    "rigid_to_atoms",
    "atoms_to_rigid",
    "generalized_forces",
    "rigid_water_geometry",
]


class RigidGeometry(NamedTuple):
    """Body-frame geometry of identical rigid molecules and where their sites live in a System.

    Attributes:
        body: site positions in the body frame, `float64[n_sites, 3]` nm; site 0 (the
            oxygen) at the origin.
        names: site names, e.g. `("O", "H1", "H2", "M")`.
        particles: OpenMM particle index of every site, `int[N, n_sites]`.
        virtual: which sites are massless virtual sites (M), `tuple[bool, ...]`.
    """

    body: np.ndarray
    names: tuple[str, ...]
    particles: np.ndarray
    virtual: tuple[bool, ...] = ()

    @property
    def n_molecules(self) -> int:
        return int(self.particles.shape[0])

    def body_tensor(self, like: torch.Tensor) -> torch.Tensor:
        """`body` as a tensor with the dtype and device of `like`."""
        return torch.as_tensor(self.body, dtype=like.dtype, device=like.device)


def rigid_view(x: torch.Tensor) -> torch.Tensor:
    """The `(batch, N, 7)` view of rigid states `(batch, 7 N)`: `[..., :3]` positions (nm),
    `[..., 3:]` quaternions `(w, x, y, z)`."""
    if x.shape[-1] % 7:
        raise ValueError(f"a rigid state has 7 numbers per molecule, got {x.shape[-1]}")
    return x.reshape(*x.shape[:-1], x.shape[-1] // 7, 7)


def flat_rigid(r: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Positions `(batch, N, 3)` and quaternions `(batch, N, 4)` → rigid states `(batch, 7N)`."""
    x = torch.cat((r, q), dim=-1)
    return x.reshape(*x.shape[:-2], -1)


def rigid_to_atoms(x: torch.Tensor, body: torch.Tensor) -> torch.Tensor:
    r"""Site positions $a_{ik} = r_i + R(q_i/|q_i|)\,b_k$ of rigid states.

    Args:
        x: rigid states `(batch, 7 N)`.
        body: body-frame sites `(n_sites, 3)` nm.

    Returns:
        `(batch, N, n_sites, 3)` in nm (differentiable in `x`).
    """
    v = rigid_view(x)
    r, q = v[..., :3], v[..., 3:]
    q = q / q.norm(dim=-1, keepdim=True)
    body = body.to(dtype=x.dtype, device=x.device)
    return r[..., None, :] + quaternion_apply(q[..., None, :], body)


def atoms_to_rigid(atoms: torch.Tensor, body: torch.Tensor) -> torch.Tensor:
    r"""Rigid states `(batch, 7 N)` of site positions `(batch, N, n_sites, 3)` (nm).

    The position is site 0; the rotation minimises $\sum_k |R\, b_k - (a_k - a_0)|^2$
    (Kabsch 1976, Acta Cryst. A 32, 922: SVD of $H = \sum_k b_k (a_k - a_0)^\top$, with
    the sign of the smallest singular direction fixed so that $\det R = +1$). Exact for rigid
    molecules (two non-parallel site vectors fix $R$); the quaternion has $w \ge 0$. Not
    differentiable (an SVD); meant for data such as MD frames. Computed in float64.
    """
    a = torch.as_tensor(atoms)
    dtype = a.dtype if a.is_floating_point() else torch.float64
    a = a.to(torch.float64)
    b = body.to(dtype=torch.float64, device=a.device)
    r = a[..., 0, :]
    d = a - r[..., None, :]
    h = torch.einsum("kx,...ky->...xy", b, d)  # H = sum_k b_k d_k^T
    u, _, vh = torch.linalg.svd(h)
    v = vh.transpose(-1, -2)
    det = torch.linalg.det(v @ u.transpose(-1, -2))
    fix = torch.ones_like(h[..., 0, :])
    fix[..., 2] = torch.sign(det)
    rot = (v * fix[..., None, :]) @ u.transpose(-1, -2)
    q = matrix_to_quaternion(rot)
    return flat_rigid(r, q).to(dtype)


def generalized_forces(x: torch.Tensor, site_forces: torch.Tensor, body: torch.Tensor):
    r"""Forces on rigid states from site forces, by the torque formula.

    Args:
        x: rigid states `(batch, 7 N)`.
        site_forces: $F_{ik} = -\partial u/\partial a_{ik}$, `(batch, N, n_sites, 3)` (kT/nm);
            the forces that the chain rule through
            [`rigid_to_atoms`][boltzflow.coordinates.rigid.rigid_to_atoms] needs. OpenMM
            reports the force on a virtual site *and* adds it, distributed by the site's
            weights, to its parent atoms: pass OpenMM's forces with the virtual sites' rows set
            to zero (or the direct forces of every site, never both).

    Returns:
        `(batch, 7 N)`: $-\partial u/\partial r_i = \sum_k F_{ik}$ and the tangent gradient
        of $-u$ on $S^3$, $2\,(0, \tau_i)\,q_i$ with $\tau_i = \sum_k (a_{ik} - r_i) \times
        F_{ik}$ (for $q_i$ of norm 1; it equals autograd through `rigid_to_atoms`).
    """
    v = rigid_view(x)
    q = v[..., 3:] / v[..., 3:].norm(dim=-1, keepdim=True)
    arm = rigid_to_atoms(x, body) - v[..., None, :3]
    torque = torch.linalg.cross(arm, site_forces, dim=-1).sum(-2)
    pure = torch.cat((torch.zeros_like(torque[..., :1]), torque), dim=-1)
    return flat_rigid(site_forces.sum(-2), 2.0 * quaternion_multiply(pure, q))


def _constraint_lengths(system) -> dict[frozenset, float]:
    out = {}
    for n in range(system.getNumConstraints()):
        i, j, d = system.getConstraintParameters(n)
        out[frozenset((int(i), int(j)))] = float(getattr(d, "_value", d))
    return out


def rigid_water_geometry(system, names=("O", "H1", "H2", "M")) -> RigidGeometry:
    r"""Body-frame geometry of rigid 4-site waters from an `openmm.System`.

    Each virtual site that is a `ThreeParticleAverageSite` of particles (O, H1, H2) defines a
    molecule; the O–H1, O–H2 and H1–H2 distances come from the System's constraints
    (`rigidWater=True`) and the site's weights place M. Every molecule must have the same
    geometry (to 1e-9 nm).

    Returns:
        [`RigidGeometry`][boltzflow.coordinates.rigid.RigidGeometry] with sites (O, H1, H2, M)
        and `particles [N, 4]` in System order.
    """
    import openmm

    lengths = _constraint_lengths(system)
    rows, geometry = [], None
    for p in range(system.getNumParticles()):
        if not system.isVirtualSite(p):
            continue
        site = system.getVirtualSite(p)
        if not isinstance(site, openmm.ThreeParticleAverageSite):
            raise ValueError(f"particle {p}: a {type(site).__name__}, not a 3-particle average")
        o, h1, h2 = (int(site.getParticle(k)) for k in range(3))
        w = tuple(float(site.getWeight(k)) for k in range(3))
        try:
            d1, d2 = lengths[frozenset((o, h1))], lengths[frozenset((o, h2))]
            dhh = lengths[frozenset((h1, h2))]
        except KeyError as exc:
            raise ValueError(f"water at particle {o} is not rigid (missing constraint)") from exc
        if abs(d1 - d2) > 1e-9 or abs(w[1] - w[2]) > 1e-12:
            raise ValueError(f"water at particle {o}: the two O-H arms differ")
        half = 0.5 * dhh
        height = float(np.sqrt(d1 * d1 - half * half))
        sites = np.array([[0.0, 0.0, 0.0], [half, 0.0, height], [-half, 0.0, height]])
        body = np.vstack([sites, w[0] * sites[0] + w[1] * sites[1] + w[2] * sites[2]])
        if geometry is not None and np.abs(geometry - body).max() > 1e-9:
            raise ValueError(f"water at particle {o} has a different geometry")
        geometry = body
        rows.append((o, h1, h2, p))
    if geometry is None:
        raise ValueError("the System has no virtual sites: not a 4-site rigid water model")
    particles = np.asarray(rows, dtype=np.int64)
    return RigidGeometry(geometry, tuple(names), particles, (False, False, False, True))
