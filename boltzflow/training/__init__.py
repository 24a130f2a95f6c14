"""Losses and the training loop.

* :mod:`boltzflow.training.losses` -- ``reverse_kl``, ``nll``, ``mixed_kl``,
  ``forward_kl_is`` returning :class:`LossOutput` ``(loss, n_evaluations, n_nonfinite)``;
* :mod:`boltzflow.training.stages` -- :class:`Stage` (loss, steps, LR schedule, data);
* :mod:`boltzflow.training.trainer` -- :class:`Trainer` / :func:`train` over stages;
* :mod:`boltzflow.training.callbacks` -- :class:`EarlyStopping` and the callback base;
* :mod:`boltzflow.training.fit` -- :func:`fit_nll`, the short NLL loop samplers run on their
  own draws, and :func:`fit_affine_to_data`;
* :mod:`boltzflow.training.force_matching` -- ``force_matching`` and ``nll_force_matching``
  (Köhler, Krämer & Noé 2021) and the held-out ``force_rmse``.
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
from boltzflow.training.stages import Stage, cosine_warmup
from boltzflow.training.trainer import Trainer, TrainingResult, train

__all__ = [
    "Callback",
    "EarlyStopping",
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
    "reverse_kl",
    "soft_cap",
    "Stage",
    "Trainer",
    "TrainingResult",
    "cosine_warmup",
    "train",
]
