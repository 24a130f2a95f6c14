"""The `boltzflow` command line.

* `boltzflow systems` lists the catalogue;
* `boltzflow run [NAME|PATH] [--budget smoke|default|long] [--seed N] [--out DIR]
  [--device cpu|cuda] [--workers N] [--scheduler ADDRESS] [--threads N] [--nproc N]
  [--compile]` runs a recipe end to end;
* `boltzflow md` and `boltzflow umbrella` ([`boltzflow.cli.md`][boltzflow.cli.md],
  [`boltzflow.cli.umbrella`][boltzflow.cli.umbrella]) make the training data and reference free
  energies of the molecular systems;
* plugins add commands through the `boltzflow.commands` entry-point group. A subcommand
  whose module fails to import is listed as unavailable and fails with the import error.

`python -m boltzflow.cli` runs the same command.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from boltzflow import __version__

__all__ = ["main", "build_parser", "DEFAULT_SYSTEM"]

DEFAULT_SYSTEM = "alanine-dipeptide-vacuum"
"""The system ``boltzflow run`` runs when no name is given."""

_PLUGIN_PARSERS = ("boltzflow.cli.md", "boltzflow.cli.umbrella")
"""Modules contributing subcommands through an ``add_parser(subparsers)`` function."""


def _cmd_systems(args) -> int:
    from boltzflow.runs.recipes import list_systems, systems_dir

    systems = list_systems()
    if not systems:
        print(f"no systems found in {systems_dir()}")
        return 1
    width = max(len(n) for n in systems)
    for name, desc in systems.items():
        print(f"{name:<{width}}  {desc}")
    return 0


def _cmd_run(args) -> int:
    for flag in ("threads", "nproc"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            print(f"boltzflow: error: --{flag} must be >= 1", file=sys.stderr)
            return 2
    from boltzflow.runs.pipeline import run

    summary = run(
        args.system,
        budget=args.budget,
        seed=args.seed,
        out=args.out,
        device=args.device,
        workers=args.workers,
        scheduler=args.scheduler,
        threads=args.threads,
        nproc=args.nproc,
        compile=args.compile,
    )
    rw = summary["reweighting"]
    out = args.out or f"runs/{summary['system']}-{args.budget}-s{args.seed}"
    lz = rw["log_z"]
    print(
        f"{summary['system']}: ESS fraction {rw['ess_fraction']:.3f}, "
        f"log Z {lz['mean']:.4f} ± {lz['stderr']:.2g}, PSIS k {rw['pareto_k']:.2f}"
        + (f", coverage {rw['coverage']:.3f}" if "coverage" in rw else "")
        + (" (FLAGGED: the coverage check failed)" if rw.get("flagged") else "")
    )
    for group in ("observables", "free_energies"):
        for name, v in summary[group].items():
            print(f"  {name}: {v['mean']:.4g} ± {v['stderr']:.2g} {v['unit']}")
    print(f"report: {out}/report.md")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    p = argparse.ArgumentParser(
        prog="boltzflow", description="Boltzmann generators: train, sample, reweight, report."
    )
    p.add_argument("--version", action="version", version=f"boltzflow {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("systems", help="list the systems catalogue")
    s.set_defaults(func=_cmd_systems)

    r = sub.add_parser("run", help="run a system recipe: train, sample, reweight, report")
    r.add_argument(
        "system",
        nargs="?",
        default=DEFAULT_SYSTEM,
        help=f"catalogue name or recipe path (default: {DEFAULT_SYSTEM})",
    )
    r.add_argument("--budget", choices=("smoke", "default", "long"), default="default")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", default=None, help="output directory (default runs/NAME-BUDGET-sSEED)")
    r.add_argument("--device", default=None, help="cpu or cuda (default: the recipe's)")
    r.add_argument("--workers", type=int, default=None, help="energy worker processes")
    r.add_argument("--scheduler", default=None, help="dask.distributed scheduler address")
    r.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: 1 for recipe-sized flows, never more than the cores "
        "left by the energy workers; see boltzflow.hardware)",
    )
    r.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="train data-parallel in N processes (torch.distributed: gloo on CPU, NCCL on GPUs)",
    )
    r.add_argument(
        "--compile", action="store_true", help="compile the training losses (torch.compile)"
    )
    r.set_defaults(func=_cmd_run)

    for name, where in _subcommand_modules():
        try:
            _load_add_parser(where)(sub)
        except ImportError as exc:
            _unavailable(sub, name, where, exc)
    return p


def _subcommand_modules() -> list[tuple[str, str]]:
    """`(name, "module" or "module:attr")` of the built-in and plugin subcommands.

    Plugins declare an `add_parser(subparsers)` function in the `boltzflow.commands`
    entry-point group (the name is the subcommand's).
    """
    from importlib import metadata

    built_in = [(mod.rsplit(".", 1)[-1], mod) for mod in _PLUGIN_PARSERS]
    plugins = [(ep.name, ep.value) for ep in metadata.entry_points(group="boltzflow.commands")]
    return built_in + plugins


def _load_add_parser(where: str):
    module, _, attr = where.partition(":")
    return getattr(importlib.import_module(module), attr or "add_parser")


def _unavailable(sub, name: str, where: str, exc: ImportError) -> None:
    """A subcommand whose module failed to import: listed, and an error when used."""
    reason = f"{type(exc).__name__}: {exc}"
    u = sub.add_parser(name, help=f"(unavailable: {reason})", add_help=False)

    def fail(args) -> int:
        print(
            f"boltzflow: error: the '{name}' command could not be loaded from {where} ({reason})",
            file=sys.stderr,
        )
        return 2

    u.set_defaults(func=fail, unavailable=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `boltzflow` command."""
    from boltzflow.hardware import set_wait_policy

    set_wait_policy()  # before anything imports torch: OpenMP reads it once, when loaded
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "unavailable", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # Stages and progress lines are always shown (bars on a terminal, lines elsewhere).
    logging.getLogger("boltzflow.progress").setLevel(logging.INFO)
    from boltzflow.runs.recipes import RecipeError

    try:
        return int(args.func(args) or 0)
    except RecipeError as exc:
        print(f"boltzflow: error: {exc}", file=sys.stderr)
        return 2
