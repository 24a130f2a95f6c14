"""Callbacks for [`Trainer`][boltzflow.training.trainer.Trainer].

A callback sees the trainer at fixed points of the loop and may ask it to end the current
stage by setting `trainer.stop_stage = True`. Callbacks with state implement
`state_dict`/`load_state_dict` (tensors, numbers, strings, lists and dicts only) so that
the trainer-state checkpoint restores them and a resumed run continues exactly.

Hooks, in the order the trainer calls them:

    on_train_begin(trainer)
      on_stage_begin(trainer, stage)          # not called again when resuming mid-stage
        on_step_end(trainer, record)          # record: the history entry of this step
      on_stage_end(trainer, stage)
    on_train_end(trainer, result)
"""

from __future__ import annotations

import copy
import logging
import math

__all__ = ["Callback", "EarlyStopping", "LoggingCallback"]

logger = logging.getLogger(__name__)


class Callback:
    """Base class: every hook is a no-op; stateless by default."""

    def on_train_begin(self, trainer) -> None:
        pass

    def on_stage_begin(self, trainer, stage) -> None:
        pass

    def on_step_end(self, trainer, record: dict) -> None:
        pass

    def on_stage_end(self, trainer, stage) -> None:
        pass

    def on_train_end(self, trainer, result) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class EarlyStopping(Callback):
    """End a stage when a monitored metric has not improved for `patience` evaluations.

    The metric is read from the history records that carry it, i.e. every `eval_every` steps
    of the trainer: `"ess_fraction"` (Kish ESS / N of fresh flow samples, larger is better)
    or `"mean_loss"` (mean training loss over the last `eval_every` steps, smaller is
    better; `"loss"` is accepted as an alias). The state is reset at the start of each stage.

    Args:
        monitor: record key to watch.
        patience: number of evaluations without improvement before stopping.
        min_delta: an improvement must exceed this amount.
        mode: `"max"` or `"min"`; inferred from `monitor` when `None`.
        restore_best: at the end of the stage, load the parameters of the best evaluation.
    """

    def __init__(
        self,
        monitor: str = "ess_fraction",
        patience: int = 5,
        min_delta: float = 0.0,
        mode: str | None = None,
        restore_best: bool = False,
    ):
        self.monitor = "mean_loss" if monitor == "loss" else monitor
        if mode is None:
            mode = "max" if self.monitor.startswith("ess") else "min"
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.mode = mode
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.restore_best = bool(restore_best)
        self._reset()

    def _reset(self) -> None:
        self.best = -math.inf if self.mode == "max" else math.inf
        self.best_step = -1
        self.wait = 0
        self.stopped_step = -1
        self._best_state = None

    def _improved(self, value: float) -> bool:
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def on_stage_begin(self, trainer, stage) -> None:
        self._reset()

    def on_step_end(self, trainer, record: dict) -> None:
        value = record.get(self.monitor)
        if value is None:
            return
        if math.isfinite(value) and self._improved(value):
            self.best, self.best_step, self.wait = float(value), int(record["step"]), 0
            if self.restore_best:
                self._best_state = copy.deepcopy(trainer.flow.state_dict())
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_step = int(record["step"])
            trainer.stop_stage = True
            logger.info(
                "early stop at step %d: %s did not improve on %.4g (step %d) for %d evaluations",
                self.stopped_step,
                self.monitor,
                self.best,
                self.best_step,
                self.wait,
            )

    def on_stage_end(self, trainer, stage) -> None:
        if self.restore_best and self._best_state is not None:
            trainer.flow.load_state_dict(self._best_state)

    def state_dict(self) -> dict:
        return {
            "best": self.best,
            "best_step": self.best_step,
            "wait": self.wait,
            "stopped_step": self.stopped_step,
            "best_state": self._best_state,
        }

    def load_state_dict(self, state: dict) -> None:
        self.best = float(state["best"])
        self.best_step = int(state["best_step"])
        self.wait = int(state["wait"])
        self.stopped_step = int(state["stopped_step"])
        self._best_state = state["best_state"]


class LoggingCallback(Callback):
    """Log the latest history record through `logging` every `every` steps."""

    def __init__(self, every: int = 100, level: int = logging.INFO):
        self.every = int(every)
        self.level = level

    def on_step_end(self, trainer, record: dict) -> None:
        if record["step"] % self.every == 0:
            items = " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
            )
            logger.log(self.level, "%s", items)
