"""The thread rule, the OpenMP wait policy set by the command, per-device batch sizes and the
OpenMM platform rule."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from boltzflow.hardware import LARGE_STEP, SPIN_COUNT, plan_threads
from boltzflow.runs.processes import batch_size_for


def test_small_steps_get_one_thread_whatever_the_machine():
    for cores in (1, 2, 16, 128):
        assert plan_threads(10**6, 256, cores=cores) == 1


@pytest.mark.parametrize("cores", [1, 2, 4, 16])
@pytest.mark.parametrize("workers", [0, 1, 3, 15])
def test_threads_and_workers_never_exceed_the_cores(cores, workers):
    n = plan_threads(LARGE_STEP, 1, workers=workers, cores=cores)
    assert n >= 1
    if workers < cores:
        assert n + workers <= cores
    if workers == 0:
        assert n == cores  # a large step uses every core it may


def test_the_command_sets_a_short_spin_before_torch_loads():
    code = (
        "import os, sys\n"
        "os.environ.pop('OMP_WAIT_POLICY', None)\n"
        "os.environ.pop('GOMP_SPINCOUNT', None)\n"
        "from boltzflow.cli import main\n"
        "assert 'torch' not in sys.modules\n"
        "main(['systems'])\n"
        "print(os.environ['GOMP_SPINCOUNT'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == str(SPIN_COUNT)


@pytest.mark.parametrize("key", ["OMP_WAIT_POLICY", "GOMP_SPINCOUNT"])
def test_a_users_wait_policy_is_kept(key):
    code = "from boltzflow.hardware import set_wait_policy\nprint(set_wait_policy())"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env[key] = "ACTIVE" if key == "OMP_WAIT_POLICY" else "5"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == repr({key: env[key]})


def test_batch_size_per_device():
    assert batch_size_for({"cpu": 256, "cuda": 4096}, "cuda") == 4096
    assert batch_size_for({"cpu": 256, "cuda": 4096}, "cpu") == 256
    assert batch_size_for({"cpu": 256}, "mps") == 256
    assert batch_size_for(128, "cuda") == 128


def test_openmm_gpu_platform_only_for_large_systems_and_only_when_installed():
    openmm = pytest.importorskip("openmm")
    from boltzflow.energies.openmm import GPU_MIN_ATOMS, default_platform, gpu_platforms

    def system(n):
        s = openmm.System()
        for _ in range(n):
            s.addParticle(1.0)
        return s

    assert default_platform(system(22)) == ("Reference", {})
    big = default_platform(system(GPU_MIN_ATOMS))
    gpus = gpu_platforms()
    assert big == ((gpus[0], {"Precision": "mixed"}) if gpus else ("Reference", {}))
