r"""A weighted sum of training losses in one stage, and how a stage's `loss` is resolved.

A stage's `loss` may be a table of weights instead of one name:

```toml
[[training.stages]]
loss = { snf_nll = 0.5, snf_reverse_kl = 0.5 }
data = "..."
```

or, from Python, `train(flow, target, [{"loss": {"snf_nll": 0.5, "snf_reverse_kl": 0.5},
"data": x}])`. The stage then minimises

$$
L(\theta) = \sum_k w_k\,L_k(\theta),
$$

each $L_k$ evaluated on the same step: a data loss (`nll`, `snf_nll`, ...) on the stage's
minibatch, an energy loss (`reverse_kl`, `snf_reverse_kl`, ...) on as many flow samples as the
minibatch has rows. The 0.5 / 0.5 sum of maximum likelihood and reverse KL is the second
training phase of the stochastic-flow experiments (Wu, Köhler & Noé 2020); `mixed_kl` is the
same sum for deterministic flows with one weight.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping

import torch

from boltzflow.training.losses import LossOutput

__all__ = ["WeightedLoss", "needs_data", "resolve_loss", "loss_label"]


def needs_data(loss: Callable) -> bool:
    """Whether `loss` takes a minibatch of target samples (not a batch size) as `batch`: any
    callable with a true `needs_data` attribute (set on the built-in data losses where they
    are defined)."""
    return bool(getattr(loss, "needs_data", False))


def _named(name) -> Callable:
    if callable(name):
        return name
    from boltzflow.runs.registry import LOSSES, resolve

    return resolve(LOSSES, str(name), "loss")


def _accepted(fn: Callable, kwargs: dict) -> dict:
    """The keyword arguments of `kwargs` that `fn` accepts."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return kwargs
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return kwargs
    names = {p.name for p in params}
    return {k: v for k, v in kwargs.items() if k in names}


class WeightedLoss:
    r"""$L = \sum_k w_k L_k$: several losses of one training step, with their weights.

    Args:
        terms: `{loss: weight}`; a loss is a `LOSSES` registry name or a callable with the
            uniform signature `loss(flow, target, batch, generator=.., **kwargs)`. Weights are
            finite and non-negative, at least one positive.

    Calling it: `batch` is a data minibatch `[n, *event_shape]` when any term needs data
    (`needs_data`), then energy terms receive the batch size `n`; otherwise `batch` is a
    batch size passed to every term. The stage's extra keywords (`energy_cap`, ...) go to the
    terms whose signature accepts them. All terms share the step's generator. Returns a
    [`LossOutput`][boltzflow.training.losses.LossOutput] with the counts of all terms added.

    Examples:
        >>> loss = WeightedLoss({"snf_nll": 0.5, "snf_reverse_kl": 0.5})
        >>> loss.__name__, loss.needs_data
        ('0.5*snf_nll+0.5*snf_reverse_kl', True)
    """

    def __init__(self, terms: Mapping):
        if not terms:
            raise ValueError("a weighted loss needs at least one term")
        self.terms = []
        for name, weight in terms.items():
            weight = float(weight)
            if not (math.isfinite(weight) and weight >= 0):
                raise ValueError(f"loss weight of {name!r} must be finite and >= 0, got {weight}")
            label = name if isinstance(name, str) else getattr(name, "__name__", "loss")
            self.terms.append((label, _named(name), weight))
        if not any(w > 0 for _, _, w in self.terms):
            raise ValueError("a weighted loss needs a positive weight")
        self.needs_data = any(needs_data(fn) for _, fn, _ in self.terms)
        self.__name__ = "+".join(f"{w:g}*{label}" for label, _, w in self.terms)

    def __call__(self, flow, target, batch, generator=None, **kwargs) -> LossOutput:
        size = int(batch.shape[0]) if isinstance(batch, torch.Tensor) else int(batch)
        total, n_eval, n_bad = 0.0, 0, 0
        for _, fn, weight in self.terms:
            arg = batch if needs_data(fn) else size
            out = fn(flow, target, arg, generator=generator, **_accepted(fn, kwargs))
            if not isinstance(out, LossOutput):
                out = LossOutput(out, 0, 0)
            total = total + weight * out.loss
            n_eval, n_bad = n_eval + out.n_evaluations, n_bad + out.n_nonfinite
        return LossOutput(total, n_eval, n_bad)

    def __repr__(self) -> str:
        return f"WeightedLoss({self.__name__})"


def resolve_loss(loss) -> Callable:
    """The callable of a stage's `loss`: a `LOSSES` name, a `{name: weight}` table (a
    `WeightedLoss`) or a callable (returned as is)."""
    if isinstance(loss, Mapping):
        return WeightedLoss(loss)
    return _named(loss)


def loss_label(loss) -> str:
    """A stage's `loss` as text (`"snf_nll"`, `"0.5*snf_nll+0.5*snf_reverse_kl"`), for
    summaries and checkpoint fingerprints."""
    if isinstance(loss, str):
        return loss
    if isinstance(loss, Mapping):
        return "+".join(
            f"{float(w):g}*{k if isinstance(k, str) else k.__name__}" for k, w in loss.items()
        )
    return getattr(loss, "__name__", "?")
