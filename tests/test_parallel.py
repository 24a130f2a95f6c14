"""EnergyPool: local processes, dask LocalCluster, worker death, shutdown (real OpenMM)."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

pytest.importorskip("openmm")

from boltzflow.energies.openmm import OpenMMEnergy  # noqa: E402
from boltzflow.molecular.alanine import load_alanine_dipeptide  # noqa: E402
from boltzflow.parallel import (  # noqa: E402
    EnergyPool,
    SystemSpec,
    WorkerPoolError,
    evaluate_chunk,
    worker_info,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def vacuum():
    return load_alanine_dipeptide("vacuum")


@pytest.fixture(scope="module")
def spec(vacuum):
    return SystemSpec.from_system(vacuum.system)


@pytest.fixture(scope="module")
def pool():
    with EnergyPool(workers=2) as p:
        yield p


def _batch(mol, n, seed=0):
    rng = np.random.default_rng(seed)
    return mol.positions[None] + 0.005 * rng.standard_normal((n, *mol.positions.shape))


def test_spec_key_is_content_hash(vacuum):
    a = SystemSpec.from_system(vacuum.system)
    b = SystemSpec.from_system(vacuum.system)
    c = SystemSpec.from_system(vacuum.system, "CPU", {"Threads": "1"})
    implicit = SystemSpec.from_system(load_alanine_dipeptide("implicit").system)
    assert a.key == b.key and len(a.key) == 64
    assert len({a.key, c.key, implicit.key}) == 3


def test_local_pool_matches_in_process_and_keeps_order(pool, spec, vacuum):
    pos = _batch(vacuum, 37)
    e_ref, f_ref = evaluate_chunk(spec, pos)
    e, f = pool.evaluate(spec, pos)
    np.testing.assert_array_equal(e, e_ref)
    np.testing.assert_array_equal(f, f_ref)
    # a permuted batch gives the permuted results (no result is cached by batch identity)
    perm = np.random.default_rng(1).permutation(37)
    e2, _ = pool.evaluate(spec, pos[perm])
    np.testing.assert_array_equal(e2, e_ref[perm])


def _shm_blocks() -> set[str]:
    """Shared-memory blocks (``psm_*``; semaphores of other pools are not counted)."""
    if not os.path.isdir("/dev/shm"):
        return set()
    return {n for n in os.listdir("/dev/shm") if n.startswith("psm_")}


def test_shared_memory_and_pickled_batches_agree_and_leave_no_block(spec, vacuum):
    pos = _batch(vacuum, 41, seed=3)
    pos[5] = np.nan  # an unevaluable row stays isolated on the shared path too
    before = _shm_blocks()
    with EnergyPool(workers=2) as shared:
        assert shared.shared_memory
        e, f = shared.evaluate(spec, pos)
        assert len(_shm_blocks() - before) == 1  # one block, reused by the next batch
        e2, f2 = shared.evaluate(spec, pos[::-1].copy())
        assert len(_shm_blocks() - before) == 1
        e3, _ = shared.evaluate(spec, pos[:7])  # a new layout replaces the block
        assert len(_shm_blocks() - before) == 1
    assert _shm_blocks() <= before  # closing the pool unlinks its block
    with EnergyPool(workers=2, shared_memory=False) as pickled:
        e_p, f_p = pickled.evaluate(spec, pos)
    np.testing.assert_array_equal(e, e_p)
    np.testing.assert_array_equal(f, f_p)
    np.testing.assert_array_equal(e2, e_p[::-1])
    np.testing.assert_array_equal(f2, f_p[::-1])
    np.testing.assert_array_equal(e3, e_p[:7])
    assert np.isnan(e[5]) and np.isfinite(np.delete(e, 5)).all()


def test_workers_are_pinned_to_distinct_cores(pool):
    cores = worker_info()[1]
    if len(cores) < 2:
        pytest.skip("needs two allowed cores")
    infos = pool.map(worker_info, [()] * 8)
    for _, aff in infos:
        assert len(aff) == 1


def test_two_systems_in_one_worker_use_their_own_context(pool, spec, vacuum):
    implicit = load_alanine_dipeptide("implicit")
    spec_i = SystemSpec.from_system(implicit.system, "Reference")
    pos = _batch(vacuum, 6, seed=3)
    e_v, _ = pool.evaluate(spec, pos)
    e_i, _ = pool.evaluate(spec_i, pos)
    np.testing.assert_array_equal(e_i, evaluate_chunk(spec_i, pos)[0])
    assert (e_i < e_v - 10).all()  # solvation free energy lowers every configuration


def test_pool_nan_configuration_isolated(pool, vacuum):
    spec_cpu = SystemSpec.from_system(vacuum.system, "CPU", {"Threads": "1"})
    pos = _batch(vacuum, 8, seed=5)
    pos[3, 2, 1] = np.nan
    e, f = pool.evaluate(spec_cpu, pos)
    assert np.isnan(e[3]) and (f[3] == 0).all()
    good = np.delete(np.arange(8), 3)
    e_ref, _ = evaluate_chunk(SystemSpec.from_system(vacuum.system), pos[good])
    np.testing.assert_allclose(e[good], e_ref, atol=1e-3)


def test_openmm_energy_through_pool_gradients(pool, vacuum):
    local = OpenMMEnergy(vacuum.system)
    pooled = OpenMMEnergy(vacuum.system, pool=pool)
    x = torch.as_tensor(_batch(vacuum, 9, seed=8)).reshape(9, -1).requires_grad_(True)
    u = pooled.energy(x)
    (g,) = torch.autograd.grad(u.sum(), x)
    torch.testing.assert_close(u.detach(), local.energy(x.detach()))
    torch.testing.assert_close(g, -local.force(x.detach()))


def test_killed_worker_fails_clearly_or_retries_without_hanging(spec, vacuum):
    pos = _batch(vacuum, 20)
    e_ref, _ = evaluate_chunk(spec, pos)
    before = _shm_blocks()
    with EnergyPool(workers=2, timeout=30.0, retries=1) as p:
        p.evaluate(spec, pos)
        pids = p.worker_pids()
        assert len(pids) == 2
        os.kill(pids[0], signal.SIGKILL)
        t0 = time.monotonic()
        try:
            for _ in range(20):  # the executor notices the death asynchronously
                e, _ = p.evaluate(spec, pos)
                np.testing.assert_array_equal(e, e_ref)
                time.sleep(0.05)
        except WorkerPoolError as exc:
            assert "worker pool" in str(exc)
        else:  # retried on a rebuilt pool: the dead worker is gone
            assert pids[0] not in p.worker_pids()
        assert time.monotonic() - t0 < 60
    assert _shm_blocks() <= before  # no shared block outlives the pool after a worker death


def test_killed_worker_of_foreign_executor_raises(spec, vacuum):
    import multiprocessing as mp

    pos = _batch(vacuum, 10)
    ex = cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"))
    try:
        with EnergyPool(executor=ex, timeout=30.0) as p:
            ((pid, _),) = p.map(worker_info, [()])
            os.kill(pid, signal.SIGKILL)
            t0 = time.monotonic()
            with pytest.raises(WorkerPoolError, match="BrokenProcessPool"):
                for _ in range(50):  # the executor notices the death asynchronously
                    p.evaluate(spec, pos)
                    time.sleep(0.1)
            assert time.monotonic() - t0 < 60
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def test_closed_pool_refuses_work(spec, vacuum):
    p = EnergyPool(workers=1)
    p.close()
    p.close()  # idempotent
    with pytest.raises(WorkerPoolError, match="closed"):
        p.evaluate(spec, _batch(vacuum, 2))


def test_unclosed_pool_does_not_hang_interpreter_exit():
    script = textwrap.dedent(
        """
        import numpy as np
        from boltzflow.molecular.alanine import load_alanine_dipeptide
        from boltzflow.parallel import EnergyPool, SystemSpec
        mol = load_alanine_dipeptide("vacuum")
        pool = EnergyPool(workers=2)
        e, _ = pool.evaluate(SystemSpec.from_system(mol.system), mol.positions[None])
        print("ok", np.isfinite(e).all())
        """
    )
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "ok True" in out.stdout
    assert time.monotonic() - t0 < 60


def test_dask_local_cluster_two_workers(spec, vacuum):
    distributed = pytest.importorskip("distributed")
    pos = _batch(vacuum, 25, seed=11)
    e_ref, f_ref = evaluate_chunk(spec, pos)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        with EnergyPool(scheduler=cluster.scheduler_address) as p:
            assert p.kind == "dask" and p.n_workers == 2
            e, f = p.evaluate(spec, pos)
            pids = {pid for pid, _ in p.map(worker_info, [()] * 4)}
            target = OpenMMEnergy(vacuum.system, pool=p)
            u = target.energy(torch.as_tensor(pos).reshape(25, -1))
    np.testing.assert_array_equal(e, e_ref)
    np.testing.assert_array_equal(f, f_ref)
    np.testing.assert_allclose(u.numpy() * target.kT, e_ref, rtol=1e-12)
    assert os.getpid() not in pids


def test_openmm_failures_are_counted_and_reported(spec, vacuum, caplog):
    """A configuration OpenMM raises on gives NaN and a warning that says how many failed."""
    pos = _batch(vacuum, 3)[:, :-1]  # one atom short: setPositions raises for every row
    with caplog.at_level("WARNING", logger="boltzflow.openmm_worker"):
        e, f = evaluate_chunk(spec, pos)
    assert np.isnan(e).all() and (f == 0).all()
    (record,) = [r for r in caplog.records if "OpenMM raised" in r.getMessage()]
    assert record.levelname == "WARNING" and "on 3 of 3 configurations" in record.getMessage()
    caplog.clear()
    with caplog.at_level("WARNING", logger="boltzflow.openmm_worker"):
        evaluate_chunk(spec, _batch(vacuum, 3))
    assert not caplog.records  # negative control: nothing to report on good input


def test_compute_resources_report_the_pool_and_platform(pool, vacuum):
    """What `describe_hardware` and the thread rule read: local workers take cores."""
    from boltzflow.energies.base import Energy

    assert OpenMMEnergy(vacuum.system).compute_resources()["energy_workers"] == 0
    res = OpenMMEnergy(vacuum.system, pool=pool).compute_resources()
    assert res["energy_workers"] == pool.n_workers >= 1
    assert res["local_workers"] == (pool.n_workers if pool.kind == "local" else 0)
    assert res["openmm_platform"] == SystemSpec.from_system(vacuum.system).platform
    assert Energy(2).compute_resources() == {}
