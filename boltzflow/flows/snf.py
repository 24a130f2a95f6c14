r"""Stochastic normalizing flows from a recipe: blocks placed into a built flow, and RealNVP.

A recipe turns any registered flow into an SNF with a `[flow.stochastic]` table, whose keys are
the arguments of `add_stochastic_blocks`:

```toml
[flow]
kind = "spline-coupling"

[flow.stochastic]
kind = "metropolis"      # metropolis | langevin | mala | underdamped | hmc, or a list cycled
count = 4                # number of blocks
steps = 20               # Markov steps per block
step_size = 0.25
lambdas = "linear"       # λ_k = k / count, or an explicit list
placement = "interleave" # after evenly spaced layers (the last block after the last layer),
                         # "end", or a list of positions: [0, 2, 4, 6] = before the first
                         # layer, after layers 2 and 4, after the sixth
train_lambda = false     # keep λ and the step sizes fixed (default: trained)
train_step_size = false
```

`realnvp_flow` is the affine-coupling flow (Dinh, Sohl-Dickstein & Bengio 2017) of the
stochastic-flow benchmarks (Wu, Köhler & Noé 2020).
"""

from __future__ import annotations

import torch

from boltzflow.flows import nflows_adapter as nfa
from boltzflow.flows.base import Compose, Flow
from boltzflow.flows.builders import _base, _event_shape, _output_affine, _seeded, coupling_masks
from boltzflow.flows.stochastic import (
    HMCBlock,
    LangevinBlock,
    MetropolisBlock,
    UnderdampedLangevinBlock,
)

__all__ = ["BLOCK_KINDS", "STOCHASTIC_KEYS", "add_stochastic_blocks", "realnvp_flow"]

BLOCK_KINDS = {
    "metropolis": (MetropolisBlock, {}),
    "langevin": (LangevinBlock, {}),
    "mala": (LangevinBlock, {"metropolize": True}),
    "underdamped": (UnderdampedLangevinBlock, {}),
    "hmc": (HMCBlock, {}),
}
"""Block kinds a `[flow.stochastic]` table may name."""

STOCHASTIC_KEYS = {
    "kind",
    "count",
    "steps",
    "step_size",
    "lambdas",
    "placement",
    "train_lambda",
    "train_step_size",
    "n_leapfrog",
    "friction",
}
"""Keys of a `[flow.stochastic]` table."""


def _lambdas(lambdas, count: int) -> list[float]:
    if lambdas == "linear":
        return [(k + 1) / count for k in range(count)]
    if lambdas == "target":
        return [1.0] * count
    values = [float(v) for v in lambdas]
    if len(values) != count:
        raise ValueError(f"lambdas has {len(values)} entries for {count} blocks")
    return values


def _positions(placement, count: int, n_layers: int) -> list[int]:
    """Number of layers before each block."""
    if placement == "end":
        return [n_layers] * count
    if placement == "interleave":
        return [-(-(k + 1) * n_layers // count) for k in range(count)]
    if isinstance(placement, str):
        raise ValueError(f"placement must be 'interleave', 'end' or a list, got {placement!r}")
    after = [int(p) for p in placement]
    if len(after) != count or any(b < a for a, b in zip(after, after[1:], strict=False)):
        raise ValueError(f"placement must list {count} non-decreasing positions, got {after}")
    if after and not 0 <= after[0] <= after[-1] <= n_layers:
        raise ValueError(f"placement positions must lie in [0, {n_layers}], got {after}")
    return after


def add_stochastic_blocks(
    flow: Flow,
    target,
    kind: str | list[str] = "metropolis",
    count: int = 1,
    steps: int = 10,
    step_size: float = 0.25,
    lambdas: str | list[float] = "linear",
    placement: str | list[int] = "interleave",
    train_lambda: bool | None = None,
    train_step_size: bool = True,
    n_leapfrog: int = 5,
    friction: float = 1.0,
) -> Flow:
    r"""Insert `count` stochastic blocks into `flow` (a `Flow` whose transform is a `Compose`).

    Block $k$ ($k = 1..$`count`) targets $u_{\lambda_k} = (1-\lambda_k)\,u_\text{prior} +
    \lambda_k\,u_\text{target}$ with $u_\text{prior} = -\log p_z$ (the flow's base, up to a
    constant).

    Args:
        flow: the deterministic flow; its layers are kept (and shared, not copied).
        target: the target `Energy`.
        kind: a key of `BLOCK_KINDS`, or a list cycled over the blocks.
        count: number of blocks.
        steps: Markov steps per block.
        step_size: initial step size of every block (trainable unless `train_step_size=False`).
        lambdas: `"linear"` ($\lambda_k = k/\text{count}$), `"target"` (all 1) or a list.
        placement: `"interleave"` puts block $k$ after layer $\lceil kL/\text{count}\rceil$ of
            the $L$ layers; `"end"` puts all blocks after the last layer; a list of `count`
            non-decreasing positions $p_k \in \{0, \dots, L\}$ puts block $k$ after the
            first $p_k$ layers ($0$: before the first layer, on the base samples; $L$: after
            the last). Blocks at the same position run in list order.
        train_lambda, train_step_size: see `StochasticBlock`.
        n_leapfrog: Verlet steps per HMC proposal; friction: $\gamma$ of BAOAB.

    Returns:
        A new `Flow` with the same base and the blocks in its `Compose`.
    """
    layers = list(flow.transform.transforms)
    kinds = [kind] * int(count) if isinstance(kind, str) else list(kind)
    kinds = [kinds[k % len(kinds)] for k in range(int(count))]
    lams = _lambdas(lambdas, int(count))
    base = flow.base

    def prior(y: torch.Tensor) -> torch.Tensor:
        return -base.log_prob(y)

    blocks = []
    for name, lam in zip(kinds, lams, strict=True):
        if name not in BLOCK_KINDS:
            raise ValueError(f"unknown block kind '{name}' (known: {', '.join(BLOCK_KINDS)})")
        cls, extra = BLOCK_KINDS[name]
        extra = dict(extra)
        if cls is HMCBlock:
            extra["n_leapfrog"] = int(n_leapfrog)
        if cls is UnderdampedLangevinBlock:
            extra["friction"] = float(friction)
        if getattr(target, "periodic_mask", None) is not None:
            if cls is not MetropolisBlock:
                raise ValueError(
                    f"'{name}' blocks do not wrap periodic coordinates; use 'metropolis' blocks "
                    "for a target with a periodic_mask"
                )
            extra["periodic"] = target.periodic_mask
        blocks.append(
            cls(
                target,
                prior,
                lam=lam,
                step_size=step_size,
                n_steps=steps,
                train_lambda=train_lambda,
                train_step_size=train_step_size,
                **extra,
            )
        )
    after = _positions(placement, len(blocks), len(layers))
    out = [b for b, a in zip(blocks, after, strict=True) if a == 0]
    for i, layer in enumerate(layers):
        out.append(layer)
        out += [b for b, a in zip(blocks, after, strict=True) if a == i + 1]
    anchor = next(iter(list(flow.parameters()) + list(flow.buffers())), None)
    new = Flow(base, Compose(out))
    return new if anchor is None else new.to(device=anchor.device, dtype=anchor.dtype)


def realnvp_flow(
    target_or_event_shape,
    num_layers: int | None = None,
    hidden: int = 64,
    num_blocks: int = 2,
    loc=0.0,
    scale=1.0,
    affine: bool = True,
    seed: int | None = None,
) -> Flow:
    r"""RealNVP: affine coupling layers $x_B = z_B \odot e^{s(z_A)} + t(z_A)$, then an output
    affine (Dinh et al. 2017). Masks as `coupling_masks`; defaults: 6 couplings for $d = 2$,
    8 otherwise; ResidualNet conditioners of width `hidden`.

    Examples:
        >>> flow = realnvp_flow(2, seed=0)
        >>> flow.sample(4).x.shape
        torch.Size([4, 2])
    """
    shape = _event_shape(target_or_event_shape)
    dim = int(torch.Size(shape).numel())
    if dim < 2:
        raise ValueError("RealNVP needs at least two features")
    num_layers = (6 if dim == 2 else 8) if num_layers is None else int(num_layers)
    with _seeded(seed) as gen:
        layers = [
            nfa.affine_coupling(m, hidden, num_blocks) for m in coupling_masks(dim, num_layers, gen)
        ]
        layers += _output_affine(shape, None, loc, scale, affine)
    return Flow(_base(shape, None), Compose(layers))
