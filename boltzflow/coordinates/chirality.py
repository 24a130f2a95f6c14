r"""Cα chirality (L vs D) of amino acids from Cartesian positions.

Internal coordinates built from bonds, angles and torsions do not fix the handedness of a
stereocentre by construction: a flow on internal coordinates can produce the mirror image
(D-amino acid) of an L residue with the same energy. The check used here is the signed
chiral volume of Cα (as in PDB/REFMAC geometry validation),

$$
V = (x_N - x_{C\alpha}) \cdot
\bigl[(x_C - x_{C\alpha}) \times (x_{C\beta} - x_{C\alpha})\bigr],
$$

which is about $+2.5\ \text{Å}^3 = +2.5\times10^{-3}\ \text{nm}^3$ for L residues and
negative for D residues (Engh & Huber 1991, Acta Cryst. A47, 392; Midgley et al. 2023, "Flow
annealed importance sampling bootstrap", ICLR, report and filter D samples).
"""

from __future__ import annotations

import torch

__all__ = ["chiral_volume", "is_l_chirality", "alpha_carbon_quads"]


def chiral_volume(x: torch.Tensor, center: int, a: int, b: int, c: int) -> torch.Tensor:
    r"""Signed volume $(x_a - x_0)\cdot[(x_b - x_0)\times(x_c - x_0)]$ in nm³, `[batch]`.

    Args:
        x: positions `[batch, 3N]` or `[batch, N, 3]` in nm.
        center, a, b, c: atom indices (for Cα: Cα, N, C, Cβ).
    """
    p = x.reshape(x.shape[0], -1, 3)
    o = p[:, center]
    return ((p[:, a] - o) * torch.linalg.cross(p[:, b] - o, p[:, c] - o)).sum(-1)


def is_l_chirality(x: torch.Tensor, quads) -> torch.Tensor:
    """True where every `(Cα, N, C, Cβ)` in `quads` has L chirality (positive volume).

    Returns `bool[batch]`; a configuration with any D residue is False.
    """
    ok = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    for quad in quads:
        ok &= chiral_volume(x, *quad) > 0
    return ok


def alpha_carbon_quads(topology) -> list[tuple[int, int, int, int]]:
    """`(Cα, N, C, Cβ)` atom indices of every residue of an `mdtraj.Topology` with a Cβ."""
    quads = []
    for res in topology.residues:
        names = {a.name: a.index for a in res.atoms}
        if all(k in names for k in ("CA", "N", "C", "CB")):
            quads.append((names["CA"], names["N"], names["C"], names["CB"]))
    return quads
