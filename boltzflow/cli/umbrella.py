"""`boltzflow umbrella SYSTEM`: umbrella sampling along φ + MBAR reference free energies.

Builds the recipe's alanine-dipeptide target on a worker pool, runs
[`boltzflow.molecular.umbrella.alanine_umbrella`][boltzflow.molecular.umbrella.alanine_umbrella] and
prints the ΔF of the target's state sets in kT; `--write-reference` stores the result as the
system's `umbrella_reference.json`, which the target reports as its reference values.
"""

from __future__ import annotations

__all__ = ["add_parser", "umbrella_command"]


def add_parser(subparsers) -> None:
    """Register `boltzflow umbrella SYSTEM` on an `argparse` subparsers object."""
    p = subparsers.add_parser(
        "umbrella",
        help="umbrella sampling along phi + MBAR reference free energies",
        description="Umbrella sampling along phi with MBAR; optionally store the result as the "
        "system's reference (umbrella_reference.json).",
    )
    p.add_argument("system", help="system name or recipe path (alanine-dipeptide-*)")
    p.add_argument("--windows", type=int, default=36)
    p.add_argument("--kappa", type=float, default=300.0, help="kJ/mol/rad^2")
    p.add_argument("--ns-per-window", type=float, default=0.5)
    p.add_argument("--interval-ps", type=float, default=0.5)
    p.add_argument("--uncertainty", choices=("analytic", "bootstrap"), default="analytic")
    p.add_argument("--bootstrap", type=int, default=100, help="replicas (--uncertainty bootstrap)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument(
        "--write-reference",
        action="store_true",
        help="store the result in the system folder (umbrella_reference.json)",
    )
    p.add_argument("--out", default=None, help="also write the result to this JSON file")
    p.set_defaults(func=umbrella_command)


def umbrella_command(args) -> int:
    """`boltzflow umbrella`: print (and optionally store) the MBAR free energies."""
    import json
    import os
    import shlex

    from boltzflow.molecular.target import REFERENCE_FILE
    from boltzflow.molecular.umbrella import alanine_umbrella
    from boltzflow.runs.pipeline import build_target
    from boltzflow.runs.recipes import load_recipe

    recipe = load_recipe(args.system, "default")
    workers = args.workers or len(os.sched_getaffinity(0))
    target = build_target(recipe, workers=workers, system_dir=recipe.folder)
    try:
        result = alanine_umbrella(
            target,
            windows=args.windows,
            kappa=args.kappa,
            ns_per_window=args.ns_per_window,
            interval_ps=args.interval_ps,
            seed=args.seed,
            uncertainty=args.uncertainty,
            n_bootstrap=args.bootstrap,
        )
    finally:
        target.close()
    result["command"] = (
        f"boltzflow umbrella {shlex.quote(str(args.system))} --windows {args.windows} "
        f"--kappa {args.kappa:g} --ns-per-window {args.ns_per_window:g} "
        f"--interval-ps {args.interval_ps:g} --seed {args.seed} --uncertainty {args.uncertainty}"
        + (f" --bootstrap {args.bootstrap}" if args.uncertainty == "bootstrap" else "")
    )
    text = json.dumps(result, indent=1)
    for name, est in result["free_energies"].items():
        print(f"{name}: {est['mean']:.3f} ± {est['stderr']:.3f} kT")
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    if args.write_reference:
        (recipe.folder / REFERENCE_FILE).write_text(text + "\n")
        print(f"reference written to {recipe.folder / REFERENCE_FILE}")
    return 0
