r"""Defensive proposals for importance sampling and independence MH on Bayesian posteriors.

A flow trained on a posterior can have lighter tails than the posterior, most often where the
posterior is still prior-dominated (upper limits running into a prior boundary). Importance
weights :math:`p/q` are then unbounded there, which ruins the ESS and makes independence chains
stick. Defensive mixtures (Hesterberg 1995, "Weighted average importance sampling and
defensive mixture distributions", Technometrics 37, 185) bound them: a share of the draws comes
from a wider version of the flow (:class:`~boltzflow.sampling.emcee_move.DefensiveFlow`) and a
share from the prior itself, whose density :math:`e^{-u_0(y)}` in the unconstrained
coordinates is known exactly (:func:`prior_energy`).
"""

from __future__ import annotations

import math

import torch

from boltzflow.flows.base import FlowSample

__all__ = ["prior_energy", "PriorDefensive", "defensive_proposal"]


@torch.no_grad()
def prior_energy(target, y: torch.Tensor) -> torch.Tensor:
    r"""Prior part :math:`u_0(y) = -\log\pi(\theta(y)) - \log J(y)` of a posterior energy, ``[n]``.

    Needs a :class:`~boltzflow.energies.posterior.Posterior` (``constrain`` and ``log_prior``);
    no likelihood is evaluated.
    """
    if not (hasattr(target, "constrain") and hasattr(target, "log_prior")):
        raise TypeError("annealing from the prior needs a Posterior (constrain and log_prior)")
    theta, ladj = target.constrain(y)
    u0 = -(target.log_prior(theta) + ladj)
    return torch.where(torch.isnan(u0), torch.full_like(u0, math.inf), u0)


class PriorDefensive(torch.nn.Module):
    r"""Defensive mixture :math:`q = (1-\epsilon_p)\,q_d + \epsilon_p\,\pi` with the prior.

    :math:`q_d` is the flow, or its wide-base mixture
    :class:`~boltzflow.sampling.emcee_move.DefensiveFlow`; :math:`\pi(y) = e^{-u_0(y)}` is the
    normalized prior in ``y`` (:func:`prior_energy`), so the weights
    :math:`p/q \le L(y) / (Z\epsilon_p)` stay bounded wherever the flow's tails are lighter
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
    """``flow`` itself, or its defensive mixture with a wider base (``weight``) and, if
    ``prior_weight > 0``, with the target's prior (:class:`PriorDefensive`)."""
    out = flow
    if weight > 0:
        from boltzflow.sampling.emcee_move import DefensiveFlow

        out = DefensiveFlow(flow, weight, scale)
    if prior_weight > 0:
        out = PriorDefensive(out, target, prior_weight)
    return out
