r"""Alanine dipeptide (Ace-Ala-Nme, 22 atoms): systems, backbone dihedrals and states.

The force field is Amber ff96, no constraints, no cutoff, 300 K, built from the prmtop/crd
files of `openmmtools.testsystems.AlanineDipeptideVacuum/Implicit(constraints=None)`
(vendored in `systems/alanine-dipeptide-{vacuum,implicit}`; MIT licence). The implicit
variant adds OBC1 generalized-Born solvation (`GBSAOBCForce` via `CustomGBForce`).

Backbone dihedrals (IUPAC sign convention, radians in code, degrees in state definitions):

* $\phi$ = dihedral C(Ace)–N–Cα–C, atoms (4, 6, 8, 14);
* $\psi$ = dihedral N–Cα–C–N(Nme), atoms (6, 8, 14, 16).

Conformational states on $(\phi, \psi)$ in degrees (used by the system READMEs):

* **αL / C7ax**: $0 < \phi < 120$;
* **αR**: ($\phi \le 0$ or $\phi \ge 120$) and $-125 < \psi \le 75$;
* **β / C7eq**: everything else.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

__all__ = [
    "AlanineDipeptide",
    "load_alanine_dipeptide",
    "system_folder",
    "PHI_ATOMS",
    "PSI_ATOMS",
    "CHIRALITY_ATOMS",
    "dihedral",
    "phi_psi",
    "in_alpha_l",
    "in_alpha_r",
    "in_beta",
    "SOLVENTS",
]

PHI_ATOMS = (4, 6, 8, 14)
"""Atom indices of the backbone dihedrals in the vendored topology."""
PSI_ATOMS = (6, 8, 14, 16)
CHIRALITY_ATOMS = {"CA": 8, "N": 6, "C": 14, "CB": 10, "HA": 9}
"""Cα and its substituents N, C, Cβ, Hα (for the L/D check)."""

SOLVENTS = {"vacuum": "alanine-dipeptide-vacuum", "implicit": "alanine-dipeptide-implicit"}


class AlanineDipeptide(NamedTuple):
    """An alanine-dipeptide setup: OpenMM system, mdtraj topology, positions `[22, 3]` nm."""

    system: object
    topology: object
    positions: np.ndarray
    solvent: str
    folder: Path


def system_folder(solvent: str = "vacuum") -> Path:
    """The `systems/` folder that holds the vendored files for `solvent`."""
    if solvent not in SOLVENTS:
        raise ValueError(f"unknown solvent '{solvent}' (choose from {', '.join(SOLVENTS)})")
    from boltzflow.runs.recipes import systems_dir

    return systems_dir() / SOLVENTS[solvent]


def load_alanine_dipeptide(solvent: str = "vacuum", folder: str | Path | None = None):
    """Build the ff96 system (no constraints, no cutoff) and read the initial positions.

    Args:
        solvent: `"vacuum"` or `"implicit"` (OBC1 GB/SA, as openmmtools).
        folder: directory with `alanine-dipeptide.prmtop`/`.crd` (default: the system's).

    Returns:
        [`AlanineDipeptide`][boltzflow.molecular.alanine.AlanineDipeptide].
    """
    import mdtraj
    import openmm.app as app
    import openmm.unit as unit

    folder = Path(folder) if folder is not None else system_folder(solvent)
    prmtop = app.AmberPrmtopFile(str(folder / "alanine-dipeptide.prmtop"))
    inpcrd = app.AmberInpcrdFile(str(folder / "alanine-dipeptide.crd"))
    implicit = {"vacuum": None, "implicit": app.OBC1}[solvent]
    system = prmtop.createSystem(implicitSolvent=implicit, constraints=None, nonbondedCutoff=None)
    positions = np.asarray(inpcrd.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    topology = mdtraj.Topology.from_openmm(prmtop.topology)
    return AlanineDipeptide(system, topology, positions, solvent, folder)


def dihedral(x: torch.Tensor, atoms: tuple[int, int, int, int]) -> torch.Tensor:
    r"""Dihedral angle in radians, $(-\pi, \pi]$, of four atoms of `x [batch, N, 3]`.

    IUPAC convention: with $b_1 = x_j - x_i$, $b_2 = x_k - x_j$,
    $b_3 = x_l - x_k$, $n_1 = b_1 \times b_2$, $n_2 = b_2 \times b_3$,
    $\tau = \operatorname{atan2}(|b_2|\, b_1 \cdot n_2,\ n_1 \cdot n_2)$.
    """
    i, j, k, l = atoms
    b1 = x[:, j] - x[:, i]
    b2 = x[:, k] - x[:, j]
    b3 = x[:, l] - x[:, k]
    n1 = torch.cross(b1, b2, dim=-1)
    n2 = torch.cross(b2, b3, dim=-1)
    y = b2.norm(dim=-1) * (b1 * n2).sum(-1)
    return torch.atan2(y, (n1 * n2).sum(-1))


def phi_psi(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone dihedrals in rad of Cartesians `[batch, 66]` or `[batch, 22, 3]`."""
    x = x.reshape(x.shape[0], -1, 3)
    return dihedral(x, PHI_ATOMS), dihedral(x, PSI_ATOMS)


_0, _120, _M125, _75 = 0.0, math.radians(120.0), math.radians(-125.0), math.radians(75.0)


def in_alpha_l(phi: torch.Tensor, psi: torch.Tensor | None = None) -> torch.Tensor:
    r"""Indicator of αL/C7ax, $0° < \phi < 120°$ (angles in radians)."""
    return (phi > _0) & (phi < _120)


def in_alpha_r(phi: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
    r"""Indicator of αR: not αL and $-125° < \psi \le 75°$ (radians in)."""
    return ~in_alpha_l(phi) & (psi > _M125) & (psi <= _75)


def in_beta(phi: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
    """Indicator of β/C7eq: neither αL nor αR (radians in)."""
    return ~in_alpha_l(phi) & ~in_alpha_r(phi, psi)
