r"""Composite kernels: cycles and random mixtures of Metropolis–Hastings kernels.

If every kernel $K_k$ leaves $p$ invariant, so does the cycle
$K_1^{r_1} \cdots K_n^{r_n}$ and the random-scan mixture $\sum_k w_k K_k$
(Tierney 1994, "Markov chains for exploring posterior distributions", Ann. Stat. 22, 1701,
§2.4). The typical use is local moves (MALA, HMC, latent HMC) interleaved with global flow
independence moves, as in flowMC (Gabrié, Rotskoff & Vanden-Eijnden 2022, PNAS 119,
e2109420119) and Grenioux et al. (2023).

All kernels must target the same energy. Kernels exchange states through their `adopt`
method, which reuses the cached energy (and gradient, between MALA and HMC) and recomputes the
rest; this costs at most one extra evaluation per switch. In random mode the kernel is chosen
once per step for all chains (a single draw from the chain RNG), which keeps every kernel
batched; each chain's marginal law is still the mixture's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from boltzflow.sampling.kernels.mh import generator_for

__all__ = ["MixtureState", "MixtureInfo", "Mixture"]


class MixtureState(NamedTuple):
    """State of [`Mixture`][boltzflow.sampling.kernels.Mixture]: `x`, `energy`, `rng_state` of the
    current inner state, the inner state itself and the index of the kernel it belongs to."""

    x: torch.Tensor
    energy: torch.Tensor
    rng_state: torch.Tensor
    inner: Any
    index: int


class MixtureInfo(NamedTuple):
    """Per-step diagnostics of [`Mixture`][boltzflow.sampling.kernels.Mixture], each with leading
    dim `[chains]`.

    * `accepted`: whether the chain moved during the step (any sub-step accepted);
    * `acceptance_prob`: mean acceptance probability over the sub-steps;
    * `energy`, `log_weight`: of the final state (`log_weight` from the last sub-step);
    * `kernel_accepted` `[chains, K]`: accepted sub-steps per kernel;
    * `kernel_acceptance_prob` `[chains, K]`: summed acceptance probabilities per kernel;
    * `kernel_steps` `[chains, K]`: sub-steps per kernel (divide to get rates, see
      [`Mixture.acceptance_rates`][boltzflow.sampling.kernels.Mixture.acceptance_rates]).
    """

    accepted: torch.Tensor
    acceptance_prob: torch.Tensor
    energy: torch.Tensor
    log_weight: torch.Tensor
    kernel_accepted: torch.Tensor
    kernel_acceptance_prob: torch.Tensor
    kernel_steps: torch.Tensor


class Mixture:
    r"""Cycle through kernels (`repeats`) or pick one at random each step (`weights`).

    Args:
        kernels: kernels with `init`, `step` and `adopt`, all targeting the same energy.
        repeats: cycle mode (default, one repeat each): one
            [`step`][boltzflow.sampling.kernels.Mixture.step] runs `repeats[k]` steps of kernel `k`
            for `k = 0..K-1` in order, e.g. `(10, 1)` for ten MALA steps then one flow independence
            step.
        weights: random mode: one [`step`][boltzflow.sampling.kernels.Mixture.step] runs one step of
            kernel `k` chosen with probability `weights[k] / Σ weights`. Give `repeats` or
            `weights`, not both.

    Examples:
        >>> import torch
        >>> from boltzflow.energies.double_well import DoubleWell2D
        >>> from boltzflow.flows.builders import spline_coupling_flow
        >>> from boltzflow.sampling.kernels import MALA, IndependenceMH
        >>> target = DoubleWell2D()
        >>> flow = spline_coupling_flow(target, seed=0)
        >>> hybrid = Mixture([MALA(target, 0.05), IndependenceMH(flow, target)], repeats=(10, 1))
        >>> state, info = hybrid.step(hybrid.init(torch.zeros(4, 2), seed=0))
        >>> info.accepted.shape
        torch.Size([4])
    """

    State = MixtureState

    def __init__(
        self,
        kernels: Sequence,
        repeats: Sequence[int] | None = None,
        weights: Sequence[float] | None = None,
    ):
        self.kernels = list(kernels)
        k = len(self.kernels)
        if k == 0:
            raise ValueError("Mixture needs at least one kernel")
        if repeats is not None and weights is not None:
            raise ValueError("give repeats (cycle) or weights (random), not both")
        self.weights = None
        self.repeats = None
        if weights is not None:
            w = torch.as_tensor(weights, dtype=torch.float64)
            if w.shape != (k,) or not bool((w >= 0).all()) or not float(w.sum()) > 0:
                raise ValueError(f"weights must be {k} non-negative numbers, not all 0: {weights}")
            self.weights = w / w.sum()
        else:
            r = [1] * k if repeats is None else [int(n) for n in repeats]
            if len(r) != k or min(r) < 0 or sum(r) == 0:
                raise ValueError(f"repeats must be {k} non-negative integers, not all 0: {repeats}")
            self.repeats = r

    def init(self, x0: torch.Tensor, seed: int | torch.Generator | None = None) -> MixtureState:
        """Initialise with the first kernel (its `init` cost)."""
        inner = self.kernels[0].init(x0, seed)
        return MixtureState(inner.x, inner.energy, inner.rng_state, inner, 0)

    def adopt(self, state) -> MixtureState:
        """Wrap any state with `x`, `energy`, `rng_state` (handed to the first kernel)."""
        if isinstance(state, MixtureState):
            return state
        inner = self.kernels[0].adopt(state)
        return MixtureState(inner.x, inner.energy, inner.rng_state, inner, 0)

    def _schedule(self, state: MixtureState) -> tuple[list[tuple[int, int]], torch.Tensor]:
        """`[(kernel, n_steps), ...]` for this step, and the RNG state after choosing."""
        if self.weights is None:
            return [(k, r) for k, r in enumerate(self.repeats) if r > 0], state.rng_state
        g = generator_for(state.rng_state, state.x)
        u = torch.rand((), generator=g, dtype=torch.float64, device=state.x.device).cpu()
        k = int(
            torch.searchsorted(torch.cumsum(self.weights, 0), u, right=True).clamp(
                max=len(self.kernels) - 1
            )
        )
        return [(k, 1)], g.get_state()

    def step(self, state: MixtureState) -> tuple[MixtureState, MixtureInfo]:
        """Run this step's schedule; per-kernel counts go to
        [`MixtureInfo`][boltzflow.sampling.kernels.MixtureInfo]."""
        schedule, rng_state = self._schedule(state)
        inner, index = state.inner._replace(rng_state=rng_state), state.index
        n_chains, n_kernels = state.x.shape[0], len(self.kernels)
        zeros = state.energy.new_zeros((n_chains, n_kernels))
        k_acc, k_prob, k_steps = zeros.clone(), zeros.clone(), zeros.clone()
        moved = torch.zeros(n_chains, dtype=torch.bool, device=state.x.device)
        info = None
        for k, n_steps in schedule:
            if k != index:
                inner, index = self.kernels[k].adopt(inner), k
            for _ in range(n_steps):
                inner, info = self.kernels[k].step(inner)
                moved = moved | info.accepted
                k_acc[:, k] += info.accepted.to(zeros.dtype)
                k_prob[:, k] += info.acceptance_prob.to(zeros.dtype)
                k_steps[:, k] += 1
        new_state = MixtureState(inner.x, inner.energy, inner.rng_state, inner, index)
        mean_prob = k_prob.sum(-1) / k_steps.sum(-1)
        mix_info = MixtureInfo(
            moved, mean_prob, inner.energy, info.log_weight, k_acc, k_prob, k_steps
        )
        return new_state, mix_info

    @staticmethod
    def acceptance_rates(kernel_accepted: torch.Tensor, kernel_steps: torch.Tensor) -> torch.Tensor:
        """Acceptance rate per kernel `[K]` from stacked `kernel_accepted`/`kernel_steps`
        (any leading dims, e.g. `[chains, draws, K]`); NaN for a kernel that never ran."""
        k = kernel_accepted.shape[-1]
        return kernel_accepted.reshape(-1, k).sum(0) / kernel_steps.reshape(-1, k).sum(0)
