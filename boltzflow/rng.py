"""Explicit random-number generators: every stochastic function takes one, none uses the
global torch RNG.

A generator's state (`Generator.get_state()`, a `uint8` tensor) is what chain states and
trainer checkpoints store, so a resumed run continues bit-for-bit.
"""

from __future__ import annotations

import torch

__all__ = ["make_generator", "generator_from_state", "module_device", "generator_for_module"]


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh `torch.Generator` on `device`, seeded (or randomly seeded if `None`)."""
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


def generator_from_state(
    rng_state: torch.Tensor, device: torch.device | str = "cpu"
) -> torch.Generator:
    """Rebuild a generator from `rng_state` (the inverse of `Generator.get_state`)."""
    g = torch.Generator(device=device)
    g.set_state(rng_state)
    return g


def module_device(module: torch.nn.Module | None) -> torch.device:
    """Device of `module`'s first parameter (cpu for `None` or a module without
    parameters)."""
    if module is None:
        return torch.device("cpu")
    p = next(iter(module.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def generator_for_module(module: torch.nn.Module | None, seed: int) -> torch.Generator:
    """`make_generator(seed)` on the device of `module` (e.g. to draw flow samples)."""
    return make_generator(int(seed), module_device(module))
