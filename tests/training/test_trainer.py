"""The training loop: convergence, reproducibility, exact resume, data streams, accounting."""

from __future__ import annotations

import math

import pytest
import torch

from boltzflow.training.callbacks import Callback, EarlyStopping
from boltzflow.training.trainer import Stage, Trainer, train

from .helpers import COV, MEAN, affine_flow, affine_moments, gaussian_kl, gaussian_target

torch.set_num_threads(1)


def kl_of(flow) -> float:
    mean, cov = affine_moments(flow)
    return gaussian_kl(mean, cov, MEAN, COV)


def test_reverse_kl_training_converges_on_2d_gaussian():
    target, flow = gaussian_target(), affine_flow()
    kl0 = kl_of(flow)
    result = train(
        flow,
        target,
        [Stage(loss="reverse_kl", steps=300, lr=0.05, batch_size=128, warmup_steps=10)],
        seed=0,
        eval_every=100,
        eval_samples=500,
        progress=False,
    )
    assert kl0 > 1.0
    assert kl_of(flow) < 0.01
    steps, ess = result.column("ess_fraction")
    assert list(steps) == [100, 200, 300] and ess[-1] > 0.97
    # accounting: every energy evaluation is counted (loss batches + evaluation samples)
    assert result.energy_evaluations == target.n_evaluations == 300 * 128 + 3 * 500
    assert result.steps == 300 and len(result.history) == 300
    _, lr = result.column("lr")
    assert lr[0] == pytest.approx(0.05 / 10) and lr[9] == pytest.approx(0.05)
    assert lr[-1] < 1e-5
    assert all(math.isfinite(r["grad_norm"]) for r in result.history)


def test_nll_stage_on_tensor_and_exact_data():
    target = gaussian_target()
    data = target.sample(2000, generator=torch.Generator().manual_seed(1))
    for source in (data, "exact"):
        flow = affine_flow()
        train(flow, target, [Stage("nll", 300, 0.05, 100, data=source)], progress=False)
        assert kl_of(flow) < 0.02
    with pytest.raises(ValueError, match="needs data"):
        train(affine_flow(), target, [Stage("nll", 10)], progress=False)


def test_same_seed_same_parameters_different_seed_differs():
    def run(seed):
        flow = affine_flow()
        stages = [{"loss": "mixed", "steps": 30, "lr": 0.02, "batch_size": 32, "data": "exact"}]
        train(flow, gaussian_target(), stages, seed=seed, progress=False)
        return torch.cat([p.detach().reshape(-1) for p in flow.parameters()])

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


class Interrupt(Exception):
    pass


class InterruptAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer, record):
        if record["step"] == self.step:
            raise Interrupt


def _resume_setup(tmp_path, extra_callbacks=()):
    target = gaussian_target()
    data = target.sample(300, generator=torch.Generator().manual_seed(2))
    stages = [
        Stage("nll", 25, 0.03, 64, data=data, warmup_steps=5),
        Stage("reverse_kl", 25, 0.01, 64, clip_grad_norm=1.0, loss_kwargs={"energy_cap": 50.0}),
    ]
    kwargs = dict(seed=3, eval_every=5, eval_samples=200, progress=False)
    return target, stages, kwargs


@pytest.mark.parametrize("interrupt_at", [13, 27, 50])
def test_resume_is_bit_identical(tmp_path, interrupt_at):
    target, stages, kw = _resume_setup(tmp_path)
    flow_ref = affine_flow()
    ref = Trainer(flow_ref, target, stages, callbacks=[EarlyStopping(patience=100)], **kw).fit()

    ckpt = tmp_path / "state.pt"
    flow = affine_flow()
    interrupted = Trainer(
        flow,
        target,
        stages,
        callbacks=[EarlyStopping(patience=100), InterruptAt(interrupt_at)],
        checkpoint_every=10,
        checkpoint_path=ckpt,
        **kw,
    )
    with pytest.raises(Interrupt):
        interrupted.fit()

    fresh = affine_flow()
    with torch.no_grad():  # the resumed flow starts elsewhere: the checkpoint must restore it
        for p in fresh.parameters():
            p.add_(0.1)
    resumed = Trainer(
        fresh,
        target,
        stages,
        seed=99,  # ignored: generator states come from the checkpoint
        callbacks=[EarlyStopping(patience=100), Callback()],
        eval_every=5,
        eval_samples=200,
        progress=False,
    ).fit(resume_from=ckpt)

    for p, q in zip(flow_ref.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in ref.history]
    assert resumed.energy_evaluations == ref.energy_evaluations
    assert resumed.steps == 50


def test_resume_rejects_different_stages(tmp_path):
    target, stages, kw = _resume_setup(tmp_path)
    ckpt = tmp_path / "state.pt"
    Trainer(affine_flow(), target, stages, checkpoint_path=ckpt, **kw).fit()
    other = [Stage("nll", 30, data=stages[0].data), stages[1]]
    with pytest.raises(ValueError, match="stages"):
        Trainer(affine_flow(), target, other, **kw).fit(resume_from=ckpt)


def test_nonfinite_gradient_skips_the_step():
    class BadLoss:
        __name__ = "bad"

        def __call__(self, flow, target, batch, generator=None):
            return flow.sample(batch, generator=generator).x.sum() * math.nan

    flow = affine_flow()
    before = [p.detach().clone() for p in flow.parameters()]
    result = train(flow, gaussian_target(), [Stage(BadLoss(), 3, batch_size=4)], progress=False)
    assert result.n_skipped_steps == 3
    assert all(torch.equal(a, b) for a, b in zip(before, flow.parameters(), strict=True))
