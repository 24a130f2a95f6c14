r"""Tail-adaptive flows (`flow.kind = "tail-adaptive"`): mTAF and the tail transform flow.

Two ways to give a spline flow heavy marginal tails, so that as an importance proposal for a
heavy-tailed target its weights keep a finite variance:

* `tails = "mtaf"` (Laszkiewicz, Lederer & Fischer 2022): a
  [`StudentTNormal`][boltzflow.flows.tails.StudentTNormal] base, Student-t on the dimensions
  classified heavy, with learnable degrees of freedom initialised from a tail-index estimate;
  a [`GroupLinear`][boltzflow.flows.tails.GroupLinear] layer mixing only within the light and
  within the heavy group before the first and between spline layers; spline layers (linear
  tails, so each base marginal's tail index reaches the output); an output affine layer.
* `tails = "ttf"` (Hickling & Prangle 2025): a Gaussian base, spline layers with
  permutations, then a final elementwise [`TailTransform`][boltzflow.flows.tails.TailTransform]
  whose left and right tail weights $\lambda = 1/\nu$ start at the estimate and are learnable
  (or fixed with `learn_tails = False`). The later paper found this easier to optimise: the
  networks never see heavy-tailed inputs.

Tail-index sources (`tail_index`): `"energy"` reads the growth of the target's energy along
each axis ([`energy_tail_index`][boltzflow.flows.tail_index.energy_tail_index]); `"data"`
uses extreme-value estimators on `data` (or on exact target samples)
([`estimate_tail_index`][boltzflow.flows.tail_index.estimate_tail_index]); `"neutral"` starts
every dimension at $\nu$ = `neutral_df` and lets training learn it. Explicit `heavy` and `df`
override the estimate.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from boltzflow.flows import nflows_adapter as nfa
from boltzflow.flows.affine import ElementwiseAffine
from boltzflow.flows.base import Compose, Flow, InverseTransform, Transform
from boltzflow.flows.builders import _defaults, _event_shape, _permutation, _seeded, coupling_masks
from boltzflow.flows.distributions import StandardNormal
from boltzflow.flows.tail_index import energy_tail_index, estimate_tail_index
from boltzflow.flows.tails import GroupLinear, StudentTNormal, TailTransform

__all__ = ["tail_adaptive_flow", "tail_estimate"]

DF_RANGE = (0.3, 50.0)
"""Degrees of freedom are kept in this range when they initialise a flow."""


def tail_estimate(
    target,
    dim: int,
    tail_index="energy",
    data=None,
    heavy=None,
    df=None,
    neutral_df=10.0,
    scale=1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Heavy mask and degrees of freedom (`inf` on light dimensions) used to build a flow.

    Args:
        target: the [`Energy`][boltzflow.energies.base.Energy] (or `None` with explicit
            `heavy`/`df` or `data`).
        dim: flat event size.
        tail_index: `"energy"`, `"data"` or `"neutral"` (module docstring); without a
            target (an event shape) and without data the start is neutral, and with both
            `heavy` and `df` given nothing is estimated.
        data: samples `[n, dim]` for `"data"` (default: 5000 exact draws of the target).
        heavy: explicit bool mask (overrides the estimate's classification).
        df: explicit degrees of freedom, scalar or `[n_heavy]` (overrides the estimate).
        neutral_df: the neutral start.
        scale: length unit of the energy probe.

    Returns:
        `(heavy [dim] bool, df [dim] float)`.
    """
    if heavy is not None and df is not None:
        tail_index = "given"
    elif target is None and not (tail_index == "data" and data is not None):
        tail_index = "neutral"  # an event shape alone: nothing to estimate from
    if tail_index in ("neutral", "given"):
        est_heavy, est_df = np.ones(dim, dtype=bool), np.full(dim, float(neutral_df))
    elif tail_index == "energy":
        est = energy_tail_index(target, scale=scale)
        est_heavy, est_df = est.heavy, est.df
    elif tail_index == "data":
        if data is None:
            # deliberate CPU generator: the tail estimate is made on the host, at construction
            data = target.sample(5000, generator=torch.Generator().manual_seed(0))
        est = estimate_tail_index(data)
        est_heavy, est_df = est.heavy, est.df
    else:
        raise ValueError(f"tail_index must be 'energy', 'data' or 'neutral', got {tail_index!r}")
    mask = est_heavy if heavy is None else np.asarray(heavy, dtype=bool).reshape(-1)
    if mask.size != dim:
        raise ValueError(f"heavy mask has {mask.size} entries, event has {dim}")
    out = np.full(dim, np.inf)
    if df is None:
        fill = np.where(np.isfinite(est_df), est_df, neutral_df)
        out[mask] = fill[mask]
    else:
        out[mask] = np.broadcast_to(np.asarray(df, dtype=np.float64), (int(mask.sum()),))
    out[mask] = np.clip(out[mask], *DF_RANGE)
    return mask, out


def _spline_layers(
    dim,
    num_layers,
    hidden,
    num_blocks,
    num_bins,
    tail_bound,
    architecture,
    inverse_autoregressive,
    mixer,
    gen,
) -> list[Transform]:
    layers: list[Transform] = []
    if architecture == "coupling":
        for i, m in enumerate(coupling_masks(dim, num_layers, gen)):
            if i > 0 and mixer is not None:
                layers.append(mixer())
            layers.append(nfa.rq_coupling(m, hidden, num_blocks, num_bins, tail_bound))
        return layers
    if architecture != "autoregressive":
        raise ValueError(
            f"architecture must be 'autoregressive' or 'coupling', got {architecture!r}"
        )
    for i in range(num_layers):
        if i > 0:
            layers.append(mixer() if mixer is not None else _permutation("reverse", dim, gen))
        layer = nfa.rq_autoregressive(dim, hidden, num_blocks, num_bins, tail_bound)
        layers.append(InverseTransform(layer) if inverse_autoregressive else layer)
    return layers


def tail_adaptive_flow(
    target_or_event_shape,
    tails: str = "ttf",
    num_layers: int | None = None,
    hidden: int | None = None,
    num_blocks: int = 2,
    num_bins: int = 8,
    tail_bound: float = 5.0,
    loc=0.0,
    scale=1.0,
    tail_index: str = "energy",
    heavy=None,
    df=None,
    neutral_df: float = 10.0,
    learn_tails: bool = True,
    data=None,
    architecture: str = "autoregressive",
    inverse_autoregressive: bool = True,
    seed: int | None = None,
) -> Flow:
    r"""A spline flow with heavy tails: mTAF or the tail transform flow (module docstring).

    Defaults as [`spline_autoregressive_flow`][boltzflow.flows.builders.spline_autoregressive_flow]
    (`num_layers = 4` for $d \ge 3$, `hidden = clip(4d, 64, 256)`), but inverse-autoregressive
    by default: sampling and `log_q` in one pass per layer, as reverse-KL training needs;
    `log_prob` of given points then costs $d$ passes per layer.

    Args:
        target_or_event_shape: an `Energy` (needed for `tail_index = "energy"`) or a shape.
        tails: `"mtaf"` or `"ttf"`.
        num_layers, hidden, num_blocks, num_bins, tail_bound: spline layers as in the
            other builders.
        loc, scale: initial output location and scale.
        tail_index, heavy, df, neutral_df, data: where the initial tails come from
            ([`tail_estimate`][boltzflow.flows.tail_builders.tail_estimate]).
        learn_tails: learn the degrees of freedom (mTAF) or tail weights (TTF).
        architecture: `"autoregressive"` or `"coupling"` spline layers.
        inverse_autoregressive: orientation of autoregressive layers.
        seed: makes the flow deterministic.

    Examples:
        >>> flow = tail_adaptive_flow(3, tails="ttf", tail_index="neutral", num_layers=2, seed=0)
        >>> flow.sample(4).x.shape
        torch.Size([4, 3])
    """
    shape = _event_shape(target_or_event_shape)
    dim = int(math.prod(shape))
    if len(shape) != 1:
        raise ValueError("tail-adaptive flows take flat events")
    target = (
        None
        if isinstance(target_or_event_shape, (int, tuple, torch.Size))
        else target_or_event_shape
    )
    mask, nu = tail_estimate(target, dim, tail_index, data, heavy, df, neutral_df, scale)
    num_layers, hidden = _defaults(dim, num_layers, hidden, deep=4)

    def splines(mixer, gen) -> list[Transform]:
        return _spline_layers(
            dim, num_layers, hidden, num_blocks, num_bins, tail_bound, architecture,
            inverse_autoregressive, mixer, gen,
        )  # fmt: skip

    with _seeded(seed) as gen:
        if tails == "mtaf":
            groups = torch.as_tensor(mask, dtype=torch.long)
            base = StudentTNormal(mask, df=torch.as_tensor(nu[mask]), learnable=learn_tails)

            def mixer():
                return GroupLinear(groups, generator=gen)

            layers: list[Transform] = [mixer()]
            layers += splines(mixer, gen)
            layers.append(ElementwiseAffine(shape, loc=loc, scale=scale))
        elif tails == "ttf":
            base = StandardNormal(shape)
            layers = splines(None, gen)
            lam = np.where(
                mask, 1.0 / nu, 1.0 / float(neutral_df) if tail_index == "neutral" else 0.02
            )
            layers.append(
                TailTransform(
                    dim,
                    tail_weights=torch.as_tensor(lam),
                    loc=loc,
                    scale=scale,
                    learnable_tails=learn_tails,
                )
            )
        else:
            raise ValueError(f"tails must be 'mtaf' or 'ttf', got {tails!r}")
    return Flow(base, Compose(layers))
