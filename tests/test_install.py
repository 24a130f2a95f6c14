"""The wheel installs and runs away from the source tree, catalogue included.

The wheel is built once (pure Python, ``py3-none-any``) from a copy of the source files, so the
checkout gets no ``build/`` or ``*.egg-info``. It is installed into fresh virtual environments
and ``boltzflow systems`` and ``boltzflow run gmm40 --budget smoke`` run from a scratch working
directory with a clean environment (no ``PYTHONPATH``, no ``$BOLTZFLOW_SYSTEMS``).

* the current interpreter: the wheel goes in with ``--no-deps`` and a ``.pth`` file puts the
  running interpreter's site-packages after the venv's own, so the installed dependencies are
  reused (seconds, apart from the smoke run itself). Unlike ``--system-site-packages`` this
  also works when the suite runs inside a venv, and the editable install's import hook (a
  ``.pth`` in that site-packages) is not run, so it cannot shadow the wheel;
* Python 3.10, 3.12 and 3.13 where present (``-m slow``): a fresh environment with every
  dependency installed by pip as a user would get them (torch is a large download).
"""

import glob
import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "boltzflow", "systems")

# Where boltzflow and its catalogue were imported from, printed by the installed package.
PROBE = (
    "import json, arviz, boltzflow, boltzflow.runs.recipes as r; "
    "print(json.dumps({'module': boltzflow.__file__, 'systems': str(r.systems_dir()), "
    "'arviz': arviz.__version__}))"
)


def _clean_env() -> dict:
    drop = {"PYTHONPATH", "PYTHONHOME", "BOLTZFLOW_SYSTEMS", "BOLTZFLOW_CACHE", "VIRTUAL_ENV"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _run(cmd, cwd, timeout, env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=env or _clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The boltzflow wheel, built by the current interpreter from a copy of the sources."""
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(p, src / name)
    dist = tmp_path_factory.mktemp("dist")
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    _run([*build, "-w", dist, src], cwd=dist, timeout=600)
    (whl,) = dist.glob("boltzflow-*.whl")
    return whl


def _install_and_run(python, wheel: Path, tmp_path: Path, fast: bool) -> dict:
    """Install ``wheel`` into a new venv of ``python`` and run the CLI from a scratch folder."""
    venv = tmp_path / "venv"
    _run([python, "-m", "venv", venv], tmp_path, 300)
    py = venv / "bin" / "python"
    if fast:  # reuse this interpreter's packages, after the venv's own
        purelib = _run(
            [py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path, 60
        )
        deps = Path(purelib.stdout.strip()) / "_test_dependencies.pth"
        deps.write_text("\n".join(site.getsitepackages()) + "\n")
    pip = [py, "-m", "pip", "install", "--no-input", *(["--no-deps"] if fast else []), wheel]
    _run(pip, tmp_path, 600 if fast else 3600)
    work = tmp_path / "work"  # nowhere near the source tree
    work.mkdir()
    where = json.loads(_run([py, "-c", PROBE], work, 300).stdout.strip().splitlines()[-1])
    for key in ("module", "systems"):
        path = Path(where[key]).resolve()
        assert path.is_relative_to(venv.resolve()), (key, path)
        assert not path.is_relative_to(ROOT), (key, path)
    listed = _run([venv / "bin" / "boltzflow", "systems"], work, 300).stdout
    for name in ("gmm40", "alanine-dipeptide-vacuum", "rv-kepler"):
        assert name in listed, listed
    out = tmp_path / "run"
    cmd = ["run", "gmm40", "--budget", "smoke", "--threads", "1", "--out", out]
    _run([venv / "bin" / "boltzflow", *cmd], work, 1200)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["system"] == "gmm40" and (out / "samples.nc").is_file()
    return where


def test_wheel_ships_the_catalogue(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    files = [
        p.relative_to(ROOT / "systems").as_posix()
        for p in (ROOT / "systems").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ]
    assert len(files) > 20
    missing = [f for f in files if f"boltzflow/systems/{f}" not in names]
    assert missing == []
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_every_subpackage_is_in_the_wheel():
    """``[tool.setuptools] packages`` is a hand-written list: it must name every subpackage."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "boltzflow").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert found | {"boltzflow.systems"} == listed


def test_wheel_runs_outside_the_source_tree(wheel, tmp_path):
    where = _install_and_run(sys.executable, wheel, tmp_path, fast=True)
    assert Path(where["systems"]).name == "systems"


def _interpreter(version: str) -> str | None:
    """A Python ``version`` interpreter on this machine (pyenv's or on PATH), or ``None``."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = sorted(glob.glob(str(pyenv / "versions" / f"{version}.*" / "bin" / "python")))
    candidates += [c for c in (shutil.which(f"python{version}"),) if c]
    for cand in candidates:
        proc = subprocess.run(
            [cand, "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
        )
        if proc.returncode == 0 and proc.stdout.strip() == version:
            return cand
    return None


@pytest.mark.slow
@pytest.mark.install
@pytest.mark.parametrize("version", ["3.10", "3.12", "3.13"])
def test_wheel_with_dependencies_on_other_pythons(version, wheel, tmp_path, record_property):
    python = _interpreter(version)
    if python is None:
        pytest.skip(f"no Python {version} interpreter on this machine")
    where = _install_and_run(python, wheel, tmp_path, fast=False)
    record_property("arviz", where["arviz"])  # 0.x up to Python 3.11, 1.x from 3.12
    print(f"Python {version}: {where}")
