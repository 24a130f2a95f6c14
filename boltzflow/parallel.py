r"""Batched OpenMM energy + force evaluation through a `concurrent.futures.Executor`.

Two pieces:

* [`evaluate_chunk`][boltzflow.openmm_worker.evaluate_chunk] -- the worker side, in
  [`boltzflow.openmm_worker`][boltzflow.openmm_worker] (re-exported here): one cached
  `openmm.Context` per [`SystemSpec`][boltzflow.openmm_worker.SystemSpec] in each worker process,
  energies in kJ/mol and forces in kJ/mol/nm, `nan` energy and zero forces for a configuration
  OpenMM cannot evaluate (counted and reported), never a result leaking between configurations.
* [`EnergyPool`][boltzflow.parallel.EnergyPool] -- the parent side. It splits a batch into a few
  chunks per worker (one task per chunk, never one message per configuration), submits them to an
  executor and gathers the results in order. Its own local workers read positions from, and write
  energies and forces to, a shared-memory block that the pool keeps while the batch layout
  repeats ([`evaluate_shared_chunk`][boltzflow.openmm_worker.evaluate_shared_chunk]);
  other executors get the chunks by value. The executor is one of

  - local processes (`workers=N`; `spawn` context, each worker pinned to one core, which
    the `CPU` platform needs to avoid a thread wake-up penalty);
  - a `dask.distributed` cluster (`scheduler="tcp://host:port"` or `client=Client`);
  - any `concurrent.futures.Executor` passed as `executor=`.

`EnergyPool` is a context manager and always shuts down what it created (also when it is
garbage-collected; there is no module-level pool). A worker that dies makes the evaluation
fail with [`WorkerPoolError`][boltzflow.parallel.WorkerPoolError] or, for pools that it owns,
rebuilds the executor and retries (`retries` times); a task that does not return within `timeout`
seconds fails the evaluation rather than hang.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import weakref

import numpy as np

from boltzflow.openmm_worker import (
    SystemSpec,
    _pin_worker,
    evaluate_chunk,
    evaluate_shared_chunk,
    worker_info,
)
from boltzflow.shared_arrays import SharedArrays

__all__ = [
    "SystemSpec",
    "evaluate_chunk",
    "evaluate_shared_chunk",
    "EnergyPool",
    "WorkerPoolError",
    "worker_info",
]

log = logging.getLogger(__name__)


class WorkerPoolError(RuntimeError):
    """An energy evaluation could not be completed by the worker pool."""


def _shutdown(executor, client, cluster) -> None:
    """Shut down whatever the pool created (idempotent; safe at interpreter exit)."""
    if executor is not None:
        executor.shutdown(wait=True, cancel_futures=True)
    if client is not None:
        client.close()
    if cluster is not None:
        cluster.close()


class EnergyPool:
    """Evaluate OpenMM energies in parallel over an executor.

    Args:
        workers: number of local worker processes (default: all available cores). Ignored when
            `executor`, `client` or `scheduler` is given.
        executor: any `concurrent.futures.Executor` (not shut down by the pool).
        scheduler: address of a `dask.distributed` scheduler, e.g. `"tcp://127.0.0.1:8786"`.
        client: an existing `dask.distributed.Client` (not closed by the pool).
        chunks_per_worker: tasks per worker and batch (more chunks balance load better).
        timeout: seconds to wait for one batch before failing with
            [`WorkerPoolError`][boltzflow.parallel.WorkerPoolError].
        retries: how often a batch is retried after a worker death (owned local pools only;
            the broken executor is rebuilt first). Dask reschedules tasks of a lost worker
            by itself.
        pin: pin local workers to one core each (round robin over the allowed cores).
        shared_memory: local pools pass positions, energies and forces through one shared
            memory block per batch ([`boltzflow.shared_arrays`][boltzflow.shared_arrays]) instead of
            pickling them; dask and foreign executors always pickle.

    Examples:
        >>> with EnergyPool(workers=2) as pool:                      # doctest: +SKIP
        ...     energies, forces = pool.evaluate(spec, positions)
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        executor: cf.Executor | None = None,
        scheduler: str | None = None,
        client=None,
        chunks_per_worker: int = 1,
        timeout: float = 60.0,
        retries: int = 1,
        pin: bool = True,
        shared_memory: bool = True,
    ):
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.chunks_per_worker = max(1, int(chunks_per_worker))
        self._pin = bool(pin)
        self.shared_memory = bool(shared_memory)
        self._block: SharedArrays | None = None
        self._block_layout = None
        self._owned_executor = None
        self._client = None
        self._cluster = None
        self._closed = False
        if executor is not None:
            self._executor = executor
            self.n_workers = int(getattr(executor, "_max_workers", None) or workers or 1)
            self.kind = "executor"
        elif scheduler is not None or client is not None:
            from dask.distributed import Client

            if client is None:
                client = self._client = Client(scheduler, timeout=self.timeout)
            self._executor = client.get_executor()
            self.n_workers = max(1, len(client.scheduler_info().get("workers", {})))
            self.kind = "dask"
        else:
            cores = worker_info()[1]
            self.n_workers = int(workers) if workers else max(1, len(cores) or os.cpu_count() or 1)
            self._cores = cores
            self._executor = self._owned_executor = self._new_local_executor()
            self.kind = "local"
        self._finalizer = weakref.finalize(
            self, _shutdown, self._owned_executor, self._client, self._cluster
        )

    # ---------------------------------------------------------------- lifecycle
    def _new_local_executor(self) -> cf.ProcessPoolExecutor:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        if self._pin:
            counter = ctx.Value("i", 0)
            return cf.ProcessPoolExecutor(
                self.n_workers,
                mp_context=ctx,
                initializer=_pin_worker,
                initargs=(counter, self._cores),
            )
        return cf.ProcessPoolExecutor(self.n_workers, mp_context=ctx)

    def close(self) -> None:
        """Shut down the executor/client the pool created and free its shared block
        (idempotent)."""
        self._closed = True
        self._finalizer()
        if self._block is not None:
            self._block.close()
            self._block = None

    def __enter__(self) -> EnergyPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EnergyPool(kind={self.kind!r}, n_workers={self.n_workers})"

    # --------------------------------------------------------------- evaluation
    _DEFAULT = object()

    def map(self, fn, args_list: list[tuple], timeout=_DEFAULT) -> list:
        """Run `fn(*args)` for each tuple on the executor; results in order.

        Args:
            fn: a module-level (picklable) function.
            args_list: one argument tuple per task.
            timeout: seconds to wait for all tasks (default: the pool's `timeout`; `None`
                waits as long as the workers live, for long tasks such as MD; a dead worker
                still fails the call at once).

        Raises:
            WorkerPoolError: a worker died (after `retries` rebuilds of an owned pool) or
                the results did not arrive within `timeout` seconds.
        """
        timeout = self.timeout if timeout is EnergyPool._DEFAULT else timeout
        if self._closed:
            raise WorkerPoolError("the EnergyPool is closed")
        attempt = 0
        while True:
            try:
                futures = [self._executor.submit(fn, *a) for a in args_list]
                done, pending = cf.wait(futures, timeout=timeout)
                if pending:
                    for f in pending:
                        f.cancel()
                    raise TimeoutError(f"{len(pending)} task(s) unfinished after {timeout}s")
                return [f.result() for f in futures]
            except Exception as exc:
                broken = isinstance(exc, (cf.process.BrokenProcessPool, TimeoutError))
                if self._owned_executor is not None and broken and attempt < self.retries:
                    attempt += 1
                    log.warning("worker pool failed (%s); rebuilding and retrying", exc)
                    self._rebuild()
                    continue
                if isinstance(exc, (cf.process.BrokenProcessPool, TimeoutError, OSError)) or (
                    type(exc).__name__ in ("KilledWorker", "CommClosedError", "CancelledError")
                ):
                    hint = (
                        " (local workers are spawned: a script that creates a pool must guard "
                        "its top level with `if __name__ == '__main__':`)"
                        if self.kind == "local" and isinstance(exc, cf.process.BrokenProcessPool)
                        else ""
                    )
                    raise WorkerPoolError(
                        f"energy evaluation failed in the {self.kind} worker pool: "
                        f"{type(exc).__name__}: {exc}{hint}"
                    ) from exc
                raise

    def _rebuild(self) -> None:
        old = self._owned_executor
        self._finalizer.detach()
        for proc in list((old._processes or {}).values()):
            proc.kill()  # a stopped or hung worker must not block the shutdown
        old.shutdown(wait=False, cancel_futures=True)
        self._executor = self._owned_executor = self._new_local_executor()
        self._finalizer = weakref.finalize(
            self, _shutdown, self._owned_executor, self._client, self._cluster
        )

    def evaluate(self, spec: SystemSpec, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Energies `[n]` (kJ/mol) and forces `[n, n_atoms, 3]` (kJ/mol/nm) of a batch.

        The batch is split into `n_workers * chunks_per_worker` contiguous chunks, one task
        each; see [`evaluate_chunk`][boltzflow.openmm_worker.evaluate_chunk] for the conventions.
        """
        pos = np.ascontiguousarray(positions, dtype=np.float64)
        n = pos.shape[0]
        if n == 0:
            return np.zeros(0), np.zeros_like(pos)
        n_chunks = min(n, self.n_workers * self.chunks_per_worker)
        bounds = np.linspace(0, n, n_chunks + 1).astype(int)
        spans = [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
        if self.kind == "local" and self.shared_memory:
            layout = {"positions": (pos.shape, "float64"), "energies": ((n,), "float64")}
            layout["forces"] = (pos.shape, "float64")
            block = self._shared_block(layout)
            block["positions"][:] = pos
            self.map(evaluate_shared_chunk, [(spec, block.handle, a, b) for a, b in spans])
            return block["energies"].copy(), block["forces"].copy()
        results = self.map(evaluate_chunk, [(spec, pos[a:b]) for a, b in spans])
        energies = np.concatenate([r[0] for r in results])
        forces = np.concatenate([r[1] for r in results])
        return energies, forces

    def _shared_block(self, layout: dict) -> SharedArrays:
        """The pool's shared block for this batch layout (kept while the layout repeats, so
        neither side pays for fresh pages on every batch)."""
        if self._block is not None and self._block_layout != layout:
            self._block.close()
            self._block = None
        if self._block is None:
            self._block, self._block_layout = SharedArrays(layout), layout
            self._block_finalizer = weakref.finalize(self, self._block.close)
        return self._block

    def worker_pids(self) -> list[int]:
        """PIDs of the local worker processes (owned local pools only; empty otherwise)."""
        if self._owned_executor is None:
            return []
        return sorted(p.pid for p in (self._owned_executor._processes or {}).values())
