r"""Importance log-weights and the Kish effective sample size: the one rule, used everywhere.

For a point $x$ drawn from a flow (or any proposal) $q$ and an unnormalized target
$p(x) \propto e^{-u(x)}$ (`u` reduced, in kT),

$$
\log w(x) = -u(x) - \log q(x), \qquad
\mathrm{ESS} = \frac{(\sum_i w_i)^2}{\sum_i w_i^2}\ \text{(Kish 1965)}.
$$

**The rule for values that are not finite.** Every log-weight that is not a finite number --
NaN, $-\infty$ *and* $+\infty$ -- becomes $-\infty$, i.e. weight 0, and is
counted ([`sanitize_log_weights`][boltzflow.weights.sanitize_log_weights],
[`count_nonfinite`][boltzflow.weights.count_nonfinite]); it is never NaN and never silently dropped.
$-\infty$ and NaN are the expected cases (a non-finite or undefined energy). $+\infty$ can only come
from $u = -\infty$ or $\log q = -\infty$ at a point `q` itself drew: either is evidence of a broken
energy or a broken flow, not of a point with infinite importance, so it gets weight 0 like any other
invalid value rather than all of the mass. Samplers, the trainer's held-out ESS and the reweighting
estimators all go through these functions, so they agree on every sample.

This module is core: it imports nothing from `boltzflow.sampling` or
`boltzflow.training`, which both use it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import logsumexp

__all__ = [
    "clean_log_weights",
    "importance_log_weights",
    "log_weights",
    "count_nonfinite",
    "sanitize_log_weights",
    "kish_ess",
    "as_float64_numpy",
]


def clean_log_weights(log_w: torch.Tensor) -> torch.Tensor:
    r"""The rule of the module docstring on a tensor: NaN and $\pm\infty$ become
    $-\infty$ (weight 0); finite values pass unchanged. Same shape, dtype and device."""
    return torch.where(torch.isfinite(log_w), log_w, torch.full_like(log_w, -math.inf))


def importance_log_weights(energy: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    r"""`log w = -u - log q` from energies `u [n]` (kT) and proposal log-densities
    `log q [n]`, with every non-finite result mapped to $-\infty$ (module docstring).

    Example (a NaN energy, $\log q = -\infty$ and $u = -\infty$ all get weight 0):
        >>> import torch
        >>> inf = float("inf")
        >>> importance_log_weights(torch.tensor([1.0, 2.0, 2.0, -inf]),
        ...                        torch.tensor([0.5, -inf, inf, 0.0]))
        tensor([-1.5000,    -inf,    -inf,    -inf])
        >>> importance_log_weights(torch.tensor([float("nan")]), torch.tensor([0.0]))
        tensor([-inf])
    """
    return clean_log_weights(-energy - log_q)


def log_weights(target, x: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """`log w = -u(x) - log q(x)` with non-finite values mapped to `-inf` (never NaN).

    Args:
        target: an [`Energy`][boltzflow.energies.base.Energy] (one evaluation per sample).
        x: samples `[n, *event_shape]` drawn from the flow.
        log_q: the flow's log-density at `x`, `[n]`.

    Returns:
        `Tensor[n]`, without gradients.
    """
    with torch.no_grad():
        return importance_log_weights(target.energy(x), log_q)


def as_float64_numpy(a) -> np.ndarray:
    """A detached float64 numpy copy (or view) of a tensor, array or sequence."""
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def count_nonfinite(log_w) -> int:
    """Number of log-weights (tensor or array, any shape) that the rule sets to weight 0."""
    if isinstance(log_w, torch.Tensor):
        return int((~torch.isfinite(log_w)).sum())
    return int((~np.isfinite(np.asarray(log_w, dtype=np.float64))).sum())


def sanitize_log_weights(log_w) -> tuple[np.ndarray, int]:
    """Flatten to float64 numpy, apply the rule (NaN and ±inf → `-inf`) and count.

    Returns:
        `(log_w [n] float64, n_nonfinite)`; the input is not modified.
    """
    lw = as_float64_numpy(log_w).reshape(-1).copy()
    bad = ~np.isfinite(lw)
    lw[bad] = -np.inf
    return lw, int(bad.sum())


def kish_ess(log_w) -> float:
    r"""Kish effective sample size $(\sum w)^2 / \sum w^2$ (0 if all weights vanish).

    `log_w` is a tensor or array of any shape (flattened); non-finite entries count as
    weight 0. The ESS fraction is `kish_ess(log_w) / n`.
    """
    lw, _ = sanitize_log_weights(log_w)
    if not np.isfinite(lw).any():
        return 0.0
    return float(np.exp(2 * logsumexp(lw) - logsumexp(2 * lw)))
