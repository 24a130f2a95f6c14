r"""Circular rational-quadratic splines for periodic coordinates on $[-\pi, \pi)$.

A circular spline (Rezende et al. 2020, "Normalizing Flows on Tori and Spheres"; built on the
rational-quadratic spline of Durkan et al. 2019, "Neural Spline Flows") is a monotone RQ
spline $s: [-\pi, \pi] \to [-\pi, \pi]$ with $K$ bins, $s(-\pi) = -\pi$,
$s(\pi) = \pi$, whose knot derivatives $d_0, \dots, d_K$ satisfy $d_K = d_0$.
It is therefore a diffeomorphism of the circle: the map and its density
$\log|s'(\theta)|$ are continuous across the seam $\theta = \pm\pi$. The
`3K` parameters per coordinate are `K` widths, `K` heights and `K` derivatives
(`d_K` is tied to `d_0`).

Because every circular spline fixes the seam, flows interleave them with
[`CircularShift`][boltzflow.flows.circular.CircularShift] (a fixed random rotation
$\theta \mapsto \theta + c \bmod 2\pi$, `ladj = 0`) so that the seam moves between layers.

[`CircularSplineCoupling`][boltzflow.flows.circular.CircularSplineCoupling] is a coupling layer over
a *mixed* vector in which a mask marks the periodic coordinates (torsions of molecular internal
coordinates, U(1) angles) and the rest are Euclidean (bonds, angles): periodic transformed
coordinates get circular splines, Euclidean ones get RQ splines with linear tails, and periodic
conditioner inputs enter the conditioner as $(\cos\theta, \sin\theta)$, so the layer is periodic in
every periodic input.

All transforms flatten `[batch, *event_shape]` to `[batch, features]`; periodic inputs
outside $[-\pi, \pi]$ are wrapped into $[-\pi, \pi)$, so every periodic output
lies in $[-\pi, \pi]$ and densities are invariant under $\theta \to \theta + 2\pi k$.
"""

from __future__ import annotations

import functools
import math

import torch
from nflows.nn.nets import ResidualNet
from torch import nn

from boltzflow.flows.base import ScoredResult, Transform, TransformResult
from boltzflow.flows.score_rules import coupling_rule
from boltzflow.flows.spline_slope import (
    IDENTITY_DERIVATIVE,
    inverse_local,
    rq_spline,
    unconstrained_rq_spline,
)

__all__ = [
    "wrap_angle",
    "circular_rq_spline",
    "CircularSpline",
    "CircularShift",
    "CircularSplineCoupling",
]


def wrap_angle(theta: torch.Tensor) -> torch.Tensor:
    r"""Map angles to $[-\pi, \pi)$: `(θ + π) mod 2π - π` (derivative 1)."""
    return torch.remainder(theta + math.pi, 2 * math.pi) - math.pi


def _wrap_outside(theta: torch.Tensor) -> torch.Tensor:
    # Leave [-π, π] untouched (so s(π) really evaluates the last bin) and wrap the rest.
    outside = (theta < -math.pi) | (theta > math.pi)
    return torch.where(outside, wrap_angle(theta), theta)


def circular_rq_spline(
    inputs: torch.Tensor,
    unnormalized_widths: torch.Tensor,
    unnormalized_heights: torch.Tensor,
    unnormalized_derivatives: torch.Tensor,
    inverse: bool = False,
    slope: bool = False,
) -> tuple[torch.Tensor, ...]:
    r"""Circular RQ spline on $[-\pi, \pi]$ with tied boundary derivatives.

    Args:
        inputs: angles `[...]`; values outside $[-\pi, \pi]$ are wrapped.
        unnormalized_widths, unnormalized_heights: `[..., K]` (softmax-normalised).
        unnormalized_derivatives: `[..., K]` for knots `0..K-1`; knot `K` reuses knot 0.
        inverse: evaluate $s^{-1}$ instead of $s$.
        slope: also return $\frac{d}{d\theta}\log s'(\theta)$ at the forward map's input
            ([`rq_spline`][boltzflow.flows.spline_slope.rq_spline]).

    Returns:
        `(outputs, logabsdet)`, both `[...]`; `logabsdet = log|ds/dθ|` (or of the inverse);
        with `slope`, the slope third.
    """
    derivatives = torch.cat([unnormalized_derivatives, unnormalized_derivatives[..., :1]], -1)
    return rq_spline(
        _wrap_outside(inputs),
        unnormalized_widths,
        unnormalized_heights,
        derivatives,
        inverse=inverse,
        left=-math.pi,
        right=math.pi,
        bottom=-math.pi,
        top=math.pi,
        slope=slope,
    )


class CircularSpline(Transform):
    r"""Unconditional elementwise circular spline, one learnable spline per feature.

    `x_i = s_i(z_i)`, `ladj = Σ_i log s_i'(z_i)`. Initialised to the identity.

    Args:
        features: number of (flattened) features, all periodic.
        num_bins: number of bins `K`.
    """

    def __init__(self, features: int, num_bins: int = 8):
        super().__init__()
        self.unnormalized_widths = nn.Parameter(torch.zeros(features, num_bins))
        self.unnormalized_heights = nn.Parameter(torch.zeros(features, num_bins))
        self.unnormalized_derivatives = nn.Parameter(
            torch.full((features, num_bins), IDENTITY_DERIVATIVE)
        )

    def _map(self, z: torch.Tensor, inverse: bool) -> TransformResult:
        flat = z.reshape(z.shape[0], -1)
        shape = (flat.shape[0], *self.unnormalized_widths.shape)
        y, lad = circular_rq_spline(
            flat,
            self.unnormalized_widths.expand(shape),
            self.unnormalized_heights.expand(shape),
            self.unnormalized_derivatives.expand(shape),
            inverse=inverse,
        )
        return TransformResult(y.reshape(z.shape), lad.sum(-1))

    def forward(self, z: torch.Tensor) -> TransformResult:
        return self._map(z, inverse=False)

    def inverse(self, x: torch.Tensor) -> TransformResult:
        return self._map(x, inverse=True)


class CircularShift(Transform):
    r"""Fixed rotation of the periodic features: `x = wrap(z + c)`, `ladj = 0`.

    Euclidean features (`periodic[i] = False`) pass through unchanged. The shift `c` is a
    buffer (saved in the `state_dict`, never trained).

    Args:
        shift: `[features]` shifts in radians (ignored on Euclidean features).
        periodic: optional bool `[features]`; default all periodic.
    """

    def __init__(self, shift: torch.Tensor, periodic=None):
        super().__init__()
        shift = torch.as_tensor(shift, dtype=torch.get_default_dtype()).reshape(-1)
        if periodic is None:
            periodic = torch.ones(shift.numel(), dtype=torch.bool)
        periodic = torch.as_tensor(periodic, dtype=torch.bool).reshape(-1)
        self.register_buffer("periodic", periodic)
        self.register_buffer("shift", torch.where(periodic, shift, torch.zeros_like(shift)))

    @classmethod
    def random(cls, features: int, periodic=None, generator: torch.Generator | None = None):
        r"""A shift drawn uniformly from $[-\pi, \pi)$ with `generator`."""
        c = (torch.rand(features, generator=generator, dtype=torch.float64) * 2 - 1) * math.pi
        return cls(c.to(torch.get_default_dtype()), periodic)

    def _map(self, z: torch.Tensor, sign: float) -> TransformResult:
        flat = z.reshape(z.shape[0], -1) + sign * self.shift
        y = torch.where(self.periodic, wrap_angle(flat), flat)
        return TransformResult(y.reshape(z.shape), z.new_zeros(z.shape[0]))

    def forward(self, z: torch.Tensor) -> TransformResult:
        return self._map(z, 1.0)

    def forward_and_score(self, z: torch.Tensor, score: torch.Tensor) -> ScoredResult:
        """Score rule: a rotation has $J = I$, so the score is carried unchanged."""
        x, ladj = self._map(z, 1.0)
        return ScoredResult(x, ladj, score)

    def inverse_and_score(self, x: torch.Tensor, score: torch.Tensor) -> ScoredResult:
        """Inverse score rule: the score is carried unchanged ($J = I$)."""
        z, ladj = self._map(x, -1.0)
        return ScoredResult(z, ladj, score)

    def inverse(self, x: torch.Tensor) -> TransformResult:
        return self._map(x, -1.0)


class CircularSplineCoupling(Transform):
    r"""Coupling layer with circular splines on periodic and RQ splines on Euclidean features.

    With transformed set $T$ (`mask`) and conditioning set $C$,

    $$
    x_C = z_C, \qquad x_i = s_i(z_i;\, h(e(z_C))) \;(i \in T), \qquad
    \mathrm{ladj} = \sum_{i\in T} \log s_i'(z_i),
    $$

    where $e$ embeds periodic conditioning inputs as $(\cos, \sin)$ and passes
    Euclidean ones through, $h$ is an nflows ResidualNet, $s_i$ is a circular RQ
    spline for periodic $i$ (`3K` parameters) and an RQ spline with linear tails on
    `[-tail_bound, tail_bound]` otherwise (`3K - 1` parameters). Widths and heights are
    divided by `sqrt(hidden_features)` and derivatives offset so that a zero conditioner
    output is the identity.

    Args:
        mask: bool `[features]`; `True` = transformed.
        periodic: bool `[features]`; `True` = periodic coordinate on $[-\pi, \pi)$.
        hidden_features, num_blocks: ResidualNet size.
        num_bins: spline bins `K`.
        tail_bound: interval half-width for the Euclidean splines.
    """

    def __init__(
        self,
        mask,
        periodic,
        hidden_features: int = 64,
        num_blocks: int = 2,
        num_bins: int = 8,
        tail_bound: float = 5.0,
    ):
        super().__init__()
        mask = torch.as_tensor(mask, dtype=torch.bool).reshape(-1)
        periodic = torch.as_tensor(periodic, dtype=torch.bool).reshape(-1)
        if mask.shape != periodic.shape:
            raise ValueError("mask and periodic must have the same number of features")
        if mask.all() or not mask.any():
            raise ValueError("a coupling mask must transform some features and keep some")
        idx = torch.arange(mask.numel())
        cond, t_per, t_euc = idx[~mask], idx[mask & periodic], idx[mask & ~periodic]
        order = torch.cat([cond, t_per, t_euc])
        for name, value in [
            ("identity_features", cond),
            ("transform_periodic", t_per),
            ("transform_euclidean", t_euc),
            ("cond_periodic", torch.nonzero(periodic[cond]).reshape(-1)),
            ("cond_euclidean", torch.nonzero(~periodic[cond]).reshape(-1)),
            ("inverse_order", torch.argsort(order)),
            ("cond_is_periodic", periodic[cond]),
        ]:
            self.register_buffer(name, value)
        self.num_bins, self.tail_bound = int(num_bins), float(tail_bound)
        self.hidden_features = int(hidden_features)
        n_in = len(self.cond_euclidean) + 2 * len(self.cond_periodic)
        n_out = len(t_per) * 3 * num_bins + len(t_euc) * (3 * num_bins - 1)
        self.net = ResidualNet(n_in, n_out, hidden_features, num_blocks=num_blocks)

    def _embed(self, cond: torch.Tensor) -> torch.Tensor:
        angles = cond[:, self.cond_periodic]
        return torch.cat([cond[:, self.cond_euclidean], torch.cos(angles), torch.sin(angles)], 1)

    def _split(self, params: torch.Tensor, n: int, n_deriv: int):
        k = self.num_bins
        params = params.reshape(params.shape[0], n, 2 * k + n_deriv)
        norm = math.sqrt(self.hidden_features)
        widths, heights = params[..., :k] / norm, params[..., k : 2 * k] / norm
        return widths, heights, params[..., 2 * k :] + IDENTITY_DERIVATIVE

    def _map(self, z: torch.Tensor, inverse: bool, scored: bool = False):
        flat = z.reshape(z.shape[0], -1)
        cond = flat[:, self.identity_features]
        active = flat[:, self._active()]  # the spline inputs, periodic first
        params = self.net(self._embed(cond))
        n_per, n_euc, k = len(self.transform_periodic), len(self.transform_euclidean), self.num_bins
        # Periodic pass-through features leave wrapped too, so every output angle is in [-π, π].
        cond = torch.where(self.cond_is_periodic, _wrap_outside(cond), cond)
        pieces, lads, slopes = [cond], [], []
        if n_per:
            spline = self._split(params[:, : n_per * 3 * k], n_per, k)
            # with `scored`, d log s'/dx at the spline's forward-direction input too
            y, lad, *slope = circular_rq_spline(
                active[:, :n_per], *spline, inverse=inverse, slope=scored
            )
            slopes += slope
            pieces.append(y)
            lads.append(lad)
        if n_euc:
            spline = self._split(params[:, n_per * 3 * k :], n_euc, k - 1)
            y, lad, *slope = unconstrained_rq_spline(
                active[:, n_per:], *spline, inverse, self.tail_bound, slope=scored
            )
            slopes += slope
            pieces.append(y)
            lads.append(lad)
        out = torch.cat(pieces, 1)[:, self.inverse_order].reshape(z.shape)
        lad = torch.cat(lads, 1)
        if scored:
            slope = torch.cat(slopes, 1)
            local = inverse_local(slope, lad) if inverse else slope
            return active, out, torch.cat(pieces[1:], 1), lad, local
        return TransformResult(out, lad.sum(-1))

    def _active(self) -> torch.Tensor:
        return torch.cat([self.transform_periodic, self.transform_euclidean])

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], -1)[:, self._active()]

    def _scatter(self, t: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        flat = t.reshape(t.shape[0], -1).clone()
        flat[:, self._active()] = values
        return flat.reshape(t.shape)

    def forward_and_score(self, z: torch.Tensor, score: torch.Tensor) -> ScoredResult:
        """Score rule: [`coupling_rule`][boltzflow.flows.score_rules.coupling_rule] on the
        transformed features (circular and Euclidean splines alike)."""
        run = functools.partial(self._map, inverse=False, scored=True)
        return coupling_rule(z, score, run, self._gather, self._scatter)

    def inverse_and_score(self, x: torch.Tensor, score: torch.Tensor) -> ScoredResult:
        """Inverse score rule: [`coupling_rule`][boltzflow.flows.score_rules.coupling_rule] on the
        inverse splines."""
        run = functools.partial(self._map, inverse=True, scored=True)
        return coupling_rule(x, score, run, self._gather, self._scatter)

    def forward(self, z: torch.Tensor) -> TransformResult:
        return self._map(z, inverse=False)

    def inverse(self, x: torch.Tensor) -> TransformResult:
        return self._map(x, inverse=True)
