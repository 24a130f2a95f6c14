r"""The training loop: stages of a loss, Adam, clipping, cosine LR, evaluation, checkpoints.

A run is a list of [`Stage`][boltzflow.training.stages.Stage]\ s executed in order (e.g. NLL
pre-training on data, then reverse KL on energies). Each stage gets a fresh Adam optimizer (Kingma &
Ba 2015) with a linear-warmup + cosine-decay learning rate (Loshchilov & Hutter 2017, SGDR) and
gradient-norm clipping. Every `eval_every` steps the trainer draws `eval_samples` fresh
flow samples with a separate generator and records the Kish effective sample size of their
importance weights $\log w = -u(x) - \log q(x)$, the quantity a Boltzmann generator is
judged by (Noé et al. 2019).

Reproducibility: all randomness comes from three `torch.Generator`\ s seeded from `seed`
(flow samples for the loss, data minibatches, evaluation samples). Minibatches of a data
tensor follow a per-epoch permutation derived from `(seed, stage, epoch)`, so the data
stream is a pure function of the step. The trainer keeps no global state and never touches
the global torch RNG; the flow's initialisation is the builder's business. With a trainer-state
checkpoint, a resumed run ends with parameters bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch

from boltzflow.io import load_trainer_state, save_trainer_state
from boltzflow.progress import progress_bar
from boltzflow.rng import make_generator
from boltzflow.training.callbacks import Callback
from boltzflow.training.distributed import all_reduce_step, broadcast_parameters, share, world
from boltzflow.training.losses import LossOutput
from boltzflow.training.path_gradients import ForceCache
from boltzflow.training.stages import EpochSampler, Stage, TrainingResult, cosine_warmup, seed_for
from boltzflow.training.weighted import needs_data, resolve_loss
from boltzflow.weights import count_nonfinite, kish_ess, log_weights

__all__ = ["Stage", "Trainer", "TrainingResult", "train", "cosine_warmup"]

logger = logging.getLogger(__name__)


class Trainer:
    """Run training stages on `flow` towards `target`.

    Args:
        flow: a [`Flow`][boltzflow.flows.base.Flow] (any `nn.Module` with `sample`/`log_prob`).
        target: an [`Energy`][boltzflow.energies.base.Energy].
        stages: [`Stage`][boltzflow.training.stages.Stage] objects or dicts (see
            [`Stage.from_dict`][boltzflow.training.stages.Stage.from_dict]).
        seed: seeds the trainer's generators.
        callbacks: [`Callback`][boltzflow.training.callbacks.Callback] instances.
        eval_every: evaluate every this many steps of a stage (`None`: never).
        eval_samples: fresh flow samples for the held-out ESS (0: record `mean_loss` only).
        checkpoint_every: save the trainer state to `checkpoint_path` every this many steps
            (and at the end).
        checkpoint_path: file for the trainer state.
        sync_every: read the step's loss and gradient norm back to the host every this many
            steps (default 1 on a CPU, where it costs nothing, and 64 on a GPU); between reads
            the loop never waits for the device, and a non-finite step is skipped on the
            device (fused Adam). Callbacks see each step's record when it is read back.
        compile: run each stage's loss through `torch.compile` (fewer, fused kernels per
            step; the first steps pay for compilation).
        progress: `False` shows nothing; otherwise a tqdm bar on a terminal and a log line
            every ~30 s elsewhere
            ([`boltzflow.progress.progress_bar`][boltzflow.progress.progress_bar]).

    A stage whose loss takes the target's forces at its data (`path_nll`) on a data tensor
    evaluates each row's force once, when the row is first drawn, and reuses it in later
    epochs ([`ForceCache`][boltzflow.training.path_gradients.ForceCache]); the evaluations are
    counted in `energy_evaluations`.
    """

    def __init__(
        self,
        flow,
        target,
        stages: Sequence[Stage | dict],
        *,
        seed: int = 0,
        callbacks: Sequence[Callback] = (),
        eval_every: int | None = None,
        eval_samples: int = 1024,
        checkpoint_every: int | None = None,
        checkpoint_path=None,
        progress: bool | None = None,
        sync_every: int | None = None,
        compile: bool = False,
    ):
        self.flow, self.target = flow, target
        self.stages = [s if isinstance(s, Stage) else Stage.from_dict(s) for s in stages]
        self.seed = int(seed)
        self.callbacks = list(callbacks)
        self.eval_every, self.eval_samples = eval_every, int(eval_samples)
        if checkpoint_every is not None and checkpoint_path is None:
            raise ValueError("checkpoint_every needs checkpoint_path")
        self.checkpoint_every, self.checkpoint_path = checkpoint_every, checkpoint_path
        self.progress = progress
        anchor = next(iter(list(flow.parameters()) + list(flow.buffers())))
        self.device, self.dtype = anchor.device, anchor.dtype
        # Under torch.distributed each process draws its own share of the batch (its own
        # sample and data streams) and the same evaluation samples (so all decide alike).
        self.rank, self.world_size = world()
        broadcast_parameters(flow)
        per_rank = (self.rank,) if self.rank else ()
        streams = (("sample", per_rank), ("data", per_rank), ("eval", ()))
        self.generators = {
            name: make_generator(seed_for(self.seed, i, *extra), self.device)
            for i, (name, extra) in enumerate(streams)
        }
        self.stage_index = self.stage_step = self.global_step = 0
        self.energy_evaluations = self.n_skipped_steps = 0
        self.wall_seconds = 0.0
        self.history: list[dict] = []
        self.stop_stage = False
        self.optimizer = self.scheduler = None
        self._loss_fn: Callable | None = None
        self._pending: list[dict] = []  # steps whose numbers are still on the device
        self.sync_every = int(sync_every or (1 if self.device.type == "cpu" else 64))
        self.compile = bool(compile)
        self._sampler: EpochSampler | None = None
        self._forces: ForceCache | None = None  # forces at a data stage's rows, for path_nll
        self._rows: torch.Tensor | None = None  # the data rows of the current step

    # ----------------------------------------------------------------- stages
    def _begin_stage(self) -> None:
        stage = self.stages[self.stage_index]
        self._loss_fn = resolve_loss(stage.loss)
        if stage.data is None and needs_data(self._loss_fn):
            raise ValueError(f"stage {self.stage_index}: loss {stage.loss!r} needs data")
        self._forces = None
        if getattr(self._loss_fn, "takes_forces", False) and isinstance(stage.data, torch.Tensor):
            self._forces = ForceCache(self.target, stage.data)
        if self.compile:
            self._loss_fn = torch.compile(self._loss_fn)
        params = [p for p in self.flow.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(
            params, lr=stage.lr, weight_decay=stage.weight_decay, fused=self.sync_every > 1 or None
        )
        if stage.schedule not in ("cosine", "constant"):
            raise ValueError(f"unknown schedule {stage.schedule!r}")
        factor = cosine_warmup(
            stage.steps, stage.warmup_steps, stage.min_lr_factor, stage.schedule == "cosine"
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    def _batch(self, stage: Stage):
        """The `batch` argument of the loss at the current step (this process's share of it
        under torch.distributed: rows `share(batch_size, rank, world_size)`)."""
        n = int(stage.batch_size)
        lo, hi = share(n, self.rank, self.world_size)
        if stage.data is None:
            return hi - lo
        if isinstance(stage.data, torch.Tensor):
            key = (self.seed, 3, self.stage_index)
            if self._sampler is None or self._sampler.key != key:
                self._sampler = EpochSampler(len(stage.data), key)
            self._rows = self._sampler.indices(self.stage_step, n)[lo:hi]
            x = stage.data[self._rows]
        else:
            fn = self.target.sample if stage.data == "exact" else stage.data
            x = fn(hi - lo, generator=self.generators["data"])
        return x.to(device=self.device, dtype=self.dtype)

    # ------------------------------------------------------------------- step
    def _step(self, stage: Stage) -> dict:
        self.flow.train()
        before = getattr(self.target, "n_evaluations", 0)
        self.optimizer.zero_grad(set_to_none=True)
        batch, kwargs = self._batch(stage), dict(stage.loss_kwargs)
        if self._forces is not None:  # each data point's force is evaluated once per stage
            known = self._forces.n_evaluations
            kwargs["forces"] = self._forces(self._rows).to(device=self.device, dtype=self.dtype)
            self.energy_evaluations += self._forces.n_evaluations - known
        out = self._loss_fn(
            self.flow, self.target, batch, generator=self.generators["sample"], **kwargs
        )
        if not isinstance(out, LossOutput):
            out = LossOutput(out, getattr(self.target, "n_evaluations", 0) - before, 0)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        # to the parameters only: skips e.g. the input copies of the path-gradient score rules
        out.loss.backward(inputs=[p for p in params if p.requires_grad] or None)
        if self.world_size > 1:  # gradient of the mean loss over the global batch
            lo, hi = share(int(stage.batch_size), self.rank, self.world_size)
            counts = [out.n_evaluations, out.n_nonfinite]
            counts = torch.tensor(counts, dtype=out.loss.dtype, device=out.loss.device)
            scalars = torch.cat([out.loss.detach().reshape(1), counts])
            scalars = all_reduce_step(params, (hi - lo) / int(stage.batch_size), scalars)
            out = LossOutput(scalars[0], int(scalars[1]), int(scalars[2]))
        max_norm = math.inf if stage.clip_grad_norm is None else float(stage.clip_grad_norm)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        loss = out.loss.detach()
        lr = float(self.optimizer.param_groups[0]["lr"])
        bad = ~(torch.isfinite(loss) & torch.isfinite(grad_norm))
        if self.sync_every > 1:  # a non-finite step is skipped on the device (fused Adam)
            self.optimizer.found_inf = bad.to(torch.float32)
            self.optimizer.step()
        elif not bool(bad):  # one host read per step (free on a CPU)
            self.optimizer.step()
        with warnings.catch_warnings():  # the schedule advances with the step count
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()
        self.energy_evaluations += int(out.n_evaluations)
        self.stage_step += 1
        self.global_step += 1
        return {
            "stage": self.stage_index,
            "step": self.global_step,
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "n_nonfinite": out.n_nonfinite,
            "energy_evaluations": self.energy_evaluations,
        }

    def _flush(self, bar, evaluate: bool) -> None:
        """Read the pending steps' numbers back from the device in one transfer, then account
        for them in order: skipped steps, evaluation (of the last, when due), history,
        callbacks and progress."""
        pending, self._pending = self._pending, []
        keys = ("loss", "grad_norm", "n_nonfinite")
        cells = [torch.as_tensor(r[k], device=self.device).double() for r in pending for k in keys]
        values = torch.stack(cells).tolist()
        for i, record in enumerate(pending):
            loss, grad_norm, n_bad = values[3 * i : 3 * i + 3]
            record.update(loss=loss, grad_norm=grad_norm, n_nonfinite=int(n_bad))
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                self.n_skipped_steps += 1
                logger.warning(
                    "step %d skipped: loss %g, gradient norm %g", record["step"], loss, grad_norm
                )
            if evaluate and i == len(pending) - 1:
                k = self.eval_every - 1  # earlier steps of this evaluation window
                window = [r["loss"] for r in self.history[len(self.history) - k :]]
                record["mean_loss"] = float(np.mean(window + [loss]))
                if self.eval_samples > 0:
                    record.update(self.evaluate())
                record["energy_evaluations"] = self.energy_evaluations
            self.history.append(record)
            for cb in self.callbacks:
                cb.on_step_end(self, record)
            bar.update(1)
            if record["step"] % 10 == 0 or "ess_fraction" in record:
                self._postfix(bar)

    @torch.no_grad()
    def evaluate(self, n: int | None = None) -> dict:
        """Kish ESS fraction of `n` fresh flow samples (uses the evaluation generator)."""
        n = self.eval_samples if n is None else int(n)
        was_training = self.flow.training
        self.flow.eval()
        sample = self.flow.sample(n, generator=self.generators["eval"])
        log_w = log_weights(self.target, sample.x, sample.log_q)
        self.flow.train(was_training)
        self.energy_evaluations += n
        return {
            "ess_fraction": kish_ess(log_w) / n,
            "eval_nonfinite": count_nonfinite(log_w),
        }

    # -------------------------------------------------------------------- run
    def fit(self, resume_from=None) -> TrainingResult:
        """Run (or, with `resume_from` a trainer-state file, continue) all stages."""
        if resume_from is not None:
            self.load_state_dict(load_trainer_state(resume_from, map_location=self.device))
        total = sum(s.steps for s in self.stages)
        bar = progress_bar(
            total,
            "training",
            enabled=self.progress if self.rank == 0 else False,
            initial=min(self.global_step, total),
        )
        t0 = time.perf_counter() - self.wall_seconds
        for cb in self.callbacks:
            cb.on_train_begin(self)
        try:
            while self.stage_index < len(self.stages):
                stage = self.stages[self.stage_index]
                if self.optimizer is None:
                    self._begin_stage()
                if self.stage_step == 0:
                    for cb in self.callbacks:
                        cb.on_stage_begin(self, stage)
                while self.stage_step < stage.steps and not self.stop_stage:
                    record = self._step(stage)
                    self.wall_seconds = record["wall_time"] = time.perf_counter() - t0
                    self._pending.append(record)
                    due = bool(self.eval_every) and self.stage_step % self.eval_every == 0
                    save = bool(self.checkpoint_every) and (
                        self.global_step % self.checkpoint_every == 0
                    )
                    last = self.stage_step >= stage.steps
                    if due or save or last or len(self._pending) >= self.sync_every:
                        self._flush(bar, evaluate=due)
                    if save:
                        self.save(self.checkpoint_path)
                for cb in self.callbacks:
                    cb.on_stage_end(self, stage)
                self.stage_index, self.stage_step, self.stop_stage = self.stage_index + 1, 0, False
                self.optimizer = self.scheduler = None
        finally:
            bar.close()
        self.wall_seconds = time.perf_counter() - t0
        if self.checkpoint_path is not None:
            self.save(self.checkpoint_path)
        result = TrainingResult(
            self.history,
            self.global_step,
            self.energy_evaluations,
            self.wall_seconds,
            self.n_skipped_steps,
        )
        for cb in self.callbacks:
            cb.on_train_end(self, result)
        return result

    def _postfix(self, bar) -> None:
        last = self.history[-1]
        post = {"loss": f"{last['loss']:.4g}"}
        ess = [r["ess_fraction"] for r in self.history[-200:] if "ess_fraction" in r]
        if ess:
            post["ess"] = f"{ess[-1]:.3f}"
        bar.set_postfix(post, refresh=False)

    # ------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict:
        """Everything needed to resume exactly (tensors, numbers, strings, lists, dicts)."""
        return {
            "seed": self.seed,
            "stages": [s.fingerprint() for s in self.stages],
            "stage_index": self.stage_index,
            "stage_step": self.stage_step,
            "global_step": self.global_step,
            "stop_stage": self.stop_stage,
            "flow": self.flow.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "generators": {k: g.get_state() for k, g in self.generators.items()},
            "energy_evaluations": self.energy_evaluations,
            "n_skipped_steps": self.n_skipped_steps,
            "wall_seconds": self.wall_seconds,
            "history": self.history,
            "callbacks": [cb.state_dict() for cb in self.callbacks],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a [`state_dict`][boltzflow.training.trainer.Trainer.state_dict]; the stages must
        match the saved run's."""
        mine = [s.fingerprint() for s in self.stages]
        if state["stages"] != mine:
            raise ValueError(f"checkpoint stages {state['stages']} differ from {mine}")
        if len(state["callbacks"]) != len(self.callbacks):
            raise ValueError("checkpoint was written with a different number of callbacks")
        self.flow.load_state_dict(state["flow"])
        for key in ("seed", "stage_index", "stage_step", "global_step", "energy_evaluations"):
            setattr(self, key, int(state[key]))
        self.n_skipped_steps = int(state["n_skipped_steps"])
        self.stop_stage = bool(state["stop_stage"])
        self.wall_seconds = float(state["wall_seconds"])
        self.history = list(state["history"])
        for k, g in self.generators.items():
            g.set_state(state["generators"][k].cpu())
        for cb, s in zip(self.callbacks, state["callbacks"], strict=True):
            cb.load_state_dict(s)
        self.optimizer = self.scheduler = None
        if state["optimizer"] is not None and self.stage_index < len(self.stages):
            self._begin_stage()
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])

    def save(self, path) -> None:
        """Write the trainer state to `path` (atomically; rank 0 only under torch.distributed)."""
        if self.rank == 0:
            save_trainer_state(path, self.state_dict())


def train(flow, target, stages: Sequence[Stage | dict], **kwargs) -> TrainingResult:
    r"""Train `flow` towards `target` through `stages`: `Trainer(...).fit()` in one call.

    Each stage minimises its loss over its steps with Adam, e.g. reverse KL
    $\mathbb E_q[u + \log q]$, the NLL $-\mathbb E_p[\log q]$ on data, or
    `forward_kl_is` ([`boltzflow.training.losses`][boltzflow.training.losses]).

    Args:
        flow: the flow to train (in place).
        target: the [`Energy`][boltzflow.energies.base.Energy] (kT), or `None` for data-only
            stages.
        stages: [`Stage`][boltzflow.training.stages.Stage] objects or dicts of their fields.
        **kwargs: [`Trainer`][boltzflow.training.trainer.Trainer] options (`seed`, `callbacks`,
            `eval_every`, `progress`, checkpoints) and `resume_from` (a trainer-state file).

    Returns:
        [`TrainingResult`][boltzflow.training.trainer.TrainingResult] (history, steps, energy
        evaluations, wall seconds).
    """
    resume_from = kwargs.pop("resume_from", None)
    return Trainer(flow, target, stages, **kwargs).fit(resume_from=resume_from)
