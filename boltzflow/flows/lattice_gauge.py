r"""Gauge-equivariant coupling flows for 2-D U(1) lattice gauge theory.

Links are angles `θ[μ, x0, x1]` (event shape `[2, L, L]`), with plaquettes
$\theta_P(x) = \theta_0(x) + \theta_1(x+\hat0) - \theta_0(x+\hat1) - \theta_1(x)$ (see
[`boltzflow.energies.lattice`][boltzflow.energies.lattice]). A *masked plaquette coupling* (Kanwar
et al. 2020, "Equivariant flow-based sampling for lattice gauge theory", Phys. Rev. Lett. 125,
121601) updates a stripe of links of one direction μ, those with $x_\nu \equiv o \pmod 4$ (ν ≠ μ,
offset o):

* the *active* plaquettes $P(x)$, $x_\nu \equiv o$, contain exactly one active link each, entering
  with sign $\sigma_\mu = (+1, -1)$;
* the *frozen* plaquettes, $x_\nu \equiv o+1, o+2$, contain no active link; their
  $(\cos\theta_P, \sin\theta_P)$ feed a circularly padded CNN that sets the parameters of a circular
  rational-quadratic spline $h$ (Rezende et al. 2020) per active plaquette;
* each active link moves by $\sigma_\mu\,[h(\theta_P) - \theta_P]$, so the active plaquette becomes
  $h(\theta_P)$ (the remaining, *passive* plaquettes follow).

With `loops=True` the conditioner also sees, at each active plaquette $P(x)$, the 2×1 Wilson loop
$R(x) = \theta_P(x) + \theta_P(x-\hat\nu)$ formed with its passive neighbour. The active link enters
the two plaquettes with opposite signs, so $R$ is unchanged by the layer (and gauge invariant): the
spline can then shape the active plaquette *given* the sum it shares with the plaquette that absorbs
the change, i.e. move the pair along $\theta_a + \theta_p = R$ towards the target's
$\propto e^{\beta\cos\theta_a + \beta\cos(R-\theta_a)}$ (frozen 1×2 loops as extra conditioner
inputs are also used by Boyda et al. 2021, Phys. Rev. D 103, 074504).

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

Because the active links sit in distinct active plaquettes and the conditioner sees only frozen
(unchanged) plaquettes, the Jacobian is triangular with
$\log|\det| = \sum_{P\ \text{active}} \log h'(\theta_P)$. Plaquettes are gauge invariant and the
update adds a gauge-invariant angle to each link, so $f(g\cdot\theta) = g\cdot f(\theta)$ for every
gauge transformation g; with the gauge-invariant uniform (Haar) base the flow density $q$ is gauge
invariant. Layers cycle through μ ∈ {0, 1} and the four offsets; L must be a multiple of 4. All
outputs are wrapped to $[-\pi, \pi)$ and every map is periodic in its inputs.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn
from torch.nn import functional as F

from boltzflow.energies.lattice import plaquettes, wrap_angle
from boltzflow.flows.base import Compose, Flow, Transform, TransformResult
from boltzflow.flows.circular import IDENTITY_DERIVATIVE, circular_rq_spline
from boltzflow.flows.distributions import UniformTorus
from boltzflow.flows.lattice import CircularConvNet
from boltzflow.flows.score_rules import coupling_rule

__all__ = [
    "plaquette_masks",
    "GaugeEquivariantCoupling",
    "tree_link_shift",
    "SharedCircularSplines",
    "PlaquetteTreeSpline",
    "SinkSpline",
    "u1_gauge_flow",
]


def plaquette_masks(L: int, mu: int, offset: int) -> tuple[torch.Tensor, ...]:
    """Bool masks `(active_links [2, L, L], active_plaq [L, L], frozen_plaq [L, L])`.

    Links of direction `mu` with `x_ν ≡ offset (mod 4)` are active; plaquettes are indexed by their
    corner `x`.
    """
    if L % 4 != 0:
        raise ValueError(f"gauge-equivariant couplings need L divisible by 4, got {L}")
    if mu not in (0, 1):
        raise ValueError(f"mu must be 0 or 1, got {mu}")
    nu = 1 - mu
    coord = (torch.arange(L).view(-1, 1) if nu == 0 else torch.arange(L).view(1, -1)).expand(L, L)
    r = (coord - offset) % 4
    active_plaq = r == 0
    frozen_plaq = (r == 1) | (r == 2)
    links = torch.zeros(2, L, L, dtype=torch.bool)
    links[mu] = active_plaq
    return links, active_plaq, frozen_plaq


class _ByTransform(Transform):
    """`forward` and `inverse` through the subclass's `_transform(links, inverse)`."""

    def forward(self, z):
        return self._transform(z, inverse=False)

    def inverse(self, x):
        return self._transform(x, inverse=True)


class GaugeEquivariantCoupling(_ByTransform):
    """One masked plaquette coupling (module docstring) with a circular RQ spline.

    Args:
        L: lattice extent (multiple of 4).
        mu, offset: direction of the updated links and stripe offset (mod 4).
        num_bins: spline bins K (`3K` parameters per active plaquette).
        hidden, kernel_size: conditioner CNN widths and kernel size.
        positional: add a learnable period-4 bias pattern to the conditioner (positional
            features, see [`CircularConvNet`][boltzflow.flows.lattice.CircularConvNet]). The
            masks already single out the sites mod 4, so this costs no symmetry: the flow stays
            gauge equivariant and equivariant under translations by multiples of 4.
        loops: also condition on the 2×1 loops $R$ (module docstring).

    The active plaquettes form the stripes `x_ν ∈ {offset, offset + 4, …}`; they are read with
    `index_select` and the conditioner's last convolution runs with stride 4 across the stripes, so
    only the parameters that are used get computed.
    """

    def __init__(
        self, L, mu, offset, num_bins=8, hidden=(8, 8), kernel_size=3, positional=False, loops=False
    ):
        super().__init__()
        _, active, frozen = plaquette_masks(L, mu, offset)
        dtype = torch.get_default_dtype()
        self.register_buffer("frozen_plaq", frozen.to(dtype), persistent=False)
        self.register_buffer("active_plaq", active.to(dtype), persistent=False)
        self.loops = bool(loops)
        self.register_buffer("rows", torch.arange(offset % 4, L, 4), persistent=False)
        self.mu, self.nu, self.offset = int(mu), 1 - int(mu), int(offset) % 4
        self.sign = 1.0 if mu == 0 else -1.0
        self.num_bins = int(num_bins)
        period = 4 if positional else None
        n_in = 4 if self.loops else 2
        self.net = CircularConvNet(n_in, 3 * self.num_bins, hidden, kernel_size, bias_period=period)
        with torch.no_grad():  # identity start
            self.net.net[-1].bias[2 * self.num_bins :] = IDENTITY_DERIVATIVE

    def _spline_params(self, feats):
        """Conditioner output at the active stripes, `[B, *stripe_shape, 3K]`."""
        h = self.net.features(feats)
        last = self.net.net[-1]
        r = last.kernel_size[0] // 2
        h = torch.roll(h, -self.offset, 2 + self.nu)  # active stripes to x_ν ≡ 0 (mod 4)
        stride = (4, 1) if self.nu == 0 else (1, 4)
        p = F.conv2d(F.pad(h, (r, r, r, r), mode="circular"), last.weight, last.bias, stride)
        return p.permute(0, 2, 3, 1)

    def _transform(self, links, inverse, per_site=False, slope=False):
        plaq = wrap_angle(plaquettes(links))
        feats = torch.stack([torch.cos(plaq), torch.sin(plaq)], dim=1) * self.frozen_plaq
        if self.loops:  # R(x) = θ_P(x) + θ_P(x - ν̂) at the active plaquettes
            loop = plaq + torch.roll(plaq, 1, 1 + self.nu)
            loop = torch.stack([torch.cos(loop), torch.sin(loop)], dim=1) * self.active_plaq
            feats = torch.cat([feats, loop], dim=1)
        p, K = self._spline_params(feats), self.num_bins
        spline = (p[..., :K], p[..., K : 2 * K], p[..., 2 * K :])
        pa = plaq.index_select(1 + self.nu, self.rows)  # [B, L/4, L] or [B, L, L/4]
        # with `slope`, d log h'/dθ_P at the active plaquettes too (forward direction)
        new, lad, *slopes = circular_rq_spline(pa, *spline, inverse=inverse, slope=slope)
        moved = links[:, self.mu].index_add(1 + self.nu, self.rows, self.sign * (new - pa))
        out = [links[:, 0], wrap_angle(moved)] if self.mu == 1 else [wrap_angle(moved), links[:, 1]]
        result = TransformResult(torch.stack(out, dim=1), lad if per_site else lad.sum(dim=(1, 2)))
        return (result, slopes[0]) if slope else result

    def _take(self, links):
        return links[:, self.mu].index_select(1 + self.nu, self.rows)

    def _put(self, links, values):
        moved = links[:, self.mu].index_copy(1 + self.nu, self.rows, values)
        return torch.stack([links[:, 0], moved] if self.mu else [moved, links[:, 1]], dim=1)

    def forward_and_score(self, z, score):
        """Score rule: [`coupling_rule`][boltzflow.flows.score_rules.coupling_rule] on the
        active links."""
        return coupling_rule(z, score, self._scored, self._take, self._put)

    def _scored(self, z):  # the active links enter as their own tensor za
        za = self._take(z)
        (y, lad), slope = self._transform(self._put(z, za), False, per_site=True, slope=True)
        return za, y, self._take(y), lad, self.sign * slope  # θ_P moves by σ per unit of za


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

    def forward(self, theta: torch.Tensor, inverse: bool = False):
        """`(h(θ), log h'(θ))` elementwise (or the inverse map and its log-derivative)."""
        p = self.params * self.param_scale
        lad = torch.zeros_like(theta)
        order = range(p.shape[0] - 1, -1, -1) if inverse else range(p.shape[0])
        shape = (*theta.shape, p.shape[-1])
        for i in order:
            w, h, d = (q.expand(shape) for q in p[i])
            theta, l = circular_rq_spline(theta, w, h, d, inverse=inverse)
            lad = lad + l
        return theta, lad


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

    def _transform(self, links, inverse):
        plaq = wrap_angle(plaquettes(links))
        new, lad = self.splines(plaq, inverse)
        delta = (new - plaq) * self.keep
        sink = -delta.sum(dim=(1, 2))
        delta = delta + (1.0 - self.keep) * sink.view(-1, 1, 1)
        out = wrap_angle(links + tree_link_shift(delta))
        return TransformResult(out, (lad * self.keep).sum(dim=(1, 2)))


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

    def _transform(self, links, inverse):
        s = wrap_angle(plaquettes(links))[:, -1, -1]
        new, lad = self.splines(s, inverse)
        d = new - s
        V = links.shape[-1] * links.shape[-2]
        delta = (-d / (V - 1)).view(-1, 1, 1).expand(-1, *links.shape[-2:])
        sink = torch.zeros_like(delta)
        sink[:, -1, -1] = d * V / (V - 1)  # Σ delta = 0 to rounding, in the input's dtype
        return TransformResult(wrap_angle(links + tree_link_shift(delta + sink)), lad)


@functools.lru_cache(maxsize=16)
def _von_mises_splines(kappa: float, dtype: torch.dtype) -> dict:
    """State of a default `SharedCircularSplines` fitted to von Mises(κ), cached per κ."""
    splines = SharedCircularSplines().to(dtype)
    splines.fit_von_mises(kappa)
    return {k: v.detach().clone() for k, v in splines.state_dict().items()}


def u1_gauge_flow(
    target=None,
    *,
    L: int | None = None,
    num_layers: int = 16,
    num_bins: int = 8,
    hidden=(8, 8),
    kernel_size: int = 3,
    positional: bool = True,
    loops: bool = True,
    descending: bool = True,
    tree: bool = True,
    fit_tree: bool = True,
    seed: int | None = None,
) -> Flow:
    r"""Gauge-equivariant flow for U(1) links `[2, L, L]` with a uniform (Haar) base.

    Args:
        target: a [`U1Wilson`][boltzflow.energies.lattice.U1Wilson] (its `L`), or `None` and `L`.
        num_layers: couplings; layer i updates direction `i % 2` at offset `(i // 2) % 4`,
            or at `-(i // 2) % 4` if `descending`.
        num_bins, hidden, kernel_size, positional, loops: spline and conditioner settings
            (`GaugeEquivariantCoupling`).
        descending: visit the offsets 0, 3, 2, 1. The passive stripe of offset o is o - 1, so
            in this order each layer's changes are absorbed by plaquettes that a later layer still
            transforms (under the uniform base they are uniform and independent, and a uniform angle
            shifted by anything stays uniform), instead of spoiling the stripe transformed just
            before. On U(1) L = 8, β = 2 this lowered KL(q‖p) from 1.4 to 1.0 nats at equal
            training.
        tree: start with a
            `PlaquetteTreeSpline` and a `SinkSpline` (two dimensions only; module docstring).
        fit_tree: with `tree` and a `target`, fit the shared tree spline to the
            single-plaquette law $\propto e^{\beta_\text{eff}\cos\theta}$
            (`SharedCircularSplines.fit_von_mises`, β_eff = β / temperature_scale), copy it to the
            sink spline, and freeze both. This solves the tree layer's share of the reverse KL
            exactly (about 12 s per β, cached; no lattice samples): at L = 16, β = 6 the tree and
            sink layers alone then reach KL(q‖p) ≈ 0.09 nats and an ESS fraction of 0.88, where
            reverse-KL training of all layers from the identity reached an ESS fraction of 0.001 in
            3,000 steps. Couplings trained afterwards start from the identity.
        seed: seeds the parameter initialisation (the global RNG is left untouched).

    `positional=False, loops=False, descending=False, tree=False` is the architecture of Kanwar et
    al. (2020), with circular splines in place of NCP mixtures.
    """
    L = int(L if L is not None else target.event_shape[-1])
    hidden = [int(h) for h in ([hidden] if isinstance(hidden, int) else hidden)]
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(int(seed))
        args = (num_bins, hidden, kernel_size, positional, loops)
        layers = [
            GaugeEquivariantCoupling(L, i % 2, (-(i // 2) if descending else i // 2) % 4, *args)
            for i in range(int(num_layers))
        ]
        if tree:
            tree_layer, sink_layer = PlaquetteTreeSpline(L), SinkSpline(L)
            if fit_tree and target is not None:
                kappa = float(target.beta) / float(target.temperature_scale)
                fitted = _von_mises_splines(kappa, torch.get_default_dtype())
                tree_layer.splines.load_state_dict(fitted)
                sink_layer.splines.load_state_dict(fitted)
                for p in (*tree_layer.parameters(), *sink_layer.parameters()):
                    p.requires_grad_(False)
            layers[:0] = [tree_layer, sink_layer]
    return Flow(UniformTorus((2, L, L)), Compose(layers))
