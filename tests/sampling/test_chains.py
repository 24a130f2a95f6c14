"""The chain driver: shapes, thinning, warm-up, resume from ``final_state``, quiet off a TTY."""

import pytest
import torch

from boltzflow.energies.base import CallableEnergy
from boltzflow.sampling.chains import ChainResult, run_chain
from boltzflow.sampling.kernels import HMC, MALA, Mixture

D = torch.float64
torch.set_num_threads(1)  # tiny tensors: threading only adds contention


def target():
    return CallableEnergy(lambda x: 0.5 * (x * x).sum((-2, -1)), (2, 3))


def start(n=4):
    return torch.randn(n, 2, 3, generator=torch.Generator().manual_seed(0), dtype=D)


def test_shapes_thinning_and_warmup():
    res = run_chain(MALA(target(), 0.3), start(), n_steps=20, seed=0, thin=3, n_warmup=5)
    assert isinstance(res, ChainResult)
    assert res.x.shape == (4, 6, 2, 3)
    for field in (res.energy, res.accepted, res.acceptance_prob, res.log_weight):
        assert field.shape == (4, 6)
    assert res.accepted.dtype == torch.bool and res.x.dtype == D
    assert 0.0 <= res.acceptance_rate <= 1.0
    # the kept draws are the states after steps 5 + 3, 5 + 6, ...: replay by hand
    kernel = MALA(target(), 0.3)
    state = kernel.init(start(), seed=0)
    kept = []
    for i in range(25):
        state, _ = kernel.step(state)
        if i + 1 > 5 and (i + 1 - 5) % 3 == 0:
            kept.append(state.x)
    assert torch.equal(res.x, torch.stack(kept, 1))
    assert torch.equal(res.final_state.x, state.x)
    torch.testing.assert_close(res.energy, target().energy(res.x.reshape(-1, 2, 3)).reshape(4, 6))


@pytest.mark.parametrize("make", [lambda t: HMC(t, 0.2, 3), lambda t: Mixture([MALA(t, 0.3)] * 2)])
def test_resume_from_final_state_equals_one_long_run(make):
    long = run_chain(make(target()), start(), 30, seed=4)
    first = run_chain(make(target()), start(), 12, seed=4)
    second = run_chain(make(target()), first.final_state, 18, seed=999)  # seed ignored
    assert torch.equal(torch.cat([first.x, second.x], 1), long.x)
    assert torch.equal(torch.cat([first.accepted, second.accepted], 1), long.accepted)
    for key, value in long.stats.items():
        assert torch.equal(torch.cat([first.stats[key], second.stats[key]], 1), value)


def test_mixture_stats_are_stacked():
    res = run_chain(Mixture([MALA(target(), 0.3)] * 3, repeats=(1, 2, 0)), start(), 5, seed=0)
    assert set(res.stats) == {"kernel_accepted", "kernel_acceptance_prob", "kernel_steps"}
    assert res.stats["kernel_steps"].shape == (4, 5, 3)
    assert res.stats["kernel_steps"][0, 0].tolist() == [1.0, 2.0, 0.0]


def test_zero_steps_and_bad_arguments():
    res = run_chain(MALA(target(), 0.3), start(), 0, seed=0)
    assert res.x.shape == (4, 0, 2, 3) and res.energy.shape == (4, 0)
    with pytest.raises(ValueError):
        run_chain(MALA(target(), 0.3), start(), 5, thin=0)
    with pytest.raises(ValueError):
        run_chain(MALA(target(), 0.3), start(), -1)


@pytest.mark.parametrize("progress", [None, True, False])
def test_progress_bar_is_silent_off_a_terminal(progress, capsys):
    run_chain(MALA(target(), 0.3), start(), 5, seed=0, progress=progress)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
