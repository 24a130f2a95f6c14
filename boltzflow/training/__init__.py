"""Losses and the training loop.

* [`boltzflow.training.losses`][boltzflow.training.losses] -- `reverse_kl`, `nll`, `mixed_kl`,
  `forward_kl_is` returning [`LossOutput`][boltzflow.training.losses.LossOutput]
  `(loss, n_evaluations, n_nonfinite)`;
* [`boltzflow.training.path_gradients`][boltzflow.training.path_gradients] --
  `path_reverse_kl` and `path_nll` (Vaitl et al. 2022, 2024), with fast and drop-in estimators,
  and [`boltzflow.training.path_monitor`][boltzflow.training.path_monitor] -- the
  `GradientVariance` callback (path vs standard gradient variance during training);
* [`boltzflow.training.stages`][boltzflow.training.stages] --
  [`Stage`][boltzflow.training.stages.Stage] (loss, steps, LR schedule, data);
* [`boltzflow.training.trainer`][boltzflow.training.trainer] --
  [`Trainer`][boltzflow.training.trainer.Trainer] / [`train`][boltzflow.training.trainer.train] over
  stages;
* [`boltzflow.training.callbacks`][boltzflow.training.callbacks] --
  [`EarlyStopping`][boltzflow.training.callbacks.EarlyStopping] and the callback base;
* [`boltzflow.training.fit`][boltzflow.training.fit] -- [`fit_nll`][boltzflow.training.fit.fit_nll],
  the short NLL loop samplers run on their own draws, and
  [`fit_affine_to_data`][boltzflow.training.fit.fit_affine_to_data];
* [`boltzflow.training.force_matching`][boltzflow.training.force_matching] -- `force_matching` and
  `nll_force_matching` (Köhler, Krämer & Noé 2021) and the held-out `force_rmse`.
"""

from boltzflow.training.callbacks import Callback, EarlyStopping, LoggingCallback
from boltzflow.training.fit import fit_affine_to_data, fit_nll
from boltzflow.training.force_matching import force_matching, force_rmse, nll_force_matching
from boltzflow.training.losses import (
    LossOutput,
    forward_kl_is,
    mixed_kl,
    nll,
    reverse_kl,
    soft_cap,
)
from boltzflow.training.path_gradients import path_nll, path_reverse_kl
from boltzflow.training.path_monitor import GradientVariance
from boltzflow.training.stages import Stage, cosine_warmup
from boltzflow.training.trainer import Trainer, TrainingResult, train

__all__ = [
    "Callback",
    "EarlyStopping",
    "GradientVariance",
    "fit_affine_to_data",
    "fit_nll",
    "force_matching",
    "force_rmse",
    "nll_force_matching",
    "LoggingCallback",
    "LossOutput",
    "forward_kl_is",
    "mixed_kl",
    "nll",
    "path_nll",
    "path_reverse_kl",
    "reverse_kl",
    "soft_cap",
    "Stage",
    "Trainer",
    "TrainingResult",
    "cosine_warmup",
    "train",
]
