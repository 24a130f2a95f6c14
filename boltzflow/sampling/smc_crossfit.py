r"""Cross-fitted flows of flow-preconditioned SMC
([`boltzflow.sampling.smc`][boltzflow.sampling.smc]).

The islands form two halves (even and odd island index). Each half has its own flow, fitted
by weighted maximum likelihood to that half's particles, and the particles of each half are
moved in the latent space of the *other* half's flow, so that no kernel depends on the points it
moves (a Metropolis kernel is invariant only for a proposal fixed before the move).

Each fit first sets the flow's output affine layer to the weighted moments of its particles,
then holds out a quarter of its half's islands, rotating with the stage, and keeps the
parameters with the lowest held-out weighted NLL ([`fit_nll`][boltzflow.training.fit.fit_nll]
with a [`Validation`][boltzflow.training.fit.Validation]). The held-out islands belong to the
same half, so the flow still depends on nothing of the particles it moves; islands are resampled
separately, so no particle has a copy on the other side of the split.
"""

from __future__ import annotations

import copy
import math

import torch

from boltzflow.sampling.smc_moves import MoveStats, Particles, latent_moves
from boltzflow.training.fit import Validation, fit_affine_to_data, fit_nll, weighted_nll

__all__ = [
    "VALIDATE_EVERY",
    "fit_weighted",
    "islands_of",
    "island_rows",
    "held_out_islands",
    "final_held_out_islands",
    "fit_rows",
    "halves",
    "mover_of",
    "subset",
    "cross_fitted_moves",
    "merged",
]


def fit_weighted(flow, x, log_w, rows, steps, batch_size, opt, g) -> None:
    """Weighted NLL fit of `flow` to the particles `x [n, dim]` with log-weights `log_w [n]`
    (normalized per island), continuing the Adam optimizer `opt`, on the training rows of
    `rows = (train, validation)`.

    The output affine layer is first set to the weighted moments of the training particles
    (the tempered target narrows by orders of magnitude from the prior, faster than a few Adam
    steps per stage can follow), then Adam runs, stopped early on the validation rows. With
    validation rows, the flow of the previous stage is kept if neither does better there."""
    train, val = rows
    lw = log_w.reshape(-1).double()
    probs = torch.softmax(lw[train], 0).to(x.dtype)
    check, kept, before = None, None, math.inf
    if val is not None:
        check = Validation(x[val], torch.softmax(lw[val], 0).to(x.dtype), VALIDATE_EVERY)
        kept, before = copy.deepcopy(flow.state_dict()), weighted_nll(flow, *check[:2])
    fit_affine_to_data(flow, x[train], probs)
    fit_nll(flow, x[train], steps, batch_size, 0.0, g, probs=probs, optimizer=opt, validation=check)
    if check is not None and weighted_nll(flow, *check[:2]) > before:
        flow.load_state_dict(kept)


VALIDATE_EVERY = 5
"""Adam steps between two held-out checks of a flow fit inside SMC."""


def islands_of(islands: int, half: int | None) -> list[int]:
    """Island indices of a half (even or odd index), or all of them for `half=None`."""
    return list(range(islands)) if half is None else list(range(half, islands, 2))


def island_rows(ids, m: int, device) -> torch.Tensor:
    """Rows `[len(ids) m]` of the islands `ids` (island `i` holds rows `i m` to `i m + m - 1`)."""
    return torch.cat([torch.arange(i * m, (i + 1) * m, device=device) for i in ids])


def held_out_islands(islands: int, half: int, stage: int, hold_out: bool = True) -> list[int]:
    """The islands a stage's fit of `half`'s flow holds out: a quarter of the half's islands (at
    least one, none if the half has a single island or `hold_out` is false), rotating with the
    stage."""
    own = islands_of(islands, half)
    k = len(own) // 4 if len(own) >= 4 else (1 if len(own) >= 2 else 0)
    k = k if hold_out else 0
    start = (stage * k) % len(own) if k else 0
    return sorted({own[(start + j) % len(own)] for j in range(k)})


def final_held_out_islands(islands: int, hold_out: bool = True) -> list[int]:
    """The islands the final fit of the returned flow holds out: every other odd island (half
    0's flow, which becomes the returned one, has never been fitted to an odd island), so
    they also serve as independent target draws for the evidence's coverage check."""
    return islands_of(islands, 1)[::2] if hold_out else []


def fit_rows(islands: int, m: int, half: int | None, held: list[int], device):
    """`(train rows, validation rows or None)` of a fit to the islands of `half` (all for
    `None`): the `held` islands validate, the others train."""
    train = island_rows([i for i in islands_of(islands, half) if i not in held], m, device)
    return train, (island_rows(held, m, device) if held else None)


def halves(islands: int, m: int, device) -> list[torch.Tensor]:
    """Particle rows `[n_h]` of the two halves of the islands (even and odd island index)."""
    return [island_rows(islands_of(islands, h), m, device) for h in (0, 1)]


def mover_of(half: int) -> int:
    """Which half's flow moves the particles of `half`: the other one (cross-fitting)."""
    return 1 - half


def subset(p: Particles, rows: torch.Tensor) -> Particles:
    """The particles at `rows [k]` (a half, or the resampled indices)."""
    return Particles(p.x[rows], p.log_ref[rows], p.log_l[rows])


def cross_fitted_moves(flows, score, p, rows, beta, steps, settings, g):
    """Move each half with the flow fitted to the other half; returns `(particles, moved,
    [stats of half 0, stats of half 1])`."""
    x, log_ref, log_l = (t.clone() for t in p)
    moved = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    stats = []
    for h, r in enumerate(rows):
        q, mv, st = latent_moves(
            flows[mover_of(h)], score, subset(p, r), beta, steps[h], settings, g
        )
        x[r], log_ref[r], log_l[r], moved[r] = q.x, q.log_ref, q.log_l, mv
        stats.append(st)
    return Particles(x, log_ref, log_l), moved, stats


def merged(stats: list[MoveStats]) -> MoveStats:
    """One record of a stage's moves over both halves (mean acceptance, most steps)."""
    return MoveStats(
        max(s.steps for s in stats),
        sum(s.acceptance for s in stats) / len(stats),
        math.exp(sum(math.log(s.step_size) for s in stats) / len(stats)),
        max(s.correlation for s in stats),
        sum(s.n_nonfinite for s in stats),
    )
