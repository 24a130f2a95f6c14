r"""Base distributions for flows (`nn.Module`\ s, so dtype/device follow `.to()`).

Each base has `event_shape`, `sample(n, generator=None) -> Tensor[n, *event_shape]` and
`log_prob(z) -> Tensor[n]`. Learnable bases (e.g. Student-t marginals) keep their
parameters as `nn.Parameter` so the trainer optimizes them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from boltzflow.energies.base import as_event_shape

__all__ = ["StandardNormal", "UniformTorus", "MixedNormalTorus", "BaseDistribution"]


class BaseDistribution(nn.Module):
    """Common plumbing: an `event_shape` and a dtype/device anchor buffer."""

    def __init__(self, event_shape):
        super().__init__()
        self.event_shape = as_event_shape(event_shape)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    @property
    def dim(self) -> int:
        return int(math.prod(self.event_shape))

    def _empty(self, n: int) -> torch.Tensor:
        return self._anchor.new_empty((n, *self.event_shape))

    def _sum_event(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], -1).sum(-1)


class StandardNormal(BaseDistribution):
    r"""Isotropic Gaussian $\mathcal N(0, I)$; `log_prob = -|z|²/2 - (d/2) log 2π`."""

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self._empty(n).normal_(generator=generator)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return -0.5 * self._sum_event(z * z) - 0.5 * self.dim * math.log(2 * math.pi)


class UniformTorus(BaseDistribution):
    r"""Uniform on the box $[low, high)^d$ (a torus for periodic coordinates).

    Default `[-π, π)`; `log_prob = -d · log(high - low)` inside, `-inf` outside.
    """

    def __init__(self, event_shape, low: float = -math.pi, high: float = math.pi):
        super().__init__(event_shape)
        if not high > low:
            raise ValueError(f"need high > low, got [{low}, {high})")
        self.low, self.high = float(low), float(high)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        u = self._empty(n).uniform_(generator=generator)
        return self.low + (self.high - self.low) * u

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        inside = ((z >= self.low) & (z <= self.high)).reshape(z.shape[0], -1).all(-1)
        lp = torch.full_like(
            z[:, ...].reshape(z.shape[0], -1)[:, 0], -self.dim * math.log(self.high - self.low)
        )
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))


class MixedNormalTorus(BaseDistribution):
    r"""Product base for mixed Euclidean/periodic events: $\mathcal N(0, 1)$ on Euclidean
    features and $U[low, high)$ on periodic ones (default $[-\pi, \pi)$).

    $$
    \log p(z) = \sum_{i \notin P} \big(-\tfrac12 z_i^2 - \tfrac12\log 2\pi\big)
    - |P| \log(high - low),
    $$

    and `-inf` if a periodic feature lies outside `[low, high]`. Used for molecular internal
    coordinates (torsions periodic; bonds and angles not).

    Args:
        periodic: bool tensor of `event_shape`; `True` marks a periodic feature.
        low, high: the periodic interval.
    """

    def __init__(self, periodic, low: float = -math.pi, high: float = math.pi):
        periodic = torch.as_tensor(periodic, dtype=torch.bool)
        super().__init__(periodic.shape)
        if not high > low:
            raise ValueError(f"need high > low, got [{low}, {high})")
        self.low, self.high = float(low), float(high)
        self.register_buffer("periodic", periodic)

    @property
    def n_periodic(self) -> int:
        return int(self.periodic.sum())

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        normal = self._empty(n).normal_(generator=generator)
        uniform = self._empty(n).uniform_(self.low, self.high, generator=generator)
        return torch.where(self.periodic, uniform, normal)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        euclid = torch.where(self.periodic, torch.zeros_like(z), z)
        n_euclid = self.dim - self.n_periodic
        lp = -0.5 * self._sum_event(euclid * euclid) - 0.5 * n_euclid * math.log(2 * math.pi)
        lp = lp - self.n_periodic * math.log(self.high - self.low)
        outside = self.periodic & ((z < self.low) | (z > self.high))
        outside = outside.reshape(z.shape[0], -1).any(-1)
        return torch.where(outside, torch.full_like(lp, -math.inf), lp)
