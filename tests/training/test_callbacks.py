"""Early stopping and logging callbacks."""

from __future__ import annotations

import logging

import pytest
import torch

from boltzflow.training.callbacks import Callback, EarlyStopping, LoggingCallback
from boltzflow.training.trainer import Stage, Trainer, train

from .helpers import affine_flow, exact_flow, gaussian_target

torch.set_num_threads(1)


def test_early_stopping_on_loss_ends_only_that_stage():
    """With min_delta larger than any change, the first evaluation is the best: the stage ends
    after 1 + patience evaluations; the state is reset for the next stage, which is shorter
    than that and runs in full."""
    stop = EarlyStopping(monitor="loss", patience=2, min_delta=1e3)
    stages = [Stage("reverse_kl", 100, 1e-3, 32), Stage("reverse_kl", 12, 1e-3, 32)]
    result = train(
        affine_flow(),
        gaussian_target(),
        stages,
        callbacks=[stop],
        eval_every=5,
        eval_samples=0,
        progress=False,
    )
    per_stage = [sum(r["stage"] == i for r in result.history) for i in (0, 1)]
    assert per_stage == [15, 12]
    assert stop.best_step == 15 + 5 and stop.wait == 1  # reset at the start of stage 1
    steps, mean_loss = result.column("mean_loss")
    assert list(steps[:3]) == [5, 10, 15]
    losses = [r["loss"] for r in result.history]
    assert mean_loss[0] == pytest.approx(sum(losses[:5]) / 5)


def test_early_stopping_on_ess_with_exact_flow():
    """An exact flow has ESS fraction 1 (up to the gradient noise of training at lr 1e-4)."""
    stop = EarlyStopping(patience=3, min_delta=1e-3)
    result = train(
        exact_flow(),
        gaussian_target(),
        [Stage("reverse_kl", 200, 1e-4, 64)],
        callbacks=[stop],
        eval_every=10,
        eval_samples=256,
        progress=False,
    )
    _, ess = result.column("ess_fraction")
    assert ess.min() > 0.999
    assert result.steps == 40 and stop.stopped_step == 40


def test_no_early_stop_while_improving():
    """Negative control: a flow that keeps learning is not stopped."""
    stop = EarlyStopping(patience=2)
    result = train(
        affine_flow(),
        gaussian_target(),
        [Stage("reverse_kl", 60, 0.02, 128, schedule="constant")],
        callbacks=[stop],
        eval_every=20,
        eval_samples=2000,
        progress=False,
    )
    assert result.steps == 60 and stop.stopped_step == -1


def test_restore_best_loads_best_parameters():
    class Snapshot(Callback):
        def __init__(self):
            self.states = {}

        def on_step_end(self, trainer, record):
            if "ess_fraction" in record:
                self.states[record["step"]] = {
                    k: v.clone() for k, v in trainer.flow.state_dict().items()
                }

    snap = Snapshot()
    stop = EarlyStopping(patience=50, restore_best=True)
    flow = affine_flow()
    stages = [Stage("reverse_kl", 40, 0.3, 16, schedule="constant", clip_grad_norm=None)]
    train(flow, gaussian_target(), stages, callbacks=[stop, snap], eval_every=5, progress=False)
    best = snap.states[stop.best_step]
    assert all(torch.equal(v, best[k]) for k, v in flow.state_dict().items())


def test_early_stopping_state_survives_resume(tmp_path):
    class InterruptAt(Callback):
        def on_step_end(self, trainer, record):
            if record["step"] == 23:
                raise KeyboardInterrupt

    def make(callbacks, **kw):
        stage = Stage("reverse_kl", 100, 1e-3, 32)
        return Trainer(
            affine_flow(),
            gaussian_target(),
            [stage],
            callbacks=callbacks,
            eval_every=5,
            eval_samples=0,
            progress=False,
            **kw,
        )

    ref_stop = EarlyStopping(monitor="loss", patience=4, min_delta=1e3)
    ref = make([ref_stop]).fit()
    ckpt = tmp_path / "t.pt"
    with pytest.raises(KeyboardInterrupt):
        make(
            [EarlyStopping(monitor="loss", patience=4, min_delta=1e3), InterruptAt()],
            checkpoint_every=20,
            checkpoint_path=ckpt,
        ).fit()
    stop = EarlyStopping(monitor="loss", patience=4, min_delta=1e3)
    resumed = make([stop, Callback()]).fit(resume_from=ckpt)
    assert ref.steps == resumed.steps == 25
    assert stop.stopped_step == ref_stop.stopped_step == 25


def test_logging_callback(caplog):
    with caplog.at_level(logging.INFO, logger="boltzflow.training.callbacks"):
        train(
            affine_flow(),
            gaussian_target(),
            [Stage("reverse_kl", 6, 1e-3, 8)],
            callbacks=[LoggingCallback(every=3)],
            progress=False,
        )
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and lines[0].startswith("stage=0 step=3 loss=")


def test_early_stopping_validates_arguments():
    with pytest.raises(ValueError):
        EarlyStopping(patience=0)
    with pytest.raises(ValueError):
        EarlyStopping(mode="up")
    assert EarlyStopping(monitor="loss").mode == "min"
    assert EarlyStopping(monitor="ess_fraction").mode == "max"


@pytest.mark.parametrize(
    ("eval_every", "every", "expected"),
    [
        (None, None, list(range(14, 33, 2))),  # a tenth of the 20-step stage
        (5, None, [17, 22, 27, 32]),  # the trainer's evaluation steps
        (None, 7, [19, 26, 32]),  # its own cadence, and the stage's last step
    ],
)
def test_gradient_variance_is_measured_without_an_evaluation_schedule(eval_every, every, expected):
    """A run that never evaluates still records the path/standard variance about ten times per
    path stage (and at its last step); the first, maximum-likelihood stage is not measured."""
    from boltzflow.training.path_monitor import GradientVariance

    target = gaussian_target()
    data = target.sample(64, generator=torch.Generator().manual_seed(0))
    stages = [Stage("nll", 12, 1e-3, 16, data=data), Stage("path_reverse_kl", 20, 1e-3, 16)]
    monitor = GradientVariance(micro_batches=2, micro_batch_size=4, every=every)
    result = train(
        affine_flow(), target, stages, callbacks=[monitor], eval_every=eval_every, progress=False
    )
    measured = [r["step"] for r in result.history if "grad_var_path" in r]
    assert measured == expected
    assert all(r["grad_var_standard"] > 0 for r in result.history if "grad_var_path" in r)
    with pytest.raises(ValueError, match="positive"):
        GradientVariance(every=0)
