r"""Ready-made flows for a target or an event shape (registered as `runs.registry.FLOWS`).

Every builder takes an [`Energy`][boltzflow.energies.base.Energy] (its `event_shape` is used)
or an event shape / int, and returns a [`Flow`][boltzflow.flows.base.Flow] mapping latent
`z` to configuration `x`. Builders are deterministic given `seed`: network weights,
coupling masks, permutations and circular shifts are all drawn from it (without disturbing
torch's global RNG). Without a seed they draw from the global RNG.

Layer order (`z → x`): the spline/autoregressive layers, then an
[`ElementwiseAffine`][boltzflow.flows.affine.ElementwiseAffine] output layer `x = loc + scale ⊙ y`
(learnable, initialised from `loc`/`scale`; pass the target's rough location and width so the
splines' `[-tail_bound, tail_bound]` window covers the data, or call `layer.set_from_data(x)`).

Periodic coordinates (`periodic` mask, or the target's `periodic_mask` attribute) are
handled by [`spline_coupling_flow`][boltzflow.flows.builders.spline_coupling_flow] with circular
splines on $[-\pi, \pi)$, a uniform base on those coordinates and fixed random rotations between
layers.

References: Durkan et al. 2019 (Neural Spline Flows); Papamakarios et al. 2017 (MAF);
Rezende et al. 2020 (Normalizing Flows on Tori and Spheres).
"""

from __future__ import annotations

import contextlib
import math

import torch

from boltzflow.energies.base import as_event_shape
from boltzflow.flows import nflows_adapter as nfa
from boltzflow.flows.affine import DenseAffine, ElementwiseAffine
from boltzflow.flows.base import Compose, Flow, InverseTransform, Transform
from boltzflow.flows.circular import CircularShift, CircularSpline, CircularSplineCoupling
from boltzflow.flows.distributions import MixedNormalTorus, StandardNormal, UniformTorus

__all__ = [
    "spline_coupling_flow",
    "circular_spline_flow",
    "spline_autoregressive_flow",
    "maf_flow",
    "coupling_masks",
    "structured_masks",
]


def _event_shape(target_or_event_shape) -> torch.Size:
    return as_event_shape(getattr(target_or_event_shape, "event_shape", target_or_event_shape))


def _periodic_mask(periodic, target, shape: torch.Size) -> torch.Tensor | None:
    """Flat bool mask of periodic features, or `None` if there are none."""
    if periodic is None:
        periodic = getattr(target, "periodic_mask", None)
    if periodic is None or periodic is False:
        return None
    dim = int(math.prod(shape))
    if periodic is True:
        return torch.ones(dim, dtype=torch.bool)
    mask = torch.as_tensor(periodic)
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("periodic must be a boolean mask over the event, not a list of indices")
    mask = mask.bool().reshape(-1)
    if mask.numel() != dim:
        raise ValueError(f"periodic mask has {mask.numel()} entries, event has {dim}")
    return mask if bool(mask.any()) else None


@contextlib.contextmanager
def _seeded(seed: int | None):
    """Yield a generator for structural randomness; seed torch's RNG for weight init.

    Deliberate CPU generators: masks and permutations are drawn on the host, before the flow
    is moved to its device, so a seed gives the same flow on every device."""
    if seed is None:
        yield torch.Generator().manual_seed(int(torch.randint(2**62, ()).item()))
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield torch.Generator().manual_seed(int(seed) + 1)  # deliberate: host, see above


def _base(shape: torch.Size, periodic: torch.Tensor | None):
    if periodic is None:
        return StandardNormal(shape)
    if bool(periodic.all()):
        return UniformTorus(shape)
    return MixedNormalTorus(periodic.reshape(shape))


def _defaults(dim: int, num_layers: int | None, hidden: int | None, deep: int) -> tuple[int, int]:
    if num_layers is None:
        num_layers = 2 if dim == 1 else (6 if dim == 2 else deep)
    if hidden is None:
        hidden = int(min(256, max(64, 4 * dim)))
    return int(num_layers), int(hidden)


def coupling_masks(dim: int, num_layers: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Masks for `num_layers` couplings: a random half, then its complement, and so on.

    Each consecutive pair transforms every feature once; for `dim = 2` this alternates the
    two coordinates.
    """
    masks: list[torch.Tensor] = []
    for i in range(num_layers):
        if i % 2 == 1:
            masks.append(~masks[-1])
            continue
        mask = torch.zeros(dim, dtype=torch.bool)
        mask[torch.randperm(dim, generator=generator)[: dim // 2]] = True
        masks.append(mask)
    return masks


def _halves(index: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    perm = index[torch.randperm(len(index), generator=generator)]
    k = max(1, len(perm) // 2)
    return perm[:k], perm[k:]


def structured_masks(periodic: torch.Tensor, num_blocks: int, generator: torch.Generator):
    """Transformed-feature masks, four per block, for events of soft periodic and stiff parts.

    Per block: a random half of the periodic features, the other half, a random half of
    the non-periodic (stiff) features, the other half. Each stiff coordinate is thus
    transformed conditionally on every periodic one (the torsion-first ordering of the
    internal-coordinate Boltzmann generators, Noé et al. 2019). Used by
    [`boltzflow.molecular.flows.internal_coordinate_flow`][boltzflow.molecular.flows.internal_coordinate_flow]
    and, with `masks="structured"`,
    [`boltzflow.flows.smooth_coupling.smooth_coupling_flow`][boltzflow.flows.smooth_coupling.smooth_coupling_flow].
    """
    periodic = torch.as_tensor(periodic, dtype=torch.bool).reshape(-1)
    per, stiff = torch.nonzero(periodic).reshape(-1), torch.nonzero(~periodic).reshape(-1)
    masks = []
    for _ in range(num_blocks):
        groups = []
        if len(per) >= 2:
            groups += list(_halves(per, generator))
        elif len(per) == 1:
            groups.append(per)
        if len(stiff) >= 2:
            groups += list(_halves(stiff, generator))
        elif len(stiff) == 1:
            groups.append(stiff)
        for g in groups:
            m = torch.zeros(len(periodic), dtype=torch.bool)
            m[g] = True
            masks.append(m)
    return masks


def _output_affine(shape, periodic, loc, scale, affine: bool | str) -> list[Transform]:
    """The output affine layer: `True`/`"diagonal"` elementwise, `"dense"` full covariance
    (Euclidean features only), `False` none."""
    if affine not in (True, False, "diagonal", "dense"):
        raise ValueError(f"affine must be True, False, 'diagonal' or 'dense' (got {affine!r})")
    if affine == "dense":
        if periodic is not None and bool(periodic.any()):
            raise ValueError("affine='dense' would mix periodic coordinates: use 'diagonal'")
        return [DenseAffine(int(math.prod(shape)), loc=loc, scale=scale)]
    if not affine or (periodic is not None and bool(periodic.all())):
        return []
    active = None if periodic is None else ~periodic
    return [ElementwiseAffine(shape, loc=loc, scale=scale, active=active)]


def _elementwise_splines(num_layers, num_bins, tail_bound, periodic, generator):
    if periodic is None:
        return [nfa.rq_elementwise(1, num_bins, tail_bound) for _ in range(num_layers)]
    layers: list[Transform] = []
    for i in range(num_layers):
        if i > 0:
            layers.append(CircularShift.random(1, generator=generator))
        layers.append(CircularSpline(1, num_bins))
    return layers


def spline_coupling_flow(
    target_or_event_shape,
    num_layers: int | None = None,
    hidden: int | None = None,
    num_blocks: int = 2,
    num_bins: int = 8,
    tail_bound: float = 5.0,
    periodic=None,
    loc=0.0,
    scale=1.0,
    affine: bool | str = True,
    tails: str | None = None,
    seed: int | None = None,
    identity_init: bool = False,
) -> Flow:
    r"""Rational-quadratic spline coupling flow (Durkan et al. 2019), circular where periodic.

    Defaults scale with `d = prod(event_shape)`: `d = 1` uses `num_layers = 2`
    elementwise splines (no conditioner exists), `d = 2` six couplings, `d ≥ 3` eight;
    `hidden = clip(4d, 64, 256)`. Masks:
    [`coupling_masks`][boltzflow.flows.builders.coupling_masks].

    Args:
        target_or_event_shape: an `Energy` or an event shape / int.
        num_layers, hidden, num_blocks: number of spline layers; ResidualNet width and blocks.
        num_bins: spline bins `K`.
        tail_bound: Euclidean splines act on `[-tail_bound, tail_bound]`, identity outside.
        periodic: bool mask over the event (or `True` = all periodic) of coordinates on
            $[-\pi, \pi)$; default: the target's `periodic_mask` attribute if any.
        loc, scale: initial output affine `x = loc + scale ⊙ y` on Euclidean features.
        affine: the learnable output affine layer: `True` (or `"diagonal"`) elementwise,
            `"dense"` a full lower-triangular map
            ([`DenseAffine`][boltzflow.flows.affine.DenseAffine]; Euclidean targets), `False`
            none.
        tails: `"mtaf"` or `"ttf"` for heavy tails: the same coupling layers in
            [`tail_adaptive_flow`][boltzflow.flows.tail_builders.tail_adaptive_flow]
            (tail index read from the target's energy; Euclidean events only).
        seed: makes the flow deterministic.
        identity_init: Euclidean couplings start at the identity map (so the flow starts as the
            output affine layer; circular couplings always do). Recommended when the flow is
            fitted to a few thousand draws with early stopping, as inside samplers.

    Examples:
        >>> flow = spline_coupling_flow(2, seed=0)
        >>> flow.sample(5).x.shape
        torch.Size([5, 2])
    """
    shape = _event_shape(target_or_event_shape)
    dim = int(math.prod(shape))
    per = _periodic_mask(periodic, target_or_event_shape, shape)
    num_layers, hidden = _defaults(dim, num_layers, hidden, deep=8)
    if tails is not None:
        from boltzflow.flows.tail_builders import tail_adaptive_flow

        if identity_init:
            raise ValueError("identity_init is not available with tails=...")

        _reject_periodic(per, None, shape, "spline_coupling_flow(tails=...)")
        return tail_adaptive_flow(
            target_or_event_shape,
            tails,
            num_layers,
            hidden,
            num_blocks,
            num_bins,
            tail_bound,
            loc=loc,
            scale=scale,
            architecture="coupling",
            seed=seed,
        )
    with _seeded(seed) as gen:
        if dim == 1:
            layers = _elementwise_splines(num_layers, num_bins, tail_bound, per, gen)
        elif per is None:
            layers = [
                nfa.rq_coupling(m, hidden, num_blocks, num_bins, tail_bound, identity_init)
                for m in coupling_masks(dim, num_layers, gen)
            ]
        else:
            layers = []
            for i, m in enumerate(coupling_masks(dim, num_layers, gen)):
                if i > 0:
                    layers.append(CircularShift.random(dim, per, generator=gen))
                layers.append(
                    CircularSplineCoupling(m, per, hidden, num_blocks, num_bins, tail_bound)
                )
        layers += _output_affine(shape, per, loc, scale, affine)
    return Flow(_base(shape, per), Compose(layers))


def circular_spline_flow(target_or_event_shape, **params) -> Flow:
    r"""A [`spline_coupling_flow`][boltzflow.flows.builders.spline_coupling_flow] on the torus
    $[-\pi, \pi)^d$ (all periodic).

    Keyword arguments are those of
    [`spline_coupling_flow`][boltzflow.flows.builders.spline_coupling_flow] except `periodic`.
    """
    return spline_coupling_flow(target_or_event_shape, periodic=True, **params)


def _reject_periodic(periodic, target, shape, name: str) -> None:
    if _periodic_mask(periodic, target, shape) is not None:
        raise NotImplementedError(
            f"{name} has no periodic layers; use spline_coupling_flow(..., periodic=mask)"
        )


def _permutation(kind: str, dim: int, generator: torch.Generator) -> Transform:
    if kind == "reverse":
        return nfa.reverse_permutation(dim)
    if kind == "random":
        return nfa.random_permutation(dim, generator)
    raise ValueError(f"permutation must be 'reverse' or 'random', got {kind!r}")


def _autoregressive_stack(dim, num_layers, make_layer, inverse_autoregressive, permutation, gen):
    layers: list[Transform] = []
    for i in range(num_layers):
        if i > 0:
            layers.append(_permutation(permutation, dim, gen))
        layer = make_layer()
        layers.append(InverseTransform(layer) if inverse_autoregressive else layer)
    return layers


def spline_autoregressive_flow(
    target_or_event_shape,
    num_layers: int | None = None,
    hidden: int | None = None,
    num_blocks: int = 2,
    num_bins: int = 8,
    tail_bound: float = 5.0,
    loc=0.0,
    scale=1.0,
    affine: bool = True,
    inverse_autoregressive: bool = False,
    permutation: str = "reverse",
    periodic=None,
    seed: int | None = None,
) -> Flow:
    r"""Masked RQ spline autoregressive flow (Durkan et al. 2019), permutations in between.

    By default (MAF-style) `log_prob` costs one MADE pass per layer and sampling `d`
    passes; `inverse_autoregressive=True` swaps the costs (fast sampling for reverse-KL
    training). Defaults: `num_layers = 4` for `d ≥ 3`; `d = 1` uses elementwise splines.
    Other arguments as in [`spline_coupling_flow`][boltzflow.flows.builders.spline_coupling_flow];
    periodic coordinates are not supported.
    """
    shape = _event_shape(target_or_event_shape)
    dim = int(math.prod(shape))
    _reject_periodic(periodic, target_or_event_shape, shape, "spline_autoregressive_flow")
    num_layers, hidden = _defaults(dim, num_layers, hidden, deep=4)
    with _seeded(seed) as gen:
        if dim == 1:
            layers = _elementwise_splines(num_layers, num_bins, tail_bound, None, gen)
        else:
            layers = _autoregressive_stack(
                dim,
                num_layers,
                lambda: nfa.rq_autoregressive(dim, hidden, num_blocks, num_bins, tail_bound),
                inverse_autoregressive,
                permutation,
                gen,
            )
        layers += _output_affine(shape, None, loc, scale, affine)
    return Flow(StandardNormal(shape), Compose(layers))


def maf_flow(
    target_or_event_shape,
    num_layers: int | None = None,
    hidden: int | None = None,
    num_blocks: int = 2,
    loc=0.0,
    scale=1.0,
    affine: bool = True,
    inverse_autoregressive: bool = False,
    permutation: str = "reverse",
    periodic=None,
    seed: int | None = None,
) -> Flow:
    r"""Masked affine autoregressive flow (Papamakarios et al. 2017), permutations in between.

    Defaults: `num_layers = 5` for `d ≥ 3` (6 for `d = 2`). In one dimension an
    autoregressive affine layer is a plain affine map, so `d = 1` gives a single
    [`ElementwiseAffine`][boltzflow.flows.affine.ElementwiseAffine]. Costs and other arguments as in
    [`spline_autoregressive_flow`][boltzflow.flows.builders.spline_autoregressive_flow].
    """
    shape = _event_shape(target_or_event_shape)
    dim = int(math.prod(shape))
    _reject_periodic(periodic, target_or_event_shape, shape, "maf_flow")
    num_layers, hidden = _defaults(dim, num_layers, hidden, deep=5)
    with _seeded(seed) as gen:
        if dim == 1:
            return Flow(StandardNormal(shape), Compose(ElementwiseAffine(shape, loc, scale)))
        layers = _autoregressive_stack(
            dim,
            num_layers,
            lambda: nfa.maf(dim, hidden, num_blocks),
            inverse_autoregressive,
            permutation,
            gen,
        )
        layers += _output_affine(shape, None, loc, scale, affine)
    return Flow(StandardNormal(shape), Compose(layers))
