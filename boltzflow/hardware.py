r"""CPU threads and wait policy: the one place that decides how many cores torch may use.

Why. Torch's default intra-op thread count is the number of cores, and its OpenMP threads
spin ("active" wait) between parallel regions. On a machine where another process is busy,
every small parallel region of a training step waits for a thread whose core someone else
holds: on 2 cores beside a multi-threaded CPU-bound job, a 60-D spline-coupling NLL step at
batch 256 took 152 ms with 1 thread and 8,310 ms with 2 (the issue that introduced this
module; `benchmarks/busy_cpu.py` measures it again). On an idle machine the same threads
make a step only 10–25 % faster for the flows the recipes train: the safe start is one
thread, and more are kept only where a measurement shows they pay.

The rule (`plan_threads`), for a process that trains a flow with $P$ parameters at
batch $B$ beside $W$ energy worker processes on $C$ usable cores:

$$
n_\text{threads} = \begin{cases}
1 & \text{if } P B < \text{LARGE\_STEP} \\
\max(1, C - W) & \text{otherwise,}
\end{cases}
$$

so torch threads and worker processes never ask for more cores than exist, and a small flow
never has a thread to wait for. `--threads` (or `threads=`) overrides the rule.

This is where a run *starts*. During training, `boltzflow run` then measures: the
[`ThreadTuner`][boltzflow.training.thread_tuning.ThreadTuner] times steps at 1 and at
$C - W$ threads and keeps the faster, probing again when the load changes. On an idle 2-core
machine the alanine-dipeptide NLL step (batch 256) takes 81 ms with 1 thread and 64 ms with 2;
beside a CPU-bound process, 2 threads take 980 ms and 1 thread stays near 80 ms.

OpenMP's wait (`set_wait_policy`): idle OpenMP threads spin for a short count
(`GOMP_SPINCOUNT` = `SPIN_COUNT`, tens of microseconds) and then sleep. Spinning forever
(`OMP_WAIT_POLICY=ACTIVE`) burns a core that another process needs; never spinning
(`PASSIVE`) makes every parallel region wait for a wake-up (the 2-thread step above took
100 ms, slower than 1 thread). OpenMP reads the setting once, when it loads, so the command
line sets it before it imports torch; a value in the user's environment is kept.
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = [
    "LARGE_STEP",
    "usable_cores",
    "plan_threads",
    "SPIN_COUNT",
    "set_wait_policy",
    "apply_threads",
    "flow_size",
]

log = logging.getLogger(__name__)

LARGE_STEP = 2**31
"""Parameters × batch of a training step from which intra-op threads are allowed (2³¹ ≈ 2.1 ×
10⁹, above every catalogue recipe; `benchmarks/busy_cpu.py --sizes` measures where threads
start to pay on a given machine; see docs/hardware.md)."""


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def flow_size(flow) -> int:
    """Number of trainable parameters of `flow` ($P$ in the rule)."""
    return int(sum(p.numel() for p in flow.parameters() if p.requires_grad))


def plan_threads(
    n_params: int, batch_size: int, *, workers: int = 0, cores: int | None = None
) -> int:
    """Intra-op torch threads for a training process (the rule in the module docstring).

    Args:
        n_params: trainable parameters of the flow.
        batch_size: samples per training step.
        workers: local energy worker processes running beside this one (each takes a core).
        cores: usable cores (default `usable_cores`).

    Returns:
        A thread count $\\ge 1$ with threads + workers $\\le$ cores whenever cores > workers.

    Examples:
        >>> plan_threads(100_000, 256, cores=2)
        1
        >>> plan_threads(10_000_000, 4096, workers=1, cores=8)
        7
    """
    cores = usable_cores() if cores is None else max(1, int(cores))
    if int(n_params) * int(batch_size) < LARGE_STEP:
        return 1
    return max(1, cores - max(0, int(workers)))


SPIN_COUNT = 30_000
"""Spins of an idle OpenMP thread before it sleeps (`GOMP_SPINCOUNT`; GNU OpenMP's default is
300,000 and, with `OMP_WAIT_POLICY=ACTIVE`, 3 × 10¹⁰). Idle 2-core medians of the alanine NLL
step at 2 threads: 74, 68, 64 and 66 ms at 3,000, 10,000, 30,000 and 100,000 spins."""


def set_wait_policy() -> dict:
    """Let idle OpenMP threads spin briefly, then sleep (`GOMP_SPINCOUNT=SPIN_COUNT`).

    Takes effect only if the OpenMP runtime has not been loaded yet, i.e. before `import
    torch`. A user's `OMP_WAIT_POLICY` or `GOMP_SPINCOUNT` is kept (then nothing is set).

    Returns:
        The OpenMP wait settings in force, e.g. `{"GOMP_SPINCOUNT": "30000"}`.
    """
    keys = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
    if not any(k in os.environ for k in keys):
        os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
        if "torch" in sys.modules:
            log.debug("GOMP_SPINCOUNT set after torch was imported: it may not take effect")
    return {k: os.environ[k] for k in keys if k in os.environ}


def apply_threads(
    threads: int | None, *, flow=None, batch_size: int = 256, workers: int = 0
) -> int:
    """Set torch's intra-op thread count: `threads` if given, else `plan_threads`.

    Args:
        threads: the user's explicit choice (`--threads`), or `None` for the rule.
        flow: the flow to be trained (its parameter count enters the rule).
        batch_size: the largest training batch.
        workers: local energy worker processes beside this one.

    Returns:
        The thread count set.
    """
    import torch

    if threads is None:
        n_params = flow_size(flow) if flow is not None else 0
        threads = plan_threads(n_params, batch_size, workers=workers)
    threads = max(1, int(threads))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    log.info("torch intra-op threads: %d (of %d usable cores)", threads, usable_cores())
    return threads
