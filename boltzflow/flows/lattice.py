r"""Checkerboard coupling flows for scalar fields on a periodic L×L lattice.

Each layer splits the sites into the two colours of a checkerboard. The *frozen* colour is
passed through unchanged and, through a convolutional network with circular padding (so the
layer commutes with lattice translations and respects periodic boundary conditions), sets the
parameters of an elementwise bijection of the *active* colour (Albergo, Kanwar & Shanahan 2019,
Phys. Rev. D 100, 034515):

* affine (real NVP, Dinh et al. 2017): $x_a = z_a e^{s(z_f)} + t(z_f)$,
  $\log|\det| = \sum_{a} s_a$;
* rational-quadratic spline (Durkan et al. 2019) with linear tails outside
  $[-B, B]$: $x_a = h(z_a; \theta(z_f))$, $\log|\det| = \sum_a \log h'(z_a)$.

Layers alternate the colours. Event shape `[L, L]`; the base is a standard normal. The last
convolution of every conditioner starts at zero, so a fresh flow is the identity map.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn
from torch.nn import functional as F

from boltzflow.flows.base import (
    Compose,
    Flow,
    ScoredResult,
    Transform,
    TransformResult,
)
from boltzflow.flows.circular import IDENTITY_DERIVATIVE
from boltzflow.flows.distributions import StandardNormal
from boltzflow.flows.score_rules import coupling_score, scored_input
from boltzflow.flows.spline_slope import unconstrained_rq_spline

__all__ = [
    "GlobalScale",
    "circular_pad",
    "CircularConvNet",
    "checkerboard",
    "CheckerboardAffineCoupling",
    "CheckerboardSplineCoupling",
    "phi4_flow",
]


@functools.lru_cache(maxsize=64)
def _circular_pad_index(shape: tuple[int, ...], r: int, device: torch.device) -> torch.Tensor:
    """Flat indices of the periodically padded lattice `shape` (one or two dimensions)."""
    index = torch.arange(-r, shape[-1] + r) % shape[-1]
    if len(shape) == 2:
        rows = torch.arange(-r, shape[0] + r) % shape[0]
        index = (rows.view(-1, 1) * shape[1] + index.view(1, -1)).flatten()
    return index.to(device)


def circular_pad(x: torch.Tensor, r: int, dims: int = 2) -> torch.Tensor:
    """Pad the last `dims` (1 or 2) dimensions of `x` by `r` sites on each side, periodically.

    The same values as `F.pad(x, (r, r, r, r), mode="circular")` (`(r, r)` with `dims=1`), read
    with one `index_select` of the flattened lattice: its backward is one `index_add`, where the
    padding of `F.pad` is a chain of slice copies whose backward costs several times more. On the
    small lattices of these flows the padding's backward is a sizeable share of a training step,
    and the path-gradient score rules differentiate through it twice per step.

    Args:
        x: `[..., H, W]` (`[..., W]` with `dims=1`).
        r: padding width, `0 <= r <=` the smallest padded size.
        dims: how many trailing dimensions to pad.

    Returns:
        `[..., H + 2r, W + 2r]` (`[..., W + 2r]` with `dims=1`).
    """
    if dims not in (1, 2):
        raise ValueError(f"circular padding pads 1 or 2 trailing dimensions, got dims={dims}")
    shape = tuple(int(n) for n in x.shape[-dims:])
    if not 0 <= r <= min(shape):
        raise ValueError(f"circular padding {r} needs 0 <= r <= {min(shape)} (sizes {shape})")
    index = _circular_pad_index(shape, int(r), x.device)
    flat = x.flatten(-dims).index_select(-1, index)
    return flat.view(*x.shape[:-dims], *(n + 2 * r for n in shape))


def circular_conv2d(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """`conv` (odd square kernel) applied with circular padding
    ([`circular_pad`][boltzflow.flows.lattice.circular_pad]) that keeps the lattice size."""
    r = conv.kernel_size[0] // 2
    return F.conv2d(circular_pad(x, r), conv.weight, conv.bias)


class CircularConvNet(nn.Module):
    """Convolutions with circular padding: `[B, c_in, L, L] -> [B, c_out, L, L]`.

    Args:
        in_channels, out_channels: channel counts.
        hidden: hidden channel widths (a sequence, or an int for one hidden layer).
        kernel_size: odd kernel size (padding keeps the lattice size).
        zero_init: start the last layer at zero (so couplings start at the identity).
        bias_period: if set (a divisor of L), a learnable bias pattern of that period, shape
            `[hidden[0], p, p]`, is added after the first convolution: positional features
            (equivalent to one-hot channels of `x mod p`) that keep equivariance under
            translations by multiples of `p`.
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        hidden=(8, 8),
        kernel_size=3,
        zero_init=True,
        bias_period=None,
    ):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        widths = [in_channels, *([hidden] if isinstance(hidden, int) else hidden), out_channels]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers.append(
                nn.Conv2d(a, b, kernel_size, padding=kernel_size // 2, padding_mode="circular")
            )
            if i < len(widths) - 2:
                layers.append(nn.LeakyReLU())
        self.net = nn.Sequential(*layers)
        if zero_init:
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)
        self.bias_period = bias_period
        if bias_period is not None:
            self.periodic_bias = nn.Parameter(torch.zeros(widths[1], bias_period, bias_period))

    def features(self, x):
        """All layers but the last: `[B, c_in, L, L] -> [B, hidden[-1], L, L]`."""
        h = circular_conv2d(x, self.net[0])
        if self.bias_period is not None:
            reps = (h.shape[-2] // self.bias_period, h.shape[-1] // self.bias_period)
            h = h + self.periodic_bias.repeat(1, *reps)
        for layer in self.net[1:-1]:
            h = circular_conv2d(h, layer) if isinstance(layer, nn.Conv2d) else layer(h)
        return h

    def forward(self, x):
        return circular_conv2d(self.features(x), self.net[-1])


class GlobalScale(Transform):
    r"""One learnable scale for the whole field: $x = e^{a} z$, $\log|\det| = a\,V$.

    Placed first, it lets a flow with identity tails (splines beyond `tail_bound`) shrink the
    base before the couplings, so rare base draws far out are not mapped to huge fields.
    """

    def __init__(self, scale: float = 1.0):
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))

    def forward(self, z):
        n = z[0].numel()
        return TransformResult(z * torch.exp(self.log_scale), (n * self.log_scale).expand(len(z)))

    def forward_and_score(self, z, score):
        r"""Score rule: $\nabla_x \log q = e^{-a}\,\nabla_z \log q$ (constant log-det)."""
        x, ladj = self.forward(z)
        return ScoredResult(x, ladj, score * torch.exp(-self.log_scale.detach()))

    def inverse(self, x):
        n = x[0].numel()
        return TransformResult(x * torch.exp(-self.log_scale), (-n * self.log_scale).expand(len(x)))


def checkerboard(L: int, parity: int) -> torch.Tensor:
    """Bool mask `[L, L]`, True on sites with `(x0 + x1) % 2 == parity` (the active sites)."""
    idx = torch.arange(L)
    return (idx.view(-1, 1) + idx.view(1, -1)) % 2 == parity


class _Checkerboard(Transform):
    """Shared plumbing: the active mask (buffer) and the conditioner on the frozen sites."""

    def __init__(self, L, parity, out_per_site, hidden, kernel_size):
        super().__init__()
        self.register_buffer("active", checkerboard(L, parity), persistent=False)
        self.net = CircularConvNet(1, out_per_site, hidden, kernel_size)

    def _params(self, z):
        frozen = torch.where(self.active, torch.zeros_like(z), z)
        p = self.net(frozen.unsqueeze(1))  # [B, C, L, L]
        return p[:, :, self.active].transpose(1, 2)  # [B, n_active, C]

    def _transform(self, z, inverse, log_derivs=False):
        raise NotImplementedError

    def forward(self, z):
        return self._transform(z, inverse=False)

    def forward_and_score(self, z, score):
        """Score rule of a checkerboard coupling
        ([`coupling_score`][boltzflow.flows.score_rules.coupling_score])."""
        with torch.enable_grad():
            z = scored_input(z)
            za, ya, lad, local = self._transform(z, inverse=False, log_derivs=True)
            new = coupling_score(z, za, ya, lad, score, self._gather, self._scatter, local)
        return ScoredResult(self._scatter(z, ya), lad.sum(-1), new)

    def inverse(self, x):
        return self._transform(x, inverse=True)

    def _gather(self, z):
        return z[:, self.active]

    def _scatter(self, z, values):
        out = z.clone()
        out[:, self.active] = values
        return out


class CheckerboardAffineCoupling(_Checkerboard):
    r"""Affine checkerboard coupling $x_a = z_a e^{s} + t$, with
    $s = c\tanh(\tilde s/c)$ bounded by `scale_bound` c for stability."""

    def __init__(self, L, parity, hidden=(8, 8), kernel_size=3, scale_bound=3.0):
        super().__init__(L, parity, 2, hidden, kernel_size)
        self.scale_bound = float(scale_bound)

    def _transform(self, z, inverse, log_derivs=False):
        p = self._params(z)
        c = self.scale_bound
        s, t = c * torch.tanh(p[..., 0] / c), p[..., 1]
        za = z[:, self.active]
        ya = (za - t) * torch.exp(-s) if inverse else za * torch.exp(s) + t
        if log_derivs:  # (with ∂λ/∂z_a = 0: the log-derivative s does not depend on z_a)
            return za, ya, -s if inverse else s, torch.zeros_like(za)
        ladj = -s.sum(-1) if inverse else s.sum(-1)
        return TransformResult(self._scatter(z, ya), ladj)


class CheckerboardSplineCoupling(_Checkerboard):
    """Rational-quadratic spline checkerboard coupling with `num_bins` bins on
    `[-tail_bound, tail_bound]` and identity (linear) tails outside."""

    def __init__(self, L, parity, hidden=(8, 8), kernel_size=3, num_bins=8, tail_bound=4.0):
        super().__init__(L, parity, 3 * num_bins - 1, hidden, kernel_size)
        self.num_bins = int(num_bins)
        self.tail_bound = float(tail_bound)
        with torch.no_grad():  # identity start: equal bins, unit interior derivatives
            self.net.net[-1].bias[2 * num_bins :] = IDENTITY_DERIVATIVE

    def _transform(self, z, inverse, log_derivs=False):
        p = self._params(z)
        K = self.num_bins
        za = z[:, self.active]
        spline = (p[..., :K], p[..., K : 2 * K], p[..., 2 * K :])
        # with `log_derivs`, ∂λ/∂z_a in closed form (forward direction) too
        ya, lad, *slope = unconstrained_rq_spline(
            za, *spline, inverse, self.tail_bound, slope=log_derivs
        )
        if log_derivs:
            return za, ya, lad, slope[0]
        return TransformResult(self._scatter(z, ya), lad.sum(-1))


def phi4_flow(
    target=None,
    *,
    L: int | None = None,
    num_layers: int = 16,
    coupling: str = "affine",
    hidden=(8, 8),
    kernel_size: int = 3,
    num_bins: int = 8,
    tail_bound: float = 4.0,
    scale_bound: float = 3.0,
    init_scale: float = 1.0,
    seed: int | None = None,
) -> Flow:
    """Checkerboard coupling flow for a scalar field `[L, L]` (standard normal base).

    Args:
        target: a [`Phi4`][boltzflow.energies.lattice.Phi4] (its `L` is used), or `None`
            with `L` given.
        num_layers: coupling layers (alternating checkerboard colours).
        coupling: `"affine"` or `"spline"`.
        hidden, kernel_size: conditioner channel widths and kernel size.
        num_bins, tail_bound: spline settings; scale_bound: affine log-scale bound.
        init_scale: initial value of a learnable
            [`GlobalScale`][boltzflow.flows.lattice.GlobalScale] applied first (1 is the identity; a
            value near the field's width keeps the spline tails out of reach).
        seed: seeds the parameter initialisation (the global RNG is left untouched).
    """
    L = int(L if L is not None else target.event_shape[-1])
    if coupling not in ("affine", "spline"):
        raise ValueError(f"coupling must be 'affine' or 'spline', got {coupling!r}")
    hidden = [int(h) for h in ([hidden] if isinstance(hidden, int) else hidden)]
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(int(seed))
        layers = [GlobalScale(init_scale)]
        for i in range(int(num_layers)):
            if coupling == "affine":
                layers.append(
                    CheckerboardAffineCoupling(L, i % 2, hidden, kernel_size, scale_bound)
                )
            else:
                layers.append(
                    CheckerboardSplineCoupling(L, i % 2, hidden, kernel_size, num_bins, tail_bound)
                )
    return Flow(StandardNormal((L, L)), Compose(layers))
