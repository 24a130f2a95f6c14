"""Data-parallel training with torch.distributed (gloo, 2 CPU processes) against one process.

With a data tensor, two processes at the same global batch see exactly the single-process
minibatches, so the loss curves agree to rounding; a mutant that skips the gradient
all-reduce (each process steps on its own half) must not. With flow samples (reverse KL) the
curves agree within noise.
"""

from __future__ import annotations

import math

import pytest
import torch

from boltzflow.training import distributed

STEPS, BATCH = 15, 64


def _data() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    centres = torch.tensor([[-2.0, 0.0], [2.0, 1.0]], dtype=torch.float64)
    return centres[torch.randint(2, (512,), generator=g)] + 0.5 * torch.randn(
        512, 2, generator=g, dtype=torch.float64
    )


def _no_gradient_reduce(params, weight, scalars):
    """Mutant of `all_reduce_step`: the scalars are reduced, the gradients are not."""
    torch.distributed.all_reduce(scalars * torch.tensor([weight, 1.0, 1.0], dtype=scalars.dtype))
    return scalars


def curve(path: str, loss: str = "nll", mutant: bool = False) -> None:
    """Train a small flow; rank 0 writes its loss curve to `path` (runs in every process)."""
    from boltzflow.energies.gaussians import CorrelatedGaussian
    from boltzflow.flows.builders import spline_coupling_flow
    from boltzflow.training import trainer as trainer_module

    torch.set_num_threads(1)
    reduce = trainer_module.all_reduce_step
    if mutant:
        trainer_module.all_reduce_step = _no_gradient_reduce
    try:
        flow = spline_coupling_flow(2, num_layers=2, hidden=16, seed=0).double()
        target = CorrelatedGaussian(dim=2, condition_number=4.0, seed=0)
        data = _data() if loss == "nll" else None
        stage = {"loss": loss, "steps": STEPS, "batch_size": BATCH, "lr": 5e-3, "data": data}
        result = trainer_module.train(flow, target, [stage], seed=1, progress=False)
    finally:
        trainer_module.all_reduce_step = reduce
    if distributed.world()[0] == 0:
        torch.save(torch.tensor([r["loss"] for r in result.history]), path)


def curve_and_mutant(path: str) -> None:
    """`curve` on data, then with the mutant, in the same process group (one launch)."""
    curve(path + ".ddp")
    curve(path + ".mutant", mutant=True)


def _run(tmp_path, nproc: int, **kwargs) -> torch.Tensor:
    path = str(tmp_path / f"curve-{nproc}-{len(kwargs)}.pt")
    if nproc == 1:
        curve(path, **kwargs)
    else:
        distributed.launch(curve, nproc, path=path, **kwargs)
    return torch.load(path)


def test_share_covers_the_batch_once():
    for n, w in [(64, 2), (10, 3), (5, 4), (3, 3)]:
        rows = [distributed.share(n, r, w) for r in range(w)]
        assert rows[0][0] == 0 and rows[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(rows, rows[1:], strict=False))
        assert max(hi - lo for lo, hi in rows) - min(hi - lo for lo, hi in rows) <= 1


def test_two_gloo_processes_match_one_process_on_data_and_the_mutant_does_not(tmp_path):
    """Same curve to rounding at the same global batch; negative control: without the
    gradient all-reduce (each process steps on its own half) the curve differs."""
    one = _run(tmp_path, 1)
    path = str(tmp_path / "curve-2")
    distributed.launch(curve_and_mutant, 2, path=path)
    two, mutant = torch.load(path + ".ddp"), torch.load(path + ".mutant")
    assert one.shape == two.shape == (STEPS,)
    assert one[-1] < one[0]  # it trains
    torch.testing.assert_close(two, one, rtol=1e-9, atol=1e-9)
    assert (mutant - one).abs().max() > 1e-4


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_within_noise_on_flow_samples(tmp_path):
    """Reverse KL: the shares are independent draws; the late-training mean loss agrees
    within 4 combined standard errors (curves are not identical)."""
    one = _run(tmp_path, 1, loss="reverse_kl")
    two = _run(tmp_path, 2, loss="reverse_kl")
    assert not torch.equal(one, two)
    tail = slice(STEPS // 2, None)
    a, b = one[tail], two[tail]
    se = math.sqrt(a.var() / a.numel() + b.var() / b.numel())
    assert abs(float(a.mean() - b.mean())) < 4 * se + 1e-12


@pytest.mark.slow
def test_cli_run_with_two_processes(tmp_path):
    from boltzflow.cli import main

    out = tmp_path / "run"
    assert main(["run", "double-well", "--budget", "smoke", "--nproc", "2", "--out", str(out)]) == 0
    assert (out / "summary.json").is_file()
