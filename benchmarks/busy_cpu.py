"""Training on a busy CPU: idle vs beside competing CPU-bound processes, 1 vs N threads.

Conditions (each measured in this one invocation, so the ratios share the machine's state):

* ``idle``: nothing started by the benchmark (other users' processes still run: the load
  average is printed);
* ``busy-1``: beside one single-threaded busy loop (``while True: pass``);
* ``busy-N``: beside one multi-threaded CPU-bound job (torch matrix products on all cores,
  torch's defaults: the job a user might have open in another terminal).

Step mode (default): a child process times NLL training steps of a spline-coupling flow
(``--dim 60 --batch 256``, the issue's example) with 1 thread, with N threads (all cores) and
with the package's default (short OpenMP spin, the thread rule to start, then the
measured choice of ``boltzflow.training.thread_tuning.ThreadTuner``),
and prints the median step time and the ratio to idle. ``--sizes`` times the idle step at
growing flow widths, 1 vs N threads, to place ``boltzflow.hardware.LARGE_STEP``.

Run mode: ``--run SYSTEM --budget BUDGET`` times the whole ``boltzflow run SYSTEM --budget
BUDGET`` command with no other flags (what a user types), idle and beside each competitor, and
prints wall times and ratios (goal: ≤ 2× idle). ``--threads N`` adds runs with that flag.

Usage::

    python benchmarks/busy_cpu.py                       # step times, ~3 min on 2 cores
    python benchmarks/busy_cpu.py --sizes               # where threads start to pay
    python benchmarks/busy_cpu.py --run alanine-dipeptide-vacuum --budget default
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))


def _env() -> dict:
    """The children's environment: the caller's OpenMP wait policy removed (each setting
    chooses its own), and this checkout importable."""
    drop = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    return env


SINGLE = "while True:\n    pass\n"
MULTI = (
    "import torch\n"
    "a = torch.randn(600, 600)\n"
    "while True:\n"
    "    for _ in range(50):\n"
    "        a = torch.tanh(a @ a / 600)\n"
)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


class Competitor:
    """A CPU-bound process started for a condition and killed after it (by its pid)."""

    def __init__(self, kind: str):
        self.kind, self.proc = kind, None

    def __enter__(self):
        if self.kind == "single":
            self.proc = subprocess.Popen([sys.executable, "-c", SINGLE])
        elif self.kind == "multi":
            self.proc = subprocess.Popen([sys.executable, "-c", MULTI], env=_env())
        time.sleep(2.0 if self.kind == "multi" else 0.5)  # let it load torch and spin up
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


CONDITIONS = (("idle", None), ("busy-1", "single"), ("busy-N", "multi"))


def _child_cpu() -> float:
    """CPU seconds (user + system) used so far by this process's finished children: spinning
    threads show up here, a process merely waiting for a core does not."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# ------------------------------------------------------------------ step mode
def child_step(args) -> None:
    """Runs in a fresh process so that the thread count and wait policy apply from the start."""
    if args.threads == 0:  # the package's default, as the CLI applies it
        from boltzflow.hardware import set_wait_policy

        set_wait_policy()
    import torch

    from boltzflow.flows.builders import spline_coupling_flow
    from boltzflow.hardware import apply_threads, usable_cores
    from boltzflow.training.thread_tuning import ThreadTuner

    flow = spline_coupling_flow(args.dim, hidden=args.hidden, seed=0)
    threads = apply_threads(args.threads or None, flow=flow, batch_size=args.batch)
    tuner = ThreadTuner(usable_cores() if args.threads == 0 else 1)  # as boltzflow run does
    tuner.on_stage_begin(None, None)
    tuner.on_step_end(None, {"step": 0})
    opt = torch.optim.Adam(flow.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    data = torch.randn(args.batch, args.dim, generator=g)
    times, cpus, t_end = [], [], time.perf_counter() + args.max_seconds
    for i in range(args.steps + 2):
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        loss = -flow.log_prob(data).mean()
        loss.backward()
        opt.step()
        tuner.on_step_end(None, {"step": i + 1})
        if i >= 2:  # warm-up steps are not timed
            times.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        if time.perf_counter() > t_end and len(times) >= 3:
            break
    times.sort()
    cpus.sort()
    med = len(times) // 2
    print(
        json.dumps(
            {
                "threads": torch.get_num_threads() if tuner.active else threads,
                "median_ms": 1e3 * times[med],
                "cpu_ms": 1e3 * cpus[med],
            }
        )
    )


def _time_step(threads: int, args, extra=()) -> dict:
    cmd = [sys.executable, HERE, "--child-step", "--threads", str(threads)]
    cmd += ["--dim", str(args.dim), "--batch", str(args.batch), "--steps", str(args.steps)]
    cmd += ["--max-seconds", str(args.max_seconds), *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=_env()).stdout
    return json.loads(out.strip().splitlines()[-1])


def step_mode(args) -> None:
    n = _cores()
    settings = [("1 thread", 1), (f"{n} threads", n), ("default", 0)]
    print(f"NLL step, spline coupling dim={args.dim} batch={args.batch}, {n} cores, median ms")
    print("settings: N threads with OpenMP's default wait policy (torch's default), 1 thread,")
    print("and the package default as `boltzflow run` applies it (short OpenMP spin, 1 thread to")
    print("start, then the ThreadTuner's measured choice)")
    print(f"load average before: {os.getloadavg()}")
    samples: dict[str, dict[str, list[float]]] = {}
    cpu_ms: dict[str, dict[str, list[float]]] = {}
    for r in range(args.rounds):  # rounds interleave the conditions: other users' load drifts
        for cond, kind in CONDITIONS:
            with Competitor(kind):
                for label, threads in settings:
                    res = _time_step(threads, args)
                    samples.setdefault(label, {}).setdefault(cond, []).append(res["median_ms"])
                    cpu_ms.setdefault(label, {}).setdefault(cond, []).append(res["cpu_ms"])
                    if threads == 0:
                        label_threads = res["threads"]
            print(f"  round {r + 1}: measured {cond} (load {os.getloadavg()[0]:.1f})", flush=True)
    table = {k: {c: sorted(v)[len(v) // 2] for c, v in row.items()} for k, row in samples.items()}
    print(f"{'setting':>12} " + " ".join(f"{c:>10}" for c, _ in CONDITIONS) + "  busy/idle")
    for label, _ in settings:
        row = table[label]
        ratios = " ".join(f"{row[c] / row['idle']:.2f}x" for c, _ in CONDITIONS[1:])
        name = f"default({label_threads})" if label == "default" else label
        print(f"{name:>12} " + " ".join(f"{row[c]:>10.1f}" for c, _ in CONDITIONS) + f"  {ratios}")
    print("CPU ms per step (process time: spinning threads count, waiting does not)")
    for label, _ in settings:
        row = {c: sorted(v)[len(v) // 2] for c, v in cpu_ms[label].items()}
        print(f"{label:>12} " + " ".join(f"{row[c]:>10.1f}" for c, _ in CONDITIONS))
    worst = max(table["default"][c] / table["default"]["idle"] for c, _ in CONDITIONS[1:])
    verdict = "ok" if worst <= 2.0 else "ABOVE TARGET"
    print(f"default: worst busy/idle {worst:.2f}x (goal <= 2): {verdict}")


def sizes_mode(args) -> None:
    n = _cores()
    print(f"idle NLL step (median ms), dim={args.dim} batch={args.batch}, 1 vs {n} threads")
    print(f"load average before: {os.getloadavg()}")
    print(f"{'hidden':>7} {'params':>10} {'params*batch':>13} {'1 thr':>8} {f'{n} thr':>8} ratio")
    import torch  # noqa: F401  (only to count parameters)

    from boltzflow.flows.builders import spline_coupling_flow
    from boltzflow.hardware import flow_size

    for hidden in args.hidden_sizes:
        p = flow_size(spline_coupling_flow(args.dim, hidden=hidden, seed=0))
        extra = ("--hidden", str(hidden))
        one = _time_step(1, args, extra)["median_ms"]
        many = _time_step(n, args, extra)["median_ms"]
        row = f"{hidden:>7} {p:>10} {p * args.batch:>13.2e} {one:>8.1f} {many:>8.1f}"
        print(f"{row} {one / many:.2f}")


# ------------------------------------------------------------------- run mode
def run_mode(args) -> None:
    variants = [("no flags", [], None)]
    if args.threads:
        variants.append((f"--threads {args.threads}", ["--threads", str(args.threads)], None))
    if args.baseline:  # the same command from another checkout (e.g. an earlier commit)
        variants.append(("baseline", [], os.path.abspath(args.baseline)))
    print(f"boltzflow run {args.run} --budget {args.budget}: wall seconds, {_cores()} cores")
    print(f"load average before: {os.getloadavg()}")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for cond, kind in CONDITIONS:
            for label, flags, tree in variants:
                cmd = [sys.executable, "-m", "boltzflow.cli", "run", args.run]  # = `boltzflow`
                cmd += ["--budget", args.budget, *flags]
                cmd += ["--out", os.path.join(tmp, f"{cond}-{label.replace(' ', '')}")]
                env = _env()
                if tree is not None:
                    env["PYTHONPATH"] = tree
                    env.setdefault("BOLTZFLOW_CACHE", os.path.join(ROOT, ".boltzflow-cache"))
                with Competitor(kind):
                    t0, cpu0 = time.perf_counter(), _child_cpu()
                    try:
                        subprocess.run(
                            cmd,
                            check=True,
                            env=env,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            timeout=args.max_run_seconds,
                        )
                        wall = time.perf_counter() - t0
                    except subprocess.TimeoutExpired:
                        wall = float("inf")
                    cpu = _child_cpu() - cpu0  # before the competitor is reaped
                rows.setdefault(label, {})[cond] = wall
                load = os.getloadavg()[0]
                print(f"  {cond:>7} {label}: {wall:.1f} s, {cpu:.1f} CPU s (load {load:.1f})")
    for label, row in rows.items():
        ratios = ", ".join(f"{c} {row[c] / row['idle']:.2f}x" for c, _ in CONDITIONS[1:])
        print(f"{label}: idle {row['idle']:.1f} s; {ratios}")
    worst = max(rows["no flags"][c] / rows["no flags"]["idle"] for c, _ in CONDITIONS[1:])
    print(f"no flags: worst busy/idle {worst:.2f}x (goal <= 2): {'ok' if worst <= 2 else 'ABOVE'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=60)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--max-seconds", type=float, default=20.0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    p.add_argument("--sizes", action="store_true")
    p.add_argument("--hidden-sizes", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--run", default=None, help="time `boltzflow run RUN` instead")
    p.add_argument("--budget", default="default")
    p.add_argument("--baseline", default=None, help="run mode: also time this checkout's code")
    p.add_argument("--max-run-seconds", type=float, default=None, help="run mode: give up after")
    p.add_argument("--child-step", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    sys.path.insert(0, ROOT)  # the checkout this script belongs to
    if args.child_step:
        child_step(args)
    elif args.run:
        run_mode(args)
    elif args.sizes:
        sizes_mode(args)
    else:
        step_mode(args)


if __name__ == "__main__":
    main()
