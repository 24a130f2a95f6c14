r"""The [`Energy`][boltzflow.energies.base.Energy] contract: reduced (dimensionless, units of kT)
potentials.

Every target in boltzflow is an unnormalized density

$$
p(x) \propto \exp(-u(x)),
$$

where $u$ is a *reduced* energy, i.e. measured in units of $k_B T$.

Shapes: `x` is `Tensor[batch, *event_shape]`; `energy(x)` is `Tensor[batch]`
with no trailing singleton dimension. `force(x) = -∂u/∂x` has the shape of `x`.

**Temperature** enters in one place, [`Energy.energy`][boltzflow.energies.base.Energy.energy]. A
target splits its energy at the reference temperature into a *tempered* part $u_\mathrm{phys}$ and
the log-density $\log m = \sum_k \log m_k$ of an untempered *reference measure* with respect to
Lebesgue measure on the sampled coordinates ([`EnergyTerms`][boltzflow.energies.base.EnergyTerms]).
At `temperature_scale = s = T/T_ref`

$$
u_s(y) = \frac{u_\mathrm{phys}(y)}{s} - \sum_k \log m_k(y) .
$$

For a coordinate map $x(y)$ the measure is its Jacobian, $\log m = \log|J(y)|$:
tempering the Boltzmann density $p_s(x) \propto e^{-u_\mathrm{phys}(x)/s}$ in Cartesian
coordinates and changing variables to $y$ gives exactly $u_s(y)$, so the Jacobian
is never divided by $s$ (it is part of the measure, not of the energy). A molecule in
internal coordinates tempers $E(x(y))/k_BT$ and keeps $-\log|J|$. A Bayesian
posterior tempers its likelihood and keeps the prior and the constraining Jacobian, the power
posterior $\pi(\theta)L(\theta)^{1/s}$ (Friel & Pettitt 2008, J. R. Stat. Soc. B 70,
589), which at $s = 1/\beta$ is the $p_\beta$ that
[`boltzflow.sampling.bayes_anneal`][boltzflow.sampling.bayes_anneal] anneals through. A target with
only `Energy._energy` is tempered as a whole (Lebesgue measure).

**Hooks.** Everything the package reads from a target is declared on
[`Energy`][boltzflow.energies.base.Energy] with a default that means "not provided": `None`
attributes, methods raising `NotImplementedError`, empty mappings, a no-op
[`Energy.close`][boltzflow.energies.base.Energy.close].
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch

__all__ = [
    "Energy",
    "EnergyTerms",
    "FigureRequest",
    "Observable",
    "StateSets",
    "CallableEnergy",
    "as_event_shape",
]


class Observable(NamedTuple):
    """A scalar observable `fn(x) -> Tensor[batch]` with its unit (for reports)."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    unit: str = "1"


class StateSets(NamedTuple):
    """Two state sets given as indicator functions, for `ΔF = -ln(Σ_A w / Σ_B w)` in kT."""

    in_a: Callable[[torch.Tensor], torch.Tensor]
    in_b: Callable[[torch.Tensor], torch.Tensor]


class EnergyTerms(NamedTuple):
    r"""An energy at the reference temperature, split by how temperature acts on it.

    [`Energy.energy`][boltzflow.energies.base.Energy.energy] returns
    `tempered / s - log_measure[0] - log_measure[1] - ...` (subtracted in this order), set to
    $+\infty$ where `outside` is true or the result is NaN.

    Attributes:
        tempered: $u_\mathrm{phys}$ in kT at `T_ref`, `Tensor[batch]`.
        log_measure: untempered log-densities of the reference measure (log-Jacobians
            $\log|J_k|$ of coordinate maps, a posterior's log prior), each a
            `Tensor[batch]` or a constant.
        outside: `bool[batch]` marking configurations outside the support, or `None`.
    """

    tempered: torch.Tensor
    log_measure: tuple[torch.Tensor | float, ...] = ()
    outside: torch.Tensor | None = None


class FigureRequest(NamedTuple):
    """A report figure a target asks for; [`boltzflow.reporting`][boltzflow.reporting] draws it.

    Attributes:
        kind: the drawer, a key of `boltzflow.reporting.run_figures.DRAWERS`
            (`"histogram"`, `"ramachandran"`, `"posterior"`).
        data: the drawer's keyword arguments (tensors, labels, file name, caption).
    """

    kind: str
    data: Mapping[str, Any]


def as_event_shape(shape: int | tuple[int, ...] | torch.Size) -> torch.Size:
    """Normalise an int or tuple to a `torch.Size` event shape."""
    if isinstance(shape, int):
        return torch.Size((shape,))
    return torch.Size(tuple(int(s) for s in shape))


def _check_scale(temperature_scale: float) -> float:
    if not (temperature_scale > 0 and math.isfinite(temperature_scale)):
        raise ValueError(f"temperature_scale must be positive and finite, got {temperature_scale}")
    return float(temperature_scale)


class Energy:
    r"""Base class for reduced energies $u(x)$ in kT.

    Subclasses set `event_shape` (via `super().__init__`) and implement `_energy`
    (a density tempered as a whole) or `_energy_terms` (a tempered part plus an
    untempered measure, see the module docstring). The optional hooks below keep their "not
    provided" defaults unless a target overrides them.

    Args:
        event_shape: shape of one configuration (an `int` means a flat vector).
        temperature_scale: ratio `s = T / T_ref` (see
            [`energy`][boltzflow.energies.base.Energy.energy]).
    """

    log_z: float | None = None
    r"""Exact $\log Z = \log\int e^{-u(x)}dx$ at the current temperature, or `None`."""
    periodic_mask: torch.Tensor | None = None
    """Bool tensor shaped like `event_shape` marking periodic coordinates on [-π, π)
    (torsions, lattice angles), or `None` if all coordinates are Euclidean. Flow
    builders read it to place circular transforms."""
    period: float | None = None
    r"""Period of every coordinate when the configuration space is a torus
    $[-P/2, P/2)^d$ (e.g. $2\pi$ for U(1) links), else `None`. Samplers wrap
    positions and draw random starts on it."""
    n_modes: int | None = None
    """Number of modes labelled by `mode_assignment` (`None`: no labelling). Runs
    report how many of them the samples visit."""
    means: torch.Tensor | None = None
    """Mode centres `Tensor[n_modes, dim]` (units of `x`), marked in the 2-D sample
    figure, or `None`."""
    parameter_names: Sequence[str] | None = None
    """One name per flattened coordinate of `x` for the samples file, or `None` (then
    `x_0, x_1, ...`)."""
    differentiable: bool = True
    """Whether `force` (autograd of `energy`) is available. `False` for likelihoods written in
    numpy or C: gradient-based samplers and starts then refuse or fall back to gradient-free
    moves."""
    dtype: torch.dtype | None = None
    """The dtype the target is evaluated in (samplers cast their states to it, e.g.
    `torch.float64` for posteriors), or `None`: whatever dtype the input has."""
    reference_state: torch.Tensor | None = None
    """A reference configuration `Tensor[dim]` of the system (e.g. an ideal crystal), about
    which flows can be built (`reference = "target"` of a rigid-body flow), or `None`."""
    n_molecules: int | None = None
    """Number of molecules of a molecular system; runs then also report free energies per
    molecule. `None` for other targets."""

    def __init__(self, event_shape: int | tuple[int, ...], temperature_scale: float = 1.0):
        self.event_shape = as_event_shape(event_shape)
        self.temperature_scale = _check_scale(temperature_scale)
        """`T / T_ref`; set through the constructor or `at_temperature`."""
        self.n_evaluations = 0
        """Number of configurations evaluated so far (reported as `energy_evaluations`)."""

    # ----------------------------------------------------------------- core API
    @property
    def dim(self) -> int:
        """Number of degrees of freedom (product of `event_shape`)."""
        return int(math.prod(self.event_shape))

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        """Reduced energy at `T_ref`, all of it tempered, `Tensor[batch]`. Override this
        or `_energy_terms`."""
        raise NotImplementedError(f"{type(self).__name__} implements neither _energy nor terms")

    def _energy_terms(self, x: torch.Tensor) -> EnergyTerms:
        """Tempered part and reference measure at `T_ref` (default: all of `_energy`
        tempered, Lebesgue measure)."""
        return EnergyTerms(self._energy(x))

    def _temper(self, value: torch.Tensor) -> torch.Tensor:
        """`value · T_ref / T`: the one place temperature scales a tempered quantity (energies
        here; engine forces in subclasses that bypass autograd)."""
        s = self.temperature_scale
        return value if s == 1.0 else value / s

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        r"""Reduced energy $u_s(x) = u_\mathrm{phys}(x)/s - \sum_k\log m_k(x)$ in kT,
        `Tensor[batch]` (module docstring; $s$ = `temperature_scale`)."""
        self._check_shape(x)
        self.n_evaluations += int(x.shape[0])
        terms = self._energy_terms(x)
        u = terms.tempered
        if u.shape != x.shape[:1]:
            raise RuntimeError(
                f"{type(self).__name__}._energy returned shape {tuple(u.shape)}, "
                f"expected ({x.shape[0]},)"
            )
        u = self._temper(u)
        for term in terms.log_measure:
            u = u - term
        if terms.outside is not None:
            u = torch.where(terms.outside | torch.isnan(u), torch.full_like(u, math.inf), u)
        return u

    def force(self, x: torch.Tensor) -> torch.Tensor:
        """Force `-∂u/∂x` in kT per unit of `x` (autograd by default)."""
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            u = self.energy(xr)
            (g,) = torch.autograd.grad(u.sum(), xr)
        return -g

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalized log density `-u(x)`."""
        return -self.energy(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.energy(x)

    # --------------------------------------------------------------- tempering
    def at_temperature(self, temperature_scale: float) -> Energy:
        """A shallow copy at `T = temperature_scale · T_ref` (`log_z` is dropped)."""
        new = copy.copy(self)
        new.temperature_scale = _check_scale(temperature_scale)
        if new.temperature_scale != self.temperature_scale:
            new.log_z = None
        return new

    # ------------------------------------------------------ exact and reference
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact samples `Tensor[n, *event_shape]` (analytic targets; NLL training, tests)."""
        raise NotImplementedError(f"{type(self).__name__} has no exact sampler")

    def observables(self) -> Mapping[str, Observable]:
        """Named scalar observables reported by `boltzflow run` (default: none)."""
        return {}

    def state_sets(self) -> Mapping[str, StateSets]:
        """Named pairs of state sets whose free-energy difference is reported (default: none)."""
        return {}

    def exact_observable(self, name: str) -> float:
        """Exact expectation of the observable `name` (its unit); `KeyError` if there is
        none for that name, `NotImplementedError` if the target has none at all."""
        raise NotImplementedError(f"{type(self).__name__} has no exact observables")

    def exact_free_energy(self, name: str) -> float:
        """Exact or reference ΔF (kT) of the state-set pair `name`; `KeyError` /
        `NotImplementedError` as
        [`exact_observable`][boltzflow.energies.base.Energy.exact_observable]."""
        raise NotImplementedError(f"{type(self).__name__} has no reference free energies")

    def reference_stderr(self, name: str) -> float:
        """Standard error of an *estimated* reference value `name` (e.g. umbrella sampling
        + MBAR), in the value's unit; `NotImplementedError` when references are exact."""
        raise NotImplementedError(f"{type(self).__name__}'s references are exact")

    def mode_assignment(self, x: torch.Tensor) -> torch.Tensor:
        """Mode label in `[0, n_modes)` of each configuration, `LongTensor[batch]`."""
        raise NotImplementedError(f"{type(self).__name__} does not label modes")

    # -------------------------------------------------------------- Bayesian
    def sample_prior(
        self, n: int, generator: torch.Generator | None = None, dtype=torch.float64, device=None
    ) -> torch.Tensor:
        """Draws `Tensor[n, *event_shape]` from the prior, in the sampled coordinates
        (posteriors: chain starts, annealing from β = 0, defensive proposals)."""
        raise NotImplementedError(f"{type(self).__name__} has no prior")

    def constrain(self, y: torch.Tensor):
        """`y [batch, dim] -> Constrained(theta [batch, n_theta], ladj [batch])`: the
        constraining bijection of a posterior
        ([`boltzflow.energies.bijections`][boltzflow.energies.bijections])."""
        raise NotImplementedError(f"{type(self).__name__} has no constrained parameters")

    def log_prior(self, theta: torch.Tensor) -> torch.Tensor:
        """Normalized log prior density of `theta [batch, n_theta]`, `Tensor[batch]`."""
        raise NotImplementedError(f"{type(self).__name__} has no prior")

    # ------------------------------------------------------- data and reports
    def training_data(self, name: str) -> torch.Tensor:
        """Training configurations `Tensor[n, *event_shape]` for a recipe stage's
        `data = name`; `NotImplementedError`: the run reads `name` as a file."""
        raise NotImplementedError(f"{type(self).__name__} provides no training data")

    def report_figures(self, x: torch.Tensor, log_weight: torch.Tensor) -> Sequence[FigureRequest]:
        """Figures to add to the report for flow samples `x [n, *event_shape]` with
        `log_weight [n]`; drawn by [`boltzflow.reporting`][boltzflow.reporting] (default: none)."""
        return ()

    def report_data(self, x: torch.Tensor, log_weight: torch.Tensor) -> Mapping[str, Mapping]:
        """JSON documents to store beside the report, by file name (default: none)."""
        return {}

    def plot_coordinates(self, x: torch.Tensor) -> tuple[torch.Tensor, list[str]] | None:
        """Named coordinates for a run's marginals and 2-D sample figures.

        For flow samples `x [n, *event_shape]`, `(values [n, k], names)` with each name stating
        its unit (e.g. `"φ (deg)"`); the first two form the 2-D figure. `None` (the default)
        plots the first coordinates of `x`, labelled `x[0]`, `x[1]`, ...
        """
        return None

    def compute_resources(self) -> Mapping[str, object]:
        """What evaluating this energy occupies besides the calling process.

        Keys (all optional): `local_workers` (worker processes on this machine, each taking
        a core: the thread rule of [`boltzflow.hardware`][boltzflow.hardware] leaves them
        their cores), `energy_workers` (workers of any kind) and `openmm_platform`. Reported
        in a run's `summary.json`. Default: none (the energy runs in the calling process).
        """
        return {}

    def close(self) -> None:
        """Release worker processes or engines (default: nothing to release)."""

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
    """Wrap a plain function `u(x) -> Tensor[batch]` (in kT) as an
    [`Energy`][boltzflow.energies.base.Energy].

    Examples:
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
