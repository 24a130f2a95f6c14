r"""Alanine dipeptide as a boltzflow target on normalized internal coordinates.

Coordinates. $q \in \mathbb R^{60}$ are the internal coordinates of the automatic
Z-matrix (21 bonds, 20 angles, 19 torsions;
[`boltzflow.coordinates.zmatrix`][boltzflow.coordinates.zmatrix]). The target lives on the
normalized coordinates

$$
y_m = (q_m - \mu_m)/\sigma_m \ \text{(bonds, angles)}, \qquad y_m = q_m\
\text{(torsions, periodic on } [-\pi, \pi)),
$$

with $\mu$ the force-field equilibrium value and $\sigma = \sqrt{k_B T / k}$ the
thermal width of the harmonic term ($k$ from the Amber parameters), so every
non-periodic coordinate is $\approx \mathcal N(0, 1)$. Improper torsions (branches,
e.g. Cβ–Cα–C–N, nearly rigid) are centred on their value $\tau_0$ in the crd structure,
$y = \mathrm{wrap}(\tau - \tau_0)/s$ with $s$ = `improper_scale`, and are not
periodic; $|\tau - \tau_0| \ge \pi$ is outside the domain. The 7 proper torsions
($\phi, \psi$, two $\omega$, three methyl rotors) stay periodic on
$[-\pi, \pi)$ (`periodic_mask`).

Density (reference measure: Lebesgue on $y$; see
[`boltzflow.coordinates.transform`][boltzflow.coordinates.transform]):

$$
u(y) = \frac{E(X(q))}{k_B T} - \mathrm{ladj}_{IC}(q) - \sum_m \log\sigma_m,
$$

with $u = +\infty$ outside the domain ($b \le 0$, $\theta \notin (0, \pi)$)
and, with `chirality="L"` (default), for D configurations (negative Cα chiral volume,
[`boltzflow.coordinates.chirality`][boltzflow.coordinates.chirality]): the target is L-alanine
dipeptide, as in Midgley et al. 2023 (FAB), who filter D samples. At `temperature_scale = s` only
the physical energy is tempered, $E/(s\,k_BT) - \mathrm{ladj} - \sum\log\sigma$, which is the
internal coordinate density of the system at temperature $sT$.

Reported quantities: populations of αL, αR and β (`observables`), and the free energies
$\Delta F(\alpha_L\ \text{vs rest})$ and $\Delta F(\alpha_R\ \text{vs}\ \beta)$ in kT
(`state_sets`), with the umbrella-sampling/MBAR value stored in the system folder as the
reference (`exact_free_energy`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from boltzflow.coordinates.chirality import is_l_chirality
from boltzflow.coordinates.transform import InternalCoordinateTransform
from boltzflow.coordinates.zmatrix import zmatrix_from_topology
from boltzflow.energies.base import Energy, EnergyTerms, FigureRequest, Observable, StateSets
from boltzflow.energies.openmm import OpenMMBacked
from boltzflow.molecular import alanine as ala

__all__ = ["AlanineDipeptideTarget", "force_field_normalization"]

REFERENCE_FILE = "umbrella_reference.json"


def force_field_normalization(system, zmatrix, temperature: float):
    r"""`(loc, scale)` of every internal coordinate from the harmonic force-field terms.

    Bonds and angles: $\mu = r_0$ or $\theta_0$, $\sigma = \sqrt{k_BT/k}$
    (OpenMM's convention $E = \tfrac12 k (r - r_0)^2$). Torsions: `loc = 0, scale = 1`.
    """
    import openmm

    from boltzflow.energies.openmm import kT_kJ_per_mol

    kT = kT_kJ_per_mol(temperature)
    bonds, angles = {}, {}
    for f in system.getForces():
        if isinstance(f, openmm.HarmonicBondForce):
            for n in range(f.getNumBonds()):
                i, j, r0, k = f.getBondParameters(n)
                bonds[frozenset((i, j))] = (r0._value, k._value)
        elif isinstance(f, openmm.HarmonicAngleForce):
            for n in range(f.getNumAngles()):
                i, j, k_, th0, k = f.getAngleParameters(n)
                angles[(i, j, k_)] = angles[(k_, j, i)] = (th0._value, k._value)
    loc = np.zeros(zmatrix.n_dof)
    scale = np.ones(zmatrix.n_dof)
    params = [bonds[frozenset(b)] for b in zmatrix.bonds()] + [angles[a] for a in zmatrix.angles()]
    for m, (x0, k) in enumerate(params):
        loc[m], scale[m] = x0, math.sqrt(kT / k)
    return loc, scale


class AlanineDipeptideTarget(OpenMMBacked, Energy):
    """Alanine dipeptide (ff96, 300 K) on normalized internal coordinates `[batch, 60]`.

    Args:
        solvent: `"vacuum"` or `"implicit"` (OBC1).
        temperature: $T$ in K.
        system_dir: folder with the prmtop/crd files and the umbrella reference.
        workers, scheduler: an [`EnergyPool`][boltzflow.parallel.EnergyPool] for energies and MD
            (`workers ≥ 1` local processes, or a dask scheduler address); `None`:
            energies in this process.
        platform: OpenMM platform (default
            [`default_platform`][boltzflow.energies.openmm.default_platform]).
        chirality: `"L"` gives D configurations zero density; `None` keeps both.
        md_ns, md_trajectories, md_alpha_l_ns, md_alpha_l_trajectories, md_interval_ps, md_seed:
            training data
            ([`md_frames`][boltzflow.molecular.target.AlanineDipeptideTarget.md_frames]): 300 K
            trajectories from the crd structure, plus trajectories started in αL after a short
            (φ, ψ)-restrained steering.
        improper_scale: width (rad) for the improper torsions, which are then centred on
            their crd value and treated as non-periodic; `None` keeps them periodic.
        md_workers: local worker processes for generating missing MD (a temporary pool,
            closed afterwards; only from a script guarded by `if __name__ == "__main__"`);
            default: the energy pool if any, else this process.
        device: ignored (energies are evaluated on the CPU; tensors follow their inputs).
    """

    def __init__(
        self,
        solvent: str = "vacuum",
        temperature: float = 300.0,
        *,
        system_dir: str | os.PathLike | None = None,
        workers: int | None = None,
        scheduler: str | None = None,
        platform: str | None = None,
        chirality: str | None = "L",
        md_ns: float = 2.0,
        md_trajectories: int = 1,
        md_alpha_l_ns: float = 0.5,
        md_alpha_l_trajectories: int = 4,
        md_interval_ps: float = 0.1,
        md_seed: int = 0,
        md_workers: int | None = None,
        improper_scale: float | None = 0.12,
        device=None,
    ):
        super().__init__(60)
        folder = Path(system_dir) if system_dir is not None else None
        self.mol = ala.load_alanine_dipeptide(solvent, folder=folder)
        self.solvent = solvent
        self.folder = self.mol.folder
        self.zmatrix = zmatrix_from_topology(self.mol.topology)
        self.ict = InternalCoordinateTransform(self.zmatrix)
        self._connect_openmm(
            self.mol.system,
            temperature,
            platform=platform,
            platform_properties=None if platform is None else {},
            workers=workers,
            scheduler=scheduler,
        )
        self.temperature = float(temperature)
        loc, scale = force_field_normalization(self.mol.system, self.zmatrix, temperature)
        # improper torsions (branch geometry, nearly rigid): centred on the crd value, scaled
        bonded = {frozenset((b[0].index, b[1].index)) for b in self.mol.topology.bonds}
        t0 = self.zmatrix.torsion_slice.start
        q_ref = self.ict.internal(torch.as_tensor(self.mol.positions).reshape(1, -1))[0]
        improper = np.zeros(self.zmatrix.n_dof, dtype=bool)
        if improper_scale is not None:
            for r, (_i, j, _k, l_) in enumerate(self.zmatrix.rows):
                if frozenset((int(j), int(l_))) in bonded:
                    improper[t0 + r] = True
                    loc[t0 + r], scale[t0 + r] = float(q_ref[t0 + r]), float(improper_scale)
        self._loc = torch.as_tensor(loc)
        self._scale = torch.as_tensor(scale)
        self._log_scale = float(np.log(scale).sum())
        self._wrapped = torch.as_tensor(improper)
        self.periodic_mask = torch.as_tensor(self.zmatrix.periodic_mask & ~improper)
        self.chirality = chirality
        self._quads = [tuple(ala.CHIRALITY_ATOMS[k] for k in ("CA", "N", "C", "CB"))]
        self.i_phi = self.zmatrix.torsion_index(ala.PHI_ATOMS)
        self.i_psi = self.zmatrix.torsion_index(ala.PSI_ATOMS)
        names = [a.name for a in self.mol.topology.atoms]
        self.parameter_names = [
            n.replace("(", "_").replace(")", "").replace("-", "_")
            for n in self.zmatrix.labels(names)
        ]
        self.md = dict(
            ns=md_ns,
            trajectories=md_trajectories,
            alpha_l_ns=md_alpha_l_ns,
            alpha_l_trajectories=md_alpha_l_trajectories,
            interval_ps=md_interval_ps,
            seed=md_seed,
        )
        self.md_workers = md_workers
        self._md_cache: list[np.ndarray] | None = None

    # ------------------------------------------------------------ coordinates
    def _affine(self, t: torch.Tensor):
        return self._loc.to(t), self._scale.to(t)

    def to_internal(self, y: torch.Tensor) -> torch.Tensor:
        """Normalized `y` → internal coordinates `q` (nm, rad)."""
        loc, scale = self._affine(y)
        return loc + scale * y

    def from_internal(self, q: torch.Tensor) -> torch.Tensor:
        """Internal coordinates `q` → normalized `y` (torsions wrapped to `(-π, π]`)."""
        loc, scale = self._affine(q)
        wrap = lambda a: torch.atan2(torch.sin(a), torch.cos(a))  # noqa: E731
        d = q - loc
        d = torch.where(self._wrapped.to(q.device), wrap(d), d)
        return torch.where(self.periodic_mask.to(q.device), wrap(q), d / scale)

    def to_cartesian(self, y: torch.Tensor) -> torch.Tensor:
        """Canonical-frame Cartesian positions `[batch, 66]` in nm."""
        return self.ict(self.to_internal(y)).y

    def from_cartesian(self, x) -> torch.Tensor:
        """Normalized coordinates of Cartesian positions `[batch, 66]` or `[batch, 22, 3]`."""
        x = torch.as_tensor(x, dtype=torch.float64)
        return self.from_internal(self.ict.internal(x.reshape(x.shape[0], -1)))

    def phi_psi(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone dihedrals (rad, wrapped to `(-π, π]`) read directly from `y`."""
        wrap = lambda a: torch.atan2(torch.sin(a), torch.cos(a))  # noqa: E731
        return wrap(y[:, self.i_phi]), wrap(y[:, self.i_psi])

    def is_l(self, y: torch.Tensor) -> torch.Tensor:
        """`bool[batch]`: L chirality at Cα."""
        with torch.no_grad():
            return is_l_chirality(self.to_cartesian(y), self._quads)

    # ----------------------------------------------------------------- energy
    def _energy_terms(self, y: torch.Tensor) -> EnergyTerms:
        r"""Tempered $E(X(q(y)))/k_BT$; measure terms $\mathrm{ladj}_{IC}(q)$ and
        $\sum_m\log\sigma_m$ (module docstring); out of the domain: $+\infty$."""
        q = self.to_internal(y)
        x, ladj = self.ict(q)
        z = self.zmatrix
        th = q[:, z.angle_slice]
        bad = (q[:, z.bond_slice] <= 0).any(-1) | (th <= 0).any(-1) | (th >= math.pi).any(-1)
        loc, _ = self._affine(q)
        bad |= ((q - loc).abs() >= math.pi)[:, self._wrapped.to(q.device)].any(-1)
        if self.chirality == "L":
            bad |= ~is_l_chirality(x.detach(), self._quads)
        bad |= ~torch.isfinite(x.detach()).all(-1)
        u_x = self.cartesian.energy(torch.where(bad[:, None], math.nan, x))  # NaN: not sent
        return EnergyTerms(u_x, (ladj, self._log_scale), bad)

    # -------------------------------------------------------------- reporting
    def observables(self):
        def pop(fn):
            return lambda y: fn(*self.phi_psi(y)).to(y.dtype)

        return {
            "p_alphaL": Observable(pop(ala.in_alpha_l), "1"),
            "p_alphaR": Observable(pop(ala.in_alpha_r), "1"),
            "p_beta": Observable(pop(ala.in_beta), "1"),
        }

    def state_sets(self):
        def ind(fn, negate=False):
            return lambda y: fn(*self.phi_psi(y)) ^ negate

        return {
            "alphaL_vs_rest": StateSets(ind(ala.in_alpha_l), ind(ala.in_alpha_l, True)),
            "alphaR_vs_beta": StateSets(ind(ala.in_alpha_r), ind(ala.in_beta)),
        }

    def reference_free_energies(self) -> dict:
        """Umbrella/MBAR reference values from `<system>/umbrella_reference.json` (or `{}`)."""
        path = self.folder / REFERENCE_FILE
        if not path.is_file():
            return {}
        return json.loads(path.read_text()).get("free_energies", {})

    def exact_free_energy(self, name: str) -> float:
        """Reference ΔF (kT) from umbrella sampling + MBAR; `KeyError` if not stored."""
        return float(self.reference_free_energies()[name]["mean"])

    def reference_stderr(self, name: str) -> float:
        """Standard error (kT) of the umbrella/MBAR reference `name`; `KeyError` if absent."""
        return float(self.reference_free_energies()[name]["stderr"])

    def chirality_report(self, y: torch.Tensor) -> dict:
        """Raw (unweighted) fraction of D configurations among flow samples `y`."""
        ok = self.is_l(y)
        return {"n": int(ok.numel()), "d_fraction": float((~ok).double().mean())}

    def report_data(self, x: torch.Tensor, log_weight: torch.Tensor) -> dict:
        """`molecular.json`: the D fraction of the flow samples and the umbrella reference."""
        chir = self.chirality_report(x.detach().double())
        return {
            "molecular.json": {
                "chirality": chir,
                "umbrella_reference": self.reference_free_energies(),
            }
        }

    def plot_coordinates(self, x: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
        """φ, ψ (deg), then a bond (nm) and a bond angle (deg) of the φ backbone, by atom names.

        The bond and angle are the first z-matrix coordinates whose atoms all lie on the φ
        torsion (C–N–CA–C); in the samples file they are named as in `parameter_names`.
        """
        names = [a.name for a in self.mol.topology.atoms]
        backbone = set(ala.PHI_ATOMS)
        bonds, angles = self.zmatrix.bonds(), self.zmatrix.angles()
        i_b = next((n for n, b in enumerate(bonds) if set(b) <= backbone), 0)
        i_a = next((n for n, a in enumerate(angles) if set(a) <= backbone), 0)
        q = self.to_internal(x.detach().double())
        phi, psi = self.phi_psi(x.detach().double())
        values = torch.stack(
            [
                torch.rad2deg(phi),
                torch.rad2deg(psi),
                q[:, self.zmatrix.bond_slice.start + i_b],
                torch.rad2deg(q[:, self.zmatrix.angle_slice.start + i_a]),
            ],
            dim=1,
        )
        labels = [
            "φ (deg)",
            "ψ (deg)",
            f"bond {'–'.join(names[i] for i in bonds[i_b])} (nm)",
            f"angle {'–'.join(names[i] for i in angles[i_a])} (deg)",
        ]
        return values, labels

    def report_figures(self, x: torch.Tensor, log_weight: torch.Tensor) -> tuple:
        """Ramachandran plots: MD (if generated), flow, and flow reweighted by `log_weight`."""
        phi, psi = self.phi_psi(x.detach().double())
        md = None
        if self._md_cache is not None:
            frames = np.concatenate(self._md_cache)
            md = ala.phi_psi(torch.as_tensor(frames, dtype=torch.float64))
        d = self.chirality_report(x.detach().double())["d_fraction"]
        title = f"Ramachandran: MD, flow, reweighted flow (D fraction {d:.2%})"
        data = dict(filename="ramachandran.png", title=title, angles=(phi, psi), md=md)
        return (FigureRequest("ramachandran", {**data, "log_weight": log_weight}),)

    # ------------------------------------------------------------------- data
    def md_frames(self) -> list[np.ndarray]:
        """`[main, alpha_l]` MD frames (nm), generated once and cached on disk."""
        if self._md_cache is None:
            from boltzflow.molecular.md import alanine_md_frames
            from boltzflow.parallel import EnergyPool

            pool = self.pool
            if pool is None and self.md_workers:
                pool = EnergyPool(workers=int(self.md_workers))
            try:
                self._md_cache = alanine_md_frames(self, pool=pool, **self.md)
            finally:
                if pool is not self.pool:
                    pool.close()
        return self._md_cache

    def training_data(self, name: str) -> torch.Tensor:
        """`"md"`: normalized coordinates of
        [`md_frames`][boltzflow.molecular.target.AlanineDipeptideTarget.md_frames]; else a `.npy`
        file of Cartesian frames (nm) relative to the system folder."""
        if name == "md":
            frames = np.concatenate(self.md_frames())
        else:
            frames = np.load(self.folder / name)
        return self.from_cartesian(frames)

    def __repr__(self) -> str:
        return (
            f"AlanineDipeptideTarget(solvent={self.solvent!r}, T={self.temperature:g} K, "
            f"platform={self.cartesian.platform!r}, pool={self.pool!r})"
        )
