r"""Measured intra-op thread choice: time training steps at 1 and at $N$ threads, keep the faster.

Why measure. Whether intra-op threads pay depends on the machine *now*: on an idle 2-core
machine the alanine-dipeptide NLL step is about 1.6× faster with 2 threads than with 1, but
beside another CPU-bound process every parallel region waits for the thread whose core the
other process holds, and the same step becomes several to 50 times slower (see
[`boltzflow.hardware`][boltzflow.hardware]). A fixed rule must pick one of the two failures;
timing the steps the run takes anyway picks the faster for the conditions of the moment.

The rule ([`ThreadTuner`][boltzflow.training.thread_tuning.ThreadTuner]). Candidates are
$n = 1$ and $n = N$ (the ceiling: usable cores, less local energy workers while the stage
evaluates energies). A *probe* times `probe_steps` steps at each candidate (the current one
first) and keeps the one with the smaller median step time $t$, preferring fewer threads
unless more are at least `min_gain` faster. A candidate whose first step already takes
more than `abort_factor` times the best median is dropped after that one step, so a probe
beside a busy process costs one slow step, not several. Probes repeat:

- after an interval of $\max(\text{min\_interval},\ c / (\epsilon\, t))$ steps, where $c$ is
  the time the last probe lost to its slower candidate and $\epsilon$ = `overhead`, so probing
  costs at most about $\epsilon$ of the training time; the interval doubles each time the same
  candidate wins again (up to `max_interval`);
- at once when the median of the last `probe_steps` steps exceeds `drift_factor` × $t$ (the
  load changed), and at the start of every stage (the step changed).

Evaluation steps (`ess_fraction` or `mean_loss` in the record) and the step after them are
not timed: other callbacks may do their own work on an evaluation record. The tuner acts
between steps only (`torch.set_num_threads`), so results do not depend on it beyond float
summation order; its decisions are kept in `decisions` and written to `summary.json`.
"""

from __future__ import annotations

import logging
import statistics
import time

import torch

from boltzflow.training.callbacks import Callback

__all__ = ["ThreadTuner"]

logger = logging.getLogger(__name__)


class ThreadTuner(Callback):
    """Trainer callback that sets torch's intra-op thread count from measured step times.

    Args:
        ceiling: the largest thread count to try ($N$); with `ceiling <= 1` the tuner does
            nothing.
        workers: local energy worker processes; while a stage evaluates energies the ceiling
            is `ceiling - workers` (at least 1), so threads and workers never ask for more
            cores than exist.
        probe_steps: timed steps per candidate in a probe.
        min_interval, max_interval: bounds of the number of steps between probes.
        overhead: the fraction $\\epsilon$ of training time that probing may cost.
        min_gain: more threads must be at least this fraction faster to be kept.
        abort_factor: a candidate step slower than this times the best median ends its probe.
        drift_factor: re-probe when recent steps are this much slower than the winner's time.
        clock: a monotonic clock in seconds (for tests).

    Example:
        >>> tuner = ThreadTuner(ceiling=1)  # one core: nothing to choose
        >>> tuner.active
        False
    """

    def __init__(
        self,
        ceiling: int,
        *,
        workers: int = 0,
        probe_steps: int = 4,
        min_interval: int = 200,
        max_interval: int = 3200,
        overhead: float = 0.03,
        min_gain: float = 0.1,
        abort_factor: float = 3.0,
        drift_factor: float = 2.0,
        clock=time.perf_counter,
    ):
        self.ceiling, self.workers = max(1, int(ceiling)), max(0, int(workers))
        self.probe_steps = max(1, int(probe_steps))
        self.min_interval, self.max_interval = int(min_interval), int(max_interval)
        self.overhead, self.min_gain = float(overhead), float(min_gain)
        self.abort_factor, self.drift_factor = float(abort_factor), float(drift_factor)
        self.clock = clock
        self.decisions: list[dict] = []
        self._last_time: float | None = None
        self._energies_seen = False
        self._evaluations = 0
        self._reset_probe()
        self._winner: int | None = None
        self._winner_time = 0.0
        self._interval = self.min_interval
        self._countdown = 0
        self._recent: list[float] = []

    @property
    def active(self) -> bool:
        """Whether there is more than one candidate."""
        return self.ceiling > 1

    def _candidates(self) -> list[int]:
        top = self.ceiling - (self.workers if self._energies_seen else 0)
        current = torch.get_num_threads()
        others = [n for n in dict.fromkeys((1, max(1, top))) if n != current]
        return [current, *others]

    def _reset_probe(self) -> None:
        self._queue: list[int] = []
        self._times: dict[int, list[float]] = {}

    def _start_probe(self) -> None:
        self._queue = self._candidates()
        self._times = {n: [] for n in self._queue}
        self._set(self._queue[0])

    @staticmethod
    def _set(n: int) -> None:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)

    # ---------------------------------------------------------------- hooks
    def on_train_begin(self, trainer) -> None:
        self._last_time = None

    def on_stage_begin(self, trainer, stage) -> None:
        if self.active:
            self._start_probe()
        self._last_time = None

    def on_step_end(self, trainer, record: dict) -> None:
        now = self.clock()
        last, self._last_time = self._last_time, now
        total = int(record.get("energy_evaluations", 0))
        used, self._evaluations = total - self._evaluations, total
        if "ess_fraction" in record or "mean_loss" in record:
            self._last_time = None  # callbacks may still work on it: restart the clock
            return
        if not self.active or last is None:
            return
        if used > 0 and not self._energies_seen and self.workers:
            self._energies_seen = True  # the ceiling drops: measure again
            self._start_probe()
            return
        dt = now - last
        if self._queue:
            self._probe_step(int(record.get("step", 0)), dt)
            return
        self._recent = (self._recent + [dt])[-self.probe_steps :]
        self._countdown -= 1
        drifted = (
            len(self._recent) == self.probe_steps
            and statistics.median(self._recent) > self.drift_factor * self._winner_time
        )
        if drifted:
            self._interval = self.min_interval
        if drifted or self._countdown <= 0:
            self._start_probe()

    def _probe_step(self, step: int, dt: float) -> None:
        n = self._queue[0]
        self._times[n].append(dt)
        best = min(
            (statistics.median(t) for m, t in self._times.items() if m != n and t), default=None
        )
        aborted = best is not None and dt > self.abort_factor * best
        if len(self._times[n]) < self.probe_steps and not aborted:
            return
        self._queue.pop(0)
        if self._queue:
            self._set(self._queue[0])
            return
        self._decide(step)

    def _decide(self, step: int) -> None:
        med = {n: statistics.median(t) for n, t in self._times.items() if t}
        winner = min(med)  # the fewest threads, unless more are clearly faster
        for n in sorted(med):
            if med[n] < (1.0 - self.min_gain) * med[winner]:
                winner = n
        lost = sum(sum(t) - len(t) * med[winner] for n, t in self._times.items() if n != winner)
        self._interval = (
            min(self.max_interval, 2 * self._interval)
            if winner == self._winner
            else self.min_interval
        )
        needed = max(0.0, lost) / max(self.overhead * med[winner], 1e-12)
        self._countdown = int(min(self.max_interval, max(self._interval, needed)))
        self._winner, self._winner_time = winner, med[winner]
        self._recent = []
        self._set(winner)
        self.decisions.append(
            {
                "step": step,
                "threads": winner,
                "step_ms": {str(n): round(1e3 * m, 3) for n, m in sorted(med.items())},
                "next_probe_in": self._countdown,
            }
        )
        logger.info(
            "torch threads: %d (median step %s ms at %s threads); next probe in %d steps",
            winner,
            ", ".join(f"{1e3 * med[n]:.1f}" for n in sorted(med)),
            "/".join(str(n) for n in sorted(med)),
            self._countdown,
        )
        self._reset_probe()
