r"""The worker side of OpenMM energy evaluation: what runs inside each worker process.

[`evaluate_chunk`][boltzflow.openmm_worker.evaluate_chunk] receives a
[`SystemSpec`][boltzflow.openmm_worker.SystemSpec] (a serialized `openmm.System` as XML, the
platform and its properties, and a content hash) and a chunk of configurations as a `numpy` array
`[n, n_atoms, 3]` in nm. Each worker process builds one `openmm.Context` per spec, once, and caches
it under the spec's SHA-256 content hash. It returns potential energies `[n]` in kJ/mol and forces
`[n, n_atoms, 3]` in kJ/mol/nm. A configuration that OpenMM cannot evaluate gets `energy = nan` and
zero forces; the exception is caught per configuration, counted and reported as one warning per
chunk, so no result ever leaks from one configuration to the next.
[`evaluate_shared_chunk`][boltzflow.openmm_worker.evaluate_shared_chunk] does the same on rows of a
shared-memory batch. The parent side,
[`boltzflow.parallel.EnergyPool`][boltzflow.parallel.EnergyPool], sends the work.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

__all__ = ["SystemSpec", "evaluate_chunk", "evaluate_shared_chunk", "worker_info"]

log = logging.getLogger(__name__)

_MAX_CONTEXTS = 4
"""Contexts kept per process (keyed by ``SystemSpec.key``); small, so memory stays bounded."""
_CONTEXTS: OrderedDict[str, object] = OrderedDict()


@dataclass(frozen=True)
class SystemSpec:
    """A picklable description of an OpenMM evaluation setup.

    Attributes:
        xml: `openmm.XmlSerializer.serialize(system)`.
        platform: OpenMM platform name (`"Reference"`, `"CPU"`, `"CUDA"`, ...).
        properties: platform properties as sorted `(name, value)` string pairs.
        key: SHA-256 of `(xml, platform, properties)`; the worker-side cache key.
    """

    xml: str
    platform: str = "Reference"
    properties: tuple[tuple[str, str], ...] = ()
    key: str = field(default="", compare=False)

    def __post_init__(self):
        props = tuple(sorted((str(k), str(v)) for k, v in dict(self.properties).items()))
        object.__setattr__(self, "properties", props)
        h = hashlib.sha256()
        for part in (self.xml, self.platform, repr(props)):
            h.update(part.encode())
            h.update(b"\0")
        object.__setattr__(self, "key", h.hexdigest())

    @classmethod
    def from_system(cls, system, platform: str = "Reference", properties=None) -> SystemSpec:
        """Serialize an `openmm.System`."""
        import openmm

        xml = openmm.XmlSerializer.serialize(system)
        return cls(xml, platform, tuple((properties or {}).items()))

    @property
    def n_atoms(self) -> int:
        return _context(self).getSystem().getNumParticles()


def _context(spec: SystemSpec):
    """The cached Context for `spec` in this process (built on first use)."""
    ctx = _CONTEXTS.get(spec.key)
    if ctx is not None:
        _CONTEXTS.move_to_end(spec.key)
        return ctx
    import openmm

    system = openmm.XmlSerializer.deserialize(spec.xml)
    platform = openmm.Platform.getPlatformByName(spec.platform)
    integrator = openmm.VerletIntegrator(0.001)
    ctx = openmm.Context(system, integrator, platform, dict(spec.properties))
    ctx._boltzflow_integrator = integrator  # keep the integrator alive with the context
    _CONTEXTS[spec.key] = ctx
    while len(_CONTEXTS) > _MAX_CONTEXTS:
        _CONTEXTS.popitem(last=False)
    return ctx


def evaluate_chunk(spec: SystemSpec, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Energies and forces of a chunk of configurations in this process.

    Args:
        spec: the system to evaluate.
        positions: `float[n, n_atoms, 3]` in nm.

    Returns:
        `(energies [n] in kJ/mol, forces [n, n_atoms, 3] in kJ/mol/nm)` as float64. Where
        the positions are not finite or OpenMM raises, the energy is `nan` and the forces 0.
    """
    ctx = _context(spec)
    pos = np.asarray(positions, dtype=np.float64)
    n = pos.shape[0]
    energies = np.full(n, np.nan)
    forces = np.zeros(pos.shape, dtype=np.float64)
    finite = np.isfinite(pos).reshape(n, -1).all(axis=1)
    failed: list[tuple[int, str]] = []
    for i in np.flatnonzero(finite):
        try:
            ctx.setPositions(pos[i])
            state = ctx.getState(getEnergy=True, getForces=True)
            # OpenMM's internal units are nm, kJ/mol and kJ/mol/nm: ``_value`` is exact here.
            e = state.getPotentialEnergy()._value
            f = state.getForces(asNumpy=True)._value
        except Exception as exc:  # OpenMMException on NaN/overflow; keep this config only
            failed.append((int(i), str(exc)))
            continue
        energies[i] = e
        forces[i] = f
    if failed:
        i, msg = failed[0]
        log.warning(
            "OpenMM raised on %d of %d configurations (first: row %d, %s); their energy is "
            "NaN and they count as non-finite",
            len(failed),
            n,
            i,
            msg.strip().splitlines()[0] if msg.strip() else "no message",
        )
    bad = ~np.isfinite(energies) | ~np.isfinite(forces).reshape(n, -1).all(axis=1)
    forces[bad] = 0.0
    energies[bad & np.isfinite(energies)] = np.nan  # finite energy with non-finite forces
    return energies, forces


def evaluate_shared_chunk(spec: SystemSpec, handle, start: int, stop: int) -> None:
    """[`evaluate_chunk`][boltzflow.openmm_worker.evaluate_chunk] on rows `start:stop` of a shared
    batch, written in place.

    `handle` is a [`SharedArraysHandle`][boltzflow.shared_arrays.SharedArraysHandle] with arrays
    `positions [n, n_atoms, 3]`, `energies [n]` and `forces [n, n_atoms, 3]` (float64).
    """
    views = _attached(handle)
    e, f = evaluate_chunk(spec, views["positions"][start:stop])
    views["energies"][start:stop] = e
    views["forces"][start:stop] = f


_ATTACHED: OrderedDict[str, tuple] = OrderedDict()
"""Shared blocks this worker has attached, by name (the parent reuses one block per pool)."""


def _attached(handle) -> dict[str, np.ndarray]:
    """Views of `handle`'s block, attached once per worker; older blocks are let go."""
    if handle.name not in _ATTACHED:
        _ATTACHED[handle.name] = handle.attach()
        while len(_ATTACHED) > 2:
            _, (shm, views) = _ATTACHED.popitem(last=False)
            views.clear()
            shm.close()
    return _ATTACHED[handle.name][1]


def worker_info() -> tuple[int, tuple[int, ...]]:
    """`(pid, cpu affinity)` of the calling process (used by tests to find workers)."""
    aff = tuple(sorted(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else ()
    return os.getpid(), aff


def _pin_worker(counter, cores: tuple[int, ...]) -> None:
    """Process-pool initializer: pin this worker to one core (round robin)."""
    with counter.get_lock():
        idx = counter.value
        counter.value += 1
    if cores and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {cores[idx % len(cores)]})
        except OSError:  # pragma: no cover - containers may forbid it
            pass
