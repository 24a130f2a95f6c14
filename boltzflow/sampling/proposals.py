r"""Proposal densities built around a flow: defensive mixtures for importance sampling and
independence MH.

A flow trained on a target can have lighter tails than the target, most often where a
posterior is still prior-dominated (upper limits running into a prior boundary). Importance
weights $p/q$ are then unbounded there, which ruins the ESS and makes independence chains
stick. Defensive mixtures (Hesterberg 1995, "Weighted average importance sampling and
defensive mixture distributions", Technometrics 37, 185) bound them:

* [`DefensiveFlow`][boltzflow.sampling.proposals.DefensiveFlow] -- a share of the draws from the
  same flow with a wider base;
* [`PriorDefensive`][boltzflow.sampling.proposals.PriorDefensive] -- a share from a posterior's
  prior, whose density $e^{-u_0(y)}$ in the unconstrained coordinates is known exactly
  ([`prior_energy`][boltzflow.sampling.proposals.prior_energy]);
* [`defensive_proposal`][boltzflow.sampling.proposals.defensive_proposal] -- the flow, or its
  mixture with either or both.

Each has `sample(n, generator) -> FlowSample(x, z, log_q)` and `log_prob(x)` with exact
mixture densities, like a [`Flow`][boltzflow.flows.base.Flow], so every flow sampler and
[`FlowMove`][boltzflow.sampling.emcee_move.FlowMove] can propose from it.
"""

from __future__ import annotations

import math

import torch

from boltzflow.flows.base import FlowSample

__all__ = ["DefensiveFlow", "prior_energy", "PriorDefensive", "defensive_proposal"]


class DefensiveFlow(torch.nn.Module):
    r"""Defensive mixture proposal $q = (1-\epsilon)q_1 + \epsilon q_s$ (Hesterberg 1995).

    $q_s$ pushes a wider base $\mathcal N(0, s^2 I)$ through the same transform, so
    the mixture has heavier tails than the flow alone and importance weights
    $p/q \le p/(\epsilon q_s)$ stay bounded where the flow under-covers the target; this
    keeps independence chains from sticking there. Exact densities: both components share the
    transform, $\log q_s(x) = \log\mathcal N(z; 0, s^2) + \log|\det\partial z/\partial x|$.

    Args:
        flow: a [`Flow`][boltzflow.flows.base.Flow] with a standard-normal base.
        weight: $\epsilon$, the probability of drawing from the wide component.
        scale: $s > 1$.
    """

    def __init__(self, flow, weight: float = 0.2, scale: float = 2.0):
        super().__init__()
        self.flow, self.weight, self.scale = flow, float(weight), float(scale)
        self.dim = flow.dim

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z, ladj_inv = self.flow.inverse(x)
        zz = (z * z).reshape(z.shape[0], -1).sum(-1)
        c = -0.5 * self.dim * math.log(2 * math.pi)
        narrow = c - 0.5 * zz + ladj_inv
        wide = c - self.dim * math.log(self.scale) - 0.5 * zz / self.scale**2 + ladj_inv
        return torch.logaddexp(math.log1p(-self.weight) + narrow, math.log(self.weight) + wide)

    def sample(self, n: int, generator: torch.Generator | None = None):
        z = self.flow.base.sample(n, generator=generator)
        u = torch.rand(n, generator=generator, dtype=z.dtype, device=z.device)
        wide = (u < self.weight).reshape(-1, *([1] * (z.dim() - 1)))
        z = torch.where(wide, z * self.scale, z)
        x, _ = self.flow.forward(z)
        return FlowSample(x, z, self.log_prob(x))


@torch.no_grad()
def prior_energy(target, y: torch.Tensor) -> torch.Tensor:
    r"""Prior part $u_0(y) = -\log\pi(\theta(y)) - \log J(y)$ of a posterior energy, `[n]`.

    Needs a [`Posterior`][boltzflow.energies.posterior.Posterior] (`constrain` and `log_prior`);
    no likelihood is evaluated.
    """
    if not (hasattr(target, "constrain") and hasattr(target, "log_prior")):
        raise TypeError("annealing from the prior needs a Posterior (constrain and log_prior)")
    theta, ladj = target.constrain(y)
    u0 = -(target.log_prior(theta) + ladj)
    return torch.where(torch.isnan(u0), torch.full_like(u0, math.inf), u0)


class PriorDefensive(torch.nn.Module):
    r"""Defensive mixture $q = (1-\epsilon_p)\,q_d + \epsilon_p\,\pi$ with the prior.

    $q_d$ is the flow, or its wide-base mixture
    [`DefensiveFlow`][boltzflow.sampling.proposals.DefensiveFlow]; $\pi(y) = e^{-u_0(y)}$ is the
    normalized prior in `y` ([`prior_energy`][boltzflow.sampling.proposals.prior_energy]), so the
    weights $p/q \le L(y) / (Z\epsilon_p)$ stay bounded wherever the flow's tails are lighter
    than a prior-dominated posterior tail (Hesterberg 1995, Technometrics 37, 185).
    """

    def __init__(self, inner, target, prior_weight: float):
        super().__init__()
        self.inner, self.target, self.weight = inner, target, float(prior_weight)
        self.dim = inner.dim

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        a = math.log1p(-self.weight) + self.inner.log_prob(x)
        return torch.logaddexp(a, math.log(self.weight) - prior_energy(self.target, x))

    def sample(self, n: int, generator: torch.Generator | None = None):
        x = self.inner.sample(n, generator=generator).x
        u = torch.rand(n, generator=generator, dtype=x.dtype, device=x.device)
        xp = self.target.sample_prior(n, generator=generator, dtype=x.dtype).to(x.device)
        x = torch.where((u < self.weight).unsqueeze(-1), xp, x)  # i.i.d. component choice
        return FlowSample(x, None, self.log_prob(x))


def defensive_proposal(
    flow, weight: float, scale: float = 2.0, target=None, prior_weight: float = 0.0
):
    """`flow` itself, or its defensive mixture with a wider base (`weight`) and, if
    `prior_weight > 0`, with the target's prior
    ([`PriorDefensive`][boltzflow.sampling.proposals.PriorDefensive])."""
    out = flow
    if weight > 0:
        out = DefensiveFlow(flow, weight, scale)
    if prior_weight > 0:
        out = PriorDefensive(out, target, prior_weight)
    return out
