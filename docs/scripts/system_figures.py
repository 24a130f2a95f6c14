"""Figures of a real run of every catalogue system, for its docs page.

    python docs/scripts/system_figures.py                    # every system with a docs page
    python docs/scripts/system_figures.py gmm40 funnel       # some of them
    python docs/scripts/system_figures.py --budget default   # larger runs

Each system runs as a user runs it, `boltzflow run NAME --budget smoke --seed 0 --out DIR`; the
figures its `report.md` links are shrunk (at most 900 px wide, a 256-colour palette, fewer
colours where that keeps a file under 60 KB) into `docs/img/systems/NAME/`, and the block
between the `figures` markers of `docs/systems/NAME.md` is rewritten to show them, in report
order, with the command that made them. A system whose run fails keeps its previous figures
and is named at the end.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = ROOT / "docs" / "systems"
IMAGES = ROOT / "docs" / "img" / "systems"
START = "<!-- figures: written by docs/scripts/system_figures.py; do not edit by hand -->"
END = "<!-- /figures -->"
MAX_WIDTH = 900
MAX_BYTES = 60_000
FIGURE = re.compile(r"!\[([^\]]*)\]\(([^)]+\.png)\)")


def shrink(src: Path, dst: Path) -> int:
    """Copy a PNG at most `MAX_WIDTH` px wide with a 256-colour palette; returns its bytes."""
    from PIL import Image

    with Image.open(src) as im:
        im = im.convert("RGB")
        if im.width > MAX_WIDTH:
            im = im.resize((MAX_WIDTH, round(im.height * MAX_WIDTH / im.width)), Image.LANCZOS)
        dst.parent.mkdir(parents=True, exist_ok=True)
        for colors in (256, 64, 32):  # fewer colours for dense histograms, to stay small
            im.quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(dst, optimize=True)
            if dst.stat().st_size <= MAX_BYTES:
                break
    return dst.stat().st_size


def block(name: str, command: str, figures: list[tuple[str, str]], seconds: float) -> str:
    lines = [
        START,
        "",
        "## Figures from a run",
        "",
        f"Made by `{command}` ({seconds:.0f} s on the 2-core development machine, shared with"
        " other work); at smoke size the numbers are rough, the quality table above gives the"
        " documented budgets.",
        "",
    ]
    for caption, file in figures:
        lines += [f"![{caption}](../img/systems/{name}/{file})", f"*{caption}*", ""]
    lines.append(END)
    return "\n".join(lines)


def write_block(page: Path, text: str) -> None:
    src = page.read_text()
    if START in src and END in src:
        head, rest = src.split(START, 1)
        tail = rest.split(END, 1)[1]
        new = head + text + tail
    else:
        new = src.rstrip("\n") + "\n\n" + text + "\n"
    page.write_text(new)


def run_system(name: str, budget: str, seed: int, work: Path) -> bool:
    out = work / name
    command = f"boltzflow run {name} --budget {budget} --seed {seed}"
    cmd = [sys.executable, "-m", "boltzflow.cli", "run", name, "--budget", budget]
    cmd += ["--seed", str(seed), "--out", str(out)]
    start = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if r.returncode != 0 or not (out / "report.md").is_file():
        print(f"{name}: run failed ({r.returncode})\n{r.stderr[-2000:]}", file=sys.stderr)
        return False
    figures = []
    for caption, file in FIGURE.findall((out / "report.md").read_text()):
        src = out / file
        if src.is_file():
            size = shrink(src, IMAGES / name / Path(file).name)
            figures.append((caption, Path(file).name))
            print(f"{name}: {file} {size / 1024:.0f} KB")
    write_block(PAGES / f"{name}.md", block(name, command, figures, seconds))
    print(f"{name}: {len(figures)} figures in {seconds:.0f} s")
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("systems", nargs="*", help="system names (default: every docs page)")
    ap.add_argument("--budget", default="smoke", choices=["smoke", "default", "long"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    pages = [p.stem for p in PAGES.glob("*.md") if (ROOT / "systems" / p.stem).is_dir()]
    names = args.systems or sorted(pages)
    failed = []
    with tempfile.TemporaryDirectory(prefix="system-figures-") as tmp:
        for name in names:
            if not run_system(name, args.budget, args.seed, Path(tmp)):
                failed.append(name)
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
