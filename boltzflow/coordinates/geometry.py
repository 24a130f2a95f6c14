r"""Batched geometry primitives on Cartesian positions `[batch, n_atoms, 3]` (torch).

* `distance` -- $|x_i - x_j|$;
* `angle` -- $\angle(i, j, k) = \operatorname{atan2}(|u \times v|, u \cdot v)$ with
  $u = x_i - x_j$, $v = x_k - x_j$ (vertex `j`), in $[0, \pi]$;
* `dihedral` -- IUPAC dihedral $\tau(i, j, k, l) \in (-\pi, \pi]$; with
  $b_1 = x_j - x_i$, $b_2 = x_k - x_j$, $b_3 = x_l - x_k$,
  $n_1 = b_1 \times b_2$, $n_2 = b_2 \times b_3$:
  $\tau = \operatorname{atan2}(|b_2|\, b_1 \cdot n_2,\ n_1 \cdot n_2)$;
  symmetric under reversal, $\tau(i,j,k,l) = \tau(l,k,j,i)$;
* `place_atom` -- the inverse construction (NeRF; Parsons et al. 2005, J. Comput.
  Chem. 26, 1063): the position of atom `i` from the placed `j, k, l` and
  $(b, \theta, \tau)$.

All functions broadcast over a leading batch dimension, are differentiable, and follow the
dtype and device of their inputs. `atan2` forms are used (not `acos`) so that gradients
stay finite near $0$ and $\pi$.
"""

from __future__ import annotations

import torch

__all__ = ["distance", "angle", "dihedral", "place_atom"]


def distance(xi: torch.Tensor, xj: torch.Tensor) -> torch.Tensor:
    """Distance `[batch]` between positions `[batch, 3]`."""
    return (xi - xj).norm(dim=-1)


def angle(xi: torch.Tensor, xj: torch.Tensor, xk: torch.Tensor) -> torch.Tensor:
    """Bond angle at vertex `xj` in rad, `[batch]`."""
    u, v = xi - xj, xk - xj
    return torch.atan2(torch.linalg.cross(u, v).norm(dim=-1), (u * v).sum(-1))


def dihedral(xi: torch.Tensor, xj: torch.Tensor, xk: torch.Tensor, xl: torch.Tensor):
    """IUPAC dihedral angle in rad, $(-\\pi, \\pi]$, `[batch]`."""
    b1, b2, b3 = xj - xi, xk - xj, xl - xk
    n1 = torch.linalg.cross(b1, b2)
    n2 = torch.linalg.cross(b2, b3)
    y = b2.norm(dim=-1) * (b1 * n2).sum(-1)
    return torch.atan2(y, (n1 * n2).sum(-1))


def place_atom(
    xj: torch.Tensor,
    xk: torch.Tensor,
    xl: torch.Tensor,
    bond: torch.Tensor,
    theta: torch.Tensor,
    tau: torch.Tensor,
) -> torch.Tensor:
    r"""Position `[batch, 3]` of atom `i` with $|x_i - x_j| = b$,
    $\angle(i, j, k) = \theta$ and $\tau(i, j, k, l) = \tau$.

    With $e_1 = (x_j - x_k)/|x_j - x_k|$, $e_3 = (x_k - x_l) \times e_1$ normalized
    and $e_2 = e_3 \times e_1$:

    $$
    x_i = x_j + b\,(-\cos\theta\, e_1 + \sin\theta\cos\tau\, e_2
    + \sin\theta\sin\tau\, e_3).
    $$

    `l` may be bonded to `k` (proper torsion) or to `j` (improper); it only needs to
    be off the `j`–`k` axis.
    """
    e1 = xj - xk
    e1 = e1 / e1.norm(dim=-1, keepdim=True)
    e3 = torch.linalg.cross(xk - xl, e1)
    e3 = e3 / e3.norm(dim=-1, keepdim=True)
    e2 = torch.linalg.cross(e3, e1)
    b = bond.unsqueeze(-1)
    st = torch.sin(theta).unsqueeze(-1)
    return xj + b * (
        -torch.cos(theta).unsqueeze(-1) * e1
        + st * torch.cos(tau).unsqueeze(-1) * e2
        + st * torch.sin(tau).unsqueeze(-1) * e3
    )
