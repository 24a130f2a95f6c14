r"""The slope of a rational-quadratic spline's log-derivative, in closed form.

A coupling layer's score rule needs $\partial_{z_a} \log h'(z_a)$, the derivative of the
elementwise map's log-derivative with respect to its own input
([`coupling_score`][boltzflow.flows.score_rules.coupling_score]). Autograd gets it by a backward
pass through the spline's graph; for the rational-quadratic splines of nflows (Durkan et al. 2019,
"Neural Spline Flows", Eq. 4–5) it has a closed form that costs less than one spline evaluation.

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

For the inverse map, $\lambda^{-1}(y) = -\log h'(h^{-1}(y))$ and
$d\lambda^{-1}/dy = -(\log h')'(x)\, e^{\lambda^{-1}(y)}$ at $x = h^{-1}(y)$
([`inverse_local`][boltzflow.flows.spline_slope.inverse_local]).
The knots, bin search and parameter transforms are those of nflows, so the bin of every input
is the one nflows evaluated.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from nflows.transforms.splines.rational_quadratic import (
    DEFAULT_MIN_BIN_HEIGHT,
    DEFAULT_MIN_BIN_WIDTH,
    DEFAULT_MIN_DERIVATIVE,
)
from nflows.utils import torchutils
from torch.nn import functional as F

__all__ = ["rq_log_slope", "circular_rq_log_slope", "unconstrained_rq_log_slope", "inverse_local"]


def _knots(unnormalized: torch.Tensor, low: float, high: float, minimum: float) -> torch.Tensor:
    """Knot positions `[..., K + 1]` from unnormalised bin sizes, as nflows computes them."""
    k = unnormalized.shape[-1]
    sizes = minimum + (1 - minimum * k) * F.softmax(unnormalized, dim=-1)
    knots = F.pad(torch.cumsum(sizes, dim=-1), pad=(1, 0), value=0.0)
    knots = (high - low) * knots + low
    knots[..., 0], knots[..., -1] = low, high
    return knots


@torch.no_grad()
def rq_log_slope(
    x: torch.Tensor,
    unnormalized_widths: torch.Tensor,
    unnormalized_heights: torch.Tensor,
    unnormalized_derivatives: torch.Tensor,
    left: float,
    right: float,
    bottom: float,
    top: float,
    min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
    min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
    min_derivative: float = DEFAULT_MIN_DERIVATIVE,
) -> torch.Tensor:
    r"""$\frac{d}{dx}\log h'(x)$ of nflows' `rational_quadratic_spline` on
    $[\text{left}, \text{right}] \to [\text{bottom}, \text{top}]$, detached.

    Args:
        x: forward-direction inputs `[...]` inside the interval.
        unnormalized_widths, unnormalized_heights: `[..., K]`.
        unnormalized_derivatives: `[..., K + 1]`.
        left, right, bottom, top, min_bin_width, min_bin_height, min_derivative: as in nflows.

    Returns:
        `[...]`, same shape as `x`.
    """
    cumwidths = _knots(unnormalized_widths.detach(), left, right, min_bin_width)
    cumheights = _knots(unnormalized_heights.detach(), bottom, top, min_bin_height)
    derivatives = min_derivative + F.softplus(unnormalized_derivatives.detach())
    widths, heights = cumwidths.diff(dim=-1), cumheights.diff(dim=-1)
    x = x.detach()
    idx = torchutils.searchsorted(cumwidths.clone(), x)[..., None]  # it shifts the last knot

    def at(t: torch.Tensor, shift: int = 0) -> torch.Tensor:
        return t[..., shift:].gather(-1, idx)[..., 0]

    width = at(widths)
    delta = at(heights) / width
    d0, d1 = at(derivatives), at(derivatives, 1)
    xi = (x - at(cumwidths)) / width
    curvature = d0 + d1 - 2 * delta
    numerator = d1 * xi**2 + 2 * delta * xi * (1 - xi) + d0 * (1 - xi) ** 2
    denominator = delta + curvature * xi * (1 - xi)
    d_numerator = 2 * (d1 * xi + delta * (1 - 2 * xi) - d0 * (1 - xi))
    d_denominator = curvature * (1 - 2 * xi)
    return (d_numerator / numerator - 2 * d_denominator / denominator) / width


def circular_rq_log_slope(x, unnormalized_widths, unnormalized_heights, unnormalized_derivatives):
    r"""The slope for [`circular_rq_spline`][boltzflow.flows.circular.circular_rq_spline]:
    $[-\pi, \pi]$ onto itself with $d_K = d_0$; `x` already wrapped into $[-\pi, \pi]$."""
    d = unnormalized_derivatives
    return rq_log_slope(
        x,
        unnormalized_widths,
        unnormalized_heights,
        torch.cat([d, d[..., :1]], -1),
        -math.pi,
        math.pi,
        -math.pi,
        math.pi,
    )


def unconstrained_rq_log_slope(
    x, unnormalized_widths, unnormalized_heights, unnormalized_derivatives, tail_bound: float
):
    r"""The slope for nflows' `unconstrained_rational_quadratic_spline` with linear tails:
    0 outside $[-B, B]$ (the identity), the spline's slope inside (boundary derivatives 1).

    `unnormalized_derivatives` is `[..., K - 1]` (the inner knots), as nflows takes it."""
    constant = float(np.log(np.exp(1 - DEFAULT_MIN_DERIVATIVE) - 1))
    d = F.pad(unnormalized_derivatives.detach(), pad=(1, 1), value=constant)
    bound = float(tail_bound)
    inside = (x >= -bound) & (x <= bound)
    slope = rq_log_slope(
        x.detach().clamp(-bound, bound),
        unnormalized_widths,
        unnormalized_heights,
        d,
        -bound,
        bound,
        -bound,
        bound,
    )
    return torch.where(inside, slope, torch.zeros_like(slope))


def inverse_local(slope: torch.Tensor, log_deriv_inverse: torch.Tensor) -> torch.Tensor:
    r"""$d\lambda^{-1}/dy = -(\log h')'(x)\,e^{\lambda^{-1}}$: the local derivative of an inverse
    spline's log-derivative from the forward slope at $x = h^{-1}(y)$ (module docstring)."""
    return -slope * torch.exp(log_deriv_inverse.detach())
