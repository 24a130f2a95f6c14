"""Checks of a ``boltzflow run --out DIR`` directory against the run contract (DESIGN.md).

:func:`contract_problems` returns a list of human-readable problems (empty when the directory
honours the contract for the recipe, budget and seed that were asked for).
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import boltzflow
from boltzflow.reporting.idata import read_samples
from boltzflow.runs.recipes import Recipe
from boltzflow.sampling.smc import smc

SECTIONS = ("training", "sampling", "reweighting", "observables", "free_energies")
FILES = ("summary.json", "samples.nc", "flow.pt", "flow.json", "report.md")
# Losses that evaluate the target on every step (reverse KL and importance-weighted forward KL).
ENERGY_LOSSES = {"reverse_kl", "forward_kl_is", "path_reverse_kl", "path_nll"}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def _present(v) -> bool:
    return True  # checked further by its own section


def _finite(v) -> bool:
    return _is_num(v) and math.isfinite(v)


class _Problems(list):
    def require(self, ok: bool, message: str) -> bool:
        if not ok:
            self.append(message)
        return ok

    def keys(self, section, where: str, spec: dict) -> dict:
        """Check that ``section`` is a dict whose keys in ``spec`` pass their checks (a missing
        section, ``None``, is reported by the caller)."""
        if section is None:
            return {}
        if not self.require(isinstance(section, dict), f"{where} is not an object"):
            return {}
        for key, check in spec.items():
            if self.require(key in section, f"{where} lacks '{key}'"):
                self.require(check(section[key]), f"{where}.{key} has a bad value {section[key]!r}")
        return section


def asked_samples(recipe: Recipe) -> int:
    """The number of draws a recipe asks for: ``n_samples``, rounded up to whole draws per
    chain when it runs ``chains`` chains (MCMC runners keep ``ceil(n_samples / chains)`` draws
    per chain); for SMC with production chains (``imh_draws``), ``imh_draws`` rounded up to
    whole draws of its one chain per island (``n_samples`` is then the number of particles)."""
    sampling = recipe.sampling
    if sampling["method"] == "smc" and int(sampling.get("imh_draws", 0)) > 0:
        default = inspect.signature(smc).parameters["islands"].default
        n, chains = int(sampling["imh_draws"]), int(sampling.get("islands", default))
    else:
        n, chains = int(sampling["n_samples"]), int(sampling.get("chains", 1))
    return chains * -(-n // chains)


def _summary_problems(s: dict, recipe: Recipe, seed: int, p: _Problems) -> None:
    p.keys(
        s,
        "summary",
        {
            "system": lambda v: v == recipe.name,
            "boltzflow_version": lambda v: v == boltzflow.__version__,
            "seed": lambda v: _is_int(v) and v == seed,
            "budget": lambda v: v == recipe.budget,
            **{k: _present for k in SECTIONS},
        },
    )
    steps = sum(int(st["steps"]) for st in recipe.stages)
    n_samples = asked_samples(recipe)
    n_importance = int(recipe.sampling.get("n_importance", recipe.sampling["n_samples"]))
    count = lambda v: _is_int(v) and v >= 0  # noqa: E731
    positive = lambda v: _finite(v) and v > 0  # noqa: E731
    tr = p.keys(
        s.get("training"),
        "training",
        {
            "loss": lambda v: isinstance(v, str) and v != "",
            "steps": lambda v: _is_int(v) and v == steps,
            "energy_evaluations": count,
            "wall_seconds": positive,
        },
    )
    p.keys(
        s.get("sampling"),
        "sampling",
        {
            "method": lambda v: isinstance(v, str) and v != "",
            "n_samples": lambda v: _is_int(v) and v == n_samples,
            "energy_evaluations": lambda v: _is_int(v) and v > 0,
            "acceptance_rate": lambda v: v is None or (_finite(v) and 0.0 <= v <= 1.0),
            "wall_seconds": positive,
        },
    )
    if any(st["loss"] in ENERGY_LOSSES for st in recipe.stages):
        p.require(
            count(tr.get("energy_evaluations")) and tr["energy_evaluations"] > 0,
            "training evaluates the energy but reports no energy evaluations",
        )
    rw = p.keys(
        s.get("reweighting"),
        "reweighting",
        {
            "ess": lambda v: _finite(v) and 0.0 < v <= n_importance,
            "ess_fraction": lambda v: _finite(v) and 0.0 < v <= 1.0,
            "log_z": _present,
            "pareto_k": _is_num,
            "n_nonfinite": lambda v: count(v) and v <= n_importance,
        },
    )
    if _finite(rw.get("ess")) and _finite(rw.get("ess_fraction")):
        p.require(
            math.isclose(rw["ess_fraction"], rw["ess"] / n_importance, rel_tol=1e-9),
            f"ess_fraction {rw['ess_fraction']} is not ess / {n_importance}",
        )
    if "log_z" in rw:
        p.require(rw["log_z"] is not None, "reweighting.log_z is null")
        p.keys(
            rw["log_z"],
            "reweighting.log_z",
            {"mean": _finite, "stderr": lambda v: _finite(v) and v >= 0},
        )
    for group in ("observables", "free_energies"):
        entries = s.get(group)
        for name, est in entries.items() if isinstance(entries, dict) else ():
            p.keys(
                est,
                f"{group}.{name}",
                {
                    "mean": _finite,
                    "stderr": lambda v: _finite(v) and v >= 0,
                    "unit": lambda v: isinstance(v, str) and v != "",
                },
            )


def _group(data, name: str):
    try:
        return data[name]
    except KeyError:
        return None


def _samples_problems(path: Path, summary: dict, p: _Problems) -> None:
    try:
        data = read_samples(path)
    except Exception as exc:  # noqa: BLE001 - any reading failure is a contract problem
        p.append(f"samples.nc is unreadable: {exc}")
        return
    post, stats = _group(data, "posterior"), _group(data, "sample_stats")
    p.require(post is not None, "samples.nc has no posterior group")
    if not p.require(stats is not None, "samples.nc has no sample_stats group"):
        return
    sampling = summary.get("sampling") or {}
    wanted = ["log_weight", "energy"]
    if sampling.get("acceptance_rate") is not None:
        wanted.append("accepted")
    n_samples = sampling.get("n_samples")
    for name in wanted:
        if not p.require(name in stats, f"samples.nc lacks sample_stats.{name}"):
            continue
        sizes = dict(stats[name].sizes)
        n = sizes.get("chain", 0) * sizes.get("draw", 0)
        p.require(n == n_samples, f"sample_stats.{name} holds {n} draws, summary says {n_samples}")
    if post is not None:
        names = list(post.data_vars) if hasattr(post, "data_vars") else list(post)
        p.require(len(names) > 0, "samples.nc's posterior group is empty")
        for name in names:
            sizes = dict(post[name].sizes)
            n = sizes.get("chain", 0) * sizes.get("draw", 0)
            p.require(n == n_samples, f"posterior.{name} holds {n} draws, summary says {n_samples}")


def contract_problems(out: str | Path, recipe: Recipe, seed: int) -> list[str]:
    """Everything in run directory ``out`` that breaks the run contract for ``recipe``
    (already resolved for the budget that was run) and ``seed``; empty when all is well."""
    out = Path(out)
    p = _Problems()
    for name in FILES:
        p.require((out / name).is_file(), f"no {name}")
    if (out / "summary.json").is_file():
        try:
            summary = json.loads((out / "summary.json").read_text())
        except json.JSONDecodeError as exc:
            p.append(f"summary.json does not parse: {exc}")
            summary = {}
        if p.require(isinstance(summary, dict), "summary.json is not an object"):
            _summary_problems(summary, recipe, seed, p)
        else:
            summary = {}
        if (out / "samples.nc").is_file():
            _samples_problems(out / "samples.nc", summary, p)
    if (out / "flow.json").is_file():
        try:
            meta = json.loads((out / "flow.json").read_text())
        except json.JSONDecodeError as exc:
            p.append(f"flow.json does not parse: {exc}")
        else:
            p.require(
                isinstance(meta, dict) and meta.get("builder") == recipe.flow["kind"],
                f"flow.json does not name the recipe's builder {recipe.flow['kind']!r}",
            )
    pngs = sorted(f.name for f in out.glob("*.png"))
    p.require(len(pngs) > 0, "no PNG figure")
    if (out / "report.md").is_file():
        report = (out / "report.md").read_text()
        for name in pngs:
            p.require(name in report, f"report.md does not reference {name}")
    return list(p)
