r"""Gradient-variance diagnostics of the path and standard estimators, during training.

The variance of a gradient estimator is what path gradients change (Vaitl et al. 2022): their
per-sample variance goes to 0 as $q_\theta \to p$ while the standard estimator's does not. It
is measured as the trace of the per-sample gradient covariance,

$$
\operatorname{tr}\Sigma \approx b \sum_j \widehat{\operatorname{Var}}_m\big[g^{(m)}_j\big],
$$

from $M$ independent micro-batch gradients $g^{(m)}$ of $b$ samples each (the covariance of a
mean of $b$ samples is $\Sigma/b$). Both estimators see the same draws.

[`GradientVariance`][boltzflow.training.path_monitor.GradientVariance] is a trainer callback: on
every evaluation step of a stage that trains with a path loss it adds `grad_var_path` and
`grad_var_standard` to the history record, and at the start of such a stage it logs which
estimator (`"fast"` or `"dropin"`) the loss uses. The pair compared is
(`reverse_kl`, `path_reverse_kl`) for energy stages and (`nll`, `path_nll`) for data stages.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from boltzflow.progress import logger as run_log
from boltzflow.rng import make_generator
from boltzflow.training.callbacks import Callback
from boltzflow.training.losses import nll, reverse_kl
from boltzflow.training.path_gradients import (
    layers_without_score_rule,
    path_estimator,
    path_nll,
    path_reverse_kl,
)
from boltzflow.training.stages import seed_for

__all__ = [
    "gradient_variance",
    "path_kind",
    "GradientVariance",
    "path_callbacks",
    "path_gradient_summary",
    "variance_columns",
]


def path_kind(loss) -> str | None:
    """`"reverse"` or `"forward"` when `loss` (a registry name, a callable, or a weighted sum
    with `terms`) contains a path-gradient loss, else `None`."""
    if isinstance(loss, str):
        from boltzflow.runs.registry import LOSSES, resolve

        loss = resolve(LOSSES, loss, "loss")
    if isinstance(loss, dict):
        kinds = [path_kind(name) for name in loss]
    else:
        kinds = [path_kind(fn) for _, fn, _ in getattr(loss, "terms", [])]
        kinds.append(getattr(loss, "path_gradient", None))
    found = [k for k in kinds if k]
    return found[0] if found else None


def _flat_grad(flow, loss: torch.Tensor) -> torch.Tensor:
    params = [p for p in flow.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    parts = [
        (g if g is not None else torch.zeros_like(p)).reshape(-1)
        for g, p in zip(grads, params, strict=True)
    ]
    return torch.cat(parts)


def gradient_variance(
    flow,
    losses: dict,
    batch_of,
    micro_batches: int = 8,
    micro_batch_size: int = 32,
    seed: int = 0,
) -> dict[str, float]:
    r"""Trace of the per-sample gradient covariance of each loss, on shared draws.

    Args:
        flow: the flow whose parameter gradients are measured.
        losses: `{name: fn}` with `fn(batch, generator) -> LossOutput`.
        batch_of: `batch_of(micro_batch_size, generator)`: the `batch` argument of every loss
            (a batch size, or a tensor of data drawn with `generator`).
        micro_batches: $M \ge 2$ micro-batches.
        micro_batch_size: $b$ samples per micro-batch.
        seed: micro-batch $m$ draws from a generator seeded `seed_for(seed, m)`, the same for
            every loss, so the estimators are compared on the same samples.

    Returns:
        `{name: tr Σ}`; NaN when a micro-batch gradient is not finite.
    """
    if micro_batches < 2:
        raise ValueError("gradient_variance needs at least 2 micro-batches")
    device = next(iter(flow.parameters())).device
    grads: dict[str, list] = {name: [] for name in losses}
    for m in range(int(micro_batches)):
        for name, fn in losses.items():
            generator = make_generator(seed_for(seed, m), device)
            batch = batch_of(int(micro_batch_size), generator)
            grads[name].append(_flat_grad(flow, fn(batch, generator).loss).detach())
    out = {}
    for name, rows in grads.items():
        value = float(micro_batch_size * torch.stack(rows).var(0).sum())
        out[name] = value if math.isfinite(value) else math.nan
    return out


class GradientVariance(Callback):
    """Trainer callback: gradient variance of the path and standard estimators.

    Every `every` steps of a stage whose loss contains a path loss (or of every reverse-KL/NLL
    stage with `all_stages`), and at its last step, it adds `grad_var_path` and
    `grad_var_standard` ([`gradient_variance`][boltzflow.training.path_monitor.gradient_variance])
    to the step's history record and counts the energy evaluations it spent. At the start of a
    path stage it logs the estimator once.

    Args:
        micro_batches, micro_batch_size: $M$ and $b$ of the measurement.
        all_stages: measure standard `reverse_kl` and `nll` stages too (for comparisons).
        every: steps between measurements; `None` (default): the trainer's `eval_every`, or a
            tenth of the stage when the trainer does not evaluate (so a run without an
            evaluation schedule still records about ten points per stage).
    """

    def __init__(
        self, micro_batches: int = 8, micro_batch_size: int = 32, all_stages=False, every=None
    ):
        self.micro_batches, self.micro_batch_size = int(micro_batches), int(micro_batch_size)
        self.all_stages = bool(all_stages)
        if every is not None and int(every) < 1:
            raise ValueError(f"every must be a positive number of steps, got {every}")
        self.every = None if every is None else int(every)
        self.estimators: dict[int, str] = {}

    def _kind(self, stage) -> str | None:
        kind = path_kind(stage.loss)
        if kind is None and self.all_stages:
            name = stage.loss if isinstance(stage.loss, str) else None
            fn = getattr(stage.loss, "__name__", name)
            kind = {"reverse_kl": "reverse", "nll": "forward"}.get(name or fn)
        return kind

    def on_stage_begin(self, trainer, stage) -> None:
        if path_kind(stage.loss) is None:
            return
        estimator = stage.loss_kwargs.get("estimator", "auto")
        inverse = path_kind(stage.loss) == "forward"  # path_nll: the inverse score rules
        name = path_estimator(trainer.flow, estimator, inverse=inverse)
        self.estimators[trainer.stage_index] = name
        dropin = layers_without_score_rule(trainer.flow, inverse=inverse) if name == "fast" else []
        note = (
            f" (per-layer drop-in for {len(dropin)} layers without a fast rule)" if dropin else ""
        )
        run_log.info("stage %d: path gradients, %s estimator%s", trainer.stage_index, name, note)

    def _due(self, trainer, record: dict, stage) -> bool:
        """Whether `record` is a measurement step of its stage."""
        every = self.every or trainer.eval_every or max(1, int(stage.steps) // 10)
        local = record["step"] - (trainer.global_step - trainer.stage_step)  # step in its stage
        return local % every == 0 or local == int(stage.steps)

    def on_step_end(self, trainer, record: dict) -> None:
        stage = trainer.stages[record["stage"]]
        kind = self._kind(stage)
        if kind is None or not self._due(trainer, record, stage):
            return
        target, kwargs = trainer.target, dict(stage.loss_kwargs)
        if kind == "reverse":
            cap = kwargs.get("energy_cap")
            estimator = kwargs.get("estimator", "auto")
            losses = {
                "standard": lambda n, g: reverse_kl(trainer.flow, target, n, g, energy_cap=cap),
                "path": lambda n, g: path_reverse_kl(
                    trainer.flow, target, n, g, energy_cap=cap, estimator=estimator
                ),
            }

            def batch_of(n, g):
                return n

            spent = 2
        else:
            losses = {
                "standard": lambda x, g: nll(trainer.flow, target, x),
                "path": lambda x, g: path_nll(
                    trainer.flow, target, x, estimator=kwargs.get("estimator", "auto")
                ),
            }
            batch_of = _data_source(trainer, stage)
            spent = 1
        values = gradient_variance(
            trainer.flow,
            losses,
            batch_of,
            self.micro_batches,
            self.micro_batch_size,
            seed=seed_for(trainer.seed, 11, record["step"]),
        )
        trainer.energy_evaluations += spent * self.micro_batches * self.micro_batch_size
        record["grad_var_standard"], record["grad_var_path"] = values["standard"], values["path"]

    def state_dict(self) -> dict:
        return {"estimators": {str(k): v for k, v in self.estimators.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.estimators = {int(k): v for k, v in state.get("estimators", {}).items()}


def _data_source(trainer, stage):
    """`batch_of(n, generator)` drawing data rows for the NLL pair from the stage's data."""
    data = stage.data

    def batch_of(n, generator):
        if isinstance(data, torch.Tensor):
            rows = torch.randint(len(data), (n,), generator=generator, device=generator.device)
            x = data[rows.to(data.device)]
        else:
            fn = trainer.target.sample if data == "exact" else data
            x = fn(n, generator=generator)
        return x.to(device=trainer.device, dtype=trainer.dtype)

    return batch_of


def _stage_loss(stage):
    if isinstance(stage, dict):
        return stage["loss"], stage
    return stage.loss, stage.loss_kwargs


def path_callbacks(stages) -> list:
    """`[GradientVariance()]` when some stage (a `Stage` or a recipe table) trains with a path
    loss, else `[]`: what a run adds to its trainer's callbacks."""
    return [GradientVariance()] if any(path_kind(_stage_loss(s)[0]) for s in stages) else []


def variance_columns(result) -> dict:
    """Training-curve columns `grad_var_step`, `grad_var_path`, `grad_var_standard` of a
    [`TrainingResult`][boltzflow.training.stages.TrainingResult] (empty lists when not
    recorded)."""
    steps, path = result.column("grad_var_path")
    _, standard = result.column("grad_var_standard")
    return {
        "grad_var_step": steps,
        "grad_var_path": list(path),
        "grad_var_standard": list(standard),
    }


def path_gradient_summary(result, flow, stages) -> dict:
    """`{"path_gradient": {...}}` for the `training` block of `summary.json`: the estimator of
    each path stage and the recorded gradient variances (`{}` when no stage trains with a path
    loss).

    Args:
        result: the [`TrainingResult`][boltzflow.training.stages.TrainingResult].
        flow: the trained flow.
        stages: the [`Stage`][boltzflow.training.stages.Stage]s that were run, or the recipe's
            stage tables.
    """
    estimators = {}
    for i, stage in enumerate(stages):
        loss, kwargs = _stage_loss(stage)
        kind = path_kind(loss)
        if kind is not None:
            inverse = kind == "forward"
            name = path_estimator(flow, kwargs.get("estimator", "auto"), inverse=inverse)
            dropin = layers_without_score_rule(flow, inverse=inverse) if name == "fast" else []
            estimators[str(i)] = {"estimator": name, "per_layer_dropin": dropin}
    if not estimators or result is None:
        return {}
    columns = variance_columns(result)
    variance = {
        "step": columns["grad_var_step"].tolist(),
        "standard": np.asarray(columns["grad_var_standard"]).tolist(),
        "path": np.asarray(columns["grad_var_path"]).tolist(),
    }
    return {"path_gradient": {"estimator": estimators, "gradient_variance": variance}}
