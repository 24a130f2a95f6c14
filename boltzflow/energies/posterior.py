r"""Bayesian posteriors as reduced energies in an unconstrained parametrization.

With named parameter blocks $\theta_j = g_j(y_j)$ (see `bijections`) and priors
$\pi_j$ (see `priors`), the posterior energy in the unconstrained coordinates
`y` is

$$
u(y) = -\sum_j \log\pi_j(g_j(y_j)) - \log L(g(y)) - \sum_j \log J_j(y_j),
$$

so $\int e^{-u(y)}\,dy = \int \pi(\theta) L(\theta)\,d\theta = Z$, the evidence. Flows,
MCMC kernels and importance weights all work on `y`; reports use the named `θ`.

Temperature tempers the likelihood only: at `temperature_scale = s`,
$u_s(y) = -\log L(g(y))/s - \log\pi(g(y)) - \log J(y)$, the power posterior
$\pi L^\beta$ with $\beta = 1/s$ (Friel & Pettitt 2008, J. R. Stat. Soc. B 70, 589)
that [`boltzflow.sampling.bayes_anneal`][boltzflow.sampling.bayes_anneal] anneals through. The prior
and the Jacobian are the reference measure ([`boltzflow.energies.base`][boltzflow.energies.base]).

A parameter vector that is out of support, or whose likelihood is NaN or raises, gets
$u = +\infty$ (log-prob $-\infty$), is counted in `n_nonfinite` and never
raises inside a chain. The likelihood may be a torch function (differentiable: MALA, HMC,
NeuTra, reverse-KL training) or a vectorised numpy function (`numpy=True`: the
gradient-free importance, independence-MH and emcee paths).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch

from boltzflow.energies.base import Energy, EnergyTerms, FigureRequest, Observable
from boltzflow.energies.bijections import Bijection, CircleLift, Constrained
from boltzflow.energies.priors import Flat, Prior

__all__ = ["Parameter", "Posterior", "from_log_prob"]

logger = logging.getLogger(__name__)


class Parameter(NamedTuple):
    """A named block of constrained coordinates with its prior.

    Args:
        name: a name, or one name per coordinate when `prior.size > 1`.
        prior: a [`Prior`][boltzflow.energies.priors.Prior].
        bijection: the constraining map; default `prior.bijection()`.
        unit: unit label for reports.
    """

    name: str | tuple[str, ...]
    prior: Prior
    bijection: Bijection | None = None
    unit: str = "1"


def _names(p: Parameter) -> list[str]:
    if isinstance(p.name, str):
        return [p.name] if p.prior.size == 1 else [f"{p.name}_{i}" for i in range(p.prior.size)]
    if len(p.name) != p.prior.size:
        raise ValueError(f"parameter {p.name} needs {p.prior.size} names")
    return list(p.name)


def _safe_rows(fn: Callable, theta, batch: int, warn: list):
    """Call `fn` on the batch; if it raises, retry row by row and give `None` to failing rows.

    The first exception is logged as a warning (`warn` is a one-element flag list), so a bug in
    a likelihood is visible while a chain still never stops on one bad parameter vector.
    """
    try:
        return fn(theta)
    except Exception as exc:  # noqa: BLE001 - a user likelihood must never stop a chain
        if warn[0]:
            warn[0] = False
            logger.warning("likelihood raised %r; failing rows get log-prob -inf", exc)
    out = []
    for i in range(batch):
        try:
            out.append(fn(theta[i : i + 1]))
        except Exception:  # noqa: BLE001
            out.append(None)
    return out


class Posterior(Energy):
    r"""Posterior energy $u(y)$ in kT over unconstrained `y: [batch, dim]`.

    Args:
        parameters: [`Parameter`][boltzflow.energies.posterior.Parameter] list (or `{name: prior}`),
            in order.
        log_likelihood: `theta [batch, n_theta] -> log L [batch]`; a torch function, or a
            vectorised numpy function if `numpy=True`.
        numpy: the likelihood takes and returns numpy arrays (no gradients).
        log_z: the exact evidence $\log Z$, if known.

    Attributes:
        dtype: `torch.float64`, the dtype posteriors are sampled in: samplers cast a narrower
            flow to it (with a warning) rather than run float32 chains against float64 energies.
        names: constrained coordinate names (`n_theta` of them).
        unconstrained_names: names of the `dim` unconstrained coordinates.
        n_nonfinite: configurations whose energy was not finite.
        differentiable: whether `force` is available.
    """

    def __init__(
        self,
        parameters: Sequence[Parameter] | Mapping[str, Prior],
        log_likelihood: Callable | None = None,
        *,
        numpy: bool = False,
        log_z: float | None = None,
    ):
        if isinstance(parameters, Mapping):
            parameters = [Parameter(k, v) for k, v in parameters.items()]
        self.parameters = [
            p if p.bijection else p._replace(bijection=p.prior.bijection()) for p in parameters
        ]
        for p in self.parameters:
            if p.bijection.out_dim != p.prior.size:
                raise ValueError(
                    f"bijection of {p.name} gives {p.bijection.out_dim} coordinates, "
                    f"its prior {p.prior.size}"
                )
        self.names = [n for p in self.parameters for n in _names(p)]
        self.units = [p.unit for p in self.parameters for _ in range(p.prior.size)]
        self.unconstrained_names = [
            n
            for p in self.parameters
            for n in (
                _names(p)
                if p.bijection.in_dim == p.prior.size
                else [f"{_names(p)[0]}{s}" for s in p.bijection.suffixes]
            )
        ]
        super().__init__(sum(p.bijection.in_dim for p in self.parameters))
        self._log_likelihood = log_likelihood
        self.numpy = bool(numpy)
        self.differentiable = not self.numpy
        self.log_z = log_z
        self.dtype = torch.float64
        self.n_nonfinite = 0
        self._warn = [True]

    @property
    def parameter_names(self) -> list[str]:
        """Names of the unconstrained sample coordinates in `samples.nc` (`y_<name>`); the
        constrained parameters are stored beside them under their own names."""
        return [f"y_{n}" for n in self.unconstrained_names]

    @property
    def n_theta(self) -> int:
        """Number of constrained coordinates."""
        return len(self.names)

    # ------------------------------------------------------------- transforms
    def constrain(self, y: torch.Tensor) -> Constrained:
        """`y [batch, dim] -> (theta [batch, n_theta], ladj [batch])`."""
        thetas, ladj, i = [], y.new_zeros(y.shape[0]), 0
        for p in self.parameters:
            t, l = p.bijection.forward(y[:, i : i + p.bijection.in_dim])
            thetas.append(t)
            ladj = ladj + l
            i += p.bijection.in_dim
        return Constrained(torch.cat(thetas, -1), ladj)

    def unconstrain(self, theta: torch.Tensor) -> torch.Tensor:
        """`theta [batch, n_theta] -> y [batch, dim]` (a right inverse of
        [`constrain`][boltzflow.energies.posterior.Posterior.constrain])."""
        ys, i = [], 0
        for p in self.parameters:
            ys.append(p.bijection.inverse(theta[:, i : i + p.prior.size]))
            i += p.prior.size
        return torch.cat(ys, -1)

    def log_prior(self, theta: torch.Tensor) -> torch.Tensor:
        """Normalized log prior density of `theta [batch, n_theta]`, `[batch]`."""
        lp, i = theta.new_zeros(theta.shape[0]), 0
        for p in self.parameters:
            lp = lp + p.prior.log_prob(theta[:, i : i + p.prior.size])
            i += p.prior.size
        return lp

    def log_likelihood(self, theta: torch.Tensor) -> torch.Tensor:
        """`log L(theta)`, `[batch]`: NaN, `+inf` and exceptions become `-inf`."""
        batch = theta.shape[0]
        if self._log_likelihood is None:
            return theta.new_zeros(batch)
        if self.numpy:
            arg = theta.detach().cpu().numpy()
            out = _safe_rows(
                lambda a: np.asarray(self._log_likelihood(a), dtype=np.float64),
                arg,
                batch,
                self._warn,
            )
            if isinstance(out, list):
                out = np.array([np.nan if o is None else float(np.ravel(o)[0]) for o in out])
            ll = torch.as_tensor(
                np.broadcast_to(out, (batch,)).copy(), dtype=theta.dtype, device=theta.device
            )
        else:
            out = _safe_rows(self._log_likelihood, theta, batch, self._warn)
            if isinstance(out, list):
                out = torch.cat(
                    [theta.new_full((1,), math.nan) if o is None else o.reshape(1) for o in out]
                )
            ll = out.reshape(batch)
        bad = torch.isnan(ll) | (ll == math.inf)
        return torch.where(bad, torch.full_like(ll, -math.inf), ll)

    # ------------------------------------------------------------------ energy
    def _energy_terms(self, y: torch.Tensor) -> EnergyTerms:
        r"""Tempered $-\log L(\theta(y))$; untempered measure terms
        $\log\pi(\theta(y))$ and $\log J(y)$ (module docstring)."""
        theta, ladj = self.constrain(y)
        lp = self.log_prior(theta)
        ll = self.log_likelihood(theta)
        bad = ~(torch.isfinite(ll) & torch.isfinite(lp) & torch.isfinite(ladj))
        self.n_nonfinite += int(bad.sum())
        return EnergyTerms(-ll, (lp, ladj), bad)

    def force(self, x: torch.Tensor) -> torch.Tensor:
        if not self.differentiable:
            raise NotImplementedError(
                "this posterior wraps a numpy likelihood: use gradient-free samplers "
                "(importance, flow IMH, emcee) or give a torch log-likelihood"
            )
        return super().force(x)

    # --------------------------------------------------------------- sampling
    def sample_prior(
        self, n: int, generator: torch.Generator | None = None, dtype=torch.float64, device=None
    ) -> torch.Tensor:
        """Unconstrained draws `y [n, dim]` whose pushforward is the prior.

        Circle coordinates get a Rayleigh radius, so `y` follows the lifted prior exactly.
        """
        if device is None and generator is not None:
            device = generator.device  # draws live where the generator does
        blocks = []
        for p in self.parameters:
            y = p.bijection.inverse(
                p.prior.sample(n, generator=generator, dtype=dtype, device=device)
            )
            if isinstance(p.bijection, CircleLift):
                u = torch.rand(n, 1, generator=generator, dtype=dtype, device=device)
                y = y * torch.sqrt(-2 * torch.log1p(-u))
            blocks.append(y)
        return torch.cat(blocks, -1)

    def observables(self) -> dict[str, Observable]:
        """Every constrained parameter, as a posterior-mean observable."""
        return {
            name: Observable(lambda y, i=i: self.constrain(y).theta[:, i], unit)
            for i, (name, unit) in enumerate(zip(self.names, self.units, strict=True))
        }

    def report_figures(self, x=None, log_weight=None) -> tuple[FigureRequest, ...]:
        """Pair and trace plots of the named parameters, drawn from the run's `samples.nc`."""
        return (FigureRequest("posterior", {"names": list(self.names)}),)


def from_log_prob(
    log_prob: Callable,
    parameters: int | Sequence[str | Parameter] | Mapping[str, Prior],
    *,
    numpy: bool = False,
    log_z: float | None = None,
) -> Posterior:
    r"""Wrap a user's log-density $\log p(\theta)$ (prior included) as a
    [`Posterior`][boltzflow.energies.posterior.Posterior].

    Args:
        log_prob: `theta [batch, n_theta] -> [batch]`; a torch function (gradient-based
            samplers work) or, with `numpy=True`, a vectorised numpy function.
        parameters: `d` (`d` unbounded coordinates `theta_0..`), names, or
            [`Parameter`][boltzflow.energies.posterior.Parameter]\ s whose priors state the support
            (use [`Flat`][boltzflow.energies.priors.Flat] so `log_prob` is the whole density).
        numpy: see `log_prob`.
        log_z: the exact normalizer, if known.

    Examples:
        >>> import torch
        >>> post = from_log_prob(lambda t: -0.5 * (t**2).sum(-1), 2)
        >>> post.energy(torch.tensor([[1.0, 0.0], [1.0, 2.0]], dtype=torch.float64))
        tensor([0.5000, 2.5000], dtype=torch.float64)
    """
    if isinstance(parameters, int):
        parameters = [f"theta_{i}" for i in range(parameters)]
    if not isinstance(parameters, Mapping):
        parameters = [p if isinstance(p, Parameter) else Parameter(p, Flat()) for p in parameters]
    return Posterior(parameters, log_prob, numpy=numpy, log_z=log_z)
