r"""CPU threads and wait policy: the one place that decides how many cores torch may use.

Why. Torch's default intra-op thread count is the number of cores, and its OpenMP threads
spin ("active" wait) between parallel regions. On a machine where another process is busy,
every small parallel region of a training step waits for a thread whose core someone else
holds: on 2 cores beside a multi-threaded CPU-bound job, a 60-D spline-coupling NLL step at
batch 256 took 152 ms with 1 thread and 8,310 ms with 2 (the issue that introduced this
module; `benchmarks/busy_cpu.py` measures it again). Flows of the size the recipes train gain
little from intra-op threads on an idle machine; parallelism belongs in the energy worker
pool and in batching.

The rule (`plan_threads`), for a process that trains a flow with $P$ parameters at
batch $B$ beside $W$ energy worker processes on $C$ usable cores:

$$
n_\text{threads} = \begin{cases}
1 & \text{if } P B < \text{LARGE\_STEP} \\
\max(1, C - W) & \text{otherwise,}
\end{cases}
$$

so torch threads and worker processes never ask for more cores than exist, and a small flow
never has a thread to wait for. `--threads` (or `threads=`) overrides the rule. The
OpenMP wait policy is set to `PASSIVE` (`set_passive_wait`) so that threads that do
exist sleep instead of spinning on a core another process needs; OpenMP reads it when the
runtime loads, so the command line sets it before it imports torch.
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = [
    "LARGE_STEP",
    "usable_cores",
    "plan_threads",
    "set_passive_wait",
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


def set_passive_wait() -> bool:
    """Make idle OpenMP threads sleep instead of spinning (`OMP_WAIT_POLICY=PASSIVE`).

    Takes effect only if the OpenMP runtime has not been loaded yet, i.e. before `import
    torch`; a value the user set in the environment is kept. Returns whether the policy in
    force is passive.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    passive = os.environ["OMP_WAIT_POLICY"].upper() == "PASSIVE"
    if "torch" in sys.modules and passive:
        log.debug("OMP_WAIT_POLICY set after torch was imported: it may not take effect")
    return passive


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
