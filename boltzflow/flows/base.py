r"""The flow contract: transforms, composition, and [`Flow`][boltzflow.flows.base.Flow].

Direction convention (fixed across boltzflow):

* `Transform.forward(z) -> (x, ladj)` maps latent to configuration with
  `ladj = log|det ∂x/∂z|`, shape `[batch]`;
* `Transform.inverse(x) -> (z, ladj_inv)` with `ladj_inv = log|det ∂z/∂x|`.

A [`Flow`][boltzflow.flows.base.Flow] pairs a base distribution $p_z$ with a transform, so that

$$
\log q(x) = \log p_z(z) - \mathrm{ladj}(z), \qquad z = f^{-1}(x).
$$

Stochastic layers (`boltzflow.flows.stochastic`) return a path
log-weight increment in place of `ladj`; the layer contract "returns `(y, dlogp)`" is shared by
both. A flow holding one is *stochastic*: its `sample` returns a `PathSample` whose `log_q` is
the path log-density, and `log_prob` raises `PathDensityError`.
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
    "PathSample",
    "PathDensityError",
    "Transform",
    "Compose",
    "Flow",
    "InverseTransform",
    "ScoredResult",
    "with_fixed_parameters",
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

    is_path = False
    """`False`: `log_q` is the density of `x`; `True` for a `PathSample`."""


class ScoredResult(NamedTuple):
    r"""Output of a transform's fast score rule: the mapped tensor `y`, the log-det `ladj`
    (both differentiable in the parameters) and `score` $= \nabla_y \log q_y(y)$, the score of
    the pushed-forward density with the parameters held fixed (detached)."""

    y: torch.Tensor
    ladj: torch.Tensor
    score: torch.Tensor


class PathSample(FlowSample):
    r"""A draw of a stochastic flow: `log_q` is the log-density of the sampled path,
    $\log p_z(z) - \sum_t \delta_t$ (log-dets and path increments), not of `x` alone.

    $\log w = -u(x) - \log q$ is still an exact importance log-weight of `x`
    (Wu, Köhler & Noé 2020), so reweighting treats both kinds alike.
    """

    __slots__ = ()
    is_path = True


class PathDensityError(TypeError):
    """Raised by `Flow.log_prob` of a stochastic flow: only path weights exist."""


class Transform(nn.Module):
    """A bijection with tractable log-det. Subclasses implement `forward` and `inverse`.

    Both methods take `Tensor[batch, *event_shape]` and return a
    [`TransformResult`][boltzflow.flows.base.TransformResult]. Stochastic blocks set
    `stochastic = True` and take a `generator` keyword.
    """

    stochastic = False

    @property
    def has_score_rule(self) -> bool:
        """True when the layer implements `forward_and_score` (a fast path-gradient rule)."""
        return type(self).forward_and_score is not Transform.forward_and_score

    def forward_and_score(self, z: torch.Tensor, score: torch.Tensor) -> ScoredResult:
        r"""Map `z` and carry the score forward (Vaitl et al. 2024, "Fast and unified path
        gradient estimators for normalizing flows").

        With $y = f(z)$, $J = \partial y/\partial z$ and $l = \log|\det J|$, the density
        $q_y(y) = q_z(z)\,e^{-l(z)}$ has the score

        $$
        \nabla_y \log q_y = J^{-\top}\big(\nabla_z \log q_z - \nabla_z l\big)
        = \nabla_y\big[G_z \cdot f^{-1}(y) + \log|\det \partial_y f^{-1}|\big]_{G_z\ \text{fixed}},
        $$

        computed with the parameters held fixed. Layers with a fast rule override this method
        (`has_score_rule`); this default is the layer's drop-in: one pass of `inverse` with the
        parameters detached (`torch.func.functional_call`) and one vector-Jacobian product.

        Args:
            z: input `[batch, *event_shape]` (may carry the parameters' graph).
            score: $\nabla_z \log q_z(z)$, detached, same shape as `z`.

        Returns:
            [`ScoredResult`][boltzflow.flows.base.ScoredResult] `(y, ladj, score_y)`.
        """
        y, ladj = self.forward(z)
        return ScoredResult(y, ladj, self._dropin_score("inverse", y, score))

    @property
    def has_inverse_score_rule(self) -> bool:
        """True when the layer implements `inverse_and_score` (a fast forward-KL path rule)."""
        return type(self).inverse_and_score is not Transform.inverse_and_score

    def inverse_and_score(self, x: torch.Tensor, score: torch.Tensor) -> ScoredResult:
        r"""Map `x` back to `z` and carry a score backwards: the score rule of the inverse map.

        A density $r_x$ on $x = f(z)$ pulls back to $r_z(z) = r_x(f(z))\,e^{l(z)}$, whose score
        is

        $$
        \nabla_z \log r_z = J^{\top}\nabla_x \log r_x + \nabla_z l
        = \nabla_z\big[G_x \cdot f(z) + l(z)\big]_{G_x\ \text{fixed}},
        $$

        computed with the parameters held fixed. Carried from the target's score
        $-\nabla u$ at data $x$ down to the latent space it gives the score of the pulled-back
        target $p^z_\theta$, which the forward-KL path gradient needs
        ([`path_nll`][boltzflow.training.path_gradients.path_nll]; Vaitl et al. 2024).
        Layers with a fast rule override this method (`has_inverse_score_rule`); this default
        is the layer's drop-in: one pass of `forward` with the parameters detached and one
        vector-Jacobian product.

        Args:
            x: input `[batch, *event_shape]` (may carry the parameters' graph).
            score: $\nabla_x \log r_x(x)$, detached, same shape as `x`.

        Returns:
            [`ScoredResult`][boltzflow.flows.base.ScoredResult] `(z, ladj_inv, score_z)`, with
            `ladj_inv` $= \log|\det \partial z/\partial x|$.
        """
        z, ladj_inv = self.inverse(x)
        return ScoredResult(z, ladj_inv, self._dropin_score("forward", z, score))

    def _dropin_score(self, back: str, out: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        r"""$\nabla_{o}[G \cdot b(o) + \mathrm{ladj}_b(o)]$ at the output $o$ of a map, with
        $b$ the map back (`back`: `"inverse"` or `"forward"`) and the parameters detached."""
        with torch.enable_grad():
            leaf = out.detach().requires_grad_(True)
            mapped, ladj = with_fixed_parameters(self, back, leaf)
            (new,) = torch.autograd.grad((score * mapped).sum() + ladj.sum(), leaf)
        return new

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

    @property
    def has_score_rule(self) -> bool:
        return self.transform.has_inverse_score_rule

    @property
    def has_inverse_score_rule(self) -> bool:
        return self.transform.has_score_rule

    def forward_and_score(self, z, score) -> ScoredResult:
        """The wrapped transform's inverse score rule."""
        return self.transform.inverse_and_score(z, score)

    def inverse_and_score(self, x, score) -> ScoredResult:
        """The wrapped transform's score rule."""
        return self.transform.forward_and_score(x, score)


class Compose(Transform):
    """Composition `f = f_n ∘ … ∘ f_1`: `forward` applies `transforms` in order.

    The log-dets add: `ladj = Σ_i ladj_i`.
    """

    def __init__(self, *transforms: Transform):
        super().__init__()
        if len(transforms) == 1 and isinstance(transforms[0], (list, tuple)):
            transforms = tuple(transforms[0])
        self.transforms = nn.ModuleList(transforms)

    @property
    def stochastic(self) -> bool:
        """True when some member is a stochastic block (it then takes a ``generator``)."""
        return any(t.stochastic for t in self.transforms)

    @staticmethod
    def _call(method, t, y, generator):
        return method(y, generator=generator) if t.stochastic else method(y)

    def forward(self, z, generator: torch.Generator | None = None):
        ladj = z.new_zeros(z.shape[0])
        for t in self.transforms:
            z, l = self._call(t.forward, t, z, generator)
            ladj = ladj + l
        return TransformResult(z, ladj)

    @property
    def has_score_rule(self) -> bool:
        """True when every member has a fast score rule."""
        return all(t.has_score_rule for t in self.transforms)

    def forward_and_score(self, z, score) -> ScoredResult:
        """Chain the members' score rules (see `Transform.forward_and_score`)."""
        ladj = z.new_zeros(z.shape[0])
        for t in self.transforms:
            z, l, score = t.forward_and_score(z, score)
            ladj = ladj + l
        return ScoredResult(z, ladj, score)

    @property
    def has_inverse_score_rule(self) -> bool:
        """True when every member has a fast `inverse_and_score` rule."""
        return all(t.has_inverse_score_rule for t in self.transforms)

    def inverse_and_score(self, x, score) -> ScoredResult:
        """Chain the members' inverse score rules (see `Transform.inverse_and_score`)."""
        ladj = x.new_zeros(x.shape[0])
        for t in reversed(self.transforms):
            x, l, score = t.inverse_and_score(x, score)
            ladj = ladj + l
        return ScoredResult(x, ladj, score)

    def inverse(self, x, generator: torch.Generator | None = None):
        ladj = x.new_zeros(x.shape[0])
        for t in reversed(self.transforms):
            x, l = self._call(t.inverse, t, x, generator)
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

    @property
    def is_stochastic(self) -> bool:
        """True when the transform holds stochastic blocks (then only path weights exist)."""
        return bool(self.transform.stochastic)

    def sample(self, n: int, generator: torch.Generator | None = None) -> FlowSample:
        """Draw `n` configurations with their log-density, in one pass.

        For a stochastic flow the draw is a `PathSample` (`log_q` of the path), and
        `generator` also drives the blocks' noise.
        """
        z = self.base.sample(n, generator=generator)
        if self.is_stochastic:
            x, dlogp = self.transform.forward(z, generator=generator)
            return PathSample(x, z, self.base.log_prob(z) - dlogp)
        x, ladj = self.transform.forward(z)
        return FlowSample(x, z, self.base.log_prob(z) - ladj)

    def backward_path(self, x: torch.Tensor, generator: torch.Generator | None = None):
        r"""Run the flow backwards from `x`: a `PathSample` `(x, z, log_q)` with `log_q` the
        forward-path log-density of the sampled backward path.

        $-E_{x\sim p}[\log q]$ is the forward KL between the path measures up to a constant
        (the SNF maximum-likelihood loss, Wu et al. 2020). For a deterministic flow it equals
        `log_prob(x)`.
        """
        z, ladj_inv = self.transform.inverse(x, generator=generator)
        return PathSample(x, z, self.base.log_prob(z) + ladj_inv)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        r"""`log q(x) = log p_z(f^{-1}(x)) + log|det ∂f^{-1}/∂x|`, shape `[batch]`.

        Raises:
            PathDensityError: the flow is stochastic; its marginal density would need the
                noise of every block integrated out. Use path weights instead: `sample`
                (`log_q` of the path) or `backward_path`.
        """
        if self.is_stochastic:
            raise PathDensityError(
                "this flow contains stochastic blocks: log q(x) does not exist in closed form, "
                "only path weights do. Use flow.sample(n) (log_q is the path log-density, and "
                "-u(x) - log_q an exact importance log-weight) or flow.backward_path(x); train "
                "with the snf_reverse_kl or snf_nll losses."
            )
        z, ladj_inv = self.transform.inverse(x)
        return self.base.log_prob(z) + ladj_inv


class _Method(nn.Module):
    """Calls `getattr(module, method)` as its forward (for `torch.func.functional_call`)."""

    def __init__(self, module: nn.Module, method: str):
        super().__init__()
        self.module, self.method = module, method

    def forward(self, *args):
        return getattr(self.module, self.method)(*args)


def with_fixed_parameters(module: nn.Module, method: str, *args):
    """`module.method(*args)` with every parameter replaced by its detached value
    (`torch.func.functional_call`), so gradients reach the parameters only through `args`."""
    params = {f"module.{k}": p.detach() for k, p in module.named_parameters()}
    return torch.func.functional_call(_Method(module, method), params, args, strict=False)


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
