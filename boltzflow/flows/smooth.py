r"""Smooth (C∞) mixture transforms on the interval and the circle.

Köhler, Krämer & Noé 2021, "Smooth Normalizing Flows" (NeurIPS). A flow used as a potential,
for forces or for molecular dynamics, must be C∞: a rational-quadratic spline is only
$C^1$, so its log-density has kinks and its forces jump.

**Smooth step.** With the C∞ ramp $\rho_\alpha(t) = e^{-1/(\alpha t)}$ (`t > 0`, else 0),

$$
\sigma_\alpha(t) = \frac{\rho_\alpha(t)}{\rho_\alpha(t) + \rho_\alpha(1-t)}
= \operatorname{sigmoid}\!\Big(\frac{1}{\alpha}\Big[\frac{1}{1-t} - \frac1t\Big]\Big)
\quad (0 < t < 1),
$$

`0` for `t ≤ 0` and `1` for `t ≥ 1`: a C∞ step whose derivatives of every order vanish at
`t = 0` and `t = 1`. In floating point $\sigma_\alpha$ and all its derivatives are
exactly 0 (or 1) for `t < 1e-4` (`t > 1 - 1e-4`) when $\alpha \le 2$, which is
where the evaluation switches to the constants.

**Components** (per element, `k = 1..K`), with $t_k(x) = a_k (x - b_k) + \tfrac12$,
shift $b_k \in (0, 1)$, scale $a_k \ge 1$ and shape
$\alpha_k \in [0.2, 2]$:

* interval: $g_k(x) = [\sigma(t_k(x)) - \sigma(t_k(0))] / [\sigma(t_k(1)) - \sigma(t_k(0))]$,
  a C∞ increasing bijection of `[0, 1]` (the denominator is at least ½ because
  $a_k \ge 1$);
* circle: $g_k(x) = \sum_{n=-1}^{1} [\sigma(t_k(x+n)) - \sigma(t_k(n))]$, the
  cumulative of the periodised bump $\sum_n a_k\sigma'(t_k(x+n))$; because the bump's
  support $[b_k - \tfrac1{2a_k}, b_k + \tfrac1{2a_k}] \subset (-\tfrac12, \tfrac32)$,
  the three terms are the whole lattice sum on `[0, 1]`, so $g_k(x+1) = g_k(x) + 1$
  with every derivative periodic.

**Mixture.** With softmax weights $w_0, \dots, w_K$ ($w_0$ on the identity) and
a floor `min_weight` $= c$,

$$
f(x) = c\,x + (1-c)\Big[w_0 x + \sum_k w_k g_k(x)\Big], \qquad f'(x) \ge c > 0,
$$

strictly increasing, C∞, `f(0) = 0`, `f(1) = 1`. On the circle a rotation $s$ follows:
$x \mapsto (f(x) + s) \bmod 1$. Parameters per element (`P = 4K + 1`, plus one on the
circle): `K + 1` logits, `K` raw shifts, `K` raw scales, `K` raw shapes, [rotation].

The inverse is computed by [`invert`][boltzflow.flows.root_finding.invert] (bisection-safeguarded
Newton, implicit gradients). Transforms act on angles in $[-\pi, \pi)$ (circle) or on a
given `[low, high]` (interval); [`SigmoidToInterval`][boltzflow.flows.smooth.SigmoidToInterval] maps
Euclidean coordinates into `(0, 1)` and back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from boltzflow.energies.base import as_event_shape
from boltzflow.flows.base import Transform, TransformResult
from boltzflow.flows.root_finding import invert

__all__ = [
    "smooth_step",
    "mixture_num_params",
    "interval_mixture",
    "circle_mixture",
    "mixture_transform",
    "initial_params",
    "SmoothMixture",
    "SigmoidToInterval",
    "PROBIT_SCALE",
]

ALPHA_MIN, ALPHA_MAX = 0.2, 2.0
_EDGE = 1e-4
PROBIT_SCALE = 1.702
"""``sigmoid(PROBIT_SCALE · z) ≈ Φ(z)``: a standard normal becomes nearly uniform on (0, 1)."""


def smooth_step(t: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The C∞ step $\sigma_\alpha(t)$ and its derivative (module docstring).

    Args:
        t: `[...]`; alpha: broadcastable to `t`, in `[0.2, 2]`.

    Returns:
        `(σ(t), σ'(t))`, differentiable to any order.
    """
    inside = (t > _EDGE) & (t < 1 - _EDGE)
    tc = torch.where(inside, t, torch.full_like(t, 0.5))
    inv_t, inv_1mt = 1.0 / tc, 1.0 / (1.0 - tc)
    s = torch.sigmoid((inv_1mt - inv_t) / alpha)
    ds = s * (1.0 - s) * (inv_t * inv_t + inv_1mt * inv_1mt) / alpha
    step = torch.where(inside, s, (t >= 0.5).to(t.dtype))
    return step, torch.where(inside, ds, torch.zeros_like(ds))


def mixture_num_params(num_components: int, circular: bool) -> int:
    """Parameters per element: `4K + 1` on the interval, `4K + 2` on the circle."""
    return 4 * int(num_components) + 1 + int(bool(circular))


def initial_params(num_components: int, circular: bool, identity_logit: float = 3.0):
    r"""Raw parameters `[P]` of a near-identity mixture: identity logit `identity_logit`
    (others 0), shifts evenly spaced at $b_k = (k + \tfrac12)/K$, scale and shape raw 0.

    Evenly spaced equal steps sum to an almost linear map, so the mixture starts close to
    the identity while every component has a gradient."""
    k = int(num_components)
    raw = torch.zeros(mixture_num_params(k, circular), dtype=torch.float64)
    raw[0] = identity_logit
    raw[k + 1 : 2 * k + 1] = torch.logit((torch.arange(k, dtype=torch.float64) + 0.5) / k)
    return raw.to(torch.get_default_dtype())


def _components(params: torch.Tensor, k: int):
    weights = torch.softmax(params[..., : k + 1], -1)
    shift = torch.sigmoid(params[..., k + 1 : 2 * k + 1])
    scale = 1.0 + F.softplus(params[..., 2 * k + 1 : 3 * k + 1])
    alpha = ALPHA_MIN + (ALPHA_MAX - ALPHA_MIN) * torch.sigmoid(params[..., 3 * k + 1 : 4 * k + 1])
    return weights, shift, scale, alpha


def _mix(x, dg, g, weights, min_weight):
    inner = weights[..., 0] * x + (weights[..., 1:] * g).sum(-1)
    dinner = weights[..., 0] + (weights[..., 1:] * dg).sum(-1)
    return min_weight * x + (1 - min_weight) * inner, min_weight + (1 - min_weight) * dinner


def _num_components(params: torch.Tensor, circular: bool) -> int:
    k, rem = divmod(params.shape[-1] - 1 - int(circular), 4)
    if rem or k < 1:
        raise ValueError(f"{params.shape[-1]} parameters per element do not describe a mixture")
    return k


def interval_mixture(x: torch.Tensor, params: torch.Tensor, min_weight: float = 0.01):
    r"""Smooth mixture bijection of `[0, 1]`: `(f(x), f'(x))` for `x [...]`,
    `params [..., 4K + 1]` (module docstring)."""
    k = _num_components(params, False)
    weights, shift, scale, alpha = _components(params, k)
    t = lambda u: scale * (u - shift) + 0.5  # noqa: E731
    s, ds = smooth_step(t(x.unsqueeze(-1)), alpha)
    s0, _ = smooth_step(t(torch.zeros_like(shift)), alpha)
    s1, _ = smooth_step(t(torch.ones_like(shift)), alpha)
    norm = s1 - s0
    return _mix(x, scale * ds / norm, (s - s0) / norm, weights, min_weight)


def circle_mixture(x: torch.Tensor, params: torch.Tensor, min_weight: float = 0.01):
    r"""Smooth mixture diffeomorphism of the circle `[0, 1)` before its rotation:
    `(f(x), f'(x))` with `f(x + 1) = f(x) + 1`; `params [..., 4K + 2]` (the rotation,
    last, is not used here)."""
    k = _num_components(params, True)
    weights, shift, scale, alpha = _components(params, k)
    g, dg = torch.zeros_like(shift), torch.zeros_like(shift)
    u = x.unsqueeze(-1)
    for n in (-1.0, 0.0, 1.0):
        s, ds = smooth_step(scale * (u + n - shift) + 0.5, alpha)
        sn, _ = smooth_step(scale * (n - shift) + 0.5, alpha)
        g, dg = g + (s - sn), dg + scale * ds
    return _mix(x, dg, g, weights, min_weight)


def mixture_transform(
    u: torch.Tensor,
    params: torch.Tensor,
    circular: bool,
    inverse: bool = False,
    min_weight: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Apply the mixture (or its inverse) on the unit interval / unit circle.

    Args:
        u: `[...]` in `[0, 1]` (circle: any real, taken mod 1).
        params: `[..., P]` with `P = mixture_num_params(K, circular)`.
        circular: circle (periodic, with rotation `params[..., -1]`) or interval.
        inverse: evaluate $f^{-1}$ by root finding instead of $f$.
        min_weight: the linear floor `c` (`f' ≥ c`).

    Returns:
        `(v, log|dv/du|)`, both of the shape of `u`.
    """
    if circular:
        fn = lambda x, p: circle_mixture(x, p, min_weight)  # noqa: E731
        rotation = params[..., -1]
        if inverse:
            y = torch.remainder(u - rotation, 1.0)
            x = invert(fn, y, params, 0.0, 1.0)
            return x, -torch.log(fn(x, params)[1])
        fx, dfx = fn(torch.remainder(u, 1.0), params)
        return torch.remainder(fx + rotation, 1.0), torch.log(dfx)
    fn = lambda x, p: interval_mixture(x, p, min_weight)  # noqa: E731
    if inverse:
        x = invert(fn, u, params, 0.0, 1.0)
        return x, -torch.log(fn(x, params)[1])
    fx, dfx = fn(u, params)
    return fx, torch.log(dfx)


class SmoothMixture(Transform):
    r"""Unconditional elementwise smooth mixture, one learnable mixture per feature.

    Interval features map `[low, high]` onto itself through
    $x = \ell + (h-\ell)\,f((z-\ell)/(h-\ell))$; circular features map angles in
    $[-\pi, \pi)$ through the circle mixture and its rotation. `ladj = Σ_i log f_i'`
    (the affine rescalings cancel). `inverse` uses root finding (to float64 precision).

    Args:
        features: number of flattened features.
        num_components: `K` smooth steps per feature.
        circular: `True` (all features are angles), `False`, or a bool mask `[features]`.
        low, high: the interval of non-circular features.
        min_weight: linear floor `c`.
        init_scale: standard deviation of the random initial parameters (0: near-identity).
        generator: for the initial parameters.
    """

    def __init__(
        self,
        features: int,
        num_components: int = 4,
        circular=False,
        low: float = 0.0,
        high: float = 1.0,
        min_weight: float = 0.01,
        init_scale: float = 0.0,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        circ = torch.as_tensor(circular, dtype=torch.bool).reshape(-1).expand(features).clone()
        self.register_buffer("circular", circ)
        self.low, self.high, self.min_weight = float(low), float(high), float(min_weight)
        k = int(num_components)
        raw = init_scale * torch.randn(features, 4 * k + 2, generator=generator)
        raw = raw.to(torch.get_default_dtype()) + initial_params(k, True)
        self.params = nn.Parameter(raw)

    def _map(self, z: torch.Tensor, inverse: bool) -> TransformResult:
        flat = z.reshape(z.shape[0], -1)
        params = self.params.expand(flat.shape[0], *self.params.shape)
        out, lad = flat.clone(), flat.new_zeros(flat.shape)
        per = self.circular
        if bool(per.any()):
            u = (flat[:, per] + math.pi) / (2 * math.pi)
            v, lc = mixture_transform(u, params[:, per], True, inverse, self.min_weight)
            out[:, per], lad[:, per] = 2 * math.pi * v - math.pi, lc
        if not bool(per.all()):
            width = self.high - self.low
            u = (flat[:, ~per] - self.low) / width
            v, li = mixture_transform(u, params[:, ~per, :-1], False, inverse, self.min_weight)
            out[:, ~per], lad[:, ~per] = self.low + width * v, li
        return TransformResult(out.reshape(z.shape), lad.sum(-1))

    def forward(self, z: torch.Tensor) -> TransformResult:
        return self._map(z, inverse=False)

    def inverse(self, x: torch.Tensor) -> TransformResult:
        return self._map(x, inverse=True)


class SigmoidToInterval(Transform):
    r"""Smooth bijection $\mathbb R \to (0, 1)$ on the active features.

    $$
    u = \operatorname{sigmoid}(\lambda z), \qquad
    \mathrm{ladj} = \sum_{i \in A} \big[\log\lambda + \log u_i + \log(1 - u_i)\big],
    \qquad z = \lambda^{-1}\operatorname{logit}(u).
    $$

    With `λ = PROBIT_SCALE` a standard normal becomes nearly uniform (logistic
    approximation of the normal CDF), so smooth mixtures on `(0, 1)` start from a flat
    density. Inactive (periodic) features pass through.

    Args:
        event_shape: shape of one configuration.
        active: optional bool mask of `event_shape` (default: all).
        slope: `λ > 0`.
    """

    def __init__(self, event_shape, active=None, slope: float = PROBIT_SCALE):
        super().__init__()
        shape = as_event_shape(event_shape)
        dim = int(math.prod(shape))
        if active is None:
            active = torch.ones(dim, dtype=torch.bool)
        active = torch.as_tensor(active, dtype=torch.bool).reshape(-1)
        if active.numel() != dim:
            raise ValueError(f"active mask has {active.numel()} entries, expected {dim}")
        if not slope > 0:
            raise ValueError(f"slope must be positive, got {slope}")
        self.register_buffer("active", active)
        self.slope = float(slope)

    def forward(self, z: torch.Tensor) -> TransformResult:
        flat = z.reshape(z.shape[0], -1)
        a = self.slope * flat[:, self.active]
        u = torch.sigmoid(a)
        lad = math.log(self.slope) + F.logsigmoid(a) + F.logsigmoid(-a)
        out = flat.clone()
        out[:, self.active] = u
        return TransformResult(out.reshape(z.shape), lad.sum(-1))

    def inverse(self, x: torch.Tensor) -> TransformResult:
        flat = x.reshape(x.shape[0], -1)
        u = flat[:, self.active]
        log_u, log_1mu = torch.log(u), torch.log1p(-u)
        out = flat.clone()
        out[:, self.active] = (log_u - log_1mu) / self.slope
        lad = -math.log(self.slope) - log_u - log_1mu
        return TransformResult(out.reshape(x.shape), lad.sum(-1))
