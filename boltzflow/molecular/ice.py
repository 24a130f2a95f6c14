r"""Ice XI with 16 rigid TIP4P-Ew waters: the OpenMM System and the rigid-water target.

**Structure.** `systems/ice-xi-16/ice-xi-16.gro`, generated once by GenIce2 2.2.13.3
(Matsumoto, Yagasaki & Tanaka 2018, J. Comput. Chem. 39, 61; `genice2 11 --water tip4p
--format gromacs`): the proton-ordered ice XI cell of GenIce's lattice `11` (16 molecules,
orthorhombic, $L = (0.89846, 0.77808, 0.73358)$ nm, two Cmc2$_1$ cells along $a$; lattice
after Jackson et al. 1997 and Fan et al. 2010, candidate #19). Only O, H1, H2 are read; each
molecule is fitted onto the TIP4P-Ew geometry
([`atoms_to_rigid`][boltzflow.coordinates.rigid.atoms_to_rigid]) and M is placed by the
virtual site.

**Force field.** OpenMM's `tip4pew.xml` (Horn et al. 2004, J. Chem. Phys. 120, 9665): rigid
water (`rigidWater=True`: three distance constraints per molecule) and the M virtual site;
periodic, PME electrostatics (error tolerance 5e-4) with a 0.35 nm real-space and
Lennard-Jones cutoff (the largest allowed: half the shortest box edge is 0.367 nm) and the
long-range dispersion correction; no centre-of-mass motion remover. Energies and MD use the
`CPU` platform with one thread per process (measured 0.64 ms vs 0.81 ms per energy + forces on
`Reference`, on the shared 2-core machine); the MD of the reference ladder and the
energies of the flow therefore see the same Hamiltonian. Forces are accumulated in fixed point
(`DeterministicForces`): without it the CPU platform's PME sums in a varying order, and two MD
runs with the same seed differed by up to 2e-4 nm after 20 ps.

**Target.** [`IceXITarget`][boltzflow.molecular.ice.IceXITarget] is the reduced energy
$u(x) = E(a(x)) / k_B T$ of rigid states `x (batch, 112)`
([`boltzflow.coordinates.rigid`][boltzflow.coordinates.rigid]: positions of the oxygens in nm,
unit quaternions; the measure is Lebesgue × surface measure of $S^3$ per molecule, no
Jacobian term), evaluated through the [`EnergyPool`][boltzflow.parallel.EnergyPool] when
`workers` is given. MD at any temperature (Langevin, 2 fs, constraints, cached like the alanine
MD, [`cached_md_many`][boltzflow.molecular.md.cached_md_many]) is returned as rigid states.
The MBAR reference of $\Delta F/N$ between 250 K and 100 K is in
[`boltzflow.molecular.ice_reference`][boltzflow.molecular.ice_reference].
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from boltzflow.coordinates.rigid import (
    RigidGeometry,
    atoms_to_rigid,
    rigid_to_atoms,
    rigid_water_geometry,
)
from boltzflow.energies.base import Energy
from boltzflow.energies.openmm import OpenMMBacked

__all__ = ["IceSystem", "load_ice_xi", "IceXITarget", "SYSTEM_NAME", "PLATFORM"]

SYSTEM_NAME = "ice-xi-16"
STRUCTURE_FILE = "ice-xi-16.gro"
REFERENCE_FILE = "reference.json"
PLATFORM = ("CPU", {"Threads": "1", "DeterministicForces": "true"})
"""OpenMM platform of the ice energies and MD (see the module docstring)."""


class IceSystem(NamedTuple):
    """An ice setup: OpenMM System and Topology, rigid geometry, start configuration, box.

    Attributes:
        system: the `openmm.System` (16 × (O, H1, H2, M), constraints, virtual sites, PME).
        topology: the `openmm.app.Topology`.
        geometry: [`RigidGeometry`][boltzflow.coordinates.rigid.RigidGeometry] read from it.
        positions: start positions of all particles `float64[64, 3]` nm (exact rigid waters).
        rigid: the start configuration as a rigid state `float64[1, 112]`.
        box: box edges `(Lx, Ly, Lz)` in nm.
        folder: the system folder.
    """

    system: object
    topology: object
    geometry: RigidGeometry
    positions: np.ndarray
    rigid: torch.Tensor
    box: tuple[float, float, float]
    folder: Path


def _system_folder() -> Path:
    from boltzflow.runs.recipes import systems_dir

    return systems_dir() / SYSTEM_NAME


def load_ice_xi(folder: str | Path | None = None, cutoff_nm: float = 0.35) -> IceSystem:
    """Build the TIP4P-Ew ice XI System from the vendored structure.

    Args:
        folder: directory holding `ice-xi-16.gro` (default: `systems/ice-xi-16`).
        cutoff_nm: real-space (PME) and Lennard-Jones cutoff; at most half the shortest
            box edge.

    Returns:
        [`IceSystem`][boltzflow.molecular.ice.IceSystem].
    """
    import openmm.app as app
    import openmm.unit as unit

    folder = Path(folder) if folder is not None else _system_folder()
    gro = app.GromacsGroFile(str(folder / STRUCTURE_FILE))
    raw = np.asarray(gro.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    names = [a.strip() for a in gro.atomNames]
    box_vectors = gro.getPeriodicBoxVectors()
    box = tuple(float(box_vectors[k][k].value_in_unit(unit.nanometer)) for k in range(3))
    oxygens = [i for i, n in enumerate(names) if n.startswith("O")]
    topology = app.Topology()
    chain = topology.addChain()
    xyz = []
    for o in oxygens:
        res = topology.addResidue("HOH", chain)
        atom_o = topology.addAtom("O", app.element.oxygen, res)
        for k, name in ((1, "H1"), (2, "H2")):
            if not names[o + k].startswith("H"):
                raise ValueError(f"{STRUCTURE_FILE}: atom {o + k} should be a hydrogen")
            topology.addBond(atom_o, topology.addAtom(name, app.element.hydrogen, res))
        xyz.extend(raw[o : o + 3])
    topology.setPeriodicBoxVectors(box_vectors)
    ff = app.ForceField("tip4pew.xml")
    modeller = app.Modeller(topology, np.asarray(xyz) * unit.nanometer)
    modeller.addExtraParticles(ff)
    system = ff.createSystem(
        modeller.topology,
        nonbondedMethod=app.PME,
        nonbondedCutoff=cutoff_nm * unit.nanometer,
        rigidWater=True,
        ewaldErrorTolerance=5e-4,
        removeCMMotion=False,
    )
    geometry = rigid_water_geometry(system)
    body = torch.as_tensor(geometry.body)
    start = np.asarray(modeller.positions.value_in_unit(unit.nanometer))
    atoms = torch.as_tensor(start[geometry.particles], dtype=torch.float64)
    rigid = atoms_to_rigid(atoms[None], body)
    positions = np.zeros((system.getNumParticles(), 3))
    positions[geometry.particles] = rigid_to_atoms(rigid, body)[0].numpy()
    return IceSystem(system, modeller.topology, geometry, positions, rigid, box, folder)


class IceXITarget(OpenMMBacked, Energy):
    r"""Ice XI, 16 rigid TIP4P-Ew waters, on rigid states `(batch, 112)`: $u = E/k_BT$.

    Args:
        temperature: $T$ in K (250 K is the high-temperature state of the benchmark, 100 K
            the low one; `at_temperature` tempers the whole energy, there is no measure term).
        system_dir: folder with `ice-xi-16.gro` and `reference.json`.
        workers, scheduler: an [`EnergyPool`][boltzflow.parallel.EnergyPool] for energies and
            MD; `None`: energies in this process.
        md_ns: length of each MD trajectory (ns) after `md_equilibration_ps`.
        md_interval_ps: time between stored frames; md_timestep_fs: Langevin time step;
        md_friction_per_ps: Langevin friction; md_seed: seed of the trajectory at
            `temperature` (with the settings and seed of a rung of the reference ladder the
            run reads that rung's cached MD; the shipped recipe uses seed 1, so that its
            estimate is independent of the reference, which uses seed 0).
        md_workers: local workers for missing MD when there is no energy pool.
        platform: OpenMM platform name instead of [`PLATFORM`][boltzflow.molecular.ice.PLATFORM]
            (e.g. `"Reference"`, double precision, for finite-difference checks).
        device: ignored (energies are evaluated on the CPU; tensors follow their inputs).

    Attributes:
        n_molecules: 16. box: `(Lx, Ly, Lz)` nm. body: body-frame sites `float64[4, 3]`.
        reference_state: the ideal crystal, `float64[112]`.
    """

    def __init__(
        self,
        temperature: float = 250.0,
        *,
        system_dir: str | os.PathLike | None = None,
        workers: int | None = None,
        scheduler: str | None = None,
        md_ns: float = 0.5,
        md_interval_ps: float = 0.5,
        md_timestep_fs: float = 2.0,
        md_friction_per_ps: float = 1.0,
        md_equilibration_ps: float = 20.0,
        md_seed: int = 0,
        md_workers: int | None = None,
        platform: str | None = None,
        device=None,
    ):
        self.ice = load_ice_xi(system_dir)
        self.n_molecules = self.ice.geometry.n_molecules
        super().__init__(7 * self.n_molecules)
        self.folder = self.ice.folder
        self.box = self.ice.box
        self.body = torch.as_tensor(self.ice.geometry.body)
        self.temperature = float(temperature)
        platform, props = PLATFORM if platform is None else (platform, {})
        self._connect_openmm(
            self.ice.system,
            temperature,
            platform=platform,
            platform_properties=props,
            workers=workers,
            scheduler=scheduler,
        )
        self.md = dict(
            ns=float(md_ns),
            interval_ps=float(md_interval_ps),
            timestep_fs=float(md_timestep_fs),
            friction_per_ps=float(md_friction_per_ps),
            equilibration_ps=float(md_equilibration_ps),
            seed=int(md_seed),
        )
        self.md_workers = md_workers
        self._order = torch.as_tensor(np.argsort(self.ice.geometry.particles.reshape(-1)))
        names = ("x", "y", "z", "qw", "qx", "qy", "qz")
        self.parameter_names = [f"{c}_{i}" for i in range(self.n_molecules) for c in names]

    # ------------------------------------------------------------ coordinates
    def to_particles(self, x: torch.Tensor) -> torch.Tensor:
        """Positions of all System particles `(batch, 64, 3)` nm of rigid states `x`.

        The virtual sites (M) are placed from `x.detach()`: OpenMM already adds the force on
        M, distributed by the site weights, to O, H1 and H2, so autograd must reach `x` through
        the real atoms only (a gradient through M as well would count that force twice).
        """
        sites = rigid_to_atoms(x, self.body)
        virtual = torch.as_tensor(self.ice.geometry.virtual, device=x.device)
        if x.requires_grad and virtual.any():
            sites = torch.where(virtual[:, None], rigid_to_atoms(x.detach(), self.body), sites)
        return sites.reshape(x.shape[0], -1, 3)[:, self._order.to(x.device)]

    def from_particles(self, positions) -> torch.Tensor:
        """Rigid states `(n, 112)` float64 of particle positions `[n, 64, 3]` (e.g. MD)."""
        p = torch.as_tensor(np.asarray(positions), dtype=torch.float64)
        return atoms_to_rigid(p[:, torch.as_tensor(self.ice.geometry.particles)], self.body)

    # ----------------------------------------------------------------- energy
    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        """$E(a(x))/k_BT$ at the reference temperature (OpenMM, through the pool)."""
        return self.cartesian.energy(self.to_particles(x).reshape(x.shape[0], -1))

    def potential_energy(self, x: torch.Tensor) -> np.ndarray:
        """Potential energies `float64[batch]` in kJ/mol of rigid states (no autograd)."""
        e, _ = self.cartesian.evaluate_numpy(self.to_particles(x.detach()).cpu().numpy())
        return e

    @property
    def reference_state(self) -> torch.Tensor:
        """The ideal crystal as a rigid state `float64[112]` (the vendored structure fitted
        onto the TIP4P-Ew geometry; quaternions with $w \\ge 0$), e.g. the reference about
        which a rigid-body flow contracts (`reference = "target"`)."""
        return self.ice.rigid[0].clone()

    # ------------------------------------------------------------------- data
    def md_settings(self, temperature: float, seed: int | None = None):
        """[`MDSettings`][boltzflow.molecular.md.MDSettings] of a trajectory at `temperature`."""
        from boltzflow.molecular.md import MDSettings

        m = self.md
        n_frames = max(1, round(m["ns"] * 1000.0 / m["interval_ps"]))
        return MDSettings(
            float(temperature),
            n_frames,
            m["interval_ps"],
            timestep_fs=m["timestep_fs"],
            friction_per_ps=m["friction_per_ps"],
            equilibration_ps=m["equilibration_ps"],
            seed=m["seed"] if seed is None else int(seed),
        )

    def md_states(self, temperatures, seeds=None) -> list[torch.Tensor]:
        """Rigid states `float64[n_frames, 112]` of one MD trajectory per temperature.

        Each starts from the vendored structure; missing trajectories run in parallel on the
        energy pool (else on `md_workers` local workers, else here) and are cached on disk.
        """
        from boltzflow.molecular.md import cached_md_many
        from boltzflow.parallel import EnergyPool

        seeds = [None] * len(temperatures) if seeds is None else seeds
        jobs = [
            (self.ice.positions, self.md_settings(t, s))
            for t, s in zip(temperatures, seeds, strict=True)
        ]
        pool = self.pool
        if pool is None and self.md_workers:
            pool = EnergyPool(workers=int(self.md_workers))
        try:
            frames = cached_md_many(self.cartesian.spec, jobs, pool=pool)
        finally:
            if pool is not None and pool is not self.pool:
                pool.close()
        return [self.from_particles(f) for f in frames]

    def training_data(self, name: str) -> torch.Tensor:
        """`"md"`: MD at the target's temperature; `"md-<T>K"` (e.g. `"md-100K"`): MD at T."""
        if name == "md":
            return self.md_states([self.temperature])[0]
        match = re.fullmatch(r"md-([0-9.]+)K", name)
        if match is None:
            raise NotImplementedError(f"unknown data '{name}' (use 'md' or 'md-<T>K')")
        return self.md_states([float(match.group(1))])[0]

    # -------------------------------------------------------------- reporting
    def reference(self) -> dict:
        """The MBAR reference of `<system>/reference.json` (or `{}`)."""
        path = self.folder / REFERENCE_FILE
        return json.loads(path.read_text()) if path.is_file() else {}

    def exact_free_energy(self, name: str) -> float:
        r"""The MBAR reference for `name = "delta_f_per_molecule"`: $\Delta F/N$ in kT per
        molecule between the target and the start state (`reference.json`, written by
        `python -m boltzflow.molecular.ice_reference`); `KeyError` for other names or without
        a reference file."""
        return self._reference_entry(name, name)

    def reference_stderr(self, name: str) -> float:
        """Standard error of the MBAR reference `exact_free_energy(name)` (kT per molecule,
        MBAR's asymptotic error)."""
        return self._reference_entry(name, "stderr_per_molecule")

    def _reference_entry(self, name: str, key: str) -> float:
        value = self.reference().get(key) if name == "delta_f_per_molecule" else None
        if value is None:
            raise KeyError(f"{type(self).__name__} has no reference for '{name}'")
        return float(value)

    def report_data(self, x: torch.Tensor, log_weight: torch.Tensor) -> dict:
        r"""`ice.json`: the MBAR reference ΔF/N stored in the system folder, its standard error
        and the published values (Köhler et al. 2023); and a check of the reweighted samples
        against MD of the target state: the mean potential energy per molecule (kJ/mol) of
        MD at the target's temperature (generated and cached here; standard error from 10
        blocks) beside its importance-weighted estimate from `x`, `log_weight` (standard error
        $\sqrt{\sum_i \bar w_i^2 (E_i - \bar E)^2}$ with normalized weights $\bar w$)."""
        ref = self.reference()
        return {
            "ice.json": {
                "mbar_reference": ref.get("delta_f_per_molecule"),
                "mbar_reference_stderr": ref.get("stderr_per_molecule"),
                "published": ref.get("published"),
                "mean_potential_energy_per_molecule": self._energy_check(x, log_weight),
            }
        }

    def _energy_check(self, x: torch.Tensor, log_weight: torch.Tensor) -> dict:
        n = self.n_molecules
        md = self.potential_energy(self.training_data("md")) / n
        blocks = np.array([b.mean() for b in np.array_split(md, 10)])
        md_mean, md_se = float(md.mean()), float(blocks.std(ddof=1) / np.sqrt(len(blocks)))
        lw = log_weight.detach().double().cpu()
        keep = torch.isfinite(lw)
        e = torch.as_tensor(self.potential_energy(x[keep]) / n)
        w = torch.softmax(lw[keep], 0)
        mean = float((w * e).sum())
        se = float(torch.sqrt((w**2 * (e - mean) ** 2).sum()))
        return {
            "unit": "kJ/mol",
            "temperature": self.temperature,
            "md": {"mean": md_mean, "stderr": md_se, "n": len(md)},
            "reweighted": {"mean": mean, "stderr": se, "n": int(keep.sum())},
            "z_score": (mean - md_mean) / max(math.hypot(se, md_se), 1e-300),
        }

    def __repr__(self) -> str:
        return (
            f"IceXITarget(N={self.n_molecules}, T={self.temperature:g} K, "
            f"platform={self.cartesian.platform!r}, pool={self.pool!r})"
        )
