"""Path-gradient against standard training at equal CPU time (Vaitl et al. 2022, 2024).

For each system the recipe's flow (`--budget` sizes, default `default`) is built with one seed and
brought to a common start:

* U(1) and φ⁴: the recipe's flow after `--warmup` steps of standard reverse KL;
* GMM-40: `--pretrain` steps of its recipe's maximum likelihood on exact samples;
* alanine dipeptide vacuum: the recipe's maximum-likelihood stage on its MD set (3,000 steps at
  `default`), or the flow of a finished run directory given with `--alanine-start` (e.g. one of
  `boltzflow run alanine-dipeptide-vacuum`, whose flow has also had the recipe's `path_nll`
  stage: pass a run of the recipe without it to reproduce the table in `docs/path_gradients.md`).

From that start two copies train for `--seconds` of CPU time each (`--clock cpu`, the default: on
a shared machine the load changes during a run, and CPU seconds of this single-threaded process,
energies included, stand for wall-clock seconds on an idle one; `--clock wall` for wall-clock)
with the same optimizer settings (Adam, the recipe's batch, the recipe's learning rate or the
fine-tuning one, 2e-4 for alanine as in its recipe's `path_nll` stage; the recipe's
`energy_cap`). With `--schedule cosine` (the default) each arm first times `--probe` steps on a
copy (not counted), and its number of steps is set so that the cosine decay ends at the
budget: fine-tuning at a constant learning rate (`--schedule constant`) adds optimizer noise
that lowers the ESS of both arms. The pairs compared:

* U(1), φ⁴ (recipes trained by reverse KL): `reverse_kl` (reparametrized, path + score) against
  `path_reverse_kl` (estimator `auto`: fast where a layer has a score rule, drop-in otherwise);
* GMM-40 and alanine dipeptide (recipes trained by maximum likelihood on exact samples or MD):
  `nll` against `path_nll`, the forward-KL path gradient (estimator `auto`: the layers' inverse
  score rules). It uses the force at each data point: computed for each fresh exact sample of
  GMM-40, and once per MD frame for alanine (through OpenMM, cached by the trainer, within the
  arm's budget). Reverse KL after maximum likelihood loses GMM-40's modes with either estimator.

Printed per system: the Kish ESS fraction of `--eval` fresh samples from each trained flow, the
number of steps each arm managed, the cost per step of the path arm relative to the standard
arm (wall-clock and CPU seconds of this process, over the whole arm; and "steady", over the steps
that evaluated no more energies than the cheapest step: for `path_nll` on MD frames, the steps
after the frames' forces were cached, i.e. the estimator's own cost; and "interleaved": the
median step of `--rounds` alternations of `--round-steps` steps of each arm on copies of the
common start, measured side by side, which cancels the drift of a shared machine's speed
between the two arms that run minutes apart), and the gradient variance
(trace of the per-sample covariance, `boltzflow.training.path_monitor.gradient_variance`, 8
micro-batches of 32) of both estimators at each arm's final flow, i.e. near convergence.
The goal: path >= standard ESS on at least 3 of 4 systems at a per-step cost <= 1.5x standard.

Usage: `nohup nice -n 19 python benchmarks/path_gradients.py [--systems
u1-L8-b2,phi4-L8,alanine-dipeptide-vacuum,gmm40] [--seconds 120] [--clock cpu|wall]
[--schedule cosine|constant] [--probe 10] [--warmup 300] [--pretrain 1000] [--rounds 10]
[--round-steps 5]
[--alanine-start RUN_DIR] [--eval 20000] [--seed 0] [--out FILE]`
(about 40 minutes at the defaults on 2 cores, alanine's maximum likelihood included).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import replace

import torch

from boltzflow.io import load_checkpoint
from boltzflow.runs.pipeline import _stage_data, build_flow, build_target
from boltzflow.runs.recipes import load_recipe
from boltzflow.training.callbacks import Callback
from boltzflow.training.losses import nll, reverse_kl
from boltzflow.training.path_gradients import path_estimator, path_nll, path_reverse_kl
from boltzflow.training.path_monitor import gradient_variance
from boltzflow.training.trainer import Stage, Trainer
from boltzflow.training.weighted import resolve_loss
from boltzflow.weights import kish_ess, log_weights

SYSTEMS = ("u1-L8-b2", "phi4-L8", "alanine-dipeptide-vacuum", "gmm40")
DATA_SYSTEMS = ("gmm40", "alanine-dipeptide-vacuum")  # started by maximum likelihood
ARMS = {  # (standard, path) losses compared on each system
    "default": ("reverse_kl", "path_reverse_kl"),
    "alanine-dipeptide-vacuum": ("nll", "path_nll"),
    "gmm40": ("nll", "path_nll"),
}
FINE_TUNE_LR = {"alanine-dipeptide-vacuum": 2e-4}  # the recipe's path_nll stage


def clock_now(clock: str) -> float:
    """CPU seconds of this process (`"cpu"`) or wall-clock seconds (`"wall"`)."""
    return time.process_time() if clock == "cpu" else time.perf_counter()


class TimeBudget(Callback):
    """End the stage once `seconds` have passed: CPU seconds of this process (`clock="cpu"`,
    fair on a shared machine whose load changes during the run) or wall-clock seconds."""

    def __init__(self, seconds: float, clock: str = "cpu"):
        self.seconds, self.clock = float(seconds), clock
        self.start = None

    def _now(self) -> float:
        return clock_now(self.clock)

    def on_train_begin(self, trainer) -> None:
        self.start = self._now()
        self.steps = [(self.start, 0)]  # (clock, energy evaluations) after each step

    def on_step_end(self, trainer, record: dict) -> None:
        now = self._now()
        self.steps.append((now, int(record["energy_evaluations"])))
        if now - self.start >= self.seconds:
            trainer.stop_stage = True

    def steady_seconds_per_step(self) -> float:
        """Mean clock seconds of the steps that spent the fewest energy evaluations: for
        `path_nll` on a fixed data set, the steps after each frame's force is cached (the
        estimator's own cost); for the other losses, every step."""
        times, counts = zip(*self.steps, strict=True)
        spent = [b - a for a, b in zip(counts, counts[1:], strict=False)]
        took = [b - a for a, b in zip(times, times[1:], strict=False)]
        fewest = min(spent)
        steady = [t for t, e in zip(took, spent, strict=True) if e == fewest]
        return sum(steady) / len(steady)


def _energy_stage(recipe) -> dict:
    """The recipe's reverse-KL stage table (or its last stage)."""
    stages = [s for s in recipe.stages if s["loss"] == "reverse_kl"]
    return dict(stages[0] if stages else recipe.stages[-1])


def _fit(flow, target, stage: Stage, seed: int, callbacks=()):
    trainer = Trainer(flow, target, [stage], seed=seed, callbacks=list(callbacks), progress=False)
    cpu = time.process_time()
    result = trainer.fit()
    return result, time.process_time() - cpu


def common_start(name: str, recipe, target, seed: int, args):
    flow = build_flow(recipe, target, seed).to(
        dtype=getattr(torch, recipe.system.get("dtype", "float32"))
    )
    if name in DATA_SYSTEMS and args.alanine_start and name.startswith("alanine"):
        load_checkpoint(args.alanine_start, flow=flow)
        return flow
    if name in DATA_SYSTEMS:  # the recipe's maximum likelihood (GMM-40 shortened)
        spec = dict(recipe.stages[0])
        steps = args.pretrain if name == "gmm40" else int(spec["steps"])
        stage = Stage(
            loss="nll",
            steps=steps,
            lr=spec["lr"],
            batch_size=spec["batch_size"],
            warmup_steps=int(spec.get("warmup_steps", 0)),
            data=_data(name, target, recipe, flow),
        )
    else:
        spec = _energy_stage(recipe)
        cap = {"energy_cap": spec["energy_cap"]} if "energy_cap" in spec else {}
        stage = Stage(
            loss="reverse_kl",
            steps=args.warmup,
            lr=spec["lr"],
            batch_size=spec["batch_size"],
            loss_kwargs=cap,
        )
    if stage.steps > 0:
        _fit(flow, target, stage, seed)
    return flow


def _data(name: str, target, recipe, flow):
    """The data of a data-trained system: exact samples (GMM-40) or the recipe's MD set."""
    if name == "gmm40":
        return "exact"
    p = next(iter(flow.parameters()))
    return _stage_data(recipe.stages[0]["data"], target, recipe, p.dtype, p.device)


@torch.no_grad()
def ess_fraction(flow, target, n: int, seed: int) -> float:
    flow.eval()
    g = torch.Generator().manual_seed(seed)
    fractions = []
    for chunk in torch.arange(n).split(4096):
        s = flow.sample(len(chunk), generator=g)
        fractions.append(log_weights(target, s.x, s.log_q))
    flow.train()
    log_w = torch.cat(fractions)
    return float(kish_ess(log_w) / len(log_w))


def variances(flow, target, batch_kwargs: dict, data=None) -> dict:
    """Gradient variance of the arm's standard and path estimators at `flow` (reverse KL, or
    with `data` (a tensor or `"exact"`) forward KL)."""
    if data is None:
        losses = {
            "standard": lambda n, g: reverse_kl(flow, target, n, g, **batch_kwargs),
            "path": lambda n, g: path_reverse_kl(flow, target, n, g, **batch_kwargs),
        }

        def batch_of(n, g):
            return n
    else:
        losses = {
            "standard": lambda x, g: nll(flow, target, x),
            "path": lambda x, g: path_nll(flow, target, x),
        }
        dtype = next(iter(flow.parameters())).dtype

        def batch_of(n, g):
            return _data_batch(target, data, n, g, dtype)

    return gradient_variance(flow, losses, batch_of, micro_batches=8, micro_batch_size=32)


def interleaved_cost(start, target, losses, batch: int, cap: dict, data, args) -> dict:
    """Seconds per training step of both arms measured side by side: `--rounds` alternations of
    `--round-steps` steps of each on copies of `start` (the trainer's step: Adam, gradient
    clipping, backward to the parameters; fresh exact samples drawn within the step, and MD
    frames' forces given to `path_nll`, as once the trainer's force cache holds them).
    Alternating cancels the drift of a shared machine's speed between the two arms, which run
    minutes apart; the first round is not counted."""
    g = torch.Generator().manual_seed(args.seed + 7)
    dtype = next(iter(start.parameters())).dtype
    arms = {}
    for arm, name in zip(("standard", "path"), losses, strict=True):
        flow = copy.deepcopy(start).train()
        params = [p for p in flow.parameters() if p.requires_grad]
        arms[arm] = (flow, params, torch.optim.Adam(params, lr=1e-6), resolve_loss(name))
    times: dict = {arm: [] for arm in arms}
    for r in range(args.rounds + 1):
        for arm, (flow, params, opt, fn) in arms.items():
            for _ in range(args.round_steps):
                kwargs, b = dict(cap), batch
                if isinstance(data, torch.Tensor):  # MD frames: forces from the trainer's cache
                    b = _data_batch(target, data, batch, g, dtype)
                    if getattr(fn, "takes_forces", False):
                        kwargs["forces"] = target.force(b).detach()
                start_time = clock_now(args.clock)
                if isinstance(data, str):  # fresh exact samples (and their forces) every step
                    b = _data_batch(target, data, batch, g, dtype)
                opt.zero_grad(set_to_none=True)
                fn(flow, target, b, generator=g, **kwargs).loss.backward(inputs=params)
                torch.nn.utils.clip_grad_norm_(params, 100.0)
                opt.step()
                if r > 0:
                    times[arm].append(clock_now(args.clock) - start_time)
    cost = {arm: sorted(t)[len(t) // 2] for arm, t in times.items()}
    return {**cost, "ratio": cost["path"] / cost["standard"]}


def _data_batch(target, data, n: int, g, dtype):
    if isinstance(data, str):
        return target.sample(n, generator=g).to(dtype)
    return data[torch.randint(len(data), (n,), generator=g)]


def _arm(flow, target, stage: Stage, seed: int, args) -> tuple:
    """Train one arm for `args.seconds`. With `--schedule cosine` the number of steps comes from
    a timing probe of `--probe` steps on a copy (not counted), so the cosine decay ends at the
    budget; the budget callback stops a run that is slower than the probe at 1.25x."""
    if args.schedule == "cosine":
        probe = copy.deepcopy(flow)
        _, cpu = _fit(probe, target, replace(stage, steps=args.probe), seed + 99)
        steps = max(1, int(args.seconds / (cpu / args.probe)))
        stage = replace(stage, steps=steps, schedule="cosine", warmup_steps=min(20, steps // 10))
        budget = TimeBudget(1.25 * args.seconds, args.clock)
    else:
        stage = replace(stage, steps=10**9, schedule="constant")
        budget = TimeBudget(args.seconds, args.clock)
    result, cpu = _fit(flow, target, stage, seed, [budget])
    return result, cpu, budget.steady_seconds_per_step()


def compare(name: str, args) -> dict:
    recipe = load_recipe(name, args.budget)
    target = build_target(recipe, system_dir=recipe.folder)
    start = common_start(name, recipe, target, args.seed, args)
    spec = dict(recipe.stages[0]) if name in DATA_SYSTEMS else _energy_stage(recipe)
    cap = {"energy_cap": spec["energy_cap"]} if "energy_cap" in spec else {}
    lr = args.lr if args.lr is not None else FINE_TUNE_LR.get(name, spec["lr"])
    batch = args.batch or int(spec.get("batch_size", 256))
    losses = ARMS.get(name, ARMS["default"])
    data = _data(name, target, recipe, start) if "nll" in losses[0] else None
    row = {
        "system": name,
        "losses": losses,
        "estimator": path_estimator(start, inverse=losses[1] == "path_nll"),
        "batch": batch,
        "lr": lr,
        "schedule": args.schedule,
        "ess_start": ess_fraction(start, target, args.eval, args.seed + 1),
    }
    for arm, loss in zip(("standard", "path"), losses, strict=True):
        flow = copy.deepcopy(start)
        stage = Stage(loss=loss, steps=1, lr=lr, batch_size=batch, loss_kwargs=dict(cap), data=data)
        result, cpu, steady = _arm(flow, target, stage, args.seed + 2, args)
        row[arm] = {
            "steady_per_step": steady,
            "steps": result.steps,
            "wall_seconds": result.wall_seconds,
            "cpu_seconds": cpu,
            "seconds_per_step": result.wall_seconds / max(result.steps, 1),
            "cpu_per_step": cpu / max(result.steps, 1),
            "ess_fraction": ess_fraction(flow, target, args.eval, args.seed + 1),
            "grad_var": variances(flow, target, cap, data),
        }
    row["cost_ratio_wall"] = row["path"]["seconds_per_step"] / row["standard"]["seconds_per_step"]
    row["cost_ratio_cpu"] = row["path"]["cpu_per_step"] / row["standard"]["cpu_per_step"]
    row["cost_ratio_steady"] = row["path"]["steady_per_step"] / row["standard"]["steady_per_step"]
    row["cost_interleaved"] = interleaved_cost(start, target, losses, batch, cap, data, args)
    row["cost_ratio_interleaved"] = row["cost_interleaved"]["ratio"]
    if hasattr(target, "close"):
        target.close()
    return row


def _print(row: dict) -> None:
    s, p = row["standard"], row["path"]
    print(
        f"{row['system']:>9}  {row['losses'][0]} vs {row['losses'][1]} "
        f"estimator {row['estimator']:<6} start ESS {row['ess_start']:.3f} | "
        f"ESS standard {s['ess_fraction']:.3f} ({s['steps']} steps)  "
        f"path {p['ess_fraction']:.3f} ({p['steps']} steps) | "
        f"cost/step path/standard {row['cost_ratio_wall']:.2f} (CPU {row['cost_ratio_cpu']:.2f}; "
        f"steady {row['cost_ratio_steady']:.2f}; interleaved {row['cost_ratio_interleaved']:.2f})"
        " | " + _variance_text(s, p),
        flush=True,
    )


def _variance_text(s: dict, p: dict) -> str:
    return (
        f"grad var at end: standard arm [std {s['grad_var']['standard']:.3g}, "
        f"path {s['grad_var']['path']:.3g}], path arm [std {p['grad_var']['standard']:.3g}, "
        f"path {p['grad_var']['path']:.3g}]"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--budget", default="default")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--pretrain", type=int, default=1000)
    parser.add_argument("--eval", type=int, default=20000)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    parser.add_argument("--probe", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--round-steps", type=int, default=5)
    parser.add_argument("--alanine-start", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the package's rule on a shared 2-core machine
    rows = []
    for name in args.systems.split(","):
        rows.append(compare(name, args))
        _print(rows[-1])
    wins = [r["path"]["ess_fraction"] >= r["standard"]["ess_fraction"] for r in rows]
    for ratio, label in (
        ("cost_ratio_cpu" if args.clock == "cpu" else "cost_ratio_wall", f"{args.clock} clock"),
        ("cost_ratio_steady", "steady, forces cached"),
        ("cost_ratio_interleaved", "interleaved, side by side"),
    ):
        cheap = [r[ratio] <= 1.5 for r in rows]
        both = sum(w and c for w, c in zip(wins, cheap, strict=True))
        print(
            f"path >= standard ESS on {sum(wins)}/{len(rows)} systems; cost/step <= 1.5x "
            f"({label}) on {sum(cheap)}/{len(rows)}; both on {both}/{len(rows)}"
        )
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"args": vars(args), "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
