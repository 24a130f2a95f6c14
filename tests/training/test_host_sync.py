"""The training loop does not wait for the device between read-backs.

Every read of a tensor's value on the host (`.item()`, `float()`, `bool()`, `int()` of a
tensor) goes through the ATen op `_local_scalar_dense`; on a GPU each one stalls the launch
queue until the device has caught up. A dispatch mode counts those reads during `fit` on a
flow made only of boltzflow's own layers (nflows' spline kernels read a flag per layer
themselves). With `sync_every=k` the loop reads back once per `k` steps; the per-step path
(`sync_every=1`), which reads every step, is the negative control for the counter.
"""

from __future__ import annotations

import functools

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from boltzflow.energies.gaussians import CorrelatedGaussian
from boltzflow.flows.affine import ElementwiseAffine
from boltzflow.flows.base import Flow
from boltzflow.flows.distributions import StandardNormal
from boltzflow.training.trainer import Trainer

STEPS, WINDOW = 20, 10


class HostReads(TorchDispatchMode):
    """Counts `aten._local_scalar_dense` calls (tensor values read on the host)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.n += 1
        return func(*args, **(kwargs or {}))


@functools.cache
def _reads(sync_every: int) -> tuple[int, Trainer]:
    flow = Flow(StandardNormal(2), ElementwiseAffine(2)).double()
    target = CorrelatedGaussian(mean=[3.0, -2.0], dim=2, condition_number=4.0, seed=0)
    stage = {"loss": "reverse_kl", "steps": STEPS, "batch_size": 64, "lr": 1e-2}
    trainer = Trainer(flow, target, [stage], seed=0, progress=False, sync_every=sync_every)
    with HostReads() as mode:
        trainer.fit()
    return mode.n, trainer


def test_sync_every_reads_back_once_per_window():
    reads, trainer = _reads(sync_every=WINDOW)
    assert reads <= 2 * (STEPS // WINDOW)  # the read-backs themselves, nothing per step
    losses = [r["loss"] for r in trainer.history]
    assert len(losses) == STEPS and all(isinstance(v, float) for v in losses)
    assert losses[-1] < losses[0]  # it trains


def test_per_step_reads_are_counted():
    """Negative control: the per-step path reads at least once a step, and the counter sees it."""
    reads, _ = _reads(sync_every=1)
    assert reads >= STEPS


def test_deferred_and_per_step_loops_train_alike():
    """Fused Adam with a device-side skip takes the same steps as the per-step loop."""
    _, a = _reads(sync_every=WINDOW)
    _, b = _reads(sync_every=1)
    la = torch.tensor([r["loss"] for r in a.history], dtype=torch.float64)
    lb = torch.tensor([r["loss"] for r in b.history], dtype=torch.float64)
    torch.testing.assert_close(la, lb, rtol=1e-6, atol=1e-8)
