r"""Langevin molecular dynamics with OpenMM, cached on disk (command:
[`boltzflow.cli.md`][boltzflow.cli.md]).

[`run_md`][boltzflow.molecular.md.run_md] integrates the Langevin equation with OpenMM's
`LangevinMiddleIntegrator` (BAOAB splitting; Leimkuhler & Matthews 2013, Appl. Math. Res. Express
2013, 34) at temperature $T$, friction $\gamma$ (1/ps) and time step $\Delta t$ (fs),
and returns frames `float32[n_frames, n_atoms, 3]` in nm. It takes a picklable
[`SystemSpec`][boltzflow.parallel.SystemSpec], so trajectories run in worker processes through
[`boltzflow.parallel.EnergyPool.map`][boltzflow.parallel.EnergyPool.map]. An optional harmonic
dihedral restraint

$$
U_r(x) = \tfrac12 k\, \Delta(\tau(x) - \tau_0)^2, \qquad
\Delta(a) = a - 2\pi\,\mathrm{round}(a / 2\pi),
$$

(periodic distance on the circle; kJ/mol with $k$ in kJ/mol/rad²; one or several
dihedrals) can be switched on for the first `steps` (steering into a basin) or for the
whole run (umbrella windows, [`boltzflow.molecular.umbrella`][boltzflow.molecular.umbrella]).

[`cached_md`][boltzflow.molecular.md.cached_md] stores each trajectory under `$BOLTZFLOW_CACHE/md`
(default `.boltzflow-cache/md` next to `systems/` in a checkout, `~/.cache/boltzflow/md` for an
installed wheel; [`cache_dir`][boltzflow.molecular.md.cache_dir]), keyed by the SHA-256 of the
system XML, the start positions and every MD setting, so a repeated request is a file read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from boltzflow.parallel import SystemSpec

__all__ = ["MDSettings", "Restraint", "run_md", "cached_md", "cache_dir"]
__all__ += ["alanine_md_frames", "cached_md_many"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Restraint:
    """Harmonic restraint on the dihedral over `atoms` at `center` (rad), `k` kJ/mol/rad².

    `steps = None` keeps it on for the whole run; otherwise it acts during the first
    `steps` integration steps only (before equilibration and production).
    """

    atoms: tuple[int, int, int, int]
    center: float
    k: float
    steps: int | None = None


@dataclass(frozen=True)
class MDSettings:
    """Langevin MD settings. Times in ps unless stated; `n_frames` frames are stored."""

    temperature: float = 300.0
    n_frames: int = 1000
    interval_ps: float = 1.0
    timestep_fs: float = 1.0
    friction_per_ps: float = 1.0
    equilibration_ps: float = 10.0
    seed: int = 0
    restraint: Restraint | tuple[Restraint, ...] | None = None

    @property
    def interval_steps(self) -> int:
        return max(1, round(self.interval_ps * 1000.0 / self.timestep_fs))

    @property
    def simulated_ns(self) -> float:
        return self.n_frames * self.interval_steps * self.timestep_fs * 1e-6


def _restraints(r) -> tuple[Restraint, ...]:
    if r is None:
        return ()
    rs = (r,) if isinstance(r, Restraint) else tuple(r)
    if len({x.steps for x in rs}) > 1:
        raise ValueError("all restraints of one run must share `steps`")
    return rs


def run_md(spec: SystemSpec, positions: np.ndarray, settings: MDSettings) -> np.ndarray:
    """Run Langevin MD and return `float32[n_frames, n_atoms, 3]` positions in nm.

    Args:
        spec: the system and platform (`spec.platform`/`properties`).
        positions: start positions `[n_atoms, 3]` in nm.
        settings: [`MDSettings`][boltzflow.molecular.md.MDSettings].
    """
    import openmm
    import openmm.unit as unit

    s = settings
    system = openmm.XmlSerializer.deserialize(spec.xml)
    restraints = _restraints(s.restraint)
    if restraints:
        force = openmm.CustomTorsionForce(
            "0.5*restraint_on*k*d^2; d = theta - theta0 - 6.283185307179586*floor("
            "(theta - theta0 + 3.141592653589793)/6.283185307179586)"
        )
        force.addGlobalParameter("restraint_on", 1.0)
        force.addPerTorsionParameter("theta0")
        force.addPerTorsionParameter("k")
        for r in restraints:
            force.addTorsion(*[int(a) for a in r.atoms], [float(r.center), float(r.k)])
        system.addForce(force)
    integrator = openmm.LangevinMiddleIntegrator(
        s.temperature * unit.kelvin,
        s.friction_per_ps / unit.picosecond,
        s.timestep_fs * unit.femtosecond,
    )
    integrator.setRandomNumberSeed(int(s.seed) + 1)  # 0 would mean "pick a random seed"
    platform = openmm.Platform.getPlatformByName(spec.platform)
    ctx = openmm.Context(system, integrator, platform, dict(spec.properties))
    ctx.setPositions(np.asarray(positions, dtype=np.float64))
    ctx.setVelocitiesToTemperature(s.temperature * unit.kelvin, int(s.seed) + 1)
    if restraints and restraints[0].steps is not None:
        integrator.step(int(restraints[0].steps))
        ctx.setParameter("restraint_on", 0.0)
    integrator.step(max(0, round(s.equilibration_ps * 1000.0 / s.timestep_fs)))
    frames = np.empty((s.n_frames, system.getNumParticles(), 3), dtype=np.float32)
    for i in range(s.n_frames):
        integrator.step(s.interval_steps)
        frames[i] = ctx.getState(getPositions=True).getPositions(asNumpy=True)._value
    return frames


def cache_dir() -> Path:
    """`$BOLTZFLOW_CACHE`, else `.boltzflow-cache` next to the `systems/` catalogue of a
    checkout or of `$BOLTZFLOW_SYSTEMS`; for the catalogue installed inside the package (a
    wheel), the user cache `$XDG_CACHE_HOME/boltzflow` (default `~/.cache/boltzflow`)."""
    env = os.environ.get("BOLTZFLOW_CACHE")
    if env:
        return Path(env)
    from boltzflow.runs.recipes import systems_dir

    root = systems_dir().resolve()
    if not root.is_relative_to(Path(__file__).resolve().parents[1]):
        return root.parent / ".boltzflow-cache"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "boltzflow"


def _key(spec: SystemSpec, positions: np.ndarray, settings: MDSettings) -> str:
    h = hashlib.sha256()
    h.update(spec.key.encode())
    h.update(np.ascontiguousarray(positions, dtype=np.float64).tobytes())
    h.update(json.dumps(asdict(settings), sort_keys=True).encode())
    return h.hexdigest()[:24]


def cached_md(
    spec: SystemSpec,
    positions: np.ndarray,
    settings: MDSettings,
    *,
    pool=None,
    directory: str | Path | None = None,
) -> np.ndarray:
    """[`run_md`][boltzflow.molecular.md.run_md] through a disk cache (and through `pool` if
    given)."""
    return cached_md_many(spec, [(positions, settings)], pool=pool, directory=directory)[0]


def cached_md_many(spec, jobs, *, pool=None, directory=None) -> list[np.ndarray]:
    """Several `(positions, settings)` trajectories; missing ones run in parallel on `pool`.

    Returns the trajectories in order. Each is stored as `<cache>/md/<key>.npy` with a
    `.json` sidecar holding the settings.
    """
    root = Path(directory) if directory is not None else cache_dir() / "md"
    paths = [root / f"{_key(spec, p, s)}.npy" for p, s in jobs]
    todo = [i for i, p in enumerate(paths) if not p.is_file()]
    if todo:
        root.mkdir(parents=True, exist_ok=True)
        args = [(spec, jobs[i][0], jobs[i][1]) for i in todo]
        ns = sum(jobs[i][1].simulated_ns for i in todo)
        log.info("running %d MD trajectories (%.2f ns in total)", len(todo), ns)
        if pool is not None:
            results = pool.map(run_md, args, timeout=None)
        else:
            results = [run_md(*a) for a in args]
        for i, frames in zip(todo, results, strict=True):
            tmp = paths[i].with_suffix(".tmp.npy")
            np.save(tmp, frames)
            os.replace(tmp, paths[i])
            meta = {"settings": asdict(jobs[i][1]), "platform": spec.platform}
            paths[i].with_suffix(".json").write_text(json.dumps(meta, indent=1))
    return [np.load(p) for p in paths]


def alanine_md_frames(
    target,
    ns: float = 2.0,
    alpha_l_ns: float = 0.5,
    alpha_l_trajectories: int = 4,
    interval_ps: float = 0.1,
    seed: int = 0,
    pool=None,
    trajectories: int = 1,
) -> list[np.ndarray]:
    r"""Training MD for an alanine-dipeptide target: `[main, alpha_l]` frames in nm.

    * `main`: `ns` of 300 K Langevin MD in total, as `trajectories` independent runs
      (seeds `seed + 100 + i`; the first one uses `seed`) from the crd structure (β
      region); plain MD at 300 K in vacuum does not reach αL (0° < φ < 120°) in hundreds of ns.
    * `alpha_l`: `alpha_l_trajectories` trajectories of `alpha_l_ns` in total, each
      steered into the C7ax minimum of αL by restraints φ = 60°, ψ = -70° (500 kJ/mol/rad²,
      20 ps), then released and run unbiased at the same temperature. They may leave αL
      again; every frame is unbiased dynamics at $T$, so the mixture has the right
      shape in each basin and only the basin weights are off, which importance weights
      correct.
    """
    import math

    from boltzflow.molecular.alanine import PHI_ATOMS, PSI_ATOMS

    spec = target.cartesian.spec
    T = target.temperature
    n_main = max(1, int(trajectories))
    frames = max(1, round(ns * 1000.0 / interval_ps / n_main))
    jobs = [
        (
            target.mol.positions,
            MDSettings(T, frames, interval_ps, seed=seed + (100 + i if i else 0)),
        )
        for i in range(n_main)
    ]
    m = max(1, int(alpha_l_trajectories))
    per = max(1, round(alpha_l_ns * 1000.0 / interval_ps / m))
    steer = (
        Restraint(PHI_ATOMS, math.radians(60.0), 500.0, steps=20000),
        Restraint(PSI_ATOMS, math.radians(-70.0), 500.0, steps=20000),
    )
    for i in range(m if alpha_l_ns > 0 else 0):
        settings = MDSettings(
            T, per, interval_ps, equilibration_ps=5.0, seed=seed + 1 + i, restraint=steer
        )
        jobs.append((target.mol.positions, settings))
    out = cached_md_many(spec, jobs, pool=pool)  # in this process without a pool
    main = np.concatenate(out[:n_main])
    alpha = np.concatenate(out[n_main:]) if len(out) > n_main else main[:0]
    return [main, alpha]
