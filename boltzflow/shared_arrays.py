"""Numpy arrays in one POSIX shared-memory block, handed to local worker processes by name.

[`EnergyPool`][boltzflow.parallel.EnergyPool] uses this for its own local worker processes: the
parent writes a batch of positions once, each worker reads its chunk and writes its energies
and forces in place, and only a small
[`SharedArraysHandle`][boltzflow.shared_arrays.SharedArraysHandle] (block name, shapes, dtypes)
travels through the executor's pipes. For fast systems (alanine dipeptide in vacuum takes ≈ 18 µs
per evaluation) pickling megabytes of positions and forces per batch otherwise costs a noticeable
fraction of the throughput.

The creating process owns the block:
[`SharedArrays.close`][boltzflow.shared_arrays.SharedArrays.close] (or leaving the `with` block)
unlinks it, also when a worker died mid-batch. Workers only attach and detach.
"""

from __future__ import annotations

from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np

__all__ = ["SharedArrays", "SharedArraysHandle"]


@dataclass(frozen=True)
class SharedArraysHandle:
    """Picklable description of a [`SharedArrays`][boltzflow.shared_arrays.SharedArrays] block: its
    name and layout."""

    name: str
    layout: tuple[tuple[str, tuple[int, ...], str, int], ...]  # (key, shape, dtype, offset)

    def attach(self) -> tuple[shared_memory.SharedMemory, dict[str, np.ndarray]]:
        """Open the block in this process; returns `(shm, views)`. Call `shm.close()`
        when done and drop the views first."""
        shm = shared_memory.SharedMemory(name=self.name)
        return shm, _views(shm, self.layout)


def _views(shm, layout) -> dict[str, np.ndarray]:
    return {
        key: np.ndarray(shape, dtype=np.dtype(dtype), buffer=shm.buf, offset=offset)
        for key, shape, dtype, offset in layout
    }


class SharedArrays:
    """A set of named arrays in one shared-memory block (created and owned by this process).

    Args:
        specs: `{key: (shape, dtype)}`.

    Examples:
        >>> with SharedArrays({"x": ((2, 3), "float64")}) as block:
        ...     block["x"][:] = 1.0
        ...     shm, views = block.handle.attach()
        ...     total = float(views["x"].sum())
        ...     del views
        ...     shm.close()
        >>> total
        6.0
    """

    def __init__(self, specs: dict[str, tuple[tuple[int, ...], str]]):
        layout, offset = [], 0
        for key, (shape, dtype) in specs.items():
            shape = tuple(int(s) for s in shape)
            dt = np.dtype(dtype)
            offset = -(-offset // 64) * 64  # 64-byte alignment
            layout.append((key, shape, dt.str, offset))
            offset += int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        self._shm = shared_memory.SharedMemory(create=True, size=max(offset, 1))
        self.handle = SharedArraysHandle(self._shm.name, tuple(layout))
        self._arrays = _views(self._shm, self.handle.layout)

    def __getitem__(self, key: str) -> np.ndarray:
        return self._arrays[key]

    def close(self) -> None:
        """Drop the views, close and unlink the block (idempotent)."""
        if self._shm is None:
            return
        self._arrays = {}
        self._shm.close()
        try:
            self._shm.unlink()
        except FileNotFoundError:  # pragma: no cover - already removed
            pass
        self._shm = None

    def __enter__(self) -> SharedArrays:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
