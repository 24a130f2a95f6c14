"""Cα chirality: the vendored structure is L; mirror images and flipped impropers are D."""

from __future__ import annotations

import torch

from boltzflow.coordinates.chirality import alpha_carbon_quads, chiral_volume, is_l_chirality
from boltzflow.coordinates.transform import InternalCoordinateTransform
from boltzflow.molecular.alanine import CHIRALITY_ATOMS


def test_quads_from_topology(alanine):
    c = CHIRALITY_ATOMS
    assert alpha_carbon_quads(alanine.topology) == [(c["CA"], c["N"], c["C"], c["CB"])]


def test_vendored_structure_is_l_and_mirror_is_d(alanine, configs):
    quads = alpha_carbon_quads(alanine.topology)
    x = torch.as_tensor(alanine.positions, dtype=torch.float64).reshape(1, -1)
    v = chiral_volume(x, *quads[0])
    assert 2.0e-3 < float(v) < 3.0e-3  # ≈ +2.5 Å^3 for L-Cα
    assert is_l_chirality(configs, quads).all()
    mirror = configs.reshape(-1, 22, 3) * torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)
    assert not is_l_chirality(mirror.reshape(8, -1), quads).any()


def test_internal_round_trip_keeps_chirality_and_flipped_impropers_make_d(zmat, configs, alanine):
    t = InternalCoordinateTransform(zmat).double()
    quads = alpha_carbon_quads(alanine.topology)
    q = t.inverse(configs).y
    assert is_l_chirality(t(q).y, quads).all()
    # the CB and HA impropers around CA fix the handedness: negating them gives D
    q_d = q.clone()
    for atoms in ((10, 8, 14, 6), (9, 8, 14, 6)):
        q_d[:, zmat.torsion_index(atoms)] *= -1
    assert not is_l_chirality(t(q_d).y, quads).any()
