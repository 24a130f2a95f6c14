r"""Elementwise affine standardisation layer (ActNorm-like, Kingma & Dhariwal 2018, "Glow").

$$
x_i = \mu_i + e^{s_i} z_i, \qquad
\mathrm{ladj} = \sum_{i \in A} s_i, \qquad
z_i = (x_i - \mu_i) e^{-s_i},
$$

for the active features $i \in A$ (all features by default); inactive features pass
through unchanged. Periodic coordinates are left inactive so the torus is not stretched.

Unlike Glow's ActNorm there is no hidden data-dependent initialisation: the layer starts from
the `loc`/`scale` it is given, and
[`ElementwiseAffine.set_from_data`][boltzflow.flows.affine.ElementwiseAffine.set_from_data] sets
them explicitly from samples so a flow starts at the data scale.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from boltzflow.energies.base import as_event_shape
from boltzflow.flows.base import ScoredResult, Transform, TransformResult

__all__ = ["ElementwiseAffine"]


class ElementwiseAffine(Transform):
    r"""Learnable (or fixed) elementwise affine map `x = loc + exp(log_scale) ⊙ z`.

    Args:
        event_shape: shape of one configuration (int for a flat vector).
        loc: initial shift `μ` (scalar or tensor broadcastable to `event_shape`).
        scale: initial scale `e^{s} > 0` (scalar or tensor broadcastable to `event_shape`).
        learnable: if `False`, `loc` and `log_scale` are buffers (a fixed standardisation).
        active: optional bool mask of `event_shape`; only these features are transformed
            (parameters exist only for them, so every parameter receives gradient).

    Examples:
        >>> layer = ElementwiseAffine(2, loc=1.0, scale=2.0)
        >>> x, ladj = layer(torch.zeros(3, 2))
        >>> x.tolist(), round(ladj[0].item(), 4)
        ([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]], 1.3863)
    """

    def __init__(self, event_shape, loc=0.0, scale=1.0, learnable: bool = True, active=None):
        super().__init__()
        self.event_shape = as_event_shape(event_shape)
        dim = int(math.prod(self.event_shape))
        if active is None:
            index = None
        else:
            active = torch.as_tensor(active, dtype=torch.bool).reshape(-1)
            if active.numel() != dim:
                raise ValueError(f"active mask has {active.numel()} entries, expected {dim}")
            index = torch.nonzero(active).reshape(-1)
        dtype = torch.get_default_dtype()
        loc = torch.broadcast_to(torch.as_tensor(loc, dtype=dtype), self.event_shape).reshape(-1)
        scale = torch.broadcast_to(torch.as_tensor(scale, dtype=dtype), self.event_shape)
        scale = scale.reshape(-1)
        if not bool((scale > 0).all()):
            raise ValueError("scale must be positive")
        if index is not None:
            loc, scale = loc[index], scale[index]
        self.register_buffer("index", index)
        make = nn.Parameter if learnable else (lambda t: t)
        loc, log_scale = make(loc.clone()), make(torch.log(scale))
        if learnable:
            self.loc, self.log_scale = loc, log_scale
        else:
            self.register_buffer("loc", loc)
            self.register_buffer("log_scale", log_scale)

    @property
    def dim(self) -> int:
        return int(math.prod(self.event_shape))

    def full_loc_and_log_scale(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`(μ, s)` over all flattened features (zeros on inactive ones), differentiable."""
        if self.index is None:
            return self.loc, self.log_scale
        loc = self.loc.new_zeros(self.dim).index_copy(0, self.index, self.loc)
        log_scale = self.log_scale.new_zeros(self.dim).index_copy(0, self.index, self.log_scale)
        return loc, log_scale

    def forward(self, z: torch.Tensor) -> TransformResult:
        loc, log_scale = self.full_loc_and_log_scale()
        x = loc + torch.exp(log_scale) * z.reshape(z.shape[0], -1)
        return TransformResult(x.reshape(z.shape), self.log_scale.sum().expand(z.shape[0]))

    def forward_and_score(self, z: torch.Tensor, score: torch.Tensor) -> ScoredResult:
        r"""Score rule: the log-det is constant in $z$ and $J = \mathrm{diag}(e^{s})$, so
        $\nabla_x \log q = e^{-s} \odot \nabla_z \log q$."""
        x, ladj = self.forward(z)
        log_scale = self.full_loc_and_log_scale()[1].detach()
        new = score.reshape(score.shape[0], -1) * torch.exp(-log_scale)
        return ScoredResult(x, ladj, new.reshape(score.shape))

    def inverse(self, x: torch.Tensor) -> TransformResult:
        loc, log_scale = self.full_loc_and_log_scale()
        z = (x.reshape(x.shape[0], -1) - loc) * torch.exp(-log_scale)
        return TransformResult(z.reshape(x.shape), -self.log_scale.sum().expand(x.shape[0]))

    @torch.no_grad()
    def set_from_data(self, x: torch.Tensor, min_scale: float = 1e-6) -> ElementwiseAffine:
        """Set `loc`/`scale` to the per-feature mean and standard deviation of `x`.

        Args:
            x: samples `[batch, *event_shape]` (batch ≥ 2).
            min_scale: lower bound on the scale (constant features).

        Returns:
            `self` (so that `layer.set_from_data(x)` chains).
        """
        flat = x.reshape(x.shape[0], -1).to(self.loc)
        if self.index is not None:
            flat = flat[:, self.index]
        self.loc.copy_(flat.mean(0))
        self.log_scale.copy_(torch.log(flat.std(0).clamp_min(min_scale)))
        return self
