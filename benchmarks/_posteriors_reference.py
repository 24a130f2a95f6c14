"""Quadrature references for the standard posteriors without a closed form (GARCH, ARMA).

The grid is a product of `n` points per coordinate over $[-R, R]$ in the unconstrained
coordinates whitened by the Laplace approximation, $y = \\hat y + L s$ ($LL^\\top = H^{-1}$):
$Z \\approx h^d |L| \\sum e^{-u(y)}$, and the moments of the named parameters are the normalized
weighted sums. $u$ includes the constraining Jacobian, so this is $\\int \\pi L\\,d\\theta$.
Two resolutions are computed; their difference and the weight on the outer shell of the grid
(tails cut off) are stored with the result as its error.
"""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import torch

from boltzflow.sampling.starts import laplace_approximation


def _grid_moments(post, mode, chol, n: int, radius: float, chunk: int = 1 << 16) -> dict:
    d = int(post.dim)
    s1 = np.linspace(-radius, radius, n)
    h = s1[1] - s1[0]
    log_w, theta = [], []
    pts = itertools.product(range(n), repeat=d)
    idx = np.array(list(pts), dtype=np.int32)
    for start in range(0, idx.shape[0], chunk):
        s = torch.as_tensor(s1[idx[start : start + chunk]])
        y = mode + s @ chol.T
        with torch.no_grad():
            u = post.energy(y)
            theta.append(post.constrain(y).theta.numpy())
        log_w.append(-u.numpy())
    log_w, theta = np.concatenate(log_w), np.concatenate(theta)
    log_w = np.where(np.isfinite(log_w), log_w, -np.inf)
    top = log_w.max()
    w = np.exp(log_w - top)
    log_z = float(top + np.log(w.sum()) + d * math.log(h) + float(torch.logdet(chol)))
    w = w / w.sum()
    mean = w @ theta
    sd = np.sqrt(w @ (theta - mean) ** 2)
    shell = (idx == 0).any(1) | (idx == n - 1).any(1)
    return {"log_z": log_z, "mean": mean, "sd": sd, "shell_mass": float(w[shell].sum())}


def quadrature_reference(post, n: int = 41, radius: float = 9.0) -> dict:
    """Mean, sd and $\\log Z$ by quadrature at `n` and at `(n + 1) // 2 * 3 // 2` points per
    coordinate (module docstring); `error_*` is the difference between the two."""
    t0 = time.perf_counter()
    lap = laplace_approximation(post, generator=torch.Generator().manual_seed(0))
    chol = torch.linalg.cholesky(lap.cov.double())
    mode = lap.mode.double()
    coarse = _grid_moments(post, mode, chol, int(n * 2 // 3) | 1, radius)
    fine = _grid_moments(post, mode, chol, n, radius)
    return {
        "mean": fine["mean"].tolist(),
        "sd": fine["sd"].tolist(),
        "log_z": fine["log_z"],
        "error_log_z": abs(fine["log_z"] - coarse["log_z"]),
        "error_mean_over_sd": float(np.max(np.abs(fine["mean"] - coarse["mean"]) / fine["sd"])),
        "error_sd_over_sd": float(np.max(np.abs(fine["sd"] - coarse["sd"]) / fine["sd"])),
        "shell_mass": fine["shell_mass"],
        "points": [n, int(n * 2 // 3) | 1],
        "radius": radius,
        "seconds": time.perf_counter() - t0,
        "source": "quadrature",
    }
