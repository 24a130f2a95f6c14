"""Small exact models for training tests: a lower-triangular affine flow and Gaussian targets."""

from __future__ import annotations

import math

import torch
from torch import nn

from boltzflow.energies.base import Energy
from boltzflow.energies.gaussians import CorrelatedGaussian
from boltzflow.flows.base import Flow, Transform, TransformResult
from boltzflow.flows.distributions import StandardNormal

MEAN = torch.tensor([1.0, -0.5], dtype=torch.float64)
COV = torch.tensor([[2.0, 0.8], [0.8, 0.5]], dtype=torch.float64)


class LowerAffine(Transform):
    r"""``x = b + L z`` with ``L`` lower triangular, ``diag(L) = exp(s)``; ``ladj = Σ s``."""

    def __init__(self, dim: int):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(dim))
        self.log_diag = nn.Parameter(torch.zeros(dim))
        self.off_diag = nn.Parameter(torch.zeros(dim, dim))

    def matrix(self) -> torch.Tensor:
        return torch.tril(self.off_diag, -1) + torch.diag(self.log_diag.exp())

    def forward(self, z):
        x = self.shift + z @ self.matrix().T
        return TransformResult(x, self.log_diag.sum().expand(z.shape[0]))

    def inverse(self, x):
        y = (x - self.shift).T
        z = torch.linalg.solve_triangular(self.matrix(), y, upper=False).T
        return TransformResult(z, -self.log_diag.sum().expand(x.shape[0]))


def affine_flow(dim: int = 2, dtype=torch.float64) -> Flow:
    """Identity-initialised affine flow on ``N(0, I)``."""
    return Flow(StandardNormal(dim), LowerAffine(dim)).to(dtype)


def set_affine(flow: Flow, mean: torch.Tensor, cov: torch.Tensor) -> Flow:
    """Make ``flow`` push ``N(0, I)`` exactly onto ``N(mean, cov)``."""
    chol = torch.linalg.cholesky(cov)
    t = flow.transform
    with torch.no_grad():
        t.shift.copy_(mean)
        t.log_diag.copy_(chol.diagonal().log())
        t.off_diag.copy_(torch.tril(chol, -1))
    return flow


def exact_flow(mean=MEAN, cov=COV) -> Flow:
    return set_affine(affine_flow(len(mean)), mean, cov)


def affine_moments(flow: Flow) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of the affine flow's distribution."""
    t = flow.transform
    m = t.matrix().detach()
    return t.shift.detach().clone(), m @ m.T


def gaussian_kl(m0, c0, m1, c1) -> float:
    """Exact ``KL(N(m0, c0) || N(m1, c1))``."""
    d = len(m0)
    c1_inv = torch.linalg.inv(c1)
    diff = m1 - m0
    return 0.5 * float(
        torch.trace(c1_inv @ c0) + diff @ c1_inv @ diff - d + torch.logdet(c1) - torch.logdet(c0)
    )


def gaussian_target(mean=MEAN, cov=COV) -> CorrelatedGaussian:
    """The correlated Gaussian ``N(mean, cov)`` as an energy (exact ``log_z`` and sampler)."""
    return CorrelatedGaussian(mean, cov)


class HolesGaussian(Energy):
    r"""Standard Gaussian with holes: ``u = ½|x|² + sqrt(1 - x₀)``, NaN for ``x₀ > 1`` (where
    the square root's derivative is NaN too) and ``+inf`` for ``x₀ < -1.5``."""

    def __init__(self):
        super().__init__(2)

    def _energy(self, x):
        u = 0.5 * (x * x).sum(-1) + torch.sqrt(1.0 - x[:, 0])
        return torch.where(x[:, 0] < -1.5, torch.full_like(u, math.inf), u)


def flat_grad(loss: torch.Tensor, flow: Flow) -> torch.Tensor:
    params = [p for p in flow.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(grads, params, strict=True)
        ]
    )


def trainable_mask(flow: Flow) -> torch.Tensor:
    """Flat mask of the affine flow's free parameters (the strict upper triangle is unused)."""
    parts = []
    for name, p in flow.named_parameters():
        if name.endswith("off_diag"):
            parts.append(torch.tril(torch.ones_like(p, dtype=torch.bool), -1).reshape(-1))
        else:
            parts.append(torch.ones(p.numel(), dtype=torch.bool))
    return torch.cat(parts)
