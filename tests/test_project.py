"""Project-level checks: lint, light imports, a docs page per system.

The docs build and the tutorials are checked in `tests/test_docs_site.py`.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


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
