"""`boltzflow md SYSTEM`: generate (and cache) the MD training data of a molecular recipe.

The recipe's target is built with its MD settings (overridden by `--ns`, `--alpha-l-ns`
and `--seed`) and asked for its frames
([`md_frames`][boltzflow.molecular.target.AlanineDipeptideTarget.md_frames]), which runs the MD of
[`boltzflow.molecular.md.alanine_md_frames`][boltzflow.molecular.md.alanine_md_frames] once and
stores it in the cache ([`boltzflow.molecular.md.cache_dir`][boltzflow.molecular.md.cache_dir]).
"""

from __future__ import annotations

__all__ = ["add_parser", "md_command"]


def add_parser(subparsers) -> None:
    """Register `boltzflow md SYSTEM --ns N` on an `argparse` subparsers object."""
    p = subparsers.add_parser(
        "md",
        help="generate (and cache) Langevin MD training data for a molecular system",
        description="Run the MD a molecular recipe trains on, and store it in the cache.",
    )
    p.add_argument("system", help="system name or recipe path (e.g. alanine-dipeptide-vacuum)")
    p.add_argument("--ns", type=float, default=None, help="main 300 K trajectory length (ns)")
    p.add_argument("--alpha-l-ns", type=float, default=None, help="αL-seeded trajectory (ns)")
    p.add_argument("--budget", default="default", help="recipe budget for unset values")
    p.add_argument("--seed", type=int, default=None, help="MD seed (default: the recipe's)")
    p.add_argument("--workers", type=int, default=None, help="worker processes")
    p.add_argument("--out", default=None, help="also write the frames (nm) to this .npy file")
    p.set_defaults(func=md_command)


def md_command(args) -> int:
    """`boltzflow md`: generate the recipe's MD data set (cached) and print where it is."""
    import numpy as np

    from boltzflow.molecular.md import cache_dir
    from boltzflow.runs.pipeline import build_target
    from boltzflow.runs.recipes import load_recipe

    recipe = load_recipe(args.system, args.budget)
    overrides = {
        k: v
        for k, v in (("md_ns", args.ns), ("md_alpha_l_ns", args.alpha_l_ns), ("md_seed", args.seed))
        if v is not None
    }
    recipe.target.update(overrides)
    target = build_target(recipe, workers=args.workers, system_dir=recipe.folder)
    try:
        frames = target.md_frames()
    finally:
        target.close()
    if args.out:
        np.save(args.out, np.concatenate(frames))
    for name, f in zip(("main", "alpha_l"), frames, strict=False):
        print(f"{name}: {len(f)} frames of {f.shape[1]} atoms")
    print(f"cache: {cache_dir() / 'md'}")
    return 0
