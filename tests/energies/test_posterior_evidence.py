"""Evidence by flow importance sampling on an analytic posterior, with a negative control."""

import math

import pytest
import torch
from scipy import stats

from boltzflow.energies.posterior import Parameter, Posterior
from boltzflow.energies.priors import HalfNormal, Normal, Uniform
from boltzflow.flows.affine import ElementwiseAffine
from boltzflow.flows.base import Flow
from boltzflow.flows.distributions import StandardNormal
from boltzflow.sampling.reweighting import reweight
from boltzflow.sampling.runners import draw_with_log_weights

Y = (1.0, 0.7, 0.9)  # one observation per parameter
NOISE = (0.5, 0.4, 0.5)


def posterior():
    params = [
        Parameter("mu", Normal(0.0, 2.0)),
        Parameter("a", Uniform(-3.0, 5.0)),
        Parameter("b", HalfNormal(1.5)),
    ]
    y, s = torch.tensor(Y), torch.tensor(NOISE)

    def loglike(theta):
        return (-0.5 * ((theta - y) / s) ** 2 - torch.log(s) - 0.5 * math.log(2 * math.pi)).sum(-1)

    return Posterior(params, loglike)


def exact_log_z():
    z1 = stats.norm.logpdf(Y[0], 0.0, math.hypot(2.0, NOISE[0]))
    z2 = math.log(
        (stats.norm.cdf((5 - Y[1]) / NOISE[1]) - stats.norm.cdf((-3 - Y[1]) / NOISE[1])) / 8
    )
    prec = 1 / 1.5**2 + 1 / NOISE[2] ** 2
    m, sd = Y[2] / NOISE[2] ** 2 / prec, prec**-0.5
    z3 = (
        math.log(2)
        + stats.norm.logpdf(Y[2], 0.0, math.hypot(1.5, NOISE[2]))
        + stats.norm.logcdf(m / sd)
    )
    return z1 + z2 + z3


def gaussian_proposal():
    """A deliberately imperfect Gaussian in the unconstrained coordinates."""
    affine = ElementwiseAffine(
        3, loc=torch.tensor([0.9, -0.1, -0.3]), scale=torch.tensor([0.7, 0.35, 0.9])
    )
    return Flow(StandardNormal(3), affine).double()


class MisNormalized(torch.nn.Module):
    """The same proposal, reporting log q off by a constant (a wrong normalizer)."""

    def __init__(self, flow, offset):
        super().__init__()
        self.flow, self.offset = flow, offset

    def sample(self, n, generator=None):
        s = self.flow.sample(n, generator)
        return s._replace(log_q=s.log_q + self.offset)


def evidence(proposal, n=20000, seed=0):
    with torch.no_grad():
        log_w = draw_with_log_weights(
            proposal, posterior(), n, torch.Generator().manual_seed(seed)
        ).log_weight
    return reweight(log_w, seed=seed)


def test_flow_importance_evidence_matches_exact():
    rw = evidence(gaussian_proposal())
    err = (rw.log_z.mean - exact_log_z()) / rw.log_z.stderr
    assert abs(err) < 3, (rw, exact_log_z())
    assert rw.pareto_k < 0.7 and rw.n_nonfinite == 0


def test_wrong_normalizer_is_detected():
    rw = evidence(MisNormalized(gaussian_proposal(), offset=0.1))
    err = (rw.log_z.mean - exact_log_z()) / rw.log_z.stderr
    assert abs(err) > 3, (rw, exact_log_z())


@pytest.mark.parametrize("seed", [1, 2])
def test_evidence_error_bar_is_calibrated_across_seeds(seed):
    rw = evidence(gaussian_proposal(), n=5000, seed=seed)
    assert abs(rw.log_z.mean - exact_log_z()) < 3 * rw.log_z.stderr
