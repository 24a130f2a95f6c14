"""How a run uses the machine: torch threads beside the energy workers, and data-parallel
training in several processes (`boltzflow run --threads N --nproc N`).

The thread rule itself lives in `boltzflow.hardware`; the process group in
`boltzflow.training.distributed`. This module applies both to a recipe run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from boltzflow.training.distributed import world

__all__ = [
    "set_run_threads",
    "run_distributed",
    "join_from_environment",
    "batch_size_for",
    "describe_hardware",
]


def batch_size_for(value, device_type: str) -> int:
    """A stage's batch size on a device: an int, or a table by device type such as
    `batch_size = { cpu = 256, cuda = 4096 }` (a device it does not name gets `cpu`'s).

    Example:
        >>> batch_size_for({"cpu": 256, "cuda": 4096}, "cuda"), batch_size_for(128, "cuda")
        (4096, 128)
    """
    if isinstance(value, dict):
        return int(value.get(device_type, value["cpu"]))
    return int(value)


def set_run_threads(stack, threads, flow, recipe, target):
    """Apply the thread rule (or `threads`) for a run; the caller's count is restored when
    `stack` (a `contextlib.ExitStack`) closes.

    Local energy worker processes and the other processes of a distributed run count as
    workers: each takes a core, so torch threads plus processes never exceed the cores.

    Returns:
        A [`ThreadTuner`][boltzflow.training.thread_tuning.ThreadTuner] for the trainer when
        the count is left to the package on a CPU with more than one core to give (it then
        measures 1 against $N$ threads during training), else `None`.
    """
    from boltzflow.hardware import apply_threads, usable_cores
    from boltzflow.training.thread_tuning import ThreadTuner

    local = int(target.compute_resources().get("local_workers", 0))
    others = world()[1] - 1
    dev = next(iter(flow.parameters())).device.type
    sizes = (batch_size_for(st.get("batch_size", 256), dev) for st in recipe.stages)
    batch = max(sizes, default=256)
    stack.callback(torch.set_num_threads, torch.get_num_threads())
    apply_threads(threads, flow=flow, batch_size=batch, workers=local + others)
    if threads is not None or dev != "cpu":
        return None
    tuner = ThreadTuner(usable_cores() - others, workers=local)
    return tuner if tuner.active else None


def run_distributed(nproc: int, dev: torch.device, out_dir: Path, **run_kwargs) -> dict:
    """`boltzflow.runs.pipeline.run(**run_kwargs)` in `nproc` new processes joined in one
    process group (gloo on CPU, NCCL with one GPU per process). Every process trains; rank 0
    samples and writes `out_dir`. Returns rank 0's summary, read back from `summary.json`.
    """
    from boltzflow.runs.pipeline import run
    from boltzflow.training.distributed import launch

    backend = "nccl" if dev.type == "cuda" else "gloo"
    launch(run, int(nproc), backend=backend, out=out_dir, **run_kwargs)
    return json.loads((Path(out_dir) / "summary.json").read_text())


def join_from_environment(dev: torch.device) -> torch.device:
    """Join the process group a launcher such as `torchrun` describes (`RANK`, `WORLD_SIZE`,
    `MASTER_ADDR`, `MASTER_PORT`) unless already joined; returns this process's device
    (`cuda:LOCAL_RANK` for CUDA runs with several processes).

    This is how training spans machines: `torchrun --nnodes 2 --nproc-per-node 4
    --rdzv-endpoint HOST:29500 -m boltzflow.cli run NAME --device cuda`.
    """
    dist = torch.distributed
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if dev.type == "cuda" and world()[1] > 1:
        local = int(os.environ.get("LOCAL_RANK", world()[0]))
        dev = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    return dev


def describe_hardware(flow, target, tuner=None) -> dict:
    """The `hardware` block of `summary.json`: where the run trained and evaluated energies.

    Keys: `device` (the flow's), `torch_threads` (at the end of the run), `processes`
    (data-parallel training), `cores` (usable), for OpenMM targets `openmm_platform` and
    `energy_workers`, and with a `tuner` its `thread_decisions` (step, threads chosen, median
    step time per candidate in ms).
    """
    from boltzflow.hardware import usable_cores

    out = {
        "device": str(next(iter(flow.parameters())).device),
        "torch_threads": torch.get_num_threads(),
        "processes": world()[1],
        "cores": usable_cores(),
    }
    resources = target.compute_resources()
    out.update({k: resources[k] for k in ("openmm_platform", "energy_workers") if k in resources})
    if tuner is not None:
        out["thread_decisions"] = list(tuner.decisions)
    return out
