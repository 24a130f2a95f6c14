"""The `boltzflow run` pipeline: recipe → target → flow → train → sample → reweight → report.

[`run`][boltzflow.runs.pipeline.run] validates the whole recipe before it writes anything, then
produces the files of the run contract (DESIGN.md): `summary.json`, `samples.nc`, `flow.pt` +
`flow.json`, PNG figures and `report.md`.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import time
from pathlib import Path

import torch

import boltzflow
from boltzflow.progress import logger as stage_log
from boltzflow.runs import registry, targeted
from boltzflow.runs.processes import (
    batch_size_for,
    describe_hardware,
    join_from_environment,
    run_distributed,
    set_run_threads,
)
from boltzflow.runs.recipes import Recipe, load_recipe
from boltzflow.sampling.coverage import with_coverage
from boltzflow.sampling.reweighting import (
    expectation,
    free_energy_difference,
    free_energy_difference_chains,
    reweight,
)
from boltzflow.sampling.runners import SamplingResult, importance_sampling
from boltzflow.training.distributed import world
from boltzflow.training.path_monitor import path_callbacks, path_gradient_summary, variance_columns
from boltzflow.training.weighted import loss_label as _loss_label

__all__ = ["run", "build_target", "build_flow"]

logger = logging.getLogger(__name__)


def _call_with_supported(fn, *args, **kwargs):
    """Call `fn` passing only the keyword arguments its signature accepts (plus **kwargs)."""
    sig = inspect.signature(fn)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return fn(*args, **kwargs)
    return fn(*args, **{k: v for k, v in kwargs.items() if k in sig.parameters})


def build_target(recipe: Recipe, **runtime):
    """Build the recipe's target Energy. `runtime` (workers, scheduler, system_dir, device)
    is passed to builders that accept those keywords."""
    params = {k: v for k, v in recipe.target.items() if k != "kind"}
    fn = registry.resolve(registry.TARGETS, recipe.target["kind"], "target")
    extra = {k: v for k, v in runtime.items() if k not in params}
    return _call_with_supported(fn, **params, **extra)


def build_flow(recipe: Recipe, target, seed: int):
    """Build the recipe's flow for `target` (builders accepting `seed` get it), with the
    stochastic blocks of a `[flow.stochastic]` table placed into it
    (`boltzflow.flows.snf.add_stochastic_blocks`)."""
    params = {k: v for k, v in recipe.flow.items() if k not in ("kind", "stochastic")}
    fn = registry.resolve(registry.FLOWS, recipe.flow["kind"], "flow")
    flow = _call_with_supported(fn, target, **params, seed=seed)
    if "stochastic" in recipe.flow:
        from boltzflow.flows.snf import add_stochastic_blocks

        flow = add_stochastic_blocks(flow, target, **recipe.flow["stochastic"])
    return flow


def _device(recipe: Recipe, device: str | None) -> torch.device:
    dev = torch.device(device or recipe.system.get("default_device", "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but CUDA is not available")
    return dev


def _stage_data(data, target, recipe: Recipe, dtype, device):
    """Resolve a stage's `data`: `"exact"`, a target-provided set, or a file in the system."""
    if data is None or isinstance(data, torch.Tensor) or data == "exact":
        return data if data is None or isinstance(data, str) else data.to(device, dtype)
    try:
        tensor = target.training_data(data)
    except NotImplementedError:  # the target provides none: a file in the system folder
        tensor = _data_file(recipe, data)
    return tensor.to(device=device, dtype=dtype)


def _data_file(recipe: Recipe, data) -> torch.Tensor:
    path = recipe.folder / str(data)
    if not path.is_file():
        raise FileNotFoundError(f"{recipe.path}: training data '{data}' not found ({path})")
    if path.suffix == ".npy":
        import numpy as np

        return torch.from_numpy(np.load(path))
    return torch.load(path, weights_only=True)


def _train(
    flow, target, recipe: Recipe, seed: int, out_dir: Path, compile: bool = False, tuner=None
):
    """Run the recipe's training stages with [`Trainer`][boltzflow.training.trainer.Trainer]
    (and the run's thread tuner, if any, as a callback)."""
    from boltzflow.training.callbacks import EarlyStopping
    from boltzflow.training.trainer import Stage, Trainer

    if not recipe.stages:
        return None
    anchor = next(iter(flow.parameters()))
    stages, eval_every, patience = [], None, None
    for spec in recipe.stages:
        spec = dict(spec)
        spec["batch_size"] = batch_size_for(spec.get("batch_size", 256), anchor.device.type)
        eval_every = spec.pop("eval_every", eval_every)
        patience = spec.pop("patience", patience)
        if "grad_clip" in spec:
            spec["clip_grad_norm"] = spec.pop("grad_clip")
        temperature = spec.pop("temperature_scale", None)
        spec["data"] = _stage_data(spec.get("data"), target, recipe, anchor.dtype, anchor.device)
        if temperature is not None:
            spec["loss"] = _tempered_loss(spec["loss"], target.at_temperature(temperature))
        stages.append(Stage.from_dict(spec))
    callbacks = [tuner] if tuner is not None else []
    callbacks += path_callbacks(recipe.stages)
    if patience is not None:
        if eval_every is None:
            raise ValueError(f"{recipe.path}: 'patience' needs 'eval_every' in a training stage")
        callbacks.append(EarlyStopping("ess_fraction", patience=int(patience), restore_best=True))
    trainer = Trainer(
        flow, target, stages, seed=seed, eval_every=eval_every, callbacks=callbacks, compile=compile
    )
    return trainer.fit()


def _tempered_loss(name, tempered_target):
    """A loss (a name or a `{name: weight}` table) evaluated against `tempered_target` instead
    of the trainer's target."""
    from boltzflow.training.weighted import needs_data, resolve_loss

    base = resolve_loss(name)

    def loss(flow, target, batch, **kwargs):
        return base(flow, tempered_target, batch, **kwargs)

    loss.__name__ = f"{_loss_label(name)}@T={tempered_target.temperature_scale:g}"
    loss.needs_data = needs_data(base)
    return loss


def _training_history(training) -> dict:
    """Columns for the training-curve figure."""
    if training is None:
        return {}
    steps, loss = training.column("loss")
    ess_steps, ess = training.column("ess_fraction")
    columns = {"step": steps, "loss": loss, "ess_step": ess_steps, "ess_fraction": list(ess)}
    return columns | variance_columns(training)


def _estimate_observables(target, result: SamplingResult) -> dict:
    """Observable means ± stderr: self-normalized IS for weighted draws, MCSE for chains."""
    out, values = {}, {}
    if not target.observables():
        return out, values
    x = result.x.reshape(-1, *result.x.shape[2:])
    with torch.no_grad():
        for name, obs in target.observables().items():
            v = obs.fn(x).reshape(result.x.shape[:2])
            values[name] = v
            if result.weighted:
                est = expectation(v, result.log_weight)
                out[name] = {"mean": est.mean, "stderr": est.stderr, "unit": obs.unit}
            else:
                from boltzflow.sampling.diagnostics import mcse

                m = float(v.double().mean())
                out[name] = {"mean": m, "stderr": float(mcse(v)), "unit": obs.unit}
    return out, values


def _estimate_free_energies(target, result: SamplingResult, n_bootstrap, seed) -> dict:
    """ΔF per state-set pair: bootstrap for weighted draws, MCSE delta method for chains."""
    out = {}
    x = result.x.reshape(-1, *result.x.shape[2:])
    shape = result.x.shape[:2]
    with torch.no_grad():
        for name, sets in target.state_sets().items():
            in_a, in_b = sets.in_a(x), sets.in_b(x)
            if result.weighted:
                est = free_energy_difference(
                    in_a, in_b, result.log_weight, n_bootstrap=n_bootstrap, seed=seed
                )
            else:
                est = free_energy_difference_chains(in_a.reshape(shape), in_b.reshape(shape))
            out[name] = {"mean": est.mean, "stderr": est.stderr, "unit": "kT"}
    return out


def _references(target, summary: dict) -> dict:
    """Exact or reference values beside the estimates; `z_score` = difference over the
    combined standard error (the estimate's, plus the reference's where it has one)."""
    ref = {}
    if target.log_z is not None:
        lz = summary["reweighting"]["log_z"]
        ref["log_z"] = float(target.log_z)
        if lz["stderr"] and math.isfinite(lz["stderr"]) and lz["stderr"] > 0:
            ref["log_z_z_score"] = round((lz["mean"] - target.log_z) / lz["stderr"], 3)
        ref["log_z_abs_error"] = abs(lz["mean"] - target.log_z)
    for group, exact in (
        ("observables", target.exact_observable),
        ("free_energies", target.exact_free_energy),
    ):
        for name, est in summary[group].items():
            targeted.compare_with_reference(est, target, name, exact)
    return ref


def run(
    name_or_path: str = "gmm40",
    *,
    budget: str = "default",
    seed: int = 0,
    out: str | Path | None = None,
    device: str | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    threads: int | None = None,
    nproc: int = 1,
    compile: bool = False,
) -> dict:
    """Run a recipe end to end and write the run directory. Returns the summary dict.

    Args:
        name_or_path: catalogue name (`boltzflow systems`) or path to a recipe.
        budget: `smoke` (≈1 min), `default` or `long`.
        seed: seeds flow initialisation, training, sampling and bootstraps.
        out: output directory (default `runs/<name>-<budget>-s<seed>`).
        device: `cpu` or `cuda` (default: the recipe's `default_device`).
        workers, scheduler: energy worker pool settings for targets that use one.
        threads: torch CPU threads during the run (default: the rule of
            `boltzflow.hardware.plan_threads`: one thread for recipe-sized flows, and never
            more than the cores the local energy workers leave); restored afterwards.
        nproc: train data-parallel in this many processes (gloo on CPU, NCCL with one GPU
            each; `boltzflow.training.distributed`); rank 0 samples and writes the run.
        compile: compile the training losses with `torch.compile`.
    """
    recipe = load_recipe(name_or_path, budget)  # validates everything before any output
    dev = _device(recipe, device)
    dtype = getattr(torch, recipe.system.get("dtype", "float32"))
    out_dir = Path(out or f"runs/{recipe.name}-{budget}-s{seed}")
    if int(nproc) > 1:
        settings = dict(name_or_path=name_or_path, budget=budget, seed=seed, device=device)
        settings.update(workers=workers, scheduler=scheduler, threads=threads, compile=compile)
        return run_distributed(int(nproc), dev, out_dir, **settings)
    dev = join_from_environment(dev)  # under torchrun; one GPU per process
    rank = world()[0]
    runtime = {
        "workers": workers,
        "scheduler": scheduler,
        "system_dir": recipe.folder,
        "device": dev,
    }
    with contextlib.ExitStack() as stack:
        # Seed torch's global RNG for code that draws from it (weight initialisation), on a
        # fork of it: the caller's RNG state is the same after the run as before.
        cuda = [dev.index or 0] if dev.type == "cuda" else []
        stack.enter_context(torch.random.fork_rng(devices=cuda))
        torch.manual_seed(seed)
        stage_log.info("%s (%s budget, seed %d): building the target", recipe.name, budget, seed)
        target = build_target(recipe, **runtime)
        stack.callback(target.close)
        flow = build_flow(recipe, target, seed).to(device=dev, dtype=dtype)
        recipe = targeted.attach_sample_base(stack, recipe, flow, target, runtime)
        tuner = set_run_threads(stack, threads, flow, recipe, target)
        out_dir.mkdir(parents=True, exist_ok=True)

        t0 = time.perf_counter()
        steps = sum(int(st["steps"]) for st in recipe.stages)
        stage_log.info("training: %d stages, %d steps", len(recipe.stages), steps)
        training = _train(flow, target, recipe, seed, out_dir, compile, tuner)
        if rank != 0:  # the other processes only help to train
            return {}
        train_summary = {
            "loss": "+".join(_loss_label(st["loss"]) for st in recipe.stages) or "none",
            "steps": training.steps if training else 0,
            "energy_evaluations": training.energy_evaluations if training else 0,
            "wall_seconds": time.perf_counter() - t0,
        }
        train_summary.update(path_gradient_summary(training, flow, recipe.stages))
        flow.eval()
        stage_log.info(
            "sampling: %s, %d samples", recipe.sampling["method"], recipe.sampling["n_samples"]
        )
        summary = _sample_and_summarise(recipe, flow, target, seed, train_summary)
        summary["hardware"] = describe_hardware(flow, target, tuner)
        stage_log.info("writing the report to %s", out_dir)
        _write_outputs(recipe, flow, target, summary, training, out_dir, seed)
    return summary


def _sample_and_summarise(recipe, flow, target, seed, train_summary) -> dict:
    sp = dict(recipe.sampling)
    method = sp.pop("method")
    n_samples = int(sp.pop("n_samples"))
    n_importance = int(sp.pop("n_importance", n_samples))
    n_boot = int(recipe.reweighting.get("n_bootstrap", 200))

    n0 = target.n_evaluations
    t0 = time.perf_counter()
    result = None
    if method != "importance":  # run first: some samplers (hybrid, flow-emcee) train the flow
        sampler = registry.resolve(registry.SAMPLERS, method, "sampler")
        if "progress" in inspect.signature(sampler).parameters:
            sp.setdefault("progress", None)  # a bar on a terminal, log lines otherwise
        result = sampler(flow, target, n_samples=n_samples, seed=seed + 2, **sp)
    imp = importance_sampling(flow, target, n_samples=n_importance, seed=seed + 1)
    result = imp if result is None else result
    wall = time.perf_counter() - t0
    rw = reweight(imp.log_weight, n_bootstrap=n_boot, seed=seed)
    observables, obs_values = _estimate_observables(target, result)
    free = _estimate_free_energies(target, result, n_boot, seed)
    free.update(targeted.free_energies(flow, target, n_boot, seed))
    acc = None if result.accepted is None else float(result.accepted.double().mean())
    summary = {
        "system": recipe.name,
        "boltzflow_version": boltzflow.__version__,
        "seed": seed,
        "budget": recipe.budget,
        "training": train_summary,
        "sampling": {
            "method": result.method,
            "n_samples": int(result.x.shape[0] * result.x.shape[1]),
            "energy_evaluations": target.n_evaluations - n0,
            "acceptance_rate": acc,
            "wall_seconds": wall,
            **{k: v for k, v in result.info.items() if k != "acceptance_rate"},
        },
        "reweighting": with_coverage(flow, result, imp, rw.as_dict()),
        "observables": observables,
        "free_energies": free,
    }
    summary["reference"] = _references(target, summary)
    modes = None
    with contextlib.suppress(NotImplementedError):
        modes = target.mode_assignment(result.x.reshape(-1, *result.x.shape[2:]))
    if modes is not None:
        counts = torch.bincount(modes.reshape(-1), minlength=int(target.n_modes))
        summary["sampling"]["n_modes"] = int(target.n_modes)
        summary["sampling"]["modes_covered"] = int((counts > 0).sum())
    summary["_result"] = result
    summary["_importance"] = imp
    summary["_obs_values"] = obs_values
    return summary


def _write_outputs(recipe, flow, target, summary, training, out_dir: Path, seed: int) -> None:
    from boltzflow.io import save_checkpoint
    from boltzflow.reporting.idata import to_inference_data, write_samples
    from boltzflow.reporting.report import write_report, write_summary
    from boltzflow.reporting.run_figures import run_figures

    result = summary.pop("_result")
    imp = summary.pop("_importance")
    obs_values = summary.pop("_obs_values")
    attrs = {"system": recipe.name, "method": result.method, "budget": recipe.budget, "seed": seed}
    names = target.parameter_names
    idata = to_inference_data(result, obs_values, names=names, attrs=attrs)
    write_samples(idata, out_dir / "samples.nc")
    flow_kwargs = {k: v for k, v in recipe.flow.items() if k != "kind"}
    meta = {"system": recipe.name, "builder": recipe.flow["kind"], "builder_kwargs": flow_kwargs}
    save_checkpoint(out_dir, flow, {**meta, "seed": seed, "budget": recipe.budget})
    figs = run_figures(target, _training_history(training), imp, out_dir, seed)
    write_summary(summary, out_dir)
    write_report(summary, figs, out_dir)
