"""Device correctness: random draws follow the input's device; every system runs on each device.

The audit reads the source with :mod:`ast`: a ``torch.Generator(...)`` without ``device=`` and a
random draw (``torch.rand``, ``randn``, ``randint``, ``randperm``, ``normal``) with a
``generator=`` but no ``device=`` in runtime code are defects unless a comment or docstring
within a few lines above says the CPU choice is deliberate (seeding, structural masks,
index permutations). The device-parametrised tests skip CUDA where it is absent; the CPU runs
of the smoke recipes are those of ``tests/cli/test_run_smoke.py``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "boltzflow"
#: Code that draws while sampling or training (flow *construction* draws on the host).
RUNTIME = ("sampling", "training", "energies", "runs", "molecular", "weights.py", "rng.py")
DRAWS = {"rand", "randn", "randint", "randperm", "normal", "rand_like", "randn_like"}
WINDOW = 6  # lines above a call in which a note counts
MARKS = ("deliberate", "seeding")  # the words of such a note

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


def _torch_call(node: ast.Call) -> str | None:
    f = node.func
    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "torch":
        return f.attr
    return None


def device_defects(source: str, runtime: bool) -> list[int]:
    """Line numbers of generator/draw calls without a device and without a deliberate note."""
    lines = source.splitlines()
    marked = {i + 1 for i, line in enumerate(lines) if any(w in line.lower() for w in MARKS)}
    bad = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = _torch_call(node)
        keys = {k.arg for k in node.keywords}
        needs = name == "Generator" or (runtime and name in DRAWS and "generator" in keys)
        if not needs or "device" in keys:
            continue
        if not any(node.lineno - WINDOW <= m <= node.lineno for m in marked):
            bad.append(node.lineno)
    return sorted(bad)


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        yield path, rel.parts[0] in RUNTIME


def test_generators_and_draws_follow_a_device_or_say_why_not():
    offenders = {
        str(p.relative_to(ROOT)): lines
        for p, runtime in _modules()
        if (lines := device_defects(p.read_text(), runtime))
    }
    assert offenders == {}


def test_the_audit_catches_a_cpu_generator_and_a_deviceless_draw():
    """Negative control: the defects the audit exists for are found; the excuses work."""
    src = (
        "import torch\n"
        "def f(x, seed):\n"
        "    g = torch.Generator().manual_seed(seed)\n"
        "    return torch.randn(3, generator=g)\n"
        "def ok(x, g):\n"
        "    h = torch.Generator(device=x.device)\n"
        "    return torch.randn(3, generator=g, device=x.device)\n"
        "def seeded(seed):\n"
        "    # deliberate CPU generator: structural masks\n"
        "    return torch.Generator().manual_seed(seed)\n"
    )
    assert device_defects(src, runtime=True) == [3, 4]
    assert device_defects(src, runtime=False) == [3]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sampler", ["importance", "imh", "hybrid", "flow-emcee", "smc"])
def test_samplers_run_with_the_flow_on_device(device, sampler):
    """Each runner draws with generators on the flow's device (a CPU generator against a CUDA
    flow fails at the first draw). The annealed sampler runs in the rv-kepler smoke recipe."""
    from boltzflow.energies.gaussians import CorrelatedGaussian
    from boltzflow.flows.builders import spline_coupling_flow
    from boltzflow.runs.registry import SAMPLERS, resolve

    target = CorrelatedGaussian(dim=2, condition_number=3.0, seed=0)
    flow = spline_coupling_flow(2, num_layers=2, hidden=8, seed=0).to(device, torch.float64)
    options = {
        "importance": {},
        "imh": {"chains": 2, "n_warmup": 5},
        "hybrid": {"chains": 2, "warmup_rounds": 1, "local_steps": 4, "global_steps": 2},
        "flow-emcee": {"walkers": 8, "burn_steps": 4, "rounds": 1, "round_steps": 4},
        "smc": {"islands": 4, "prior_steps": 2, "max_steps": 3},
    }[sampler]
    if sampler in ("hybrid", "flow-emcee", "smc"):
        options.update(train_steps=2, batch_size=32)
    if sampler == "smc":
        from boltzflow.sampling.smc_reference import GaussianReference

        options.update(reference=GaussianReference(0.0, 3.0, dim=2))
    run = resolve(SAMPLERS, sampler, "sampler")
    result = run(flow, target, n_samples=64, seed=0, **options)
    assert result.x.shape[-1] == 2
    assert torch.isfinite(result.x).all()


SYSTEMS = sorted(p.parent.name for p in (ROOT / "systems").glob("*/system.toml"))


# On the CPU every smoke recipe already runs, against the whole run contract, in
# tests/cli/test_run_smoke.py; here only the accelerator.
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("system", SYSTEMS)
def test_smoke_recipe_on_device(device, system, tmp_path):
    """Every shipped system's smoke recipe on each device, checked against the run contract."""
    from boltzflow.runs.pipeline import run

    summary = run(system, budget="smoke", out=tmp_path, device=device)
    assert summary["training"]["steps"] >= 0
    assert (tmp_path / "summary.json").is_file()


BENCHMARKS = {
    "flow_throughput": ["--dims", "2", "--batch", "64", "--repeats", "1"],
    "scaling": ["--smallest", "--repeats", "1"],
}


@pytest.mark.parametrize(
    "device", [pytest.param("cpu", marks=pytest.mark.slow), pytest.param("cuda", marks=CUDA)]
)
@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_benchmark_smallest_size_on_device(device, name):
    cmd = [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *BENCHMARKS[name]]
    done = subprocess.run(
        [*cmd, "--device", device], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
