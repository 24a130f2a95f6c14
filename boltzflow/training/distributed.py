r"""Data-parallel training over processes with `torch.distributed` (gloo on CPU, NCCL on CUDA).

Synchronous data parallelism, as in PyTorch's DistributedDataParallel (Li et al. 2020,
"PyTorch Distributed: Experiences on Accelerating Data Parallel Training", VLDB 13): every
process holds the same flow, draws its share $n_r$ of the global batch $B = \sum_r n_r$,
computes the gradient $g_r$ of its own mean loss, and one all-reduce gives every process

$$ g = \sum_r \frac{n_r}{B}\, g_r , $$

the gradient of the mean loss over the global batch. Parameters start equal (broadcast from
rank 0) and receive the same update, so they stay equal. With a data tensor the union of the
shares is exactly the single-process minibatch, so the loss curve matches one process at the
same global batch up to floating-point rounding; with flow samples (reverse KL) the shares
are independent draws and the curves agree within noise.

The reduction is explicit rather than through the `DistributedDataParallel` wrapper because a
flow is trained through `sample` and `log_prob`, not through `forward`, which is where the
wrapper hooks its gradient synchronisation. One flat buffer carries the gradients, the loss
and the counters, so a step costs one collective.

`launch` starts `nproc` local processes (the `boltzflow run --nproc N` path); each joins
a process group and calls the given function.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import torch

__all__ = ["world", "share", "broadcast_parameters", "all_reduce_step", "launch"]


def world() -> tuple[int, int]:
    """`(rank, world_size)` of this process; `(0, 1)` outside a process group."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def share(batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows `[lo, hi)` of a global batch that `rank` takes (sizes differ by at most one).

    Examples:
        >>> [share(10, r, 3) for r in range(3)]
        [(0, 4), (4, 7), (7, 10)]
    """
    base, extra = divmod(int(batch_size), int(world_size))
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every process (no-op outside a group)."""
    if world()[1] == 1:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            torch.distributed.broadcast(t.data, src=0)


def all_reduce_step(params, weight: float, scalars: torch.Tensor) -> torch.Tensor:
    """Average gradients over processes, weighting this process's by `weight` ($n_r / B$).

    Args:
        params: parameters whose `.grad` is replaced by the weighted sum over processes
            (a missing gradient counts as zero).
        weight: this process's share of the global batch.
        scalars: a 1-D tensor of per-process numbers; entry 0 (the loss) is weighted like the
            gradients, the others (counters) are summed.

    Returns:
        The reduced `scalars`. One `all_reduce` on one flat buffer.
    """
    params = list(params)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads] + [scalars.to(grads[0])])
    n = flat.numel() - scalars.numel()
    flat[:n] *= weight
    flat[n] *= weight
    torch.distributed.all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
        offset += g.numel()
    return flat[n:].to(scalars.dtype)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, nproc: int, port: int, backend: str, fn: Callable, kwargs: dict):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group(backend, rank=rank, world_size=nproc)
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank % torch.cuda.device_count())
        fn(**kwargs)
    finally:
        torch.distributed.destroy_process_group()


def launch(fn: Callable, nproc: int, *, backend: str | None = None, **kwargs) -> None:
    """Run `fn(**kwargs)` in `nproc` new local processes joined in one process group.

    Args:
        fn: a module-level (picklable) function; every process calls it.
        nproc: number of processes.
        backend: `"gloo"` (CPU) or `"nccl"` (one GPU per process); default gloo.
        **kwargs: keyword arguments for `fn` (picklable).

    Raises:
        torch.multiprocessing.ProcessRaisedException: a process failed (the others stop).
    """
    backend = backend or "gloo"
    args = (int(nproc), _free_port(), backend, fn, kwargs)
    torch.multiprocessing.spawn(_worker, args=args, nprocs=int(nproc), join=True)
