"""Automatic Z-matrix from an mdtraj topology."""

from __future__ import annotations

import numpy as np
import pytest

from boltzflow.coordinates.zmatrix import ZMatrix, zmatrix_from_bonds, zmatrix_from_topology
from boltzflow.molecular.alanine import PHI_ATOMS, PSI_ATOMS


def test_alanine_layout_and_backbone_torsions(zmat, alanine):
    assert zmat.n_atoms == 22 and zmat.n_dof == 60
    assert zmat.root == (14, 8, 6)  # C, CA, N
    assert sorted(zmat.order.tolist()) == list(range(22))
    assert zmat.periodic_mask.sum() == 19 and zmat.periodic_mask[zmat.torsion_slice].all()
    i_phi, i_psi = zmat.torsion_index(PHI_ATOMS), zmat.torsion_index(PSI_ATOMS)
    assert zmat.periodic_mask[[i_phi, i_psi]].all()
    with pytest.raises(KeyError):
        zmat.torsion_index((0, 1, 2, 3))
    assert len(zmat.labels([a.name for a in alanine.topology.atoms])) == 60


def test_rows_reference_bonded_placed_atoms(zmat, alanine):
    bonded = {frozenset((b[0].index, b[1].index)) for b in alanine.topology.bonds}
    for i, j in zmat.bonds():
        assert frozenset((i, j)) in bonded
    for _i, j, k, l in zmat.rows:
        assert frozenset((j, k)) in bonded
        assert frozenset((k, l)) in bonded or frozenset((j, l)) in bonded


def test_hydrogens_reference_heavy_atoms(zmat, alanine):
    heavy = {a.index for a in alanine.topology.atoms if a.element.symbol != "H"}
    for i, j, k, _ in zmat.rows:
        if i not in heavy:
            assert j in heavy and k in heavy


def test_explicit_root_and_errors():
    chain = [(0, 1), (1, 2), (2, 3), (3, 4)]
    z = zmatrix_from_bonds(5, chain, root=(0, 1, 2))
    assert z.root == (0, 1, 2) and z.rows.shape == (2, 4)
    with pytest.raises(ValueError, match="root"):
        zmatrix_from_bonds(5, chain, root=(0, 2, 3))
    with pytest.raises(ValueError, match="not connected"):
        zmatrix_from_bonds(6, chain, root=(0, 1, 2))
    with pytest.raises(ValueError, match="not yet placed"):
        ZMatrix(4, (0, 1, 2), np.array([[3, 4, 1, 0]]))


def test_topology_and_bond_list_agree(alanine):
    bonds = [(b[0].index, b[1].index) for b in alanine.topology.bonds]
    heavy = [a.element.symbol != "H" for a in alanine.topology.atoms]
    a = zmatrix_from_topology(alanine.topology)
    b = zmatrix_from_bonds(22, bonds, heavy=np.array(heavy))
    np.testing.assert_array_equal(a.rows, b.rows)
