r"""Smooth coupling layers and the smooth coupling flow builder.

Köhler, Krämer & Noé 2021, "Smooth Normalizing Flows" (NeurIPS): coupling layers whose
elementwise maps are the C∞ mixtures of [`boltzflow.flows.smooth`][boltzflow.flows.smooth] and whose
conditioner is a smooth MLP (SiLU activations), so the whole flow, and therefore $\log q(x)$, its
forces $\nabla_x \log q$ and their derivatives, is C∞.

[`SmoothCoupling`][boltzflow.flows.smooth_coupling.SmoothCoupling]: with transformed set $T$
(`mask`) and conditioning set $C$,

$$
x_C = z_C, \qquad x_i = f_i(z_i;\, h(e(z_C))) \;(i \in T), \qquad
\mathrm{ladj} = \sum_{i\in T} \log f_i'(z_i),
$$

where periodic coordinates (angles in $[-\pi, \pi)$) use the circle mixture (with its
rotation) and the others, which must lie in `[0, 1]`, the interval mixture; $e$ embeds
periodic conditioning inputs as $(\cos, \sin)$ and interval ones as $2u - 1$.
The inverse solves for $z_T$ by root finding with implicit gradients.

[`smooth_coupling_flow`][boltzflow.flows.smooth_coupling.smooth_coupling_flow] builds a full flow on
$\mathbb R^{d_E} \times T^{d_P}$: Euclidean coordinates go through
[`SigmoidToInterval`][boltzflow.flows.smooth.SigmoidToInterval], the couplings act on
$(0, 1)^{d_E} \times [-\pi, \pi)^{d_P}$, the inverse sigmoid brings them back to $\mathbb R$ and a
learnable affine layer sets location and scale.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from boltzflow.energies.base import as_event_shape
from boltzflow.flows.affine import ElementwiseAffine
from boltzflow.flows.base import Compose, Flow, InverseTransform, Transform, TransformResult
from boltzflow.flows.builders import coupling_masks, structured_masks
from boltzflow.flows.distributions import MixedNormalTorus, StandardNormal, UniformTorus
from boltzflow.flows.smooth import (
    SigmoidToInterval,
    SmoothMixture,
    initial_params,
    mixture_num_params,
    mixture_transform,
)

__all__ = ["SmoothCoupling", "smooth_mlp", "smooth_coupling_flow"]

IDENTITY_LOGIT = 3.0
"""Initial bias of the identity-component logit (the layers start close to the identity)."""


def smooth_mlp(n_in: int, n_out: int, hidden: int, num_blocks: int = 2) -> nn.Sequential:
    """`num_blocks` hidden SiLU layers of width `hidden` (C∞), last layer scaled by 0.1."""
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(max(1, int(num_blocks))):
        layers += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    last = nn.Linear(width, n_out)
    with torch.no_grad():
        last.weight.mul_(0.1)
        last.bias.zero_()
    layers.append(last)
    return nn.Sequential(*layers)


class SmoothCoupling(Transform):
    r"""Coupling layer with smooth mixtures (module docstring).

    Args:
        mask: bool `[features]`; `True` = transformed.
        periodic: bool `[features]`; `True` = angle in $[-\pi, \pi)$, else a value
            in `[0, 1]`.
        hidden, num_blocks: conditioner width and number of hidden layers.
        num_components: smooth steps `K` per transformed feature.
        min_weight: linear floor `c` of every mixture (`f' ≥ c`).
    """

    def __init__(
        self,
        mask,
        periodic=None,
        hidden: int = 64,
        num_blocks: int = 2,
        num_components: int = 8,
        min_weight: float = 0.01,
    ):
        super().__init__()
        mask = torch.as_tensor(mask, dtype=torch.bool).reshape(-1)
        if periodic is None:
            periodic = torch.zeros_like(mask)
        periodic = torch.as_tensor(periodic, dtype=torch.bool).reshape(-1)
        if mask.shape != periodic.shape:
            raise ValueError("mask and periodic must have the same number of features")
        if mask.all() or not mask.any():
            raise ValueError("a coupling mask must transform some features and keep some")
        idx = torch.arange(mask.numel())
        cond = idx[~mask]
        for name, value in [
            ("cond_periodic", cond[periodic[cond]]),
            ("cond_interval", cond[~periodic[cond]]),
            ("transform_periodic", idx[mask & periodic]),
            ("transform_interval", idx[mask & ~periodic]),
        ]:
            self.register_buffer(name, value)
        self.k, self.min_weight = int(num_components), float(min_weight)
        self.p_per = mixture_num_params(self.k, True)
        self.p_int = mixture_num_params(self.k, False)
        n_in = len(self.cond_interval) + 2 * len(self.cond_periodic)
        n_out = (
            len(self.transform_periodic) * self.p_per + len(self.transform_interval) * self.p_int
        )
        self.net = smooth_mlp(n_in, n_out, int(hidden), num_blocks)
        n_per, n_int = len(self.transform_periodic), len(self.transform_interval)
        with torch.no_grad():
            self.net[-1].bias.copy_(
                torch.cat(
                    [
                        initial_params(self.k, True, IDENTITY_LOGIT).repeat(n_per),
                        initial_params(self.k, False, IDENTITY_LOGIT).repeat(n_int),
                    ]
                )
            )

    def _conditioner(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles = flat[:, self.cond_periodic]
        e = torch.cat(
            [2 * flat[:, self.cond_interval] - 1, torch.cos(angles), torch.sin(angles)], 1
        )
        params = self.net(e)
        n_per = len(self.transform_periodic)
        split = n_per * self.p_per
        per = params[:, :split].reshape(flat.shape[0], n_per, self.p_per)
        itv = params[:, split:].reshape(flat.shape[0], len(self.transform_interval), self.p_int)
        return per, itv

    def _map(self, z: torch.Tensor, inverse: bool) -> TransformResult:
        flat = z.reshape(z.shape[0], -1)
        p_per, p_int = self._conditioner(flat)
        out, ladj = flat.clone(), flat.new_zeros(flat.shape[0])
        if len(self.transform_periodic):
            u = (flat[:, self.transform_periodic] + math.pi) / (2 * math.pi)
            v, lad = mixture_transform(u, p_per, True, inverse, self.min_weight)
            out[:, self.transform_periodic] = 2 * math.pi * v - math.pi
            ladj = ladj + lad.sum(-1)
        if len(self.transform_interval):
            u = flat[:, self.transform_interval]
            v, lad = mixture_transform(u, p_int, False, inverse, self.min_weight)
            out[:, self.transform_interval] = v
            ladj = ladj + lad.sum(-1)
        return TransformResult(out.reshape(z.shape), ladj)

    def forward(self, z: torch.Tensor) -> TransformResult:
        return self._map(z, inverse=False)

    def inverse(self, x: torch.Tensor) -> TransformResult:
        return self._map(x, inverse=True)


def _periodic_mask(periodic, target, dim: int) -> torch.Tensor:
    if periodic is None:
        periodic = getattr(target, "periodic_mask", None)
    if periodic is None or periodic is False:
        return torch.zeros(dim, dtype=torch.bool)
    if periodic is True:
        return torch.ones(dim, dtype=torch.bool)
    mask = torch.as_tensor(periodic)
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("periodic must be a boolean mask over the event, not a list of indices")
    mask = mask.bool().reshape(-1)
    if mask.numel() != dim:
        raise ValueError(f"periodic mask has {mask.numel()} entries, event has {dim}")
    return mask


@contextlib.contextmanager
def _seeded(seed: int | None):
    """Deliberate CPU generators: structural randomness is drawn on the host, before the flow
    is moved to its device, so a seed gives the same flow on every device."""
    if seed is None:
        yield torch.Generator().manual_seed(int(torch.randint(2**62, ()).item()))
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield torch.Generator().manual_seed(int(seed) + 1)  # deliberate: host, see above


def _masks(kind: str, periodic: torch.Tensor, dim: int, num_layers: int, gen) -> list:
    if kind == "structured":
        return structured_masks(periodic, max(1, num_layers // 4), gen)
    return coupling_masks(dim, num_layers, gen)


def _base(shape: torch.Size, periodic: torch.Tensor):
    if not bool(periodic.any()):
        return StandardNormal(shape)
    if bool(periodic.all()):
        return UniformTorus(shape)
    return MixedNormalTorus(periodic.reshape(shape))


def smooth_coupling_flow(
    target_or_event_shape,
    num_layers: int | None = None,
    hidden: int | None = None,
    num_blocks: int = 2,
    num_components: int = 8,
    periodic=None,
    loc=0.0,
    scale=1.0,
    affine: bool = True,
    min_weight: float = 0.01,
    fast: str = "density",
    masks: str = "random",
    seed: int | None = None,
) -> Flow:
    r"""A C∞ coupling flow of smooth mixtures (Köhler, Krämer & Noé 2021).

    Layers (`z → x`): [`SigmoidToInterval`][boltzflow.flows.smooth.SigmoidToInterval] on Euclidean
    features, `num_layers` smooth couplings (masks:
    [`coupling_masks`][boltzflow.flows.builders.coupling_masks]; in one dimension, unconditional
    [`SmoothMixture`][boltzflow.flows.smooth.SmoothMixture] layers), the inverse sigmoid, and an
    [`ElementwiseAffine`][boltzflow.flows.affine.ElementwiseAffine] `x = loc + scale ⊙ y` on
    Euclidean features. The base is $\mathcal N(0, I)$ on Euclidean and uniform on periodic
    features.

    Each mixture has a closed form one way and is inverted by root finding the other way.
    `fast="density"` makes `log_prob` (hence NLL, force matching and MD on
    $-\log q$) analytic and sampling iterative; `fast="sampling"` the opposite
    (reverse-KL training).

    Args:
        target_or_event_shape: an `Energy` or an event shape / int.
        num_layers: couplings (default 2 for `d = 1`, 6 for `d = 2`, 8 otherwise).
        hidden, num_blocks: conditioner width (default `clip(4d, 64, 256)`) and depth.
        num_components: smooth steps `K` per mixture.
        periodic: bool mask (or `True`) of angles on $[-\pi, \pi)$; default: the
            target's `periodic_mask` attribute, if any.
        loc, scale: initial output affine on Euclidean features.
        affine: include the learnable output affine layer.
        min_weight: linear floor of every mixture.
        fast: `"density"` or `"sampling"`.
        masks: `"random"` ([`coupling_masks`][boltzflow.flows.builders.coupling_masks]: a random
            half, then its complement) or `"structured"`
            ([`structured_masks`][boltzflow.flows.builders.structured_masks]: blocks of four
            couplings, periodic halves first, then stiff halves conditioned on all periodic
            features; `num_layers // 4` blocks), for internal coordinates.
        seed: makes the flow deterministic (does not touch torch's global RNG).

    Examples:
        >>> flow = smooth_coupling_flow(2, num_layers=2, hidden=16, seed=0)
        >>> s = flow.sample(4)
        >>> bool(torch.allclose(flow.log_prob(s.x), s.log_q))
        True
    """
    if fast not in ("density", "sampling"):
        raise ValueError(f"fast must be 'density' or 'sampling', got {fast!r}")
    if masks not in ("random", "structured"):
        raise ValueError(f"masks must be 'random' or 'structured', got {masks!r}")
    shape = as_event_shape(getattr(target_or_event_shape, "event_shape", target_or_event_shape))
    dim = int(math.prod(shape))
    per = _periodic_mask(periodic, target_or_event_shape, dim)
    if num_layers is None:
        num_layers = 2 if dim == 1 else (6 if dim == 2 else 8)
    if hidden is None:
        hidden = int(min(256, max(64, 4 * dim)))
    euclidean = not bool(per.all())
    with _seeded(seed) as gen:
        if dim == 1:
            mixing = [
                SmoothMixture(1, num_components, circular=per, min_weight=min_weight)
                for _ in range(int(num_layers))
            ]
        else:
            mixing = [
                SmoothCoupling(m, per, hidden, num_blocks, num_components, min_weight)
                for m in _masks(masks, per, dim, int(num_layers), gen)
            ]
    if fast == "density":
        mixing = [InverseTransform(layer) for layer in mixing]
    layers: list[Transform] = []
    if euclidean:
        layers.append(SigmoidToInterval(shape, active=~per))
    layers += mixing
    if euclidean:
        layers.append(InverseTransform(SigmoidToInterval(shape, active=~per)))
        if affine:
            active = None if not bool(per.any()) else ~per
            layers.append(ElementwiseAffine(shape, loc=loc, scale=scale, active=active))
    return Flow(_base(shape, per), Compose(layers))
