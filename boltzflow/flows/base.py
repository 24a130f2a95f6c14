r"""The flow contract: transforms, composition, and [`Flow`][boltzflow.flows.base.Flow].

Direction convention (fixed across boltzflow):

* `Transform.forward(z) -> (x, ladj)` maps latent to configuration with
  `ladj = log|det ∂x/∂z|`, shape `[batch]`;
* `Transform.inverse(x) -> (z, ladj_inv)` with `ladj_inv = log|det ∂z/∂x|`.

A [`Flow`][boltzflow.flows.base.Flow] pairs a base distribution $p_z$ with a transform, so that

$$
\log q(x) = \log p_z(z) - \mathrm{ladj}(z), \qquad z = f^{-1}(x).
$$

Stochastic layers may return a path log-weight increment in place of `ladj`; the
layer contract "returns `(y, dlogp)`" is shared by both.
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import torch
from torch import nn

__all__ = [
    "TransformResult",
    "FlowSample",
    "Transform",
    "Compose",
    "Flow",
    "InverseTransform",
    "frozen",
]


class TransformResult(NamedTuple):
    """Output of a transform: the mapped tensor and the log-det (or path log-weight) `[batch]`."""

    y: torch.Tensor
    ladj: torch.Tensor


class FlowSample(NamedTuple):
    """A reparametrized flow draw: configuration `x`, latent `z` and `log_q = log q(x)`."""

    x: torch.Tensor
    z: torch.Tensor
    log_q: torch.Tensor


class Transform(nn.Module):
    """A bijection with tractable log-det. Subclasses implement `forward` and `inverse`.

    Both methods take `Tensor[batch, *event_shape]` and return a
    [`TransformResult`][boltzflow.flows.base.TransformResult].
    """

    def forward(self, z: torch.Tensor) -> TransformResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, x: torch.Tensor) -> TransformResult:  # pragma: no cover - abstract
        raise NotImplementedError


class InverseTransform(Transform):
    """The inverse of a transform: swaps `forward` and `inverse`."""

    def __init__(self, transform: Transform):
        super().__init__()
        self.transform = transform

    def forward(self, z):
        return self.transform.inverse(z)

    def inverse(self, x):
        return self.transform.forward(x)


class Compose(Transform):
    """Composition `f = f_n ∘ … ∘ f_1`: `forward` applies `transforms` in order.

    The log-dets add: `ladj = Σ_i ladj_i`.
    """

    def __init__(self, *transforms: Transform):
        super().__init__()
        if len(transforms) == 1 and isinstance(transforms[0], (list, tuple)):
            transforms = tuple(transforms[0])
        self.transforms = nn.ModuleList(transforms)

    def forward(self, z):
        ladj = z.new_zeros(z.shape[0])
        for t in self.transforms:
            z, l = t.forward(z)
            ladj = ladj + l
        return TransformResult(z, ladj)

    def inverse(self, x):
        ladj = x.new_zeros(x.shape[0])
        for t in reversed(self.transforms):
            x, l = t.inverse(x)
            ladj = ladj + l
        return TransformResult(x, ladj)


class Flow(nn.Module):
    r"""A normalizing flow: base distribution `base` pushed forward by `transform`.

    Args:
        base: an `nn.Module` with `event_shape`, `sample(n, generator=None)` and
            `log_prob(z) -> Tensor[batch]` (see
            [`boltzflow.flows.distributions`][boltzflow.flows.distributions]).
        transform: a [`Transform`][boltzflow.flows.base.Transform] mapping latent `z` to
            configuration `x`.

    `sample` is reparametrized: gradients flow from `x` and `log_q` to the
    parameters, which is what reverse-KL training needs.
    """

    def __init__(self, base: nn.Module, transform: Transform):
        super().__init__()
        self.base = base
        self.transform = transform

    @property
    def event_shape(self) -> torch.Size:
        return self.base.event_shape

    @property
    def dim(self) -> int:
        return int(math.prod(self.event_shape))

    def forward(self, z: torch.Tensor) -> TransformResult:
        """Latent → configuration: `(x, log|det ∂x/∂z|)`."""
        return self.transform.forward(z)

    def inverse(self, x: torch.Tensor) -> TransformResult:
        """Configuration → latent: `(z, log|det ∂z/∂x|)`."""
        return self.transform.inverse(x)

    def sample(self, n: int, generator: torch.Generator | None = None) -> FlowSample:
        """Draw `n` configurations with their log-density, in one pass."""
        z = self.base.sample(n, generator=generator)
        x, ladj = self.transform.forward(z)
        return FlowSample(x, z, self.base.log_prob(z) - ladj)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        r"""`log q(x) = log p_z(f^{-1}(x)) + log|det ∂f^{-1}/∂x|`, shape `[batch]`."""
        z, ladj_inv = self.transform.inverse(x)
        return self.base.log_prob(z) + ladj_inv


@contextlib.contextmanager
def frozen(flow):
    """Within the block, `flow` is in eval mode with every parameter fixed.

    On exit every module's train/eval mode and every parameter's `requires_grad` are put
    back as they were, so a layer the caller froze stays frozen and a trainable one stays
    trainable: samplers borrow the flow, they do not change it.
    """
    modes = [(m, m.training) for m in flow.modules()]
    flags = [(p, p.requires_grad) for p in flow.parameters()]
    flow.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield flow
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)
