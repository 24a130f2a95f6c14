"""How a run uses the machine: torch threads beside the energy workers, and data-parallel
training in several processes (`boltzflow run --threads N --nproc N`).

The thread rule itself lives in `boltzflow.hardware`; the process group in
`boltzflow.training.distributed`. This module applies both to a recipe run.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from boltzflow.training.distributed import world

__all__ = ["set_run_threads", "run_distributed"]


def set_run_threads(stack, threads, flow, recipe, target) -> int:
    """Apply the thread rule (or `threads`) for a run; the caller's count is restored when
    `stack` (a `contextlib.ExitStack`) closes.

    Local energy worker processes and the other processes of a distributed run count as
    workers: each takes a core, so torch threads plus processes never exceed the cores.
    Returns the thread count set.
    """
    from boltzflow.hardware import apply_threads

    pool = getattr(target, "pool", None)
    workers = pool.n_workers if getattr(pool, "kind", None) == "local" else 0
    workers += world()[1] - 1
    batch = max((int(st.get("batch_size", 256)) for st in recipe.stages), default=256)
    stack.callback(torch.set_num_threads, torch.get_num_threads())
    return apply_threads(threads, flow=flow, batch_size=batch, workers=workers)


def run_distributed(nproc: int, device: torch.device, out_dir: Path, **run_kwargs) -> dict:
    """`boltzflow.runs.pipeline.run(**run_kwargs)` in `nproc` new processes joined in one
    process group (gloo on CPU, NCCL with one GPU per process). Every process trains; rank 0
    samples and writes `out_dir`. Returns rank 0's summary, read back from `summary.json`.
    """
    from boltzflow.runs.pipeline import run
    from boltzflow.training.distributed import launch

    backend = "nccl" if device.type == "cuda" else "gloo"
    launch(run, int(nproc), backend=backend, out=out_dir, **run_kwargs)
    return json.loads((Path(out_dir) / "summary.json").read_text())
