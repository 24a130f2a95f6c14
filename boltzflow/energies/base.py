r"""The :class:`Energy` protocol: reduced (dimensionless, units of kT) potentials.

Every target in boltzflow is an unnormalized density

.. math:: p(x) \propto \exp(-u(x)),

where :math:`u` is a *reduced* energy, i.e. measured in units of :math:`k_B T`.
Subclasses implement :meth:`Energy._energy` at the reference temperature; the only place
where temperature enters is :meth:`Energy.energy`, which multiplies by
``beta_scale = T_ref / T``.

Shapes: ``x`` is ``Tensor[batch, *event_shape]``; ``energy(x)`` is ``Tensor[batch]``
with no trailing singleton dimension. ``force(x) = -∂u/∂x`` has the shape of ``x``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch

__all__ = ["Energy", "Observable", "StateSets", "CallableEnergy", "as_event_shape"]


class Observable(NamedTuple):
    """A scalar observable ``fn(x) -> Tensor[batch]`` with its unit (for reports)."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    unit: str = "1"


class StateSets(NamedTuple):
    """Two state sets given as indicator functions, for ``ΔF = -ln(Σ_A w / Σ_B w)`` in kT."""

    in_a: Callable[[torch.Tensor], torch.Tensor]
    in_b: Callable[[torch.Tensor], torch.Tensor]


def as_event_shape(shape: int | tuple[int, ...] | torch.Size) -> torch.Size:
    """Normalise an int or tuple to a ``torch.Size`` event shape."""
    if isinstance(shape, int):
        return torch.Size((shape,))
    return torch.Size(tuple(int(s) for s in shape))


class Energy:
    r"""Base class for reduced energies :math:`u(x)` in kT.

    Subclasses set ``event_shape`` (via ``super().__init__``) and implement
    :meth:`_energy`. Optional hooks:

    * ``log_z`` -- the exact :math:`\log Z = \log\int e^{-u(x)}dx` at the reference
      temperature, or ``None`` if unknown;
    * :meth:`sample` -- exact samples (analytic targets only), used for NLL training and tests;
    * :meth:`observables` / :meth:`state_sets` -- what reports should estimate.

    Args:
        event_shape: shape of one configuration (an ``int`` means a flat vector).
        temperature_scale: ratio ``T / T_ref``. ``energy`` returns ``_energy / temperature_scale``.
    """

    #: Exact log normalizer at the reference temperature, if known.
    log_z: float | None = None
    #: Bool tensor shaped like ``event_shape`` marking periodic coordinates on [-π, π)
    #: (torsions, lattice angles), or ``None`` if all coordinates are Euclidean. Flow
    #: builders read it to place circular transforms.
    periodic_mask: torch.Tensor | None = None

    def __init__(self, event_shape: int | tuple[int, ...], temperature_scale: float = 1.0):
        self.event_shape = as_event_shape(event_shape)
        if not (temperature_scale > 0 and math.isfinite(temperature_scale)):
            raise ValueError(
                f"temperature_scale must be positive and finite, got {temperature_scale}"
            )
        self.temperature_scale = float(temperature_scale)
        #: Number of configurations evaluated so far (reported as ``energy_evaluations``).
        self.n_evaluations = 0

    # ----------------------------------------------------------------- core API
    @property
    def dim(self) -> int:
        """Number of degrees of freedom (product of ``event_shape``)."""
        return int(math.prod(self.event_shape))

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        """Reduced energy at the reference temperature, ``Tensor[batch]``. Override this."""
        raise NotImplementedError

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """Reduced energy ``u(x) = u_ref(x) · T_ref / T`` in kT, shape ``[batch]``.

        This is the single place where temperature is applied.
        """
        self._check_shape(x)
        self.n_evaluations += int(x.shape[0])
        u = self._energy(x)
        if u.shape != x.shape[:1]:
            raise RuntimeError(
                f"{type(self).__name__}._energy returned shape {tuple(u.shape)}, "
                f"expected ({x.shape[0]},)"
            )
        if self.temperature_scale != 1.0:
            u = u / self.temperature_scale
        return u

    def force(self, x: torch.Tensor) -> torch.Tensor:
        """Force ``-∂u/∂x`` in kT per unit of ``x`` (autograd by default)."""
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            u = self.energy(xr)
            (g,) = torch.autograd.grad(u.sum(), xr)
        return -g

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalized log density ``-u(x)``."""
        return -self.energy(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.energy(x)

    # --------------------------------------------------------------- tempering
    def at_temperature(self, temperature_scale: float) -> Energy:
        """A shallow copy at ``T = temperature_scale · T_ref`` (``log_z`` is dropped)."""
        if not (temperature_scale > 0 and math.isfinite(temperature_scale)):
            raise ValueError(f"temperature_scale must be positive and finite: {temperature_scale}")
        new = copy.copy(self)
        new.temperature_scale = float(temperature_scale)
        if float(temperature_scale) != self.temperature_scale:
            new.log_z = None
        return new

    # -------------------------------------------------------------- optional
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact samples, ``Tensor[n, *event_shape]`` (analytic targets only)."""
        raise NotImplementedError(f"{type(self).__name__} has no exact sampler")

    def observables(self) -> Mapping[str, Observable]:
        """Named scalar observables reported by ``boltzflow run`` (default: none)."""
        return {}

    def state_sets(self) -> Mapping[str, StateSets]:
        """Named pairs of state sets whose free-energy difference is reported."""
        return {}

    # ------------------------------------------------------------------ utils
    def _check_shape(self, x: torch.Tensor) -> None:
        n = len(self.event_shape)
        if x.dim() != n + 1 or x.shape[1:] != self.event_shape:
            shape = ", ".join(map(str, self.event_shape))
            raise ValueError(
                f"{type(self).__name__} expects x of shape [batch, {shape}], got {tuple(x.shape)}"
            )

    def __repr__(self) -> str:
        t = "" if self.temperature_scale == 1.0 else f", T/T_ref={self.temperature_scale:g}"
        return f"{type(self).__name__}(event_shape={tuple(self.event_shape)}{t})"


class CallableEnergy(Energy):
    """Wrap a plain function ``u(x) -> Tensor[batch]`` (in kT) as an :class:`Energy`.

    Example:
        >>> import torch
        >>> e = CallableEnergy(lambda x: 0.5 * (x**2).sum(-1), event_shape=3)
        >>> e.energy(torch.zeros(4, 3)).shape
        torch.Size([4])
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], event_shape, log_z=None):
        super().__init__(event_shape)
        self._fn = fn
        self.log_z = log_z

    def _energy(self, x):
        return self._fn(x)
