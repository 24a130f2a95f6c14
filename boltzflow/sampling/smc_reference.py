r"""The reference distribution an SMC run starts from, and the particle scores it defines.

[`boltzflow.sampling.smc`][boltzflow.sampling.smc] tempers from a normalized reference $r$ to
the target $e^{-u}$ along $r\,e^{\beta\ell}$ with $\ell = -u - \log r$. The reference is

* the **prior** of a [`Posterior`][boltzflow.energies.posterior.Posterior] with a proper prior:
  $\log r(y) = -u_0(y)$, the prior density in the unconstrained coordinates including the
  constraining Jacobian ([`prior_energy`][boltzflow.sampling.proposals.prior_energy]), so that
  $\ell$ is the log-likelihood and $\log Z$ the evidence;
* a **Gaussian** $\mathcal N(\mu, \operatorname{diag}\sigma^2)$
  ([`GaussianReference`][boltzflow.sampling.smc_reference.GaussianReference]), for targets without
  a prior (analytic energies, posteriors with [`Flat`][boltzflow.energies.priors.Flat] priors);
* by default for a target without a sampleable prior, the Laplace approximation at the mode widened
  by a factor 2 ([`LaplaceReference`][boltzflow.sampling.starts.LaplaceReference], which has a
  prior's hooks, wrapped as a prior).

Any reference must cover the target ($r > 0$ wherever $e^{-u} > 0$); a Gaussian that is much
narrower than the target costs many stages, and one that misses a mode misses it for good.
"""

from __future__ import annotations

import math

import torch

from boltzflow.sampling.proposals import prior_energy
from boltzflow.weights import clean_log_weights

__all__ = ["GaussianReference", "PriorReference", "reference_for", "make_scorer"]


class GaussianReference:
    r"""$\mathcal N(\mu, \operatorname{diag}\sigma^2)$ over flat `[n, dim]` coordinates.

    Args:
        loc: $\mu$, `[dim]` or a scalar.
        scale: $\sigma$, `[dim]` or a scalar (positive).
        dim: the dimension when both are scalars.
    """

    def __init__(self, loc=0.0, scale=1.0, dim: int | None = None):
        loc = torch.as_tensor(loc, dtype=torch.float64)
        scale = torch.as_tensor(scale, dtype=torch.float64)
        d = int(dim) if dim is not None else int(max(loc.numel(), scale.numel()))
        self.loc, self.scale = loc.expand(d).clone(), scale.expand(d).clone()
        if not bool((self.scale > 0).all()):
            raise ValueError("scale must be positive")

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`n` draws `[n, dim]` (float64, on the generator's device)."""
        dev = generator.device if generator is not None else None
        xi = torch.randn(n, self.loc.shape[0], generator=generator, dtype=torch.float64, device=dev)
        return self.loc.to(xi) + self.scale.to(xi) * xi

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized log density `[n]`."""
        z = (x - self.loc.to(x)) / self.scale.to(x)
        c = torch.log(self.scale.to(x)).sum() + 0.5 * x.shape[-1] * math.log(2 * math.pi)
        return -0.5 * z.square().sum(-1) - c


class PriorReference:
    r"""A posterior's prior in its unconstrained coordinates: `target.sample_prior` and
    $\log r = -u_0$ ([`prior_energy`][boltzflow.sampling.proposals.prior_energy]).

    `target` is anything with a posterior's prior hooks (`sample_prior`, `constrain`,
    `log_prior`): a [`Posterior`][boltzflow.energies.posterior.Posterior], or
    [`LaplaceReference`][boltzflow.sampling.starts.LaplaceReference] for a target without a
    proper prior; `name` is what the run reports (`info["reference"]`).
    """

    def __init__(self, target, dtype: torch.dtype = torch.float64, name: str = "prior"):
        self.target, self.dtype, self.name = target, dtype, name

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`n` prior draws `[n, dim]`."""
        return self.target.sample_prior(n, generator=generator, dtype=self.dtype)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized prior log density in the sampled coordinates, `[n]` (differentiable
        when gradients are enabled, for HMC moves)."""
        if not torch.is_grad_enabled():
            return -prior_energy(self.target, x)
        theta, ladj = self.target.constrain(x)
        lp = self.target.log_prior(theta) + ladj
        return torch.where(torch.isnan(lp), torch.full_like(lp, -math.inf), lp)


def _has_prior(target) -> bool:
    try:  # deliberate CPU generator: a one-row probe of whether the prior can be sampled
        target.sample_prior(1, generator=torch.Generator().manual_seed(0))
        target.constrain(torch.zeros(1, target.dim, dtype=torch.float64))
    except NotImplementedError:
        return False
    return True


def reference_for(target, reference, *, flow=None, generator=None, dtype=torch.float64):
    """The reference object for `reference` = `"auto"`, `"prior"`, `"laplace"` or an object with
    `sample(n, generator)` and `log_prob(x)` (returned as it is); see the module docstring."""
    if not isinstance(reference, str):
        return reference
    if reference == "auto":
        reference = "prior" if _has_prior(target) else "laplace"
    if reference == "prior":
        if not _has_prior(target):
            raise ValueError(
                "reference='prior' needs a target with a proper prior (a Posterior whose priors "
                "can be sampled); use reference='laplace' or pass a GaussianReference(loc, scale)"
            )
        return PriorReference(target, dtype)
    if reference == "laplace":
        from boltzflow.sampling.starts import LaplaceReference, laplace_approximation

        laplace = laplace_approximation(target, generator=generator)
        return PriorReference(LaplaceReference(laplace, 2.0), dtype, name="laplace")
    raise ValueError(
        f"reference must be 'auto', 'prior', 'laplace' or an object, got {reference!r}"
    )


def make_scorer(target, reference):
    r"""`score(x) -> (log_ref [n], log_l [n])` with $\ell = -u(x) - \log r(x)$ (one target
    evaluation per row); $\ell = -\infty$ where either term is not finite (weight 0). Runs
    under the caller's grad mode: differentiable for HMC moves, without gradients otherwise."""

    def score(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = target.energy(x)
        log_ref = reference.log_prob(x).to(u)
        ok = torch.isfinite(log_ref) & torch.isfinite(u)
        log_l = torch.where(ok, -u - log_ref, torch.full_like(u, -math.inf))
        return log_ref, clean_log_weights(log_l)

    return score
