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

The plaquette-tree and sink layers that can start the flow live in
[`boltzflow.flows.lattice_tree`][boltzflow.flows.lattice_tree].

Because the active links sit in distinct active plaquettes and the conditioner sees only frozen
(unchanged) plaquettes, the Jacobian is triangular with
$\log|\det| = \sum_{P\ \text{active}} \log h'(\theta_P)$. Plaquettes are gauge invariant and the
update adds a gauge-invariant angle to each link, so $f(g\cdot\theta) = g\cdot f(\theta)$ for every
gauge transformation g; with the gauge-invariant uniform (Haar) base the flow density $q$ is gauge
invariant. Layers cycle through μ ∈ {0, 1} and the four offsets; L must be a multiple of 4. All
outputs are wrapped to $[-\pi, \pi)$ and every map is periodic in its inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from boltzflow.energies.lattice import plaquettes, wrap_angle
from boltzflow.flows.base import Compose, Flow, TransformResult
from boltzflow.flows.circular import IDENTITY_DERIVATIVE, circular_rq_spline
from boltzflow.flows.distributions import UniformTorus
from boltzflow.flows.lattice import CircularConvNet, circular_pad
from boltzflow.flows.lattice_tree import (  # the tree layers stay importable from here
    PlaquetteTreeSpline,
    SharedCircularSplines,  # noqa: F401
    SinkSpline,
    _ByTransform,
    _von_mises_splines,
    tree_link_shift,  # noqa: F401
)
from boltzflow.flows.score_rules import coupling_rule

__all__ = [
    "plaquette_masks",
    "GaugeEquivariantCoupling",
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
    `index_select`, and the conditioner's last convolution reads only the rows across each stripe
    (`_spline_params`), so only the parameters that are used get computed.
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
        r = kernel_size // 2  # the rows across each active stripe that its parameters read
        window = (self.rows.view(-1, 1) + torch.arange(-r, r + 1).view(1, -1)) % L
        self.register_buffer("window", window.flatten(), persistent=False)
        self.mu, self.nu, self.offset = int(mu), 1 - int(mu), int(offset) % 4
        self.sign = 1.0 if mu == 0 else -1.0
        self.num_bins = int(num_bins)
        period = 4 if positional else None
        n_in = 4 if self.loops else 2
        self.net = CircularConvNet(n_in, 3 * self.num_bins, hidden, kernel_size, bias_period=period)
        with torch.no_grad():  # identity start
            self.net.net[-1].bias[2 * self.num_bins :] = IDENTITY_DERIVATIVE

    def _spline_params(self, feats):
        """Conditioner output at the active stripes, `[B, *stripe_shape, 3K]`.

        The last convolution reads, for each active stripe, only the `k` rows of hidden features
        across it (`k` the kernel size): they are gathered with one `index_select` into a batch of
        `[k, L]` windows (rows along ν, the kernel transposed for ν = 1), padded periodically
        along the stripe and convolved without stride or padding across it. This computes only
        the parameters that are used, and its backward costs about half that of a strided
        convolution over the whole padded lattice.
        """
        h = self.net.features(feats)
        last, (B, C, L, _) = self.net.net[-1], h.shape
        n, k = len(self.rows), last.kernel_size[0]
        rows = h.index_select(2 + self.nu, self.window)
        if self.nu == 0:  # [B, C, n*k, L] -> [B*n, C, k, L]
            rows = rows.view(B, C, n, k, L).transpose(1, 2)
        else:  # [B, C, L, n*k] -> [B*n, C, k, L]
            rows = rows.view(B, C, L, n, k).permute(0, 3, 1, 4, 2)
        weight = last.weight if self.nu == 0 else last.weight.transpose(2, 3)
        rows = circular_pad(rows.reshape(B * n, C, k, L), k // 2, dims=1)
        p = F.conv2d(rows, weight, last.bias).view(B, n, -1, L)  # [B, n, 3K, L]
        return p.permute(0, 1, 3, 2) if self.nu == 0 else p.permute(0, 3, 1, 2)

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

    def _scored(self, z):
        # the closed-form slope stands for the derivative along the active links, so they need
        # not enter as a tensor of their own (`coupling_score` then differentiates through `z`)
        (y, lad), slope = self._transform(z, False, per_site=True, slope=True)
        return self._take(z), y, self._take(y), lad, self.sign * slope  # θ_P moves by σ per za


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
