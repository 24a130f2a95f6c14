"""Losses and the training loop.

* :mod:`boltzflow.training.losses` -- ``reverse_kl``, ``nll``, ``mixed_kl`` returning
  :class:`LossOutput` ``(loss, n_evaluations, n_nonfinite)``;
* :mod:`boltzflow.training.stages` -- :class:`Stage` (loss, steps, LR schedule, data);
* :mod:`boltzflow.training.trainer` -- :class:`Trainer` / :func:`train` over stages;
* :mod:`boltzflow.training.callbacks` -- :class:`EarlyStopping` and the callback base.
"""

from boltzflow.training.callbacks import Callback, EarlyStopping, LoggingCallback
from boltzflow.training.losses import LossOutput, mixed_kl, nll, reverse_kl, soft_cap
from boltzflow.training.stages import Stage, cosine_warmup
from boltzflow.training.trainer import Trainer, TrainingResult, train

__all__ = [
    "Callback",
    "EarlyStopping",
    "LoggingCallback",
    "LossOutput",
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
