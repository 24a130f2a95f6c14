"""mkdocs hook: the text-notebook tutorials become executed pages of the site.

Each `tutorials/*.py` (jupytext percent format) is read with jupytext, executed cell by cell in
a fresh Python kernel at smoke size (`BOLTZFLOW_SMOKE=1`, the checkout first on `PYTHONPATH`),
and converted to Markdown with nbconvert, outputs and figures included, as the page
`tutorials/<name>.md`. Figures a cell draws inline and PNG files a cell writes to its working
directory both appear under that cell. A failing cell (the tutorials end in assertions on the
science) fails the build, so `mkdocs build --strict` also checks every tutorial at smoke size.

`BOLTZFLOW_DOCS_EXECUTE=0` renders the pages without running them (for quick edits of prose).
"""

from __future__ import annotations

import base64
import logging
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.tutorials")

ROOT = Path(__file__).resolve().parents[2]
TUTORIALS = ROOT / "tutorials"
PAGE_DIR = "tutorials"
CELL_TIMEOUT_S = 900


@contextmanager
def _environment(**changes: str | None):
    old = {k: os.environ.get(k) for k in changes}
    for k, v in changes.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _pngs(folder: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")}


def _execute(nb, workdir: Path) -> None:
    """Run every code cell; attach PNG files each cell writes as image outputs of that cell."""
    from nbclient import NotebookClient
    from nbformat.v4 import new_output

    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    with _environment(BOLTZFLOW_SMOKE="1", PYTHONPATH=path, MPLBACKEND=None):
        with client.setup_kernel():
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                before = _pngs(workdir)
                client.execute_cell(cell, index)
                # progress lines and warnings go to stderr; the page keeps stdout and figures
                cell.outputs = [o for o in cell.outputs if o.get("name") != "stderr"]
                for name, mtime in sorted(_pngs(workdir).items()):
                    if before.get(name) != mtime:
                        data = base64.b64encode((workdir / name).read_bytes()).decode()
                        cell.outputs.append(
                            new_output("display_data", data={"image/png": data, "text/plain": name})
                        )


def _intro(source: Path) -> str:
    rel = source.relative_to(ROOT).as_posix()
    return (
        '!!! info "Smoke-size run"\n'
        "    This page was executed when the documentation was built, at smoke size\n"
        "    (`BOLTZFLOW_SMOKE=1`: small models, short runs, the same checks at the end). "
        "The full-size\n"
        f"    tutorial is `{rel}`; from a checkout run\n\n"
        "    ```bash\n"
        f"    python {rel}\n"
        "    ```\n"
    )


def render(source: Path, execute: bool = True) -> tuple[str, dict[str, bytes]]:
    """Markdown of one tutorial and its figures `{file name: PNG bytes}`."""
    import jupytext
    from nbconvert import MarkdownExporter
    from nbformat.v4 import new_markdown_cell

    nb = jupytext.read(source)
    nb.metadata.setdefault("language_info", {"name": "python"})  # code fences get `python`
    if execute:
        with tempfile.TemporaryDirectory(prefix=f"tutorial-{source.stem}-") as tmp:
            _execute(nb, Path(tmp))
    # the run note goes right after the title cell
    first = 1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0
    nb.cells.insert(first, new_markdown_cell(_intro(source)))
    exporter = MarkdownExporter()
    body, resources = exporter.from_notebook_node(
        nb, resources={"output_files_dir": f"{source.stem}_files"}
    )
    return body, dict(resources.get("outputs", {}))


def on_files(files, config):
    execute = os.environ.get("BOLTZFLOW_DOCS_EXECUTE", "1") != "0"
    for source in sorted(TUTORIALS.glob("*.py")):
        start = time.perf_counter()
        body, figures = render(source, execute=execute)
        files.append(File.generated(config, f"{PAGE_DIR}/{source.stem}.md", content=body))
        for name, data in figures.items():
            files.append(File.generated(config, f"{PAGE_DIR}/{name}", content=data))
        log.info(
            "tutorial %s: %s in %.1f s, %d figures",
            source.name,
            "executed" if execute else "rendered without running",
            time.perf_counter() - start,
            len(figures),
        )
    return files
