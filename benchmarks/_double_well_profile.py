r"""Double well of `benchmarks/stochastic.py`: draws, the free-energy-profile errors, and the
published training protocol (Wu, Köhler & Noé 2020, Fig. 3 and Table 1).

Three errors of the reweighted profile along $x_1$ (kT), all from the same draws
(`histograms` keeps what each needs per repeat, `metrics` computes them):

* **interval** (the headline): the authors' estimator on fixed bins. Each repeat histograms
  $x_1$ into 30 equal bins of (-2.25, 2.25), weighted by the path weights, takes
  $F = -\ln(\text{density})$ and subtracts its mean over the finite bins. Over the repeats,
  $\bar F$ (the mean) is shifted to minimum 0, and so is the exact $u_1$ at the bin centres;
  over the bins where $u_1 - \bar F$ is finite (a bin some repeat leaves empty is dropped),
  bias $= |\text{mean}(u_1 - \bar F)|$ (a signed mean: errors of opposite sign cancel) and
  std $=$ the mean over bins of the per-bin standard deviation over repeats (ddof 0); the
  error is $\sqrt{\text{bias}^2 + \text{std}^2}$.
* **notebook**: the same estimator exactly as the authors' notebook computes it
  (`experiment1_doublewell.ipynb`, `snf_code/analysis.py`): the 30 bins span each repeat's
  own sample range (`np.histogram` without a range), the exact $u_1$ is taken at the last
  repeat's centres, and (-2.25, 2.25) only selects the bins whose centre lies inside. The bins
  then move with the most extreme sample of each repeat, whatever its weight: one zero-weight
  straggler per repeat changes the error by several kT, and a straggler far enough out leaves
  no bin centre inside the interval (NaN). Kept for comparison with the paper's numbers.
* **fixed bins**: $F_b = -\ln \sum_{i\in b} w_i$ on 50 fixed bins of (-2.25, 2.25),
  restricted to the bins that exact sampling of the same size fills with >= 10 points, each
  repeat shifted to the exact bin-integrated profile by its mean difference; per bin
  $\sqrt{\text{bias}^2 + \text{std}^2}$ over the repeats, averaged over the bins.

Why the interval version is the headline: the comparison is specified as the profile over
(-2.25, 2.25), and with fixed bins the estimator depends on the samples and their
weights only, so a weightless straggler cannot move it, while it keeps the authors' bias, std
and bin count. `evaluate_exact` gives each metric's floor (exact i.i.d. draws).

The published protocol (`--protocol published`): 10,000 exact training samples
(`DoubleWell2D.sample`, shared by every training; the authors thin an MCMC run), three
"transforms" of two couplings each (RealNVP: affine couplings, width 64; NSF: rational-quadratic
splines with 20 bins on [-3, 3], width 64; nflows ResidualNet conditioners with one residual
block, where the authors use plain ReLU MLPs, and no output affine). With blocks: 20
random-walk Metropolis steps of size 0.25 before the first coupling ($\lambda = 0$), after
transforms 1 and 2 ($\lambda = 0, 0.5$) and after the last ($\lambda = 1$), $\lambda$ and step
fixed. Training: Adam at a constant 5e-3, batch 128, no gradient clipping; 300 steps of
`snf_nll` on the data, then 300 steps of `{snf_nll = 0.5, snf_reverse_kl = 0.5}`. The authors
use one Adam optimizer for both phases, here each stage starts a fresh one.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

from boltzflow.energies.double_well import DoubleWell2D
from boltzflow.rng import make_generator
from boltzflow.runs.pipeline import build_flow
from boltzflow.runs.recipes import load_recipe
from boltzflow.training import train
from boltzflow.weights import importance_log_weights

LO, HI = -2.25, 2.25
CHUNK = 25_000

PUBLISHED_FLOWS = {
    "realnvp": {"kind": "realnvp", "num_layers": 6, "hidden": 64, "num_blocks": 1,
                "affine": False},
    "spline-coupling": {"kind": "spline-coupling", "num_layers": 6, "hidden": 64,
                        "num_blocks": 1, "num_bins": 20, "tail_bound": 3.0, "affine": False},
}  # fmt: skip
PUBLISHED_BLOCKS = {
    "kind": "metropolis",
    "count": 4,
    "steps": 20,
    "step_size": 0.25,
    "lambdas": [0.0, 0.0, 0.5, 1.0],
    "placement": [0, 2, 4, 6],
    "train_lambda": False,
    "train_step_size": False,
}


# ------------------------------------------------------------------------------- draws
def draw(flow, target, samples: int, generator) -> tuple[np.ndarray, np.ndarray]:
    """`samples` path draws: $x_1$ and the log path weights $-u(x) - \\log q$ (float64)."""
    xs, lws = [], []
    with torch.no_grad():
        for start in range(0, samples, CHUNK):
            s = flow.sample(min(CHUNK, samples - start), generator=generator)
            xs.append(s.x[:, 0].double())
            lws.append(importance_log_weights(target.energy(s.x).double(), s.log_q.double()))
    return torch.cat(xs).numpy(), torch.cat(lws).numpy()


def _weights(log_w: np.ndarray) -> np.ndarray:
    finite = np.isfinite(log_w)
    top = log_w[finite].max() if finite.any() else 0.0
    return np.where(finite, np.exp(log_w - top), 0.0)


# ------------------------------------------------------------------------ fixed bins
def exact_profile(target: DoubleWell2D, bins: int) -> np.ndarray:
    """$-\\ln \\int_b e^{-u_1(x_1)} dx_1$ per bin of (LO, HI) (the x2 factor is a constant)."""
    edges = np.linspace(LO, HI, bins + 1)
    out = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        x = np.linspace(a, b, 2001)
        u = target.a * x + target.b * x**2 + target.c * x**4
        out.append(-math.log(np.trapezoid(np.exp(-(u - u.min())), x)) + u.min())
    return np.array(out)


def evaluation_bins(target, samples: int, bins: int) -> np.ndarray:
    """The bins that `samples` exact draws fill with >= 10 points on average: the same set for
    every model (the barrier bins, which even exact sampling leaves empty, are excluded)."""
    mass = np.exp(-exact_profile(target, bins) - target.marginal.log_z)  # P(x1 in bin)
    return mass * samples >= 10


def fixed_bin_profile(x1: np.ndarray, log_w: np.ndarray, bins: int) -> np.ndarray:
    """$F_b = -\\ln \\sum_{i \\in b} w_i$ on `bins` equal bins of (LO, HI) (+inf if empty)."""
    hist, _ = np.histogram(x1, bins=np.linspace(LO, HI, bins + 1), weights=_weights(log_w))
    with np.errstate(divide="ignore"):
        return -np.log(hist)


def fixed_bin_error(profiles, exact, keep) -> tuple[float, int]:
    """Mean over the kept bins of $\\sqrt{\\text{bias}^2 + \\text{std}^2}$ (kT), and the number
    of kept bins some repeat left empty (dropped)."""
    f = np.array(profiles)[:, keep]
    ok = np.isfinite(f).all(0)
    f = f[:, ok] - (f[:, ok] - exact[keep][ok]).mean(1, keepdims=True)
    bias, std = f.mean(0) - exact[keep][ok], f.std(0)
    return float(np.sqrt(bias**2 + std**2).mean()), int((~ok).sum())


# ------------------------------------------------------------------ authors' estimator
def authors_histogram(x1, log_w=None, bins: int = 30, interval=None) -> tuple:
    """Bin centres and $F = -\\ln(\\text{density})$ of $x_1$ on `bins` equal bins, shifted by
    its mean over the finite bins (weighted when `log_w` is given). `interval=None`: the bins
    span the samples' own range (the authors' notebook); `(LO, HI)`: fixed bins."""
    w = None if log_w is None else _weights(log_w)
    hist, edges = np.histogram(x1, bins=bins, range=interval, density=True, weights=w)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = -np.log(hist)
    finite = np.isfinite(f)
    return 0.5 * (edges[1:] + edges[:-1]), f - (f[finite].mean() if finite.any() else 0.0)


def authors_error(target: DoubleWell2D, centres, profiles) -> dict:
    """The authors' bias, std and $\\sqrt{\\text{bias}^2 + \\text{std}^2}$ (kT) of repeats
    `profiles [repeats, bins]`, against $u_1$ at `centres` (see the module docstring)."""
    f = np.array(profiles, dtype=float)
    centres = np.asarray(centres, dtype=float)
    exact = target.a * centres + target.b * centres**2 + target.c * centres**4
    exact = exact - exact.min()
    with np.errstate(invalid="ignore"):
        mean = f.mean(0)
        mean = mean - mean[np.isfinite(mean)].min() if np.isfinite(mean).any() else mean
        diff = exact - mean
        keep = (centres > LO) & (centres < HI) & np.isfinite(diff)
    if not keep.any():  # no bin to judge: an error, never a number to average
        return {"bias": math.nan, "std": math.nan, "error": math.nan, "bins": 0}
    bias = abs(float(diff[keep].mean()))
    std = float(f[:, keep].std(0).mean())
    return {"bias": bias, "std": std, "error": math.hypot(bias, std), "bins": int(keep.sum())}


# ------------------------------------------------------------------------- evaluation
def histograms(x1, log_w, bins_fixed: int = 50, bins_authors: int = 30) -> dict:
    """Everything the metrics need from one repeat of draws (weighted profiles; small, JSON)."""
    nb_c, nb_f = authors_histogram(x1, log_w, bins_authors)
    _, iv_f = authors_histogram(x1, log_w, bins_authors, (LO, HI))
    return {
        "fixed_bins": fixed_bin_profile(x1, log_w, bins_fixed).tolist(),
        "interval": iv_f.tolist(),
        "notebook": nb_f.tolist(),
        "notebook_centres": nb_c.tolist(),
        "x1_range": [float(x1.min()), float(x1.max())],
    }


def metrics(target, repeats: list[dict], samples: int, bins_fixed=50, bins_authors=30) -> dict:
    """The three errors (kT) of one trained model from its repeats' `histograms`:

    * `interval`: the authors' estimator on `bins_authors` fixed bins of (LO, HI) (headline);
    * `notebook`: the same estimator with the bins over each repeat's sample range, as in the
      authors' notebook (the last repeat's centres stand for all repeats, as there);
    * `fixed_bins`: per-bin $\\sqrt{\\text{bias}^2 + \\text{std}^2}$ on the exactly-filled bins.
    """
    exact, keep = exact_profile(target, bins_fixed), evaluation_bins(target, samples, bins_fixed)
    err, empty = fixed_bin_error([r["fixed_bins"] for r in repeats], exact, keep)
    edges = np.linspace(LO, HI, bins_authors + 1)
    return {
        "interval": authors_error(target, 0.5 * (edges[1:] + edges[:-1]),
                                  [r["interval"] for r in repeats]),
        "notebook": authors_error(target, repeats[-1]["notebook_centres"],
                                  [r["notebook"] for r in repeats]),
        "fixed_bins": {"error": err, "empty_bins": empty, "bins": int(keep.sum())},
    }  # fmt: skip


def evaluate(flow, target, samples, repeats, seed, bins_fixed=50, bins_authors=30) -> dict:
    """`repeats` x `samples` path draws of one trained model: per-repeat `histograms`, the
    `metrics`, and the non-finite log-weights met (which must be 0)."""
    g = make_generator(seed)
    rows, bad = [], 0
    for _ in range(repeats):
        x1, lw = draw(flow, target, samples, g)
        bad += int((~np.isfinite(lw)).sum()) + int((~np.isfinite(x1)).sum())
        rows.append(histograms(x1, lw, bins_fixed, bins_authors))
    return {"metrics": metrics(target, rows, samples, bins_fixed, bins_authors),
            "nonfinite": bad, "repeats": rows}  # fmt: skip


def evaluate_exact(target, samples, repeats, seed, bins_fixed=50, bins_authors=30) -> dict:
    """The same metrics for exact i.i.d. draws with equal weights: the floor of each metric."""
    g = make_generator(seed)
    rows = []
    for _ in range(repeats):
        x1 = target.sample(samples, generator=g)[:, 0].double().numpy()
        rows.append(histograms(x1, np.zeros_like(x1), bins_fixed, bins_authors))
    return {"metrics": metrics(target, rows, samples, bins_fixed, bins_authors)}


# -------------------------------------------------------------------------- training
def published_recipe(kind: str, blocks: bool, overrides=None, flow_kw=None):
    """The `double-well-snf` recipe with the published flow (and blocks) swapped in."""
    recipe = load_recipe("double-well-snf", "default")
    recipe.flow = {**copy.deepcopy(PUBLISHED_FLOWS[kind]), **(flow_kw or {})}
    if blocks:
        recipe.flow["stochastic"] = {**copy.deepcopy(PUBLISHED_BLOCKS), **(overrides or {})}
    return recipe


def published_stages(data, steps: int = 300, lr: float = 5e-3, batch_size: int = 128) -> list:
    """Maximum likelihood on `data`, then the 0.5 / 0.5 sum of NLL and reverse KL."""
    common = {"data": data, "steps": steps, "lr": lr, "batch_size": batch_size,
              "schedule": "constant", "clip_grad_norm": None}  # fmt: skip
    return [
        {"loss": "snf_nll", **common},
        {"loss": {"snf_nll": 0.5, "snf_reverse_kl": 0.5}, **common},
    ]


def train_published(recipe, target, seed: int, data, steps: int = 300):
    """Build the recipe's flow for `seed` and train it with `published_stages`."""
    torch.manual_seed(seed)
    flow = build_flow(recipe, target, seed)
    result = train(flow, target, published_stages(data.float(), steps), seed=seed, progress=False)
    flow.eval()
    return flow, result
