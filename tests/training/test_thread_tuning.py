"""The measured thread choice: step times are simulated by a clock that advances by the cost of
the thread count in force, so each test knows which choice is right."""

from __future__ import annotations

import pytest
import torch

from boltzflow.training.thread_tuning import ThreadTuner


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Machine:
    """A clock whose every step costs `cost[threads]` seconds (changeable mid-run)."""

    def __init__(self, cost):
        self.cost, self.now, self.spent = dict(cost), 0.0, 0.0

    def clock(self):
        return self.now

    def step(self):
        dt = self.cost[torch.get_num_threads()]
        self.now += dt
        self.spent += dt


def _run(tuner, machine, steps, *, evaluations_per_step=0, start=0):
    tuner.on_train_begin(None)
    tuner.on_stage_begin(None, None)
    tuner.on_step_end(None, {"step": start})  # the clock starts at the stage's first step
    used = 0
    for k in range(start + 1, start + steps + 1):
        machine.step()
        used += evaluations_per_step
        tuner.on_step_end(None, {"step": k, "energy_evaluations": used})


def test_idle_machine_keeps_the_faster_threads():
    machine = Machine({1: 0.010, 2: 0.006})
    tuner = ThreadTuner(2, clock=machine.clock)
    _run(tuner, machine, 1000)
    assert torch.get_num_threads() == 2
    assert tuner.decisions[0]["threads"] == 2
    # most steps ran at 2 threads: within 5% of always-2
    assert machine.spent < 1.05 * 1000 * 0.006


def test_busy_machine_keeps_one_thread_and_probing_costs_little():
    machine = Machine({1: 0.010, 2: 0.500})  # beside a busy process: 50x slower
    tuner = ThreadTuner(2, clock=machine.clock, overhead=0.03)
    _run(tuner, machine, 3000)
    assert torch.get_num_threads() == 1
    assert all(d["threads"] == 1 for d in tuner.decisions)
    # each probe of 2 threads is cut after one slow step: total overhead near 3 %
    assert machine.spent < 1.06 * 3000 * 0.010
    assert len(tuner.decisions) >= 2  # it does look again


def test_load_that_appears_mid_run_is_noticed():
    machine = Machine({1: 0.010, 2: 0.006})
    tuner = ThreadTuner(2, clock=machine.clock)
    _run(tuner, machine, 300)
    assert torch.get_num_threads() == 2
    machine.cost = {1: 0.012, 2: 0.400}
    for k in range(301, 320):
        machine.step()
        tuner.on_step_end(None, {"step": k})
    assert torch.get_num_threads() == 1
    assert tuner.decisions[-1]["step"] <= 320


def test_a_small_gain_keeps_fewer_threads():
    machine = Machine({1: 0.010, 2: 0.0095})
    tuner = ThreadTuner(2, clock=machine.clock, min_gain=0.1)
    _run(tuner, machine, 50)
    assert torch.get_num_threads() == 1


def test_energy_workers_lower_the_ceiling_while_energies_are_evaluated():
    machine = Machine({1: 0.010, 2: 0.006})
    tuner = ThreadTuner(2, workers=1, clock=machine.clock)
    _run(tuner, machine, 400, evaluations_per_step=256)
    assert torch.get_num_threads() == 1
    assert all(set(d["step_ms"]) == {"1"} for d in tuner.decisions[1:])


def test_evaluation_steps_are_not_timed():
    machine = Machine({1: 0.010, 2: 0.006})
    tuner = ThreadTuner(2, clock=machine.clock)
    tuner.on_stage_begin(None, None)
    tuner.on_step_end(None, {"step": 0})
    for k in range(1, 300):
        machine.step()
        record = {"step": k}
        if k % 3 == 0:  # a long held-out evaluation ends this step
            machine.now += 5.0
            record["ess_fraction"] = 0.5
        tuner.on_step_end(None, record)
    assert torch.get_num_threads() == 2
    assert all(float(ms) < 100 for d in tuner.decisions for ms in d["step_ms"].values())


def test_one_core_does_nothing():
    machine = Machine({1: 0.010})
    tuner = ThreadTuner(1, clock=machine.clock)
    _run(tuner, machine, 20)
    assert tuner.decisions == [] and not tuner.active


@pytest.mark.skipif(
    __import__("boltzflow.hardware").hardware.usable_cores() < 2, reason="needs 2 cores"
)
def test_a_run_tunes_only_when_the_count_is_left_to_it():
    """`set_run_threads` hands the trainer a tuner unless `--threads` was given; the tuner
    decides from real training steps and `describe_hardware` reports the decision."""
    import contextlib

    from boltzflow.runs.pipeline import build_flow, build_target
    from boltzflow.runs.processes import describe_hardware, set_run_threads
    from boltzflow.runs.recipes import load_recipe
    from boltzflow.training.trainer import Trainer

    recipe = load_recipe("gmm40", "smoke")
    target = build_target(recipe, device=torch.device("cpu"))
    flow = build_flow(recipe, target, 0)
    with contextlib.ExitStack() as stack:
        assert set_run_threads(stack, 1, flow, recipe, target) is None
    with contextlib.ExitStack() as stack:
        tuner = set_run_threads(stack, None, flow, recipe, target)
        assert tuner is not None and tuner.active
        stage = {"loss": "reverse_kl", "steps": 24, "batch_size": 16, "lr": 1e-4}
        Trainer(flow, target, [stage], callbacks=[tuner], progress=False).fit()
        hardware = describe_hardware(flow, target, tuner)
    assert hardware["thread_decisions"] and hardware["thread_decisions"][0]["threads"] in (1, 2)
    assert set(hardware["thread_decisions"][0]["step_ms"]) == {"1", "2"}
