"""Which training stage to put after maximum likelihood for alanine dipeptide (vacuum).

Starts from the flow of the recipe's maximum-likelihood stage (trained here with the recipe's
settings, or loaded from a run directory with `--start`), then runs one candidate stage with a
fresh Adam optimizer and prints the Kish ESS fraction of `--eval` flow samples (a fixed seed,
so every candidate is scored on the same base draws) every `--every` steps. The table of
candidates in `docs/path_gradients.md` ("In the recipes") was measured with it:

    python benchmarks/alanine_fine_tuning.py --loss reverse_kl --lr 1e-4 --steps 100 --every 50
    python benchmarks/alanine_fine_tuning.py --loss path_reverse_kl --lr 3e-5 --steps 300 \\
        --kw '{"energy_cap": 400}'
    python benchmarks/alanine_fine_tuning.py --loss '{"path_reverse_kl": 0.5, "nll": 0.5}' \\
        --lr 3e-5 --steps 300
    python benchmarks/alanine_fine_tuning.py --loss path_nll --lr 2e-4 --steps 1000 \\
        --schedule cosine --every 1000
    python benchmarks/alanine_fine_tuning.py --loss forward_kl_is --lr 1e-4 --steps 750 --every 250
    python benchmarks/alanine_fine_tuning.py --loss forward_kl_is --lr 1e-4 --steps 2000 \\
        --every 250 --start runs/alanine-dipeptide-vacuum-default-s1

(`--start` takes the run directory of a default run without the `forward_kl_is` stage, i.e. a
flow after maximum likelihood and `path_nll`.)

Usage: `python benchmarks/alanine_fine_tuning.py [--loss NAME|JSON] [--lr 1e-4] [--steps 400]
[--batch 256] [--every 100] [--eval 10000] [--schedule constant|cosine] [--kw JSON]
[--start RUN_DIR]`. One torch thread; energies and forces in-process through OpenMM.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from path_gradients import ess_fraction

from boltzflow.io import load_checkpoint
from boltzflow.runs.pipeline import _stage_data, build_flow, build_target
from boltzflow.runs.recipes import load_recipe
from boltzflow.training.trainer import Stage, Trainer
from boltzflow.training.weighted import needs_data, resolve_loss

SYSTEM = "alanine-dipeptide-vacuum"
EVAL_SEED = 123  # every candidate is scored on the same base draws


def maximum_likelihood_start(recipe, target, data, seed: int, start: str | None):
    """The recipe's flow after its first (maximum-likelihood) stage, or loaded from `start`."""
    flow = build_flow(recipe, target, seed).to(torch.float32)
    if start:
        load_checkpoint(start, flow=flow)
        return flow
    spec = dict(recipe.stages[0])
    stage = Stage(
        loss=spec["loss"],
        steps=int(spec["steps"]),
        lr=spec["lr"],
        batch_size=spec["batch_size"],
        warmup_steps=int(spec.get("warmup_steps", 0)),
        data=data,
    )
    Trainer(flow, target, [stage], seed=seed, progress=False).fit()
    return flow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loss", default="path_nll")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--eval", type=int, default=10000)
    parser.add_argument("--schedule", choices=("constant", "cosine"), default="constant")
    parser.add_argument("--kw", default="{}", help="loss keyword arguments (JSON)")
    parser.add_argument("--start", default=None, help="run directory of the start flow")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    recipe = load_recipe(SYSTEM, "default")
    target = build_target(recipe, system_dir=recipe.folder)
    data = _stage_data("md", target, recipe, torch.float32, torch.device("cpu"))
    flow = maximum_likelihood_start(recipe, target, data, args.seed, args.start)
    loss = json.loads(args.loss) if args.loss.startswith("{") else args.loss
    uses_data = needs_data(resolve_loss(loss))
    print(f"start: ESS fraction {ess_fraction(flow, target, args.eval, EVAL_SEED):.3f}", flush=True)
    t0, done = time.perf_counter(), 0
    while done < args.steps:  # a cosine schedule spans all steps: one stage then
        n = args.steps if args.schedule == "cosine" else min(args.every, args.steps - done)
        stage = Stage(
            loss=loss,
            steps=n,
            lr=args.lr,
            batch_size=args.batch,
            schedule=args.schedule,
            warmup_steps=1 if args.schedule == "constant" else 20,
            loss_kwargs=json.loads(args.kw),
            data=data if uses_data else None,
        )
        Trainer(flow, target, [stage], seed=args.seed + 1 + done, progress=False).fit()
        done += n
        elapsed = time.perf_counter() - t0
        ess = ess_fraction(flow, target, args.eval, EVAL_SEED)
        print(f"{done} steps, {elapsed:.0f} s: ESS fraction {ess:.3f}", flush=True)
    target.close()


if __name__ == "__main__":
    main()
