r"""Reduced energies of an `openmm.System`: $u(x) = E(x) / k_B T$ in kT.

Positions `x` are flat Cartesian coordinates, `Tensor[batch, 3 * n_atoms]` in nm (reshape
to `[batch, n_atoms, 3]` for OpenMM). Energies are returned in kT, `Tensor[batch]`, and
forces $F = -\partial u/\partial x$ in kT/nm. The energy enters autograd through a custom
`torch.autograd.Function` whose backward uses OpenMM's forces (no finite differences, no
second derivatives), as in Noé et al. 2019, "Boltzmann generators", Science 365, eaaw1147.

Non-finite and absurd energies. A configuration whose energy is NaN, infinite, or larger in
magnitude than `max_energy` (overlapping atoms) gets $u = +\infty$ -- importance
weight 0 -- and a zero force, so gradients never become NaN. Such configurations are counted
in `OpenMMEnergy.n_nonfinite`. NaN positions raise inside OpenMM's `CPU` platform; the
exception is caught per configuration (see
[`boltzflow.parallel.evaluate_chunk`][boltzflow.parallel.evaluate_chunk]). A soft energy cap for
training belongs to the loss (`energy_cap` of a training stage, see
[`boltzflow.training.losses.soft_cap`][boltzflow.training.losses.soft_cap]); importance weights
always use the raw energy.

Platform choice (measured for alanine dipeptide on 2 cores, energy + forces per second):
`Reference` 5.7e4 vs `CPU` 1.6e4 in vacuum; `CPU` with one thread pinned to a core
6.1e3 vs `Reference` 1.0e3 in OBC implicit solvent.
[`default_platform`][boltzflow.energies.openmm.default_platform] therefore picks `Reference` for
systems without a generalized-Born force and `CPU` with `Threads=1` otherwise; pass an
[`EnergyPool`][boltzflow.parallel.EnergyPool] to get pinned single-threaded workers. A GPU
platform (`CUDA`, else `OpenCL`) is chosen when one is installed and the system has at least
[`GPU_MIN_ATOMS`][boltzflow.energies.openmm.GPU_MIN_ATOMS] particles: one configuration per
call is launch-bound on a GPU, so a 22-atom molecule stays on the CPU platforms.
"""

from __future__ import annotations

import numpy as np
import torch

from boltzflow.energies.base import Energy
from boltzflow.parallel import EnergyPool, SystemSpec, evaluate_chunk

__all__ = ["OpenMMEnergy", "default_platform", "gpu_platforms", "GPU_MIN_ATOMS", "kT_kJ_per_mol"]

_R_KJ = 8.314462618e-3
"""Molar gas constant in kJ/(mol K) (CODATA 2018, as in ``openmm.unit.MOLAR_GAS_CONSTANT_R``)."""

_GB_FORCES = (
    "GBSAOBCForce",
    "CustomGBForce",
    "GBSAGBnForce",
    "GBVIForce",
    "AmoebaGeneralizedKirkwoodForce",
)


def kT_kJ_per_mol(temperature: float) -> float:
    """Thermal energy $k_B T$ in kJ/mol at `temperature` in K."""
    return _R_KJ * float(temperature)


GPU_MIN_ATOMS = 2000
"""Particles from which a GPU platform is preferred to the CPU ones (an estimate: a GPU
evaluation of one configuration costs tens of microseconds of launches and transfers, the
CPU platforms' cost grows with the system; not yet measured on a GPU)."""


def gpu_platforms() -> list[str]:
    """Installed OpenMM GPU platforms, fastest first (`CUDA`, `OpenCL`)."""
    import openmm

    names = {
        openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())
    }
    return [p for p in ("CUDA", "OpenCL") if p in names]


def default_platform(system) -> tuple[str, dict[str, str]]:
    """Measured default platform: `("Reference", {})` or `("CPU", {"Threads": "1"})`, or a GPU
    platform (`CUDA`, else `OpenCL`, mixed precision) for systems of at least `GPU_MIN_ATOMS`
    particles when one is installed.

    Systems with a generalized-Born (implicit-solvent) force are about 6× faster on a pinned
    single-threaded `CPU` platform than on `Reference`; small vacuum systems are about 3.5×
    faster on `Reference`.
    """
    gpus = gpu_platforms() if system.getNumParticles() >= GPU_MIN_ATOMS else []
    if gpus:
        return gpus[0], {"Precision": "mixed"}
    names = {type(f).__name__ for f in system.getForces()}
    if names & set(_GB_FORCES):
        return "CPU", {"Threads": "1"}
    return "Reference", {}


class _OpenMMFunction(torch.autograd.Function):
    """`u = E(x)/kT` with backward `∂u/∂x = -F(x)/kT` taken from OpenMM."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, energy: OpenMMEnergy) -> torch.Tensor:
        u, f = energy._evaluate_reduced(x.detach())
        ctx.save_for_backward(f)
        return u

    @staticmethod
    def backward(ctx, grad_u: torch.Tensor):
        (f,) = ctx.saved_tensors
        grad = -grad_u.unsqueeze(-1) * f
        # zero force rows (non-finite configurations) stay exactly zero, even if grad_u is inf
        grad = torch.where(f == 0, torch.zeros_like(grad), grad)
        return grad, None


class OpenMMEnergy(Energy):
    r"""Reduced potential $u(x) = E(x)/(k_B T)$ of an `openmm.System`.

    Args:
        system: the `openmm.System` (serialized once; later changes to it are not seen).
        temperature: reference temperature $T$ in K.
        platform: OpenMM platform name; default from
            [`default_platform`][boltzflow.energies.openmm.default_platform].
        platform_properties: e.g. `{"Threads": "1"}`; default from
            [`default_platform`][boltzflow.energies.openmm.default_platform].
        pool: an [`EnergyPool`][boltzflow.parallel.EnergyPool] to evaluate batches in worker
            processes; `None` evaluates in this process with one cached Context.
        max_energy: energies with $|u| >$ `max_energy` (kT) count as non-finite.

    Attributes:
        n_atoms: number of particles; `event_shape == (3 * n_atoms,)`.
        kT: $k_B T$ in kJ/mol.
        spec: the [`SystemSpec`][boltzflow.parallel.SystemSpec] sent to workers.
        n_nonfinite: number of configurations so far with non-finite or absurd energy.

    Examples:
        >>> from boltzflow.molecular.alanine import load_alanine_dipeptide
        >>> mol = load_alanine_dipeptide("vacuum")
        >>> target = OpenMMEnergy(mol.system, temperature=300.0)
        >>> x = torch.as_tensor(mol.positions, dtype=torch.float64).reshape(1, -1)
        >>> round(float(target.energy(x)), 2)
        -35.32
    """

    def __init__(
        self,
        system,
        temperature: float = 300.0,
        *,
        platform: str | None = None,
        platform_properties: dict | None = None,
        pool: EnergyPool | None = None,
        max_energy: float = 1e8,
    ):
        self.n_atoms = int(system.getNumParticles())
        super().__init__((3 * self.n_atoms,))
        if platform is None:
            platform, default_props = default_platform(system)
            if platform_properties is None:
                platform_properties = default_props
        self.temperature = float(temperature)
        self.kT = kT_kJ_per_mol(temperature)
        self.spec = SystemSpec.from_system(system, platform, platform_properties or {})
        self.pool = pool
        self.max_energy = float(max_energy)
        self.n_nonfinite = 0

    @property
    def platform(self) -> str:
        return self.spec.platform

    def compute_resources(self) -> dict:
        """The OpenMM platform and the energy worker pool (see `Energy.compute_resources`)."""
        pool = self.pool
        workers = pool.n_workers if pool is not None else 0
        local = workers if pool is not None and pool.kind == "local" else 0
        return {"openmm_platform": self.platform, "energy_workers": workers, "local_workers": local}

    # --------------------------------------------------------------- evaluation
    def evaluate_numpy(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw OpenMM results for `positions [n, n_atoms, 3]` (nm): kJ/mol and kJ/mol/nm.

        Non-finite results are `nan` energy and zero force (not yet mapped to `+inf`).
        """
        pos = np.asarray(positions, dtype=np.float64).reshape(-1, self.n_atoms, 3)
        if self.pool is None:
            return evaluate_chunk(self.spec, pos)
        return self.pool.evaluate(self.spec, pos)

    def _evaluate_reduced(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(u [batch] in kT at T_ref, F [batch, 3N] in kT/nm)` with the non-finite policy."""
        e, f = self.evaluate_numpy(x.cpu().numpy())
        u = e / self.kT
        f = f.reshape(len(u), -1) / self.kT
        bad = ~np.isfinite(u) | (np.abs(np.nan_to_num(u, nan=np.inf)) > self.max_energy)
        bad |= ~np.isfinite(f).all(axis=1)
        if bad.any():
            u = np.where(bad, np.inf, u)
            f[bad] = 0.0
            self.n_nonfinite += int(bad.sum())
        return (
            torch.as_tensor(u, dtype=x.dtype, device=x.device),
            torch.as_tensor(f, dtype=x.dtype, device=x.device),
        )

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        return _OpenMMFunction.apply(x, self)

    def force(self, x: torch.Tensor) -> torch.Tensor:
        """Force $-\\partial u/\\partial x$ in kT/nm, straight from OpenMM (no autograd)."""
        self._check_shape(x)
        self.n_evaluations += int(x.shape[0])
        _, f = self._evaluate_reduced(x.detach())
        return self._temper(f)

    def energy_and_force(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(u(x) [batch] in kT, F(x) [batch, 3N] in kT/nm)` from one OpenMM call."""
        self._check_shape(x)
        self.n_evaluations += int(x.shape[0])
        u, f = self._evaluate_reduced(x.detach())
        return self._temper(u), self._temper(f)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["pool"] = None  # a pool lives in one process; reattach after unpickling
        return state

    def __repr__(self) -> str:
        t = "" if self.temperature_scale == 1.0 else f", T/T_ref={self.temperature_scale:g}"
        return (
            f"OpenMMEnergy(n_atoms={self.n_atoms}, T={self.temperature:g} K, "
            f"platform={self.platform!r}, pool={self.pool!r}{t})"
        )


class OpenMMBacked:
    """Mixin for targets whose energies come from an
    [`OpenMMEnergy`][boltzflow.energies.openmm.OpenMMEnergy] `self.cartesian` of their own
    system, evaluated in this process or on an [`EnergyPool`][boltzflow.parallel.EnergyPool]
    `self.pool` (molecules in internal coordinates, rigid waters)."""

    def _connect_openmm(
        self, system, temperature: float, *, platform, platform_properties, workers, scheduler
    ) -> None:
        """Set `self.pool` (local `workers ≥ 1` or a dask `scheduler`; else `None`) and
        `self.cartesian`, the reduced energy of `system` at `temperature` (K)."""
        self.pool = None
        if scheduler is not None or (workers is not None and int(workers) >= 1):
            self.pool = EnergyPool(workers=workers, scheduler=scheduler)
        self.cartesian = OpenMMEnergy(
            system,
            temperature,
            platform=platform,
            platform_properties=platform_properties,
            pool=self.pool,
        )

    @property
    def n_nonfinite(self) -> int:
        """Configurations so far with a non-finite or absurd energy."""
        return self.cartesian.n_nonfinite

    def compute_resources(self) -> dict:
        """Those of the wrapped [`OpenMMEnergy`][boltzflow.energies.openmm.OpenMMEnergy]."""
        return self.cartesian.compute_resources()

    def close(self) -> None:
        """Shut down the worker pool, if any."""
        if self.pool is not None:
            self.pool.close()
