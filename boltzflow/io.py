"""Checkpoints: flow weights with JSON metadata, and trainer state for exact resumption.

Flow checkpoints are two files side by side:

* `<prefix>.pt` -- the flow's `state_dict` (tensors only), loaded with
  `torch.load(weights_only=True)` so that opening a checkpoint never runs pickled code;
* `<prefix>.json` -- human-readable metadata: format version, boltzflow version, dtype,
  event shape, parameter count, and the `builder` (a registered flow name) with its
  `builder_kwargs`, from which [`load_checkpoint`][boltzflow.io.load_checkpoint] rebuilds the flow.

A checkpoint is data, never code. [`load_checkpoint`][boltzflow.io.load_checkpoint] accepts only
builder names registered in `boltzflow.runs.registry.FLOWS` (built-in, or a plugin's
`boltzflow.flows` entry point); a `"module:attr"` string in `flow.json` is refused before anything
is imported. To load a flow made by your own function, pass `builder=` (or `flow=`).

Trainer-state checkpoints ([`save_trainer_state`][boltzflow.io.save_trainer_state]) hold everything
a resumed run needs: parameters, optimizer and LR-scheduler state, stage and step counters,
generator states, history and callback state. They too are written atomically and read with
`weights_only=True`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch

__all__ = [
    "LoadedCheckpoint",
    "checkpoint_paths",
    "save_checkpoint",
    "load_checkpoint",
    "save_trainer_state",
    "load_trainer_state",
]

FLOW_FORMAT = "boltzflow-flow"
TRAINER_FORMAT = "boltzflow-trainer-state"
FORMAT_VERSION = 1


class LoadedCheckpoint(NamedTuple):
    """A flow with its weights loaded, and the metadata it was saved with."""

    flow: torch.nn.Module
    metadata: dict


def checkpoint_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """`(weights, metadata)` paths for a directory or a prefix.

    An existing directory (or a path ending in a separator) gives `dir/flow.pt` and
    `dir/flow.json`; `name.pt` or `name.json` give `name.pt`/`name.json`; any other
    path is a prefix to which `.pt` and `.json` are appended.
    """
    s = os.fspath(path)
    p = Path(s)
    if p.is_dir() or s.endswith(os.sep) or s.endswith("/"):
        return p / "flow.pt", p / "flow.json"
    if p.suffix in (".pt", ".json"):
        p = p.with_suffix("")
    return Path(f"{p}.pt"), Path(f"{p}.json")


def _jsonable(obj: Any):
    """`json` fallback for numpy/torch scalars, shapes, dtypes and paths."""
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if isinstance(obj, (torch.Size, set, frozenset)):
        return list(obj)
    if isinstance(obj, (torch.dtype, os.PathLike)):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):  # numpy arrays
        return obj.tolist()
    raise TypeError(f"metadata value of type {type(obj).__name__} is not JSON serializable")


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename (no torn files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _flow_dtype(flow: torch.nn.Module) -> torch.dtype | None:
    for t in list(flow.parameters()) + list(flow.buffers()):
        if t.is_floating_point():
            return t.dtype
    return None


def save_checkpoint(
    path: str | os.PathLike, flow: torch.nn.Module, metadata: dict | None = None
) -> tuple[Path, Path]:
    """Save `flow.state_dict()` to `.pt` and metadata to `.json`.

    File names follow [`checkpoint_paths`][boltzflow.io.checkpoint_paths].

    Args:
        path: a directory (files `flow.pt`/`flow.json`) or a file prefix.
        flow: the flow (any `nn.Module`).
        metadata: JSON-serializable dict. Put `builder` (a registered `FLOWS` name) and
            `builder_kwargs` here so that [`load_checkpoint`][boltzflow.io.load_checkpoint] can
            rebuild the flow; anything else (target, seed, training summary) is kept as is.

    Returns:
        The `(weights_path, metadata_path)` written.
    """
    pt, js = checkpoint_paths(path)
    from boltzflow import __version__

    dtype = _flow_dtype(flow)
    event_shape = getattr(flow, "event_shape", None)
    meta = {
        "format": FLOW_FORMAT,
        "format_version": FORMAT_VERSION,
        "boltzflow_version": __version__,
        "dtype": str(dtype).removeprefix("torch.") if dtype is not None else None,
        "event_shape": list(event_shape) if event_shape is not None else None,
        "n_parameters": int(sum(p.numel() for p in flow.parameters())),
    }
    meta.update(metadata or {})
    text = json.dumps(meta, indent=2, sort_keys=True, default=_jsonable, allow_nan=True)
    state = {k: v.detach().cpu() for k, v in flow.state_dict().items()}
    _atomic_write(pt, lambda p: torch.save(state, p))
    _atomic_write(js, lambda p: p.write_text(text + "\n"))
    return pt, js


def load_checkpoint(
    path: str | os.PathLike,
    flow: torch.nn.Module | None = None,
    target=None,
    builder=None,
    map_location: str | torch.device | None = None,
    strict: bool = True,
) -> LoadedCheckpoint:
    """Load a flow checkpoint written by [`save_checkpoint`][boltzflow.io.save_checkpoint].

    Args:
        path: the directory or prefix given to [`save_checkpoint`][boltzflow.io.save_checkpoint].
        flow: load the weights into this flow; if `None` the flow is rebuilt as
            `builder(target or event_shape, **builder_kwargs)` from the metadata.
        target: passed to the builder instead of the saved `event_shape` when given; needed
            to rebuild a stochastic flow (its blocks hold the target energy).
        builder: overrides the metadata's `builder`: a callable (trusted: it is your code)
            or a registered flow name.
        map_location: device for the loaded tensors (default: where they were saved, i.e. cpu).
        strict: passed to `load_state_dict`.

    Raises:
        ValueError: the files are not a boltzflow checkpoint, or the metadata names a builder
            that is not registered (nothing is imported or called then), or its dtype, event
            shape or builder arguments are malformed.
    """
    pt, js = checkpoint_paths(path)
    metadata = json.loads(js.read_text())
    if metadata.get("format") != FLOW_FORMAT:
        raise ValueError(f"{js} is not a boltzflow flow checkpoint")
    if flow is None:
        make, first, kwargs = _builder_call(metadata, target, builder, js)
    state = torch.load(pt, map_location=map_location, weights_only=True)
    if flow is None:
        flow = _rebuild(make, first, kwargs, target, js)
        if metadata.get("dtype"):
            flow = flow.to(_DTYPES[metadata["dtype"]])
        if map_location is not None:
            flow = flow.to(map_location)
    flow.load_state_dict(state, strict=strict)
    return LoadedCheckpoint(flow, metadata)


def _rebuild(make, first, kwargs: dict, target, where: Path):
    """`make(first, **kwargs)`, with the stochastic blocks of a `stochastic` entry (the
    `[flow.stochastic]` table of a recipe) placed into the result."""
    kwargs = dict(kwargs)
    table = kwargs.pop("stochastic", None)
    flow = make(first, **kwargs)
    if table is None:
        return flow
    if target is None:
        raise ValueError(f"{where}: a stochastic flow holds its target energy: pass target=")
    from boltzflow.flows.snf import add_stochastic_blocks

    return add_stochastic_blocks(flow, target, **table)


_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


def _builder_call(metadata: dict, target, builder, where: Path):
    """Validate the metadata and return `(builder, first_argument, builder_kwargs)`.

    Everything read from the file is checked before it is used: the builder must be a
    registered name (no import paths), the event shape a list of non-negative integers, the
    dtype a floating dtype name and the builder arguments a JSON object.
    """
    from boltzflow.runs.registry import FLOWS, resolve

    builder = builder if builder is not None else metadata.get("builder")
    if builder is None:
        raise ValueError(f"{where}: checkpoint metadata has no 'builder': pass flow= or builder=")
    if isinstance(builder, str):
        try:
            builder = resolve(FLOWS, builder, "flow", allow_import=False)
        except KeyError as exc:
            raise ValueError(f"{where}: refusing to load: {exc.args[0]}") from None
    dtype = metadata.get("dtype")
    if dtype is not None and dtype not in _DTYPES:
        raise ValueError(f"{where}: unknown dtype {dtype!r} (expected one of {sorted(_DTYPES)})")
    kwargs = metadata.get("builder_kwargs", {})
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise ValueError(f"{where}: 'builder_kwargs' must be a JSON object")
    if target is not None:
        return builder, target, kwargs
    shape = metadata.get("event_shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ValueError(f"{where}: 'event_shape' must be a list of non-negative integers")
    return builder, tuple(shape), kwargs


def save_trainer_state(path: str | os.PathLike, state: dict) -> Path:
    """Atomically save a trainer state dict (see `Trainer.state_dict`) to `path`."""
    path = Path(path)
    state = {"format": TRAINER_FORMAT, "format_version": FORMAT_VERSION, **state}
    _atomic_write(path, lambda p: torch.save(state, p))
    return path


def load_trainer_state(
    path: str | os.PathLike, map_location: str | torch.device | None = None
) -> dict:
    """Load a trainer state written by [`save_trainer_state`][boltzflow.io.save_trainer_state]
    (`weights_only=True`)."""
    state = torch.load(Path(path), map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != TRAINER_FORMAT:
        raise ValueError(f"{path} is not a boltzflow trainer state")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported trainer state version {state['format_version']}")
    return state
