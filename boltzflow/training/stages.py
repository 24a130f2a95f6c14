r"""Training stages: what to optimise, for how long, on which data, with which LR schedule.

A [`Stage`][boltzflow.training.stages.Stage] is the unit a recipe's `[[training.stages]]` table
describes. The learning rate follows [`cosine_warmup`][boltzflow.training.stages.cosine_warmup]
(linear warmup, then cosine decay; Loshchilov & Hutter 2017, SGDR). Minibatches of a data tensor
come from [`EpochSampler`][boltzflow.training.stages.EpochSampler]: each epoch is a fresh
permutation derived from `(seed, stage, epoch)`, so the data stream is a pure function of the step
and a resumed run sees exactly the same batches.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["Stage", "cosine_warmup", "EpochSampler", "seed_for", "TrainingResult"]


def seed_for(*keys: int) -> int:
    """An independent 63-bit seed for the random stream named by `keys` (numpy SeedSequence)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> 1)


@dataclass
class Stage:
    """One training stage.

    Attributes:
        loss: a `LOSSES` registry name (`"reverse_kl"`, `"nll"`, `"mixed"`), a
            `"module:attr"` path, or a callable `loss(flow, target, batch, generator=..,
            **loss_kwargs)` returning a [`LossOutput`][boltzflow.training.losses.LossOutput] or a
            scalar tensor, or a table `{name: weight}` of such losses, minimised as their
            weighted sum ([`WeightedLoss`][boltzflow.training.weighted.WeightedLoss]).
        steps: number of optimizer steps.
        lr: peak learning rate.
        batch_size: flow samples (reverse KL) or data points (NLL, mixed) per step.
        data: for data losses: a tensor `[n, *event_shape]` (minibatched without replacement,
            reshuffled every epoch), a callable `data(batch_size, generator=g) -> Tensor`, or
            `"exact"` for `target.sample`. When given, the loss receives the minibatch as
            `batch`; otherwise it receives `batch_size`.
        schedule: `"cosine"` (linear warmup, cosine decay to `min_lr_factor * lr`) or
            `"constant"` (warmup only).
        warmup_steps: steps of linear warmup from `lr / warmup_steps`.
        min_lr_factor: final learning rate as a fraction of `lr`.
        weight_decay: Adam L2 penalty.
        clip_grad_norm: maximum global gradient norm (`None`: no clipping).
        loss_kwargs: extra keyword arguments for the loss (`energy_cap`, `weight_forward`).
    """

    loss: str | Callable | dict = "reverse_kl"
    steps: int = 1000
    lr: float = 1e-3
    batch_size: int = 256
    data: Any = None
    schedule: str = "cosine"
    warmup_steps: int = 0
    min_lr_factor: float = 0.0
    weight_decay: float = 0.0
    clip_grad_norm: float | None = 100.0
    loss_kwargs: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, spec: dict) -> Stage:
        """Build from a recipe table; keys that are not fields go to `loss_kwargs`."""
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in spec.items() if k in names}
        extra = {k: v for k, v in spec.items() if k not in names}
        known["loss_kwargs"] = {**known.get("loss_kwargs", {}), **extra}
        return cls(**known)

    def fingerprint(self) -> dict:
        """What must agree between a checkpoint and the run resuming from it."""
        from boltzflow.training.weighted import loss_label

        return {
            "loss": loss_label(self.loss),
            "steps": int(self.steps),
            "batch_size": int(self.batch_size),
        }


def cosine_warmup(
    total_steps: int, warmup_steps: int = 0, min_factor: float = 0.0, cosine: bool = True
) -> Callable[[int], float]:
    r"""LR factor at step $t$: $(t+1)/W$ for $t < W$, then
    $m + (1-m)\,\tfrac12\,[1 + \cos(\pi\,(t-W)/(T-W))]$ (or 1 if not `cosine`)."""

    def factor(t: int) -> float:
        if t < warmup_steps:
            return (t + 1) / warmup_steps
        if not cosine or total_steps <= warmup_steps:
            return 1.0
        progress = min(1.0, (t - warmup_steps) / (total_steps - warmup_steps))
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class EpochSampler:
    """Row indices of minibatches drawn without replacement, reshuffled every epoch.

    Batch `k` of size `n` is rows `[k n, (k+1) n)` of the concatenation of per-epoch
    permutations of `range(size)`, epoch `e` being `randperm(size)` under
    `seed_for(*key, e)`. Only the current epoch's permutation is cached.
    """

    def __init__(self, size: int, key: tuple[int, ...]):
        self.size, self.key = int(size), tuple(int(k) for k in key)
        self._epoch, self._perm = -1, None

    def indices(self, step: int, n: int) -> torch.Tensor:
        start, out = int(step) * n, []
        while n > 0:
            epoch, offset = divmod(start, self.size)
            if epoch != self._epoch:
                # deliberate CPU generator: index permutations, the same stream on any device
                g = torch.Generator().manual_seed(seed_for(*self.key, epoch))
                self._epoch, self._perm = epoch, torch.randperm(self.size, generator=g)
            take = min(n, self.size - offset)
            out.append(self._perm[offset : offset + take])
            start, n = start + take, n - take
        return torch.cat(out)


@dataclass
class TrainingResult:
    """What a run produced. `history` holds one dict per step with `stage`, `step`
    (global), `loss`, `lr`, `grad_norm`, `n_nonfinite`, `energy_evaluations`
    (cumulative) and `wall_time` (s); every `eval_every` steps also `mean_loss`,
    `ess_fraction` and `eval_nonfinite`."""

    history: list
    steps: int
    energy_evaluations: int
    wall_seconds: float
    n_skipped_steps: int = 0

    def column(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """`(steps, values)` of the records that carry `key` (for training-curve plots)."""
        rows = [(r["step"], r[key]) for r in self.history if r.get(key) is not None]
        steps = np.array([s for s, _ in rows], dtype=np.int64)
        return steps, np.array([v for _, v in rows], dtype=np.float64)

    def summary(self) -> dict:
        """The `training` block of `summary.json` (without the loss name)."""
        return {
            "steps": self.steps,
            "energy_evaluations": self.energy_evaluations,
            "wall_seconds": self.wall_seconds,
            "n_skipped_steps": self.n_skipped_steps,
        }
