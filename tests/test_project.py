"""Project-level checks: lint, docs build, tutorials at smoke size."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = sorted((ROOT / "tutorials").glob("*.py"))


def _run(cmd, timeout, env=None):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def test_ruff_lint_and_format():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed (it is part of the test extras)")
    r = _run([ruff, "check", "."], 120)
    assert r.returncode == 0, r.stdout + r.stderr
    r = _run([ruff, "format", "--check", "."], 120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_docs_build_strict_with_the_tutorials_executed(tmp_path):
    """`mkdocs build --strict` passes, and with it every tutorial at smoke size.

    The docs hook (`docs/hooks/tutorials.py`) executes each `tutorials/*.py` with
    `BOLTZFLOW_SMOKE=1` to render its page, so a failing cell or a failing final assertion on
    the science fails this build: the one place the tutorials run. No `-q`: with it, mkdocs
    does not count warnings and `--strict` lets them through.
    """
    env = {**os.environ, "BOLTZFLOW_DOCS_EXECUTE": "1"}
    r = _run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path)], 1800, env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    for path in TUTORIALS:
        page = (tmp_path / "tutorials" / path.stem / "index.html").read_text()
        assert f"python tutorials/{path.name}" in page, f"{path.name}: no full-size command"
        assert "Traceback" not in page, f"{path.name}: an error in the rendered outputs"


def test_every_tutorial_is_a_page_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    for path in TUTORIALS:
        assert f"tutorials/{path.stem}.md" in nav, f"{path.name} is not in the mkdocs nav"


def test_import_boltzflow_stays_light():
    code = (
        "import sys, boltzflow, boltzflow.energies, boltzflow.flows, boltzflow.sampling;"
        "heavy = [m for m in ('openmm', 'mdtraj', 'dask', 'distributed', 'pymbar', 'arviz',"
        " 'matplotlib') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    r = _run([sys.executable, "-c", code], 120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_every_system_has_a_readme_and_a_docs_page():
    for folder in sorted((ROOT / "systems").glob("*/system.toml")):
        name = folder.parent.name
        assert (folder.parent / "README.md").is_file(), f"systems/{name} has no README.md"
        page = ROOT / "docs" / "systems" / f"{name}.md"
        assert page.is_file(), f"docs/systems/{name}.md is missing"
        assert f"systems/{name}.md" in (ROOT / "mkdocs.yml").read_text()
