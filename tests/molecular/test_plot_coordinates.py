"""Molecular run figures name their coordinates: φ, ψ, and a bond and an angle by atom names."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from boltzflow.molecular import alanine as ala


def _cartesian_geometry(xyz, bond, angle):
    """Bond length (nm) and bond angle (deg) computed from Cartesian positions."""
    i, j = bond
    length = (xyz[:, i] - xyz[:, j]).norm(dim=-1)
    a, v, c = angle
    u, w = xyz[:, a] - xyz[:, v], xyz[:, c] - xyz[:, v]
    cos = (u * w).sum(-1) / (u.norm(dim=-1) * w.norm(dim=-1))
    return length, torch.rad2deg(torch.arccos(cos))


def test_named_coordinates_match_the_cartesian_geometry(target, md_sample):
    y = target.from_cartesian(torch.as_tensor(md_sample[::50]))
    values, labels = target.plot_coordinates(y)
    assert values.shape == (y.shape[0], 4)
    assert labels[:2] == ["φ (deg)", "ψ (deg)"]
    assert labels[2].startswith("bond ") and labels[2].endswith("(nm)")
    assert labels[3].startswith("angle ") and labels[3].endswith("(deg)")
    # atom names, not indices: the bond and angle lie on the φ backbone C-N-CA-C
    names = [a.name for a in target.mol.topology.atoms]
    backbone = {names[i] for i in ala.PHI_ATOMS}
    for label in labels[2:]:
        assert set(label.split()[1].split("–")) <= backbone, label
    # independent check: dihedrals, bond and angle recomputed from Cartesian positions
    xyz = target.to_cartesian(y).reshape(y.shape[0], -1, 3)
    phi, psi = ala.phi_psi(xyz)
    wrap = lambda a: (a + 180.0) % 360.0 - 180.0  # noqa: E731
    torch.testing.assert_close(wrap(values[:, 0] - torch.rad2deg(phi)), torch.zeros_like(phi))
    torch.testing.assert_close(wrap(values[:, 1] - torch.rad2deg(psi)), torch.zeros_like(psi))
    z = target.zmatrix
    bond = next(b for b in z.bonds() if set(b) <= set(ala.PHI_ATOMS))
    angle = next(a for a in z.angles() if set(a) <= set(ala.PHI_ATOMS))
    length, degrees = _cartesian_geometry(xyz, bond, angle)
    torch.testing.assert_close(values[:, 2], length)
    torch.testing.assert_close(values[:, 3], degrees)
    assert 0.12 < float(length.mean()) < 0.16 and 100.0 < float(degrees.mean()) < 130.0


def test_run_figures_lead_with_the_ramachandran_plot(target, md_sample, tmp_path):
    from boltzflow.reporting.run_figures import run_figures

    y = target.from_cartesian(torch.as_tensor(md_sample[::5]))
    draws = SimpleNamespace(x=y[None], log_weight=torch.zeros(1, y.shape[0], dtype=y.dtype))
    figs = run_figures(target, {}, draws, tmp_path, seed=0)
    files = list(figs.values())
    assert files[0] == "ramachandran.png"
    assert files[1:] == ["log_weights.png", "marginals.png", "samples_2d.png"]
    captions = list(figs)
    assert "φ (deg)" in captions[2] and "bond" in captions[2] and "angle" in captions[2]
    assert captions[3] == "Samples: ψ (deg) against φ (deg)"
    for name in files:
        assert (tmp_path / name).stat().st_size > 1000
