r"""Drive a kernel for many steps and collect draws as `[chains, draws, ...]` tensors.

[`run_chain`][boltzflow.sampling.chains.run_chain] is the one loop every sampler runner uses: it
calls `kernel.step` `n_steps` times (after `n_warmup` discarded steps), keeps every `thin`-th state,
and stacks the kept states and infos. The returned `final_state` resumes the chain bit-for-bit:
`run_chain(kernel, result.final_state, ...)` continues where the first call stopped.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from boltzflow.progress import progress_bar
from boltzflow.sampling.base import StepInfo

__all__ = ["ChainResult", "run_chain"]

_CORE_FIELDS = ("accepted", "acceptance_prob", "energy", "log_weight")


class ChainResult(NamedTuple):
    """Draws of a batched MCMC run.

    * `x` `[chains, draws, *event]`: kept positions;
    * `energy` `[chains, draws]`: reduced energies `u(x)` (kT);
    * `accepted` (bool), `acceptance_prob` `[chains, draws]`: of the step that produced
      each kept draw (an unbiased sample of the acceptance rate when thinning);
    * `log_weight` `[chains, draws]`: the kernel's importance log-weight (0 if none);
    * `final_state`: the kernel state after the last step (pass it back to resume);
    * `stats`: any further `Info` fields, stacked the same way (e.g. per-kernel counts
      of a [`Mixture`][boltzflow.sampling.kernels.Mixture]).
    """

    x: torch.Tensor
    energy: torch.Tensor
    accepted: torch.Tensor
    acceptance_prob: torch.Tensor
    log_weight: torch.Tensor
    final_state: Any
    stats: dict[str, torch.Tensor]

    @property
    def acceptance_rate(self) -> float:
        """Fraction of accepted steps over all kept draws and chains."""
        return float(self.accepted.to(torch.float64).mean())


def _is_state(x0: Any) -> bool:
    return hasattr(x0, "rng_state") and hasattr(x0, "x")


def run_chain(
    kernel,
    x0: torch.Tensor | Any,
    n_steps: int,
    seed: int | torch.Generator | None = None,
    thin: int = 1,
    progress: bool | None = None,
    n_warmup: int = 0,
) -> ChainResult:
    r"""Run `kernel` from `x0` and collect `n_steps // thin` draws per chain.

    Args:
        kernel: anything with `init(x0, seed) -> State` and `step(State) -> (State, Info)`
            (see [`boltzflow.sampling.kernels`][boltzflow.sampling.kernels]).
        x0: starting points `[chains, *event]`, or a state returned by an earlier run (then
            `seed` is ignored and the chain continues bit-for-bit).
        n_steps: steps after warm-up; the kept draws are steps `thin, 2·thin, …`.
        seed: seed (or `torch.Generator`) for `init`.
        thin: keep every `thin`-th state.
        progress: `False` shows nothing; otherwise a tqdm bar on a terminal and a log line
            every ~30 s elsewhere
            ([`boltzflow.progress.progress_bar`][boltzflow.progress.progress_bar]).
        n_warmup: steps run first and discarded (no adaptation is done).

    Returns:
        [`ChainResult`][boltzflow.sampling.chains.ChainResult] with tensors on the device of `x0`.
    """
    if n_steps < 0 or n_warmup < 0:
        raise ValueError(f"n_steps and n_warmup must be >= 0, got {n_steps}, {n_warmup}")
    if thin < 1:
        raise ValueError(f"thin must be >= 1, got {thin}")
    state = x0 if _is_state(x0) else kernel.init(x0, seed)
    kept: list[torch.Tensor] = []
    infos: list[Any] = []
    total = n_warmup + n_steps
    with progress_bar(total, type(kernel).__name__, enabled=progress, leave=False) as bar:
        for i in range(total):
            state, info = kernel.step(state)
            bar.update(1)
            j = i - n_warmup + 1
            if j > 0 and j % thin == 0:
                kept.append(state.x)
                infos.append(info)
    return _collect(state, kept, infos)


def _collect(state: Any, kept: list[torch.Tensor], infos: list[Any]) -> ChainResult:
    x_now = state.x
    if not kept:
        empty = x_now.new_zeros((x_now.shape[0], 0))
        return ChainResult(
            x_now.new_zeros((x_now.shape[0], 0, *x_now.shape[1:])),
            empty,
            empty.to(torch.bool),
            empty,
            empty,
            state,
            {},
        )
    fields = infos[0]._fields if hasattr(infos[0], "_fields") else StepInfo._fields
    stacked = {f: torch.stack([getattr(i, f) for i in infos], dim=1) for f in fields}
    stats = {f: v for f, v in stacked.items() if f not in _CORE_FIELDS}
    return ChainResult(
        torch.stack(kept, dim=1),
        stacked["energy"],
        stacked["accepted"],
        stacked["acceptance_prob"],
        stacked["log_weight"],
        state,
        stats,
    )
