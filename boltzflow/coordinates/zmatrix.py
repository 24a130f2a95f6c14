r"""Z-matrices (bond / angle / torsion definitions) built automatically from a topology.

A Z-matrix places atoms one at a time. The first three placed atoms `root = (a0, a1, a2)`
fix the frame: `a1` is bonded to `a0` and `a2` to `a1`. Every later atom `i` is
placed from three already-placed reference atoms `(j, k, l)`, with `j` bonded to `i`,
`k` bonded to `j`, and `l` bonded to `j` if `j` already has two placed neighbours
(an *improper* torsion: nearly rigid for branches) or else bonded to `k` (a *proper*
torsion: a rotor), by

* the bond length $b = |x_i - x_j|$ (nm),
* the bond angle $\theta = \angle(i, j, k) \in (0, \pi)$ (rad),
* the torsion $\tau = \operatorname{dihedral}(i, j, k, l) \in (-\pi, \pi]$ (rad, periodic).

Internal-coordinate vector layout (length $3N - 6$):

    [ bonds (N-1): a1, a2, then the others | angles (N-2): a2, others | torsions (N-3) ]

Automatic choice ([`zmatrix_from_topology`][boltzflow.coordinates.zmatrix.zmatrix_from_topology]):
`a1` is the graph centre of the heavy atoms, `a0` and `a2` its two heavy neighbours with most heavy
neighbours themselves; atoms are then placed breadth-first, heavy atoms before hydrogens and
backbone continuations before side branches, and references prefer heavy atoms placed early. For
alanine dipeptide this gives the root (C, Cα, N); the backbone dihedrals $\phi$, $\psi$ and the two
amide $\omega$ and three methyl rotors are proper torsions, every other torsion is an
improper one (e.g. Cβ–Cα–C–N, whose sign is the Cα chirality).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

__all__ = ["ZMatrix", "zmatrix_from_topology", "zmatrix_from_bonds"]


@dataclass(frozen=True)
class ZMatrix:
    """Placement order and reference atoms of a molecule.

    Attributes:
        n_atoms: number of atoms $N$ ($N \\ge 3$).
        root: the first three placed atoms `(a0, a1, a2)`; `a2` is bonded to `a1`.
        rows: `int[N - 3, 4]`, each `(i, j, k, l)` in placement order.
    """

    n_atoms: int
    root: tuple[int, int, int]
    rows: np.ndarray

    def __post_init__(self):
        rows = np.asarray(self.rows, dtype=np.int64).reshape(-1, 4)
        object.__setattr__(self, "rows", rows)
        placed = set(self.root)
        if len(placed) != 3 or rows.shape[0] != self.n_atoms - 3:
            raise ValueError("a Z-matrix needs 3 distinct root atoms and one row per other atom")
        for i, j, k, l in rows:
            if i in placed or not {j, k, l} <= placed or len({i, j, k, l}) != 4:
                raise ValueError(f"row {(i, j, k, l)} references atoms not yet placed")
            placed.add(int(i))

    # ------------------------------------------------------------ layout
    @property
    def n_dof(self) -> int:
        """Number of internal coordinates, $3N - 6$."""
        return 3 * self.n_atoms - 6

    @property
    def bond_slice(self) -> slice:
        return slice(0, self.n_atoms - 1)

    @property
    def angle_slice(self) -> slice:
        return slice(self.n_atoms - 1, 2 * self.n_atoms - 3)

    @property
    def torsion_slice(self) -> slice:
        return slice(2 * self.n_atoms - 3, 3 * self.n_atoms - 6)

    @property
    def periodic_mask(self) -> np.ndarray:
        """`bool[3N - 6]`, True on torsions."""
        mask = np.zeros(self.n_dof, dtype=bool)
        mask[self.torsion_slice] = True
        return mask

    @property
    def order(self) -> np.ndarray:
        """Atom indices in placement order, `int[N]`."""
        return np.concatenate([np.asarray(self.root), self.rows[:, 0]])

    def bonds(self) -> list[tuple[int, int]]:
        """The bonds the coordinates use, in IC order."""
        a0, a1, a2 = self.root
        return [(a1, a0), (a2, a1)] + [(int(i), int(j)) for i, j, _, _ in self.rows]

    def angles(self) -> list[tuple[int, int, int]]:
        """The angles `(i, j, k)` (vertex `j`), in IC order."""
        a0, a1, a2 = self.root
        return [(a2, a1, a0)] + [(int(i), int(j), int(k)) for i, j, k, _ in self.rows]

    def torsions(self) -> list[tuple[int, int, int, int]]:
        """The torsions `(i, j, k, l)`, in IC order."""
        return [tuple(int(a) for a in r) for r in self.rows]

    def torsion_index(self, atoms) -> int:
        """Position in the IC vector of the torsion over `atoms` (either direction).

        Raises:
            KeyError: if no torsion coordinate runs over these four atoms.
        """
        atoms = tuple(int(a) for a in atoms)
        for n, t in enumerate(self.torsions()):
            if t == atoms or t == atoms[::-1]:
                return self.torsion_slice.start + n
        raise KeyError(f"no torsion coordinate over atoms {atoms}")

    def labels(self, names: list[str] | None = None) -> list[str]:
        """Human-readable names of the coordinates, e.g. `"bond(H1-CH3)"`."""
        nm = names or [str(i) for i in range(self.n_atoms)]
        out = [f"bond({nm[i]}-{nm[j]})" for i, j in self.bonds()]
        out += [f"angle({nm[i]}-{nm[j]}-{nm[k]})" for i, j, k in self.angles()]
        out += [f"torsion({'-'.join(nm[a] for a in t)})" for t in self.torsions()]
        return out


def _graph_center(adj: list[set[int]], nodes: list[int]) -> int:
    """Node of `nodes` with the smallest eccentricity within `nodes` (lowest index on ties)."""
    allowed = set(nodes)
    best, best_ecc = nodes[0], None
    for s in nodes:
        dist, frontier = {s: 0}, [s]
        while frontier:
            nxt = []
            for a in frontier:
                for b in adj[a]:
                    if b in allowed and b not in dist:
                        dist[b] = dist[a] + 1
                        nxt.append(b)
            frontier = nxt
        ecc = max(dist.values()) if len(dist) == len(allowed) else np.inf
        if best_ecc is None or ecc < best_ecc:
            best, best_ecc = s, ecc
    return best


def zmatrix_from_bonds(
    n_atoms: int,
    bonds,
    heavy: np.ndarray | None = None,
    root: tuple[int, int, int] | None = None,
) -> ZMatrix:
    """Build a [`ZMatrix`][boltzflow.coordinates.zmatrix.ZMatrix] from a bond list (the molecule
    must be connected).

    Args:
        n_atoms: number of atoms.
        bonds: iterable of `(i, j)` atom-index pairs.
        heavy: `bool[n_atoms]`, True for non-hydrogen atoms (default: all heavy).
        root: `(a0, a1, a2)` with bonds a0–a1 and a1–a2; default: automatic (module doc).
    """
    adj: list[set[int]] = [set() for _ in range(n_atoms)]
    for i, j in bonds:
        adj[int(i)].add(int(j))
        adj[int(j)].add(int(i))
    heavy = np.ones(n_atoms, bool) if heavy is None else np.asarray(heavy, bool)
    if n_atoms < 3:
        raise ValueError("need at least 3 atoms")
    if root is None:
        hv = [a for a in range(n_atoms) if heavy[a]] or list(range(n_atoms))
        deg = [sum(heavy[b] for b in adj[a]) for a in range(n_atoms)]
        a1 = _graph_center(adj, hv) if len(hv) >= 3 else _graph_center(adj, list(range(n_atoms)))
        nb = sorted(adj[a1], key=lambda b: (not heavy[b], -deg[b], b))
        if len(nb) < 2:
            raise ValueError("the central atom needs two neighbours; pass root explicitly")
        root = (nb[0], a1, nb[1])
    a0, a1, a2 = (int(a) for a in root)
    if a0 not in adj[a1] or a2 not in adj[a1]:
        raise ValueError(f"root {root}: need bonds a0-a1 and a1-a2")

    rank = {a0: 0, a1: 1, a2: 2}
    hdeg = [sum(heavy[b] for b in adj[a]) for a in range(n_atoms)]

    def placed_neighbours(center: int, exclude: set[int]) -> list[int]:
        cands = [b for b in adj[center] if b in rank and b not in exclude]
        return sorted(cands, key=lambda b: (not heavy[b], rank[b]))

    rows = []
    heap: list[tuple] = []

    def push_neighbours(a):
        for b in adj[a]:
            if b not in rank:  # heavy first, then by parent, backbone continuation first
                heapq.heappush(heap, (not heavy[b], rank[a], -hdeg[b], b, a))

    for a in (a0, a1, a2):
        push_neighbours(a)
    while heap:
        *_, i, j = heapq.heappop(heap)
        if i in rank:
            continue
        nb_j = placed_neighbours(j, {i})
        k = nb_j[0]
        if len(nb_j) >= 2:  # branch: improper torsion around j (nearly rigid)
            l_ = nb_j[1]
        else:  # chain: proper torsion i-j-k-l (a rotor)
            nb_k = placed_neighbours(k, {i, j})
            if not nb_k:
                raise ValueError(f"atom {i}: no third reference atom (linear fragment?)")
            l_ = nb_k[0]
        rank[i] = len(rank)
        rows.append((i, j, k, l_))
        push_neighbours(i)
    if len(rank) != n_atoms:
        missing = sorted(set(range(n_atoms)) - set(rank))
        raise ValueError(f"molecule is not connected; unplaced atoms {missing}")
    return ZMatrix(n_atoms, (a0, a1, a2), np.array(rows, dtype=np.int64))


def zmatrix_from_topology(topology, root: tuple[int, int, int] | None = None) -> ZMatrix:
    """Build a [`ZMatrix`][boltzflow.coordinates.zmatrix.ZMatrix] from an `mdtraj.Topology` (bonds
    and elements)."""
    bonds = [(b[0].index, b[1].index) for b in topology.bonds]
    heavy = np.array([a.element is None or a.element.symbol != "H" for a in topology.atoms])
    return zmatrix_from_bonds(topology.n_atoms, bonds, heavy=heavy, root=root)
