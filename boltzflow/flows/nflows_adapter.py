r"""Adapter from nflows transforms to boltzflow's direction convention.

nflows runs data → noise: an nflows transform `t` has `t.forward(x) -> (z, log|det ∂z/∂x|)`
and `t.inverse(z) -> (x, log|det ∂x/∂z|)`. boltzflow runs latent → configuration. This
module is the only place where the two directions are converted:

$$
\texttt{NflowsTransform.forward}(z) = t^{-1}(z), \quad
\mathrm{ladj} = \log|\det \partial x/\partial z|, \\
\texttt{NflowsTransform.inverse}(x) = t(x), \quad
\mathrm{ladj\_inv} = \log|\det \partial z/\partial x|.
$$

nflows transforms act on `[batch, features]` tensors; the adapter flattens any event shape
to `features = prod(event_shape)` and restores it on output.

The factory functions build the nflows layers boltzflow uses, each wrapped:

* [`rq_coupling`][boltzflow.flows.nflows_adapter.rq_coupling] -- rational-quadratic spline coupling
  with linear tails outside `[-tail_bound, tail_bound]` and a ResidualNet conditioner (Durkan et al.
  2019, "Neural Spline Flows");
* [`rq_elementwise`][boltzflow.flows.nflows_adapter.rq_elementwise] -- an unconditional elementwise
  RQ spline (for one-dimensional events);
* [`maf`][boltzflow.flows.nflows_adapter.maf] -- masked affine autoregressive layer with a MADE
  conditioner (Papamakarios et al. 2017, "Masked Autoregressive Flow for Density Estimation");
* [`rq_autoregressive`][boltzflow.flows.nflows_adapter.rq_autoregressive] -- masked RQ spline
  autoregressive layer (Durkan et al. 2019);
* [`reverse_permutation`][boltzflow.flows.nflows_adapter.reverse_permutation],
  [`random_permutation`][boltzflow.flows.nflows_adapter.random_permutation] -- fixed feature
  permutations.

[`to_nflows`][boltzflow.flows.nflows_adapter.to_nflows] converts a boltzflow transform stack back
into an nflows `Transform` (data → noise), for interoperability and for benchmarking against bare
nflows.

nflows layers initialise their weights from torch's global RNG; seed it (or use
[`boltzflow.flows.builders`][boltzflow.flows.builders], which does) for reproducible flows.
"""

from __future__ import annotations

import math

import torch
from nflows import transforms as nt
from nflows.nn.nets import ResidualNet
from nflows.transforms.coupling import PiecewiseCouplingTransform

from boltzflow.flows.affine import ElementwiseAffine
from boltzflow.flows.base import (
    Compose,
    InverseTransform,
    ScoredResult,
    Transform,
    TransformResult,
)
from boltzflow.flows.circular import IDENTITY_DERIVATIVE
from boltzflow.flows.score_rules import coupling_score, scored_input
from boltzflow.flows.spline_slope import inverse_local, unconstrained_rq_spline

__all__ = [
    "NflowsTransform",
    "RQCoupling",
    "rq_coupling",
    "affine_coupling",
    "rq_elementwise",
    "maf",
    "rq_autoregressive",
    "reverse_permutation",
    "random_permutation",
    "to_nflows",
]


class NflowsTransform(Transform):
    r"""A boltzflow [`Transform`][boltzflow.flows.base.Transform] around an nflows transform `t`
    (data → noise).

    `forward(z) = t.inverse(z)` and `inverse(x) = t.forward(x)`; inputs of shape
    `[batch, *event_shape]` are flattened to `[batch, prod(event_shape)]` for nflows.

    Args:
        transform: an `nflows.transforms.Transform` mapping data to noise.
    """

    def __init__(self, transform: nt.Transform):
        super().__init__()
        self.nflows_transform = transform

    def forward(self, z: torch.Tensor) -> TransformResult:
        x, ladj = self.nflows_transform.inverse(z.reshape(z.shape[0], -1))
        return TransformResult(x.reshape(z.shape), ladj)

    def inverse(self, x: torch.Tensor) -> TransformResult:
        z, ladj_inv = self.nflows_transform.forward(x.reshape(x.shape[0], -1))
        return TransformResult(z.reshape(x.shape), ladj_inv)

    @property
    def has_score_rule(self) -> bool:
        """Fast score rules exist for nflows permutations and for affine and piecewise
        (spline) couplings without an unconditional transform."""
        t = self.nflows_transform
        if isinstance(t, nt.Permutation):
            return True
        coupling = (nt.AffineCouplingTransform, PiecewiseCouplingTransform)
        return isinstance(t, coupling) and t.unconditional_transform is None

    @property
    def has_inverse_score_rule(self) -> bool:
        """The same layers have an inverse rule (`inverse_and_score`)."""
        return self.has_score_rule

    def forward_and_score(self, z: torch.Tensor, score: torch.Tensor) -> ScoredResult:
        r"""Score rule (Vaitl et al. 2024): a permutation permutes the score like the
        coordinates; a coupling applies
        [`coupling_score`][boltzflow.flows.score_rules.coupling_score], with the elementwise
        log-derivatives $-\log s$ (affine: $x_a = (z_a - t)/s$ in nflows' inverse direction) or
        those of the spline."""
        if not self.has_score_rule:  # the drop-in of Transform.forward_and_score
            return super().forward_and_score(z, score)
        return self._scored(z, score, inverse=False)

    def inverse_and_score(self, x: torch.Tensor, score: torch.Tensor) -> ScoredResult:
        r"""Inverse score rule: the same rules with nflows' forward direction (affine:
        $z_a = s\,x_a + t$, log-derivatives $\log s$)."""
        if not self.has_inverse_score_rule:  # the drop-in of Transform.inverse_and_score
            return super().inverse_and_score(x, score)
        return self._scored(x, score, inverse=True)

    def _scored(self, v: torch.Tensor, score: torch.Tensor, inverse: bool) -> ScoredResult:
        """`forward_and_score` (`inverse=False`, nflows' inverse map) or `inverse_and_score`."""
        t = self.nflows_transform
        flat = score.reshape(score.shape[0], -1)
        if isinstance(t, nt.Permutation):
            out, ladj = self.inverse(v) if inverse else self.forward(v)
            carried = t.forward(flat)[0] if inverse else t.inverse(flat)[0]
            return ScoredResult(out, ladj, carried.reshape(score.shape))
        with torch.enable_grad():
            vf = scored_input(v.reshape(v.shape[0], -1))
            ident, active = t.identity_features, t.transform_features
            local = None  # autograd differentiates the log-derivatives unless set below
            va = vf[:, active]
            params = t.transform_net(vf[:, ident], None)
            if isinstance(t, nt.AffineCouplingTransform):
                scale, shift = t._scale_and_shift(params)
                if inverse:
                    out_a, lad = va * scale + shift, torch.log(scale)
                else:
                    out_a, lad = (va - shift) / scale, -torch.log(scale)
            else:
                params = params.reshape(va.shape[0], va.shape[1], -1)
                if isinstance(t, RQCoupling):  # the spline's own slope: no autograd pass
                    out_a, lad, slope = t._piecewise_cdf(va, params, not inverse, slope=True)
                    local = slope if inverse else inverse_local(slope, lad)
                else:
                    out_a, lad = t._piecewise_cdf(va, params, inverse=not inverse)
            out = torch.empty_like(vf)
            out[:, ident], out[:, active] = vf[:, ident], out_a

            def scatter(full, values):
                new = full.clone()
                new[:, active] = values
                return new

            new = coupling_score(vf, va, out_a, lad, flat, lambda s: s[:, active], scatter, local)
        return ScoredResult(out.reshape(v.shape), lad.sum(-1), new.reshape(score.shape))


def _as_mask(mask) -> torch.Tensor:
    mask = torch.as_tensor(mask).reshape(-1).bool()
    if mask.all() or not mask.any():
        raise ValueError("a coupling mask must transform some features and keep some")
    return mask.to(torch.uint8)


def rq_coupling(
    mask,
    hidden_features: int = 64,
    num_blocks: int = 2,
    num_bins: int = 8,
    tail_bound: float = 5.0,
    identity_init: bool = False,
) -> NflowsTransform:
    r"""Rational-quadratic spline coupling layer (nflows `PiecewiseRationalQuadraticCoupling`).

    Features with `mask[i] = True` are transformed elementwise by monotone RQ splines on
    `[-B, B]` (`B = tail_bound`; identity with unit slope outside), whose `3K - 1` knot
    parameters per feature come from a ResidualNet of the untouched features.
    `ladj = Σ_i log s_i'(z_i)`.

    Args:
        mask: bool `[features]`; which features the spline transforms.
        hidden_features, num_blocks: ResidualNet width and number of residual blocks.
        num_bins: number of spline bins `K`.
        tail_bound: half-width `B` of the spline interval.
        identity_init: start at the identity map: the ResidualNet's last layer has zero
            weights, equal bins and interior derivatives 1 (nflows' default starts at a random
            monotone spline, a few nats from the identity in 20 dimensions).
    """

    def make_net(in_features: int, out_features: int) -> ResidualNet:
        return ResidualNet(in_features, out_features, hidden_features, num_blocks=num_blocks)

    layer = RQCoupling(
        mask=_as_mask(mask),
        transform_net_create_fn=make_net,
        num_bins=num_bins,
        tails="linear",
        tail_bound=tail_bound,
    )
    if identity_init:
        _spline_identity(layer)
    return NflowsTransform(layer)


class RQCoupling(nt.PiecewiseRationalQuadraticCouplingTransform):
    """nflows' RQ coupling with linear tails whose splines are evaluated by
    [`unconstrained_rq_spline`][boltzflow.flows.spline_slope.unconstrained_rq_spline] (the same
    map, without masked copies), which also gives the score rule the log-derivative's slope.
    The conditioner's width and height outputs are scaled by `1/sqrt(hidden_features)`, as in
    nflows."""

    def _piecewise_cdf(self, inputs, transform_params, inverse=False, slope=False):
        k, norm = self.num_bins, math.sqrt(self.transform_net.hidden_features)
        widths, heights = transform_params[..., :k] / norm, transform_params[..., k : 2 * k] / norm
        derivatives = transform_params[..., 2 * k :]
        return unconstrained_rq_spline(
            inputs, widths, heights, derivatives, inverse, self.tail_bound, slope=slope
        )


def _spline_identity(layer) -> None:
    """Zero the conditioner's output layer of an nflows RQ coupling with linear tails (built
    with nflows' default `min_derivative`), with derivative biases
    `circular.IDENTITY_DERIVATIVE`: equal bins, unit
    slopes."""
    out, k = layer.transform_net.final_layer, layer.num_bins
    with torch.no_grad():
        out.weight.zero_()
        bias = out.bias.view(-1, 3 * k - 1)
        bias.zero_()
        bias[:, 2 * k :] = IDENTITY_DERIVATIVE


def affine_coupling(mask, hidden_features: int = 64, num_blocks: int = 2) -> NflowsTransform:
    r"""Affine (RealNVP) coupling layer (nflows `AffineCouplingTransform`, Dinh et al. 2017).

    Features with `mask[i] = True` are scaled and shifted, $x_i = s_i z_i + t_i$, with
    $(s, t)$ from a ResidualNet of the untouched features (nflows: $s = \sigma(h + 2) + 10^{-3}$);
    `ladj` $= \sum_i \log s_i$.
    """

    def make_net(in_features: int, out_features: int) -> ResidualNet:
        return ResidualNet(in_features, out_features, hidden_features, num_blocks=num_blocks)

    layer = nt.AffineCouplingTransform(mask=_as_mask(mask), transform_net_create_fn=make_net)
    return NflowsTransform(layer)


def rq_elementwise(features: int, num_bins: int = 8, tail_bound: float = 5.0) -> NflowsTransform:
    """Unconditional elementwise RQ spline with linear tails.

    Each feature has its own learnable spline on `[-tail_bound, tail_bound]` (nflows
    `PiecewiseRationalQuadraticCDF`).
    """
    layer = nt.PiecewiseRationalQuadraticCDF(
        shape=[features], num_bins=num_bins, tails="linear", tail_bound=tail_bound
    )
    return NflowsTransform(layer)


def maf(
    features: int, hidden_features: int = 64, num_blocks: int = 2, near_identity: bool = True
) -> NflowsTransform:
    r"""Masked affine autoregressive layer (MAF; Papamakarios et al. 2017).

    nflows' data → noise map is `z_i = s_i(x_{<i}) x_i + m_i(x_{<i})` with
    `s = softplus(·) + 10⁻³`, so the density direction (`inverse`) is one MADE pass
    and the sampling direction (`forward`) takes `features` passes. Wrap the result in
    [`InverseTransform`][boltzflow.flows.base.InverseTransform] for the inverse-autoregressive (IAF)
    variant.

    With `near_identity` the MADE output layer is scaled by 10⁻² and its bias set so that
    `s = 1, m = 0` at zero output: nflows' default initialisation has scales down to
    `~10⁻³`, and sampling through several layers then overflows.
    """
    layer = nt.MaskedAffineAutoregressiveTransform(
        features=features, hidden_features=hidden_features, num_blocks=num_blocks
    )
    if near_identity:
        final = layer.autoregressive_net.final_layer
        with torch.no_grad():
            final.weight.mul_(1e-2)
            final.bias.zero_()
            # MADE output layout is [features, (unconstrained scale, shift)].
            final.bias[0::2] = math.log(math.expm1(1.0 - getattr(layer, "_epsilon", 1e-3)))
    return NflowsTransform(layer)


def rq_autoregressive(
    features: int,
    hidden_features: int = 64,
    num_blocks: int = 2,
    num_bins: int = 8,
    tail_bound: float = 5.0,
) -> NflowsTransform:
    r"""Masked RQ spline autoregressive layer (Durkan et al. 2019), linear tails.

    Same direction costs as [`maf`][boltzflow.flows.nflows_adapter.maf]: one MADE pass for
    `inverse`, `features` passes for `forward`.
    """
    layer = nt.MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
        features=features,
        hidden_features=hidden_features,
        num_blocks=num_blocks,
        num_bins=num_bins,
        tails="linear",
        tail_bound=tail_bound,
    )
    return NflowsTransform(layer)


def reverse_permutation(features: int) -> NflowsTransform:
    """Fixed reversal of the feature order (`ladj = 0`)."""
    return NflowsTransform(nt.ReversePermutation(features))


def random_permutation(features: int, generator: torch.Generator | None = None) -> NflowsTransform:
    """Fixed random permutation drawn from `generator` (kept as a buffer; `ladj = 0`)."""
    return NflowsTransform(nt.Permutation(torch.randperm(features, generator=generator)))


def _affine_to_nflows(layer: ElementwiseAffine) -> nt.Transform:
    # boltzflow: x = loc + e^{s} z.  nflows ActNorm (data → noise): z = e^{a} x + b,
    # hence a = -s and b = -loc e^{-s}.
    loc, log_scale = layer.full_loc_and_log_scale()
    norm = nt.ActNorm(loc.numel()).to(loc)
    with torch.no_grad():
        norm.log_scale.copy_(-log_scale)
        norm.shift.copy_(-loc * torch.exp(-log_scale))
        norm.initialized.fill_(True)
    return norm


def to_nflows(transform: Transform) -> nt.Transform:
    """Convert a boltzflow transform stack to an nflows `Transform` (data → noise).

    Supports [`Compose`][boltzflow.flows.base.Compose],
    [`InverseTransform`][boltzflow.flows.base.InverseTransform],
    [`NflowsTransform`][boltzflow.flows.nflows_adapter.NflowsTransform] (the wrapped module is
    shared, not copied) and [`ElementwiseAffine`][boltzflow.flows.affine.ElementwiseAffine]
    (converted to an nflows `ActNorm` holding a copy of its current values). Event shapes must be
    flat.

    Raises:
        TypeError: for transforms without an nflows counterpart.
    """
    if isinstance(transform, NflowsTransform):
        return transform.nflows_transform
    if isinstance(transform, Compose):
        # boltzflow applies transforms[0] first on z → x; nflows applies its list on x → z.
        return nt.CompositeTransform([to_nflows(t) for t in reversed(transform.transforms)])
    if isinstance(transform, InverseTransform):
        return nt.InverseTransform(to_nflows(transform.transform))
    if isinstance(transform, ElementwiseAffine):
        return _affine_to_nflows(transform)
    raise TypeError(f"{type(transform).__name__} has no nflows counterpart")
