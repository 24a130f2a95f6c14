r"""Plaquette-tree layers for 2-D U(1) lattice gauge theory (links `[B, 2, L, L]`, see
[`boltzflow.flows.lattice_gauge`][boltzflow.flows.lattice_gauge]).

**Plaquette-tree layer** (`PlaquetteTreeSpline`, specific to two dimensions, where the plaquettes
are independent coordinates up to $\sum_P \theta_P = 0$): every plaquette but one *sink* $s$ is
mapped by one shared circular spline, $\theta_P \to h(\theta_P)$, and the changes
$\delta_P = h(\theta_P) - \theta_P$ are carried to the links along the strings of a maximal tree
(axial gauge): $\delta\theta_0(x) = -\sum_{k<x_1}\delta(x_0, k)$,
$\delta\theta_1(x_0, L-1) = \sum_{j<x_0}\sum_k \delta(j, k)$, all other links fixed. Then every
non-sink plaquette becomes $h(\theta_P)$ and the sink absorbs $-\sum_P\delta_P$. By Sylvester's
determinant identity $\log|\det| = \sum_{P\ne s}\log h'(\theta_P)$; the update depends on plaquettes
only, so the layer is gauge equivariant. Under the uniform base the non-sink plaquettes are i.i.d.
uniform, so one spline brings them to the single-plaquette marginal of the target, leaving only the
sink's weight $e^{\beta\cos\theta_s}$ (ESS ≈ $I_0(\beta)^2/I_0(2\beta)$ for large V). `SinkSpline`
then gives the sink the same marginal at the cost of shifts of order $\pi/V$ elsewhere, so with the
spline fitted to $e^{\beta\cos\theta}$ (`SharedCircularSplines.fit_von_mises`) the two layers are
close to exact for any V; masked couplings can follow. It breaks translation invariance (the sink
and the tree are fixed), which the target does not need.

Both layers have fast path-gradient score rules: their Jacobian is the identity plus a low-rank
map through the plaquettes, whose inverse transpose is diagonal in plaquette space
(`_tree_score`).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from boltzflow.energies.lattice import plaquettes, wrap_angle
from boltzflow.flows.base import ScoredResult, Transform, TransformResult
from boltzflow.flows.circular import IDENTITY_DERIVATIVE, circular_rq_spline

__all__ = [
    "tree_link_shift",
    "plaquette_adjoint",
    "tree_shift_adjoint",
    "SharedCircularSplines",
    "PlaquetteTreeSpline",
    "SinkSpline",
]


class _ByTransform(Transform):
    """`forward` and `inverse` through the subclass's `_transform(links, inverse)`."""

    def forward(self, z):
        return self._transform(z, inverse=False)

    def inverse(self, x):
        return self._transform(x, inverse=True)


def tree_link_shift(delta: torch.Tensor) -> torch.Tensor:
    r"""Link changes `[B, 2, L, L]` whose plaquette changes are `delta [B, L, L]`.

    `delta` must sum to zero over the lattice (the sink carries the balance). Only the links
    of the maximal tree change: $\delta\theta_0(x) = -\sum_{k<x_1}\delta(x_0, k)$ and
    $\delta\theta_1(x_0, L-1) = \sum_{j<x_0}\sum_k\delta(j, k)$ (module docstring).
    """
    L = delta.shape[-1]
    cs = torch.cumsum(delta, dim=2)
    d0 = torch.cat([torch.zeros_like(delta[:, :, :1]), -cs[:, :, :-1]], dim=2)
    rows = delta.sum(dim=2)
    col = torch.cumsum(rows, dim=1) - rows  # exclusive prefix sums over x0
    d1 = torch.cat([torch.zeros_like(delta[:, :, : L - 1]), col.unsqueeze(-1)], dim=2)
    return torch.stack([d0, d1], dim=1)


def plaquette_adjoint(a: torch.Tensor) -> torch.Tensor:
    r"""$A^\top a$ for the linear plaquette map $A$ of
    [`plaquettes`][boltzflow.energies.lattice.plaquettes]: `[B, L, L] -> [B, 2, L, L]`,
    $(A^\top a)_0(x) = a(x) - a(x - \hat1)$, $(A^\top a)_1(x) = a(x - \hat0) - a(x)$."""
    return torch.stack([a - torch.roll(a, 1, 2), torch.roll(a, 1, 1) - a], dim=1)


def tree_shift_adjoint(g: torch.Tensor) -> torch.Tensor:
    r"""$S^\top g$ for the linear map $S$ of `tree_link_shift`: `[B, 2, L, L] -> [B, L, L]`,
    $(S^\top g)(x_0, j) = -\sum_{k>j} g_0(x_0, k) + \sum_{x_0' > x_0} g_1(x_0', L-1)$."""
    g0, g1 = g[:, 0], g[:, 1, :, -1]
    return (-_sum_after(g0, 2) + _sum_after(g1, 1).unsqueeze(-1)).contiguous()


def _sum_after(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Exclusive suffix sums along `dim`: entry k holds the sum of the entries after k."""
    return torch.flip(torch.cumsum(torch.flip(t, (dim,)), dim), (dim,)) - t


def _tree_score(score, lad, slope, project) -> torch.Tensor:
    r"""$G_y = J^{-\top}(G_z - \nabla_z l)$ of a layer $y = z + S\,\Pi\,\delta(Az)$ that moves
    plaquettes by $\delta_P = h(\theta_P) - \theta_P$ where its spline acts and spreads the
    balance with a linear map $\Pi$ onto zero-sum changes (`PlaquetteTreeSpline`, `SinkSpline`).

    With $D = \mathrm{diag}(h' - 1)$ (zero where no spline acts), $J = I + S \Pi D A$. Since
    $A S \Pi = \Pi$, $w = \Pi^\top S^\top u$ solves $w + \Pi^\top D w = \Pi^\top S^\top v$,
    $v = G_z - A^\top \nabla_\theta l$; for both layers $\Pi^\top D w = D w$, so
    $w = \Pi^\top S^\top v / h'$ and $u = v - A^\top(D w)$: one spline pass and a few linear
    maps instead of the drop-in's inverse pass and its vector-Jacobian product.

    Args:
        score: $G_z$, `[B, 2, L, L]`.
        lad: $\log h'$ as a plaquette field `[B, L, L]`, zero where no spline acts.
        slope: $\nabla_\theta l$ on the plaquettes, `[B, L, L]`.
        project: $r \mapsto \Pi^\top r$ on plaquette fields (kept where $D$ acts).
    """
    v = score - plaquette_adjoint(slope)
    w = project(tree_shift_adjoint(v)) * torch.exp(-lad)
    return (v - plaquette_adjoint(torch.expm1(lad) * w)).detach()


class SharedCircularSplines(nn.Module):
    r"""A composition of `num_splines` circular splines, each shared by all inputs.

    The stored parameters are multiplied by `param_scale`: with Adam this multiplies their learning
    rate, which these few shared parameters need to follow a sharply peaked marginal (e.g.
    $e^{\beta\cos\theta}$ at β = 6) as fast as the conditioners learn.
    """

    def __init__(self, num_bins: int = 16, num_splines: int = 2, param_scale: float = 10.0):
        super().__init__()
        self.param_scale = float(param_scale)
        init = torch.zeros(num_splines, 3, num_bins)
        init[:, 2] = IDENTITY_DERIVATIVE / self.param_scale
        self.params = nn.Parameter(init)

    def fit_von_mises(
        self, kappa: float, steps: int = 3000, n: int = 4096, lr: float = 1e-2, seed: int = 0
    ) -> float:
        r"""Fit $h$ so that it maps a uniform angle to the von Mises law
        $p_1(\theta) = e^{\kappa\cos\theta}/(2\pi I_0(\kappa))$.

        Minimises the one-dimensional reverse KL
        $\mathbb E_{z\sim U}[-\log h'(z) - \kappa\cos h(z)] + \log I_0(\kappa)$ with Adam on
        stratified uniform draws, then a cosine-decayed learning rate. For `PlaquetteTreeSpline`
        under the uniform base, the lattice reverse KL of the layer is exactly `V - 1` times this
        one-dimensional KL plus the sink's term, so this is the layer's own objective, solved
        without lattice samples. Returns the fitted 1-D KL (nats), by the midpoint rule on 2¹⁶
        points (converged to about 10⁻⁶ nats).
        """
        gen = torch.Generator(device=self.params.device).manual_seed(int(seed))
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, int(steps))
        log_i0 = math.log(torch.special.i0e(torch.tensor(float(kappa))).item()) + float(kappa)
        dtype, dev = self.params.dtype, self.params.device

        def kl(z: torch.Tensor) -> torch.Tensor:
            """1-D KL estimated at uniform angles `z`."""
            x, lad = self(z)
            return (-lad - kappa * torch.cos(x)).mean() + log_i0

        grid = (torch.arange(n, device=dev) + 0.5) / n
        for _ in range(int(steps)):
            jitter = torch.rand(n, generator=gen, device=dev) / n  # stratified draws
            loss = kl(((grid + jitter - 0.5 / n) * 2.0 - 1.0).to(dtype) * math.pi)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        with torch.no_grad():  # midpoint rule: spectrally accurate for this periodic integrand
            z = torch.arange(1 << 16, dtype=dtype, device=dev)
            return float(kl(((z + 0.5) / (1 << 15) - 1.0) * math.pi))

    def forward(self, theta: torch.Tensor, inverse: bool = False, slope: bool = False):
        r"""`(h(θ), log h'(θ))` elementwise (or the inverse map and its log-derivative).

        With `slope` (forward map only), also $\frac{d}{d\theta}\log h'(\theta)$, detached: for
        $h = h_n \circ \dots \circ h_1$ with $\theta_i = h_i(\theta_{i-1})$ and
        $l_i = \log h_i'(\theta_{i-1})$, it is $\sum_i (\log h_i')'(\theta_{i-1})\,
        e^{\sum_{j<i} l_j}$ (each spline's closed-form slope,
        [`rq_spline`][boltzflow.flows.spline_slope.rq_spline]).
        """
        if slope and inverse:
            raise ValueError("the slope is that of the forward map")
        p = self.params * self.param_scale
        lad = torch.zeros_like(theta)
        total_slope = torch.zeros_like(theta) if slope else None
        order = range(p.shape[0] - 1, -1, -1) if inverse else range(p.shape[0])
        shape = (*theta.shape, p.shape[-1])
        for i in order:
            w, h, d = (q.expand(shape) for q in p[i])
            theta, l, *s = circular_rq_spline(theta, w, h, d, inverse=inverse, slope=slope)
            if slope:
                total_slope = total_slope + s[0] * torch.exp(lad.detach())
            lad = lad + l
        return (theta, lad, total_slope) if slope else (theta, lad)


class PlaquetteTreeSpline(_ByTransform):
    """All plaquettes but the sink `(L-1, L-1)` through shared circular splines, links moved
    along a maximal tree (module docstring). Starts as the identity.

    Args:
        L: lattice extent (any L ≥ 2).
        num_bins, num_splines, param_scale: see `SharedCircularSplines`.
    """

    def __init__(self, L: int, num_bins: int = 16, num_splines: int = 2, param_scale=10.0):
        super().__init__()
        self.splines = SharedCircularSplines(num_bins, num_splines, param_scale)
        keep = torch.ones(L, L)
        keep[-1, -1] = 0.0
        self.register_buffer("keep", keep.to(torch.get_default_dtype()), persistent=False)

    def forward_and_score(self, z, score):
        r"""Score rule (`_tree_score`): $\Pi\delta = \delta - (\sum_P \delta_P)\,e_s$, so
        $\Pi^\top r = r - r_s$, and $(S^\top v)_s = 0$ (no tree string starts past the
        sink), so $\Pi^\top S^\top v = S^\top v$."""
        plaq = wrap_angle(plaquettes(z))
        new, lad, slope = self.splines(plaq, slope=True)
        lad, slope = lad * self.keep, slope * self.keep
        y, ladj = self._from_spline(z, plaq, new, lad)

        def project(r):
            return r

        return ScoredResult(y, ladj, _tree_score(score, lad.detach(), slope, project))

    def _transform(self, links, inverse):
        plaq = wrap_angle(plaquettes(links))
        new, lad = self.splines(plaq, inverse)
        return self._from_spline(links, plaq, new, lad * self.keep)

    def _from_spline(self, links, plaq, new, lad):
        delta = (new - plaq) * self.keep
        sink = -delta.sum(dim=(1, 2))
        delta = delta + (1.0 - self.keep) * sink.view(-1, 1, 1)
        out = wrap_angle(links + tree_link_shift(delta))
        return TransformResult(out, lad.sum(dim=(1, 2)))


class SinkSpline(_ByTransform):
    r"""The sink plaquette through shared circular splines, its change spread over all others.

    $\theta_s \to h(\theta_s)$ and every other plaquette moves by $-[h(\theta_s) - \theta_s]/(V-1)$
    (links along the maximal tree), so the plaquette sum is kept. In the coordinates
    $\{\theta_P\}_{P\ne s}$ the Jacobian is $I + \tfrac{h'-1}{V-1}\mathbf 1\mathbf 1^\top$, whose
    determinant is $h'(\theta_s)$. After `PlaquetteTreeSpline` this gives the sink the marginal of
    the others at a cost of shifts of order $\pi/V$ elsewhere.
    """

    def __init__(self, L: int, num_bins: int = 16, num_splines: int = 2, param_scale=10.0):
        super().__init__()
        self.splines = SharedCircularSplines(num_bins, num_splines, param_scale)

    def forward_and_score(self, z, score):
        r"""Score rule (`_tree_score`): the change is $d\,c$ with $c_s = 1$ and
        $c_P = -1/(V-1)$ elsewhere, so $\Pi^\top r = (c\cdot r)\,e_s$."""
        s = wrap_angle(plaquettes(z))[:, -1, -1]
        new, lad, slope = self.splines(s, slope=True)
        y = self._from_spline(z, s, new)
        at_sink = torch.zeros_like(z[:, 0])
        at_sink[:, -1, -1] = 1.0
        V = at_sink[0].numel()

        def project(r):
            rest = r.sum(dim=(1, 2), keepdim=True) - r[:, -1:, -1:]
            return (r[:, -1:, -1:] - rest / (V - 1)) * at_sink

        field = lad.detach().view(-1, 1, 1) * at_sink
        score_y = _tree_score(score, field, slope.view(-1, 1, 1) * at_sink, project)
        return ScoredResult(y, lad, score_y)

    def _transform(self, links, inverse):
        s = wrap_angle(plaquettes(links))[:, -1, -1]
        new, lad = self.splines(s, inverse)
        return TransformResult(self._from_spline(links, s, new), lad)

    def _from_spline(self, links, s, new):
        d = new - s
        V = links.shape[-1] * links.shape[-2]
        delta = (-d / (V - 1)).view(-1, 1, 1).expand(-1, *links.shape[-2:])
        sink = torch.zeros_like(delta)
        sink[:, -1, -1] = d * V / (V - 1)  # Σ delta = 0 to rounding, in the input's dtype
        return wrap_angle(links + tree_link_shift(delta + sink))


@functools.lru_cache(maxsize=16)
def _von_mises_splines(kappa: float, dtype: torch.dtype) -> dict:
    """State of a default `SharedCircularSplines` fitted to von Mises(κ), cached per κ."""
    splines = SharedCircularSplines().to(dtype)
    splines.fit_von_mises(kappa)
    return {k: v.detach().clone() for k, v in splines.state_dict().items()}
