"""Read and validate system recipes (`systems/<name>/system.toml`).

A recipe names a target, a flow, training stages and a sampler (see `docs/cli.md`). Any
scalar value may be a per-budget table `{smoke = .., default = .., long = ..}`;
[`load_recipe`][boltzflow.runs.recipes.load_recipe] resolves it for the chosen budget. Validation
happens before anything
is written: unknown keys, systems, losses, flows and samplers raise
[`RecipeError`][boltzflow.runs.recipes.RecipeError] naming the key and the file.
"""

from __future__ import annotations

import functools
import importlib.resources
import inspect
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from boltzflow.runs import registry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "BUDGETS",
    "Recipe",
    "RecipeError",
    "systems_dir",
    "list_systems",
    "find_system",
    "load_recipe",
]

BUDGETS = ("smoke", "default", "long")

_SECTIONS = {
    "system": {"name", "description", "dtype", "default_device"},
    "target": None,  # kind + builder kwargs
    "flow": None,
    "training": {"stages"},
    "sampling": None,  # method, n_samples, n_importance + runner kwargs
    "reweighting": {"n_bootstrap"},
    "base": None,  # a sample set of state A (boltzflow.runs.targeted.BASE_KEYS)
}
_REQUIRED = {
    "system": ("name", "description"),
    "target": ("kind",),
    "flow": ("kind",),
    "sampling": ("method", "n_samples"),
}
STAGE_KEYS = {
    "loss",
    "steps",
    "batch_size",
    "lr",
    "data",
    "weight_forward",
    "grad_clip",
    "warmup_steps",
    "energy_cap",
    "eval_every",
    "patience",
    "temperature_scale",
    "weight_force",
    "weight_nll",
    "weight_reverse_kl",
}


class RecipeError(ValueError):
    """An invalid recipe; the message names the file and the offending key."""


@dataclass
class Recipe:
    """A validated recipe with budget-dependent values resolved."""

    path: Path
    budget: str
    system: dict
    target: dict
    flow: dict
    stages: list[dict]
    sampling: dict
    reweighting: dict = field(default_factory=dict)
    base: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.system["name"]

    @property
    def folder(self) -> Path:
        return self.path.parent


def systems_dir() -> Path:
    """The systems catalogue folder.

    `$BOLTZFLOW_SYSTEMS` when set (a folder of user systems); otherwise the catalogue shipped
    with boltzflow: the package data `boltzflow.systems` (the repository's top-level
    `systems/`, installed inside the wheel, or mapped there by an editable install), or
    `systems/` of the source tree when boltzflow is imported from a checkout that was not
    installed. A single system folder or TOML file can always be given to
    [`find_system`][boltzflow.runs.recipes.find_system] (`boltzflow run PATH`) instead.
    """
    env = os.environ.get("BOLTZFLOW_SYSTEMS")
    if env:
        return Path(env)
    return _shipped_catalogue()


@functools.cache
def _shipped_catalogue() -> Path:
    try:
        root = importlib.resources.files("boltzflow.systems")
    except ModuleNotFoundError:  # a checkout on sys.path, not installed
        root = None
    if isinstance(root, Path) and root.is_dir():
        return root
    return Path(__file__).resolve().parents[2] / "systems"


def list_systems() -> dict[str, str]:
    """`{name: description}` for every folder in the catalogue with a `system.toml`."""
    out = {}
    root = systems_dir()
    if not root.is_dir():
        return out
    for toml in sorted(root.glob("*/system.toml")):
        try:
            data = tomllib.loads(toml.read_text())
            out[toml.parent.name] = str(data.get("system", {}).get("description", ""))
        except tomllib.TOMLDecodeError as exc:
            out[toml.parent.name] = f"(invalid recipe: {exc})"
    return out


def find_system(name_or_path: str | os.PathLike) -> Path:
    """Path of a recipe: a catalogue name, a folder holding `system.toml`, or a TOML file."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    if p.is_dir() and (p / "system.toml").is_file():
        return p / "system.toml"
    cand = systems_dir() / str(name_or_path) / "system.toml"
    if cand.is_file():
        return cand
    known = ", ".join(list_systems()) or "(none)"
    raise RecipeError(f"unknown system '{name_or_path}' (known: {known})")


def _resolve_budget(value, budget: str, where: str, path: Path):
    if isinstance(value, dict) and value and set(value) <= set(BUDGETS):
        if budget not in value:
            raise RecipeError(f"{path}: {where} has no value for budget '{budget}'")
        return _resolve_budget(value[budget], budget, where, path)
    if isinstance(value, dict):
        return {k: _resolve_budget(v, budget, f"{where}.{k}", path) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_budget(v, budget, f"{where}[{i}]", path) for i, v in enumerate(value)]
    return value


def _check_keys(section: dict, allowed: set, where: str, path: Path) -> None:
    for key in section:
        if key not in allowed:
            raise RecipeError(
                f"{path}: unknown key '{key}' in [{where}] (allowed: {', '.join(sorted(allowed))})"
            )


def _check_registry(reg: dict, name, what: str, where: str, path: Path):
    try:
        return registry.resolve(reg, str(name), what)
    except KeyError as exc:
        raise RecipeError(f"{path}: [{where}] {exc.args[0]}") from None


RUNTIME_KEYWORDS = {"workers", "scheduler", "system_dir", "device"}
"""Keywords the pipeline supplies at run time; builders may accept them."""


def _check_kwargs(
    fn, params: dict, where: str, path: Path, skip_first: bool = False, reserved=()
) -> None:
    """Unknown builder arguments are recipe errors (unless the builder takes `**kwargs`)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return
    ps = list(sig.parameters.values())[1 if skip_first else 0 :]
    if any(p.kind is p.VAR_KEYWORD for p in ps):
        return
    allowed = {p.name for p in ps if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    allowed -= RUNTIME_KEYWORDS | set(reserved)
    for key in params:
        if key not in allowed:
            ok = ", ".join(sorted(allowed)) or "(none)"
            raise RecipeError(f"{path}: unknown key '{key}' in [{where}] (allowed: kind, {ok})")


def _params(section: dict, drop) -> dict:
    return {k: v for k, v in section.items() if k not in drop}


def _check_stochastic(table, path: Path) -> None:
    """A `[flow.stochastic]` table: known keys (`boltzflow.flows.snf.STOCHASTIC_KEYS`) and
    block kinds."""
    from boltzflow.flows.snf import BLOCK_KINDS, STOCHASTIC_KEYS

    if not isinstance(table, dict):
        raise RecipeError(f"{path}: [flow.stochastic] must be a table")
    _check_keys(table, STOCHASTIC_KEYS, "flow.stochastic", path)
    kinds = table.get("kind", "metropolis")
    for kind in [kinds] if isinstance(kinds, str) else kinds:
        if kind not in BLOCK_KINDS:
            known = ", ".join(BLOCK_KINDS)
            raise RecipeError(f"{path}: [flow.stochastic] unknown kind '{kind}' (known: {known})")


def _check_loss(loss, where: str, path: Path) -> None:
    """A stage's `loss`: a registered name, or a table `{name = weight}` of registered names
    with non-negative weights (`boltzflow.training.weighted.WeightedLoss`)."""
    if not isinstance(loss, dict):
        _check_registry(registry.LOSSES, loss, "loss", where, path)
        return
    if not loss:
        raise RecipeError(f"{path}: [{where}] loss table is empty")
    for name, weight in loss.items():
        _check_registry(registry.LOSSES, name, "loss", where, path)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise RecipeError(f"{path}: [{where}] loss weight of '{name}' must be a number >= 0")


def load_recipe(name_or_path: str | os.PathLike, budget: str = "default") -> Recipe:
    """Load, resolve and validate a recipe for `budget`.

    Raises:
        RecipeError: unknown system, budget, section, key, target, flow, loss or sampler.
    """
    if budget not in BUDGETS:
        raise RecipeError(f"unknown budget '{budget}' (choose from {', '.join(BUDGETS)})")
    path = find_system(name_or_path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: invalid TOML: {exc}") from None
    for sec in raw:
        if sec not in _SECTIONS:
            raise RecipeError(f"{path}: unknown section [{sec}] (allowed: {', '.join(_SECTIONS)})")
    data = _resolve_budget(raw, budget, "recipe", path)
    for sec, keys in _REQUIRED.items():
        if sec not in data:
            raise RecipeError(f"{path}: missing section [{sec}]")
        for key in keys:
            if key not in data[sec]:
                raise RecipeError(f"{path}: missing key '{key}' in [{sec}]")
    for sec, allowed in _SECTIONS.items():
        if allowed is not None and sec in data:
            _check_keys(data[sec], allowed, sec, path)
    if data["system"].get("dtype", "float32") not in ("float32", "float64"):
        raise RecipeError(f"{path}: [system] dtype must be 'float32' or 'float64'")
    fn = _check_registry(registry.TARGETS, data["target"]["kind"], "target", "target", path)
    _check_kwargs(fn, _params(data["target"], ("kind",)), "target", path)
    fn = _check_registry(registry.FLOWS, data["flow"]["kind"], "flow", "flow", path)
    flow_params = _params(data["flow"], ("kind", "stochastic"))
    _check_kwargs(fn, flow_params, "flow", path, skip_first=True, reserved=("seed",))
    if "stochastic" in data["flow"]:
        _check_stochastic(data["flow"]["stochastic"], path)
    if "base" in data:
        from boltzflow.runs.targeted import check_base

        try:
            check_base(data["base"], path)
        except ValueError as exc:
            raise RecipeError(str(exc)) from None
    fn = _check_registry(registry.SAMPLERS, data["sampling"]["method"], "sampler", "sampling", path)
    skip = ("method", "n_samples", "n_importance")
    sampler_params = _params(data["sampling"], skip)
    _check_kwargs(fn, sampler_params, "sampling", path, skip_first=True, reserved=("seed",))
    stages = data.get("training", {}).get("stages", [])
    if not isinstance(stages, list):
        raise RecipeError(f"{path}: [training] stages must be an array of tables")
    for i, st in enumerate(stages):
        where = f"training.stages[{i}]"
        _check_keys(st, STAGE_KEYS, where, path)
        for key in ("loss", "steps"):
            if key not in st:
                raise RecipeError(f"{path}: missing key '{key}' in [{where}]")
        _check_loss(st["loss"], where, path)
    return Recipe(
        path=path,
        budget=budget,
        system=data["system"],
        target=data["target"],
        flow=data["flow"],
        stages=stages,
        sampling=data["sampling"],
        reweighting=data.get("reweighting", {}),
        base=data.get("base", {}),
    )
