r"""Rational-quadratic splines that also return the slope of their log-derivative.

A coupling layer's score rule needs $\partial_{x} \log h'(x)$, the derivative of the
elementwise map's log-derivative with respect to its own input
([`coupling_score`][boltzflow.flows.score_rules.coupling_score]). Autograd gets it by a backward
pass through the spline's graph; for the rational-quadratic splines of nflows (Durkan et al. 2019,
"Neural Spline Flows", Eq. 4–5) it has a closed form. The functions here evaluate the spline
as nflows does (same knots, bin search and formulas, with the parameters' graph; the linear
tails without masked copies) and, when asked, return that slope from the same knots, so the
score rule costs no second softmax, cumulative sum or bin search. Every spline layer of the
package evaluates its splines here, with or without the slope, so the standard and the
path-gradient losses run the same spline.

In bin $k$ (left knot $x_k$, width $w_k$, slope $\delta_k = h_k / w_k$, knot derivatives
$d_k, d_{k+1}$) with $\xi = (x - x_k)/w_k$,

$$
\log h'(x) = \log N(\xi) - 2 \log D(\xi), \qquad
N = \delta_k^2\big(d_{k+1}\xi^2 + 2\delta_k\xi(1-\xi) + d_k(1-\xi)^2\big), \qquad
D = \delta_k + (d_k + d_{k+1} - 2\delta_k)\,\xi(1-\xi),
$$

so that

$$
\frac{d \log h'}{dx} = \frac{1}{w_k}\Big[\frac{N'(\xi)}{N(\xi)} - 2\,\frac{D'(\xi)}{D(\xi)}\Big],
\qquad N' = 2\delta_k^2\big(d_{k+1}\xi + \delta_k(1 - 2\xi) - d_k(1-\xi)\big),
\qquad D' = (d_k + d_{k+1} - 2\delta_k)(1 - 2\xi).
$$

The slope is always that of the forward map at its input $x$ (for an inverse evaluation,
$x = h^{-1}(y)$, the output). For the inverse map, $\lambda^{-1}(y) = -\log h'(h^{-1}(y))$ and
$d\lambda^{-1}/dy = -(\log h')'(x)\, e^{\lambda^{-1}(y)}$
([`inverse_local`][boltzflow.flows.spline_slope.inverse_local]).
"""

from __future__ import annotations

import numpy as np
import torch
from nflows.transforms.splines.rational_quadratic import (
    DEFAULT_MIN_BIN_HEIGHT,
    DEFAULT_MIN_BIN_WIDTH,
    DEFAULT_MIN_DERIVATIVE,
)
from nflows.utils import torchutils
from torch.nn import functional as F

__all__ = ["IDENTITY_DERIVATIVE", "rq_spline", "unconstrained_rq_spline", "inverse_local"]

IDENTITY_DERIVATIVE = float(np.log(np.expm1(1.0 - DEFAULT_MIN_DERIVATIVE)))
"""Unnormalised derivative ``u`` with ``min_derivative + softplus(u) = 1`` (unit slope): the
boundary knots of the linear tails, and the identity start of the package's spline layers."""


def _softmax(x: torch.Tensor) -> torch.Tensor:
    r"""Softmax over the last dimension, $e^{x - m} / \sum e^{x - m}$ with the row maximum $m$
    held fixed (the result does not depend on it, so neither does its gradient).

    The same values as `F.softmax(x, -1)` to round-off; for the package's splines (many rows of
    8–16 bins) about 5× faster forward and 2× faster backward on CPU, where torch's softmax
    kernel pays a fixed cost per row.
    """
    e = torch.exp(x - x.detach().amax(-1, keepdim=True))
    return e / e.sum(-1, keepdim=True)


def _knots(unnormalized: torch.Tensor, low: float, high: float, minimum: float) -> torch.Tensor:
    """Knot positions `[..., K + 1]` from unnormalised bin sizes, as nflows computes them (the
    end knots exactly `low` and `high`), built without in-place writes."""
    k = unnormalized.shape[-1]
    sizes = minimum + (1 - minimum * k) * _softmax(unnormalized)
    inner = (high - low) * torch.cumsum(sizes[..., :-1], dim=-1) + low
    return F.pad(F.pad(inner, (1, 0), value=low), (0, 1), value=high)


def rq_spline(
    inputs: torch.Tensor,
    unnormalized_widths: torch.Tensor,
    unnormalized_heights: torch.Tensor,
    unnormalized_derivatives: torch.Tensor,
    inverse: bool = False,
    left: float = 0.0,
    right: float = 1.0,
    bottom: float = 0.0,
    top: float = 1.0,
    min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
    min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
    min_derivative: float = DEFAULT_MIN_DERIVATIVE,
    slope: bool = False,
) -> tuple[torch.Tensor, ...]:
    r"""nflows' `rational_quadratic_spline` on $[\text{left}, \text{right}] \to
    [\text{bottom}, \text{top}]$, with `slope` also $\frac{d}{dx}\log h'(x)$ (module
    docstring).

    Args:
        inputs: `[...]` inside the interval (of $x$, or of $y$ with `inverse`).
        unnormalized_widths, unnormalized_heights: `[..., K]`.
        unnormalized_derivatives: `[..., K + 1]`.
        inverse: evaluate $h^{-1}$.
        left, right, bottom, top, min_bin_width, min_bin_height, min_derivative: as in nflows.
        slope: also return the slope.

    Returns:
        `(outputs, logabsdet)`, each `[...]`: the map and its log-derivative as nflows returns
        them (differentiable in the inputs and parameters); with `slope`, third, the forward
        map's slope $(\log h')'(x)$ at $x$ = the input (or, with `inverse`, the output),
        detached.
    """
    if ((inputs < left) | (inputs > right)).any():  # one host read
        raise ValueError(f"spline inputs outside [{left}, {right}]")
    cumwidths = _knots(unnormalized_widths, left, right, min_bin_width)
    cumheights = _knots(unnormalized_heights, bottom, top, min_bin_height)
    derivatives = min_derivative + F.softplus(unnormalized_derivatives)
    knots = cumheights if inverse else cumwidths
    idx = torchutils.searchsorted(knots.detach().clone(), inputs.detach())[..., None]
    ends = torch.cat([idx, idx + 1], dim=-1)  # each input's bin edges, one gather per tensor
    x_k, x_k1 = cumwidths.gather(-1, ends).unbind(-1)
    y_k, y_k1 = cumheights.gather(-1, ends).unbind(-1)
    d0, d1 = derivatives.gather(-1, ends).unbind(-1)
    width, height = x_k1 - x_k, y_k1 - y_k
    delta = height / width
    curvature = d0 + d1 - 2 * delta
    if inverse:
        dy = inputs - y_k
        a = dy * curvature + height * (delta - d0)
        b = height * d0 - dy * curvature
        c = -delta * dy
        xi = (2 * c) / (-b - torch.sqrt(b.pow(2) - 4 * a * c))
        outputs = xi * width + x_k
    else:
        xi = (inputs - x_k) / width
        xi_1m = xi * (1 - xi)  # the map and its log-derivative each build their own terms, as
        # nflows writes them, so that gradients sum in nflows' order (training is chaotic)
        outputs = y_k + height * (delta * xi.pow(2) + d0 * xi_1m) / (delta + curvature * xi_1m)
    xi_1m = xi * (1 - xi)
    numerator = d1 * xi.pow(2) + 2 * delta * xi_1m + d0 * (1 - xi).pow(2)
    denominator = delta + curvature * xi_1m
    logabsdet = torch.log(delta.pow(2) * numerator) - 2 * torch.log(denominator)
    logabsdet = -logabsdet if inverse else logabsdet
    if not slope:
        return outputs, logabsdet
    with torch.no_grad():
        d_numerator = 2 * (d1 * xi + delta * (1 - 2 * xi) - d0 * (1 - xi))
        d_denominator = curvature * (1 - 2 * xi)
        log_slope = (d_numerator / numerator - 2 * d_denominator / denominator) / width
    return outputs, logabsdet, log_slope


def unconstrained_rq_spline(
    inputs,
    unnormalized_widths,
    unnormalized_heights,
    unnormalized_derivatives,
    inverse: bool = False,
    tail_bound: float = 1.0,
    slope: bool = False,
):
    r"""nflows' `unconstrained_rational_quadratic_spline` with linear tails: the identity
    (log-derivative 0, slope 0) outside $[-B, B]$,
    [`rq_spline`][boltzflow.flows.spline_slope.rq_spline] inside.

    `unnormalized_derivatives` is `[..., K - 1]` (the inner knots), as nflows takes it. Every
    input is evaluated (those outside at the clamped value, NaN at 0, then replaced), so no
    masked copies are made."""
    bound = float(tail_bound)
    d = F.pad(unnormalized_derivatives, pad=(1, 1), value=IDENTITY_DERIVATIVE)
    inside = (inputs >= -bound) & (inputs <= bound)
    out, lad, *log_slope = rq_spline(  # non-finite inputs pass through, as in nflows
        torch.nan_to_num(inputs, nan=0.0).clamp(-bound, bound),
        unnormalized_widths,
        unnormalized_heights,
        d,
        inverse=inverse,
        left=-bound,
        right=bound,
        bottom=-bound,
        top=bound,
        slope=slope,
    )
    zero = torch.zeros((), dtype=lad.dtype, device=lad.device)
    result = (torch.where(inside, out, inputs), torch.where(inside, lad, zero))
    return result + (log_slope[0] * inside,) if slope else result


def inverse_local(slope: torch.Tensor, log_deriv_inverse: torch.Tensor) -> torch.Tensor:
    r"""$d\lambda^{-1}/dy = -(\log h')'(x)\,e^{\lambda^{-1}}$: the local derivative of an inverse
    spline's log-derivative from the forward slope at $x = h^{-1}(y)$ (module docstring)."""
    return -slope * torch.exp(log_deriv_inverse.detach())
