r"""Recipes whose flow starts from samples of a state $A$: targeted free-energy perturbation runs.

A recipe with a `[base]` table of kind `"samples"` trains a map from state $A$ to the recipe's
target (state $B$) instead of a flow from a simple base distribution:

```toml
[base]
kind = "samples"
state = { temperature = 250.0 }   # state A: the [target] table with these keys replaced
data = "md"                       # A's configurations: target_A.training_data("md")
holdout = 0.5                     # the last half of the frames is held out for the estimate
# evaluation_state = { md_seed = 1 }  # or: an independent MD of A (the frames then all train)

[[training.stages]]
loss = "targeted_fep"
data = "base"                     # minibatches of A's training frames
```

[`attach_sample_base`][boltzflow.runs.targeted.attach_sample_base] builds state $A$, splits its
frames into training and held-out ones (or builds a second, independent set with
`evaluation_state`), evaluates $u_A$ once, and puts a
[`SampleSetBase`][boltzflow.flows.sample_set.SampleSetBase] holding the held-out frames (and
recognising the training ones) under the flow. Draws of the flow are then held-out $A$ frames
pushed through the map and the ordinary importance weights are the targeted ones
([`boltzflow.flows.sample_set`][boltzflow.flows.sample_set]), so the trainer's held-out ESS is the
targeted ESS. [`free_energies`][boltzflow.runs.targeted.free_energies] adds to `summary.json` the
learned ΔF (`delta_f`, each held-out frame used once) and plain FEP on the same frames
(`delta_f_plain_fep`), per molecule as well when the target has `n_molecules`, with ESS and
PSIS $\hat k$ ([`boltzflow.sampling.targeted_fep`][boltzflow.sampling.targeted_fep]).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from boltzflow.flows.sample_set import SampleSetBase
from boltzflow.sampling.targeted_fep import targeted_and_plain_fep

__all__ = ["BASE_KEYS", "check_base", "attach_sample_base", "free_energies"]

BASE_KEYS = {"kind", "state", "data", "holdout", "evaluation_state"}
"""Keys of a recipe's `[base]` table."""


def check_base(table, path) -> None:
    """Validate a `[base]` table; raises `ValueError` naming `path` and the key."""
    if not isinstance(table, dict):
        raise ValueError(f"{path}: [base] must be a table")
    for key in table:
        if key not in BASE_KEYS:
            raise ValueError(
                f"{path}: unknown key '{key}' in [base] (allowed: {', '.join(sorted(BASE_KEYS))})"
            )
    if table.get("kind") != "samples":
        raise ValueError(f"{path}: [base] kind must be 'samples'")
    for key in ("state", "evaluation_state"):
        if not isinstance(table.get(key, {}), dict):
            raise ValueError(f"{path}: [base] {key} must be a table of [target] keys")
    holdout = table.get("holdout", 0.5)
    if "evaluation_state" not in table and not (
        isinstance(holdout, (int, float)) and 0.0 < holdout < 1.0
    ):
        raise ValueError(f"{path}: [base] holdout must lie in (0, 1), got {holdout!r}")


def _state(recipe, target, runtime: dict, overrides: dict, stack):
    """The target of state A: the recipe's `[target]` with `overrides` (the run's target itself
    when there are none)."""
    if not overrides:
        return target
    from boltzflow.runs.pipeline import build_target

    state = build_target(
        dataclasses.replace(recipe, target={**recipe.target, **overrides}), **runtime
    )
    stack.callback(state.close)
    return state


def _frames(recipe, target_a, data) -> torch.Tensor:
    """State A's configurations: `target_a.training_data(data)`, or a file in the system
    folder when the target provides none."""
    try:
        return torch.as_tensor(target_a.training_data(data))
    except NotImplementedError:
        from boltzflow.runs.pipeline import _data_file

        return _data_file(recipe, data)


@torch.no_grad()
def _energies(energy, x: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    return torch.cat([energy.energy(b) for b in torch.split(x, batch)])


def attach_sample_base(stack, recipe, flow, target, runtime: dict):
    """Put the held-out samples of state A under `flow` and return the recipe with the stages'
    `data = "base"` replaced by the training samples (unchanged without a `[base]` table).

    Args:
        stack: the run's `contextlib.ExitStack` (closes the state-A targets it builds).
        recipe: the [`Recipe`][boltzflow.runs.recipes.Recipe].
        flow: the built flow (its transform is the map; its base is replaced).
        target: the run's target (state B).
        runtime: the keywords the pipeline gives target builders (workers, system_dir, ...).
    """
    base = recipe.base
    if not base:
        return recipe
    anchor = next(iter(flow.parameters()), None)
    dtype = anchor.dtype if anchor is not None else torch.get_default_dtype()
    device = anchor.device if anchor is not None else torch.device("cpu")
    state = dict(base.get("state", {}))
    data = base.get("data", "md")
    target_a = _state(recipe, target, runtime, state, stack)
    frames = _frames(recipe, target_a, data).to(device=device, dtype=dtype)
    if "evaluation_state" in base:
        overrides = {**state, **base["evaluation_state"]}
        evaluation = _frames(recipe, _state(recipe, target, runtime, overrides, stack), data)
        train, held_out = frames, evaluation.to(device=device, dtype=dtype)
    else:
        n_out = int(round(float(base.get("holdout", 0.5)) * frames.shape[0]))
        if not 0 < n_out < frames.shape[0]:
            raise ValueError(f"{recipe.path}: [base] holdout leaves no training or held-out frame")
        train, held_out = frames[: frames.shape[0] - n_out], frames[frames.shape[0] - n_out :]
    sample_set = SampleSetBase(
        held_out,
        _energies(target_a, held_out),
        energy=target_a,
        known=(train, _energies(target_a, train)),
    )
    flow.base = sample_set.to(device=device, dtype=dtype)
    stages = [
        {**st, "data": train} if isinstance(st.get("data"), str) and st["data"] == "base" else st
        for st in recipe.stages
    ]
    return dataclasses.replace(recipe, stages=stages)


def compare_with_reference(entry: dict, target, name: str, exact=None) -> dict:
    """Add the target's reference for `name` to an estimate `entry` (`mean`, `stderr`):
    `reference` from `exact(name)` (default `target.exact_free_energy`; runs pass
    `target.exact_observable` for observables), `reference_stderr` from
    `target.reference_stderr(name)` where it has one, and `z_score`, the difference over the
    combined standard error. `entry` is returned unchanged when the target has no reference."""
    try:
        value = float((exact or target.exact_free_energy)(name))
    except (KeyError, ValueError, NotImplementedError):
        return entry
    entry["reference"] = value
    var = entry["stderr"] ** 2 if math.isfinite(entry["stderr"]) else math.nan
    try:
        se = float(target.reference_stderr(name))
    except (KeyError, ValueError, NotImplementedError):
        se = None
    if se is not None:
        entry["reference_stderr"] = se
        var += se**2
    if var > 0 and math.isfinite(var):
        entry["z_score"] = round((entry["mean"] - value) / math.sqrt(var), 3)
    return entry


def free_energies(flow, target, n_bootstrap: int, seed: int) -> dict:
    """`summary.json` free-energy entries of a targeted run (`{}` for other flows).

    `delta_f` (learned map) and `delta_f_plain_fep` (identity map) in kT on the held-out
    frames, each with `ess`, `ess_fraction`, `pareto_k`; with `target.n_molecules` also
    `delta_f_per_molecule` and `delta_f_per_molecule_plain_fep`. Every entry is compared with
    the target's reference for the flow entry's name (`exact_free_energy`), if it has one.
    """
    if not isinstance(getattr(flow, "base", None), SampleSetBase):
        return {}
    res = targeted_and_plain_fep(
        flow, target, flow.base.samples, n_bootstrap=n_bootstrap, seed=seed
    )
    n_mol = target.n_molecules
    out = {}
    for method, suffix in (("flow", ""), ("plain", "_plain_fep")):
        r = res[method]
        stats = {"ess": r.ess, "ess_fraction": r.ess_fraction, "pareto_k": r.pareto_k, "n": r.n}
        total = {"mean": r.delta_f.mean, "stderr": r.delta_f.stderr, "unit": "kT", **stats}
        out[f"delta_f{suffix}"] = compare_with_reference(total, target, "delta_f")
        if n_mol:
            per = r.per_molecule(int(n_mol))
            entry = {"mean": per.mean, "stderr": per.stderr, "unit": "kT", **stats}
            name = "delta_f_per_molecule"
            out[f"{name}{suffix}"] = compare_with_reference(entry, target, name)
    return out
