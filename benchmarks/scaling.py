"""Cost vs size: time and memory per training step and per 1,000 samples as the work grows.

Families (each built from its catalogue recipe at the default budget, with the size changed):

* `lattice`: phi^4 (`phi4-L8` recipe) at L = 8, 16, 32; size = sites L^2; reverse-KL step;
* `pta`: the simulated pulsar timing array (`pta-sim`) with 5, 10, 20, 40 pulsars;
  size = pulsars; reverse-KL step at batch 256 (the recipe trains inside its sampler);
* `alanine`: alanine dipeptide in vacuum (`alanine-dipeptide-vacuum`), its NLL step on MD
  frames; one size (the catalogue has no larger peptide yet).

For each point: the median training-step time at the recipe's batch size, the time per 1,000
importance samples (flow draws plus target energies, no gradients), and memory: on CUDA the
peak allocated during the step; on a CPU the bytes autograd saves for the backward pass (the
step's activation memory). Per family it prints the growth exponent b of time ∝ size^b
(least squares on log-log). `--ddp` adds the data-parallel speed-up of the lattice L = 16
step from 1 to 2 processes (gloo) at the same global batch.

Usage::

    python benchmarks/scaling.py [--device cuda] [--repeats 5] [--ddp]
    python benchmarks/scaling.py --smallest     # one size per family, seconds (CI)
    python benchmarks/scaling.py --families pta --sizes 40 --repeats 1   # one point
    python benchmarks/scaling.py --batch-sweep 256 4096 [--compile]   # per flow family
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

FAMILIES = {
    "lattice": ("phi4-L8", "L", [8, 16, 32], lambda L: L * L),
    "pta": ("pta-sim", "n_pulsars", [5, 10, 20, 40], lambda n: n),
    "alanine": ("alanine-dipeptide-vacuum", None, [None], lambda _: 1),
}


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(system: str, key, value, device, seed: int = 0):
    """Target, flow (on `device`) and the first training stage of a resized recipe."""
    from boltzflow.runs.pipeline import build_flow, build_target
    from boltzflow.runs.recipes import load_recipe

    recipe = load_recipe(system, "default")
    if key == "n_pulsars":  # more pulsars than the 10 injected: repeat their red noise
        from boltzflow.energies.astro_pta import DEFAULT_RED_NOISE, simulate_pta

        red = list(DEFAULT_RED_NOISE) * (1 + value // len(DEFAULT_RED_NOISE))
        recipe.target["data"] = simulate_pta(0, value, red_noise=red[:value])
    elif key is not None:
        recipe.target[key] = value
    target = build_target(recipe, device=device, system_dir=recipe.folder)
    dtype = getattr(torch, recipe.system.get("dtype", "float32"))
    flow = build_flow(recipe, target, seed).to(device=device, dtype=dtype)
    from boltzflow.runs.processes import batch_size_for

    stage = dict(recipe.stages[0]) if recipe.stages else {"loss": "reverse_kl"}
    stage["batch_size"] = batch_size_for(stage.get("batch_size", 256), device.type)
    return target, flow, stage, dtype


def step_fn(target, flow, stage, dtype, device, generator, compile=False):
    """One optimizer step of the stage's loss (NLL on the target's data, or reverse KL)."""
    from boltzflow.runs.registry import LOSSES, resolve

    loss_fn = resolve(LOSSES, stage["loss"], "loss")
    loss_fn = torch.compile(loss_fn) if compile else loss_fn
    batch = int(stage["batch_size"])
    data = None
    if stage.get("data") not in (None, "exact"):
        data = target.training_data(stage["data"]).to(device=device, dtype=dtype)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        if data is not None:
            idx = torch.randint(len(data), (batch,), device=device, generator=generator)
            out = loss_fn(flow, target, data[idx], generator=generator)
        elif stage.get("data") == "exact":
            x = target.sample(batch, generator=generator).to(dtype)
            out = loss_fn(flow, target, x, generator=generator)
        else:
            out = loss_fn(flow, target, batch, generator=generator)
        out.loss.backward()
        opt.step()

    return step


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for the backward pass while `fn` runs."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def timed(fn, repeats: int, device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(system, key, value, device, repeats: int) -> dict:
    from boltzflow.rng import make_generator
    from boltzflow.weights import log_weights

    target, flow, stage, dtype = build(system, key, value, device)
    g = make_generator(0, device)
    step = step_fn(target, flow, stage, dtype, device, g)
    t_step = timed(step, repeats, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        step()
        mem = torch.cuda.max_memory_allocated(device)
    else:
        mem = saved_bytes(step)

    def draw():
        with torch.no_grad():
            s = flow.sample(1000, generator=g)
            log_weights(target, s.x, s.log_q)

    t_draw = timed(draw, max(1, repeats // 2), device)
    target.close()
    return {"batch": int(stage["batch_size"]), "step": t_step, "draw": t_draw, "mem": mem}


def exponent(sizes, times) -> float:
    """Least-squares slope of log(time) on log(size)."""
    x = [math.log(s) for s in sizes]
    y = [math.log(t) for t in times]
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxx = sum((a - mx) ** 2 for a in x)
    return sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sxx if sxx else math.nan


def ddp_worker(path: str, steps: int) -> None:
    """Time `steps` reverse-KL steps of the L = 16 lattice flow in a process group."""
    from boltzflow.training.distributed import world
    from boltzflow.training.trainer import Trainer

    torch.set_num_threads(1)
    target, flow, stage, _ = build("phi4-L8", "L", 16, torch.device("cpu"))
    spec = {"loss": "reverse_kl", "steps": steps, "batch_size": 256, "lr": 1e-4}
    t0 = time.perf_counter()
    Trainer(flow, target, [spec], progress=False).fit()
    if world()[0] == 0:
        with open(path, "w") as fh:
            fh.write(str(time.perf_counter() - t0))


def ddp_speedup(steps: int) -> tuple[float, float]:
    from boltzflow.training.distributed import launch

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for nproc in (1, 2):
            path = os.path.join(tmp, f"t{nproc}")
            launch(ddp_worker, nproc, path=path, steps=steps)
            out.append(float(open(path).read()))
    return out[0], out[1]


SWEEP = {
    "spline (gmm40)": ("gmm40", None, None),
    "lattice (phi4, L=8)": ("phi4-L8", "L", 8),
    "pta (10 pulsars)": ("pta-sim", "n_pulsars", 10),
    "internal coords (alanine)": ("alanine-dipeptide-vacuum", None, None),
}


def batch_sweep(device, batches, repeats: int, compile: bool, only: str = "") -> None:
    """Step time and time per sample vs batch size, per flow family (eager or compiled)."""
    from boltzflow.rng import make_generator

    mode = "torch.compile" if compile else "eager"
    print(f"training step vs batch ({mode}, {device}): ms per step, µs per sample")
    for label, (system, key, value) in SWEEP.items():
        if only not in label:
            continue
        cells = []
        for b in batches:
            target, flow, stage, dtype = build(system, key, value, device)
            stage["batch_size"] = b
            g = make_generator(0, device)
            step = step_fn(target, flow, stage, dtype, device, g, compile=compile)
            if compile:
                step()  # compilation is not timed
            t = timed(step, repeats, device)
            cells.append(f"{b}: {1e3 * t:.1f} ms {1e6 * t / b:.1f} µs")
            target.close()
        print(f"  {label:<26} " + " | ".join(cells), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--smallest", action="store_true", help="one size per family (no alanine)")
    p.add_argument("--sizes", type=int, nargs="+", help="only these sizes (e.g. --sizes 40)")
    p.add_argument("--ddp", action="store_true", help="also measure the 1 → 2 process speed-up")
    p.add_argument("--ddp-steps", type=int, default=30)
    p.add_argument("--batch-sweep", type=int, nargs="*", help="step time vs these batch sizes")
    p.add_argument("--compile", action="store_true", help="batch sweep with torch.compile")
    p.add_argument("--sweep-only", default="", help="batch sweep: families whose label has this")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # the package's rule for flows of these sizes
    print(f"device={device} threads={torch.get_num_threads()} load={os.getloadavg()[0]:.1f}")
    if args.batch_sweep is not None:
        batches = args.batch_sweep or [256, 1024, 4096]
        batch_sweep(device, batches, args.repeats, args.compile, args.sweep_only)
        return
    mem_label = "peak MB" if device.type == "cuda" else "saved MB"
    print(
        f"{'family':>8} {'size':>6} {'batch':>6} {'step ms':>9} {'ms/1k draws':>12} {mem_label:>9}"
    )
    for family in args.families:
        system, key, values, size_of = FAMILIES[family]
        if args.smallest:
            if family == "alanine":
                continue  # needs 10 ns of MD on first use
            values = values[:1]
        if args.sizes and key is not None:
            values = [v for v in args.sizes if v is not None]
        rows = []
        for v in values:
            r = measure(system, key, v, device, args.repeats)
            rows.append((size_of(v), r))
            print(
                f"{family:>8} {str(v or '-'):>6} {r['batch']:>6} {1e3 * r['step']:>9.1f} "
                f"{1e3 * r['draw']:>12.1f} {r['mem'] / 2**20:>9.1f}",
                flush=True,
            )
        if len(rows) > 1:
            sizes = [s for s, _ in rows]
            b_step = exponent(sizes, [r["step"] for _, r in rows])
            b_draw = exponent(sizes, [r["draw"] for _, r in rows])
            print(f"{family:>8} growth exponent: step {b_step:.2f}, draws {b_draw:.2f}")
    if args.ddp:
        t1, t2 = ddp_speedup(args.ddp_steps)
        print(
            f"DDP lattice L=16, {args.ddp_steps} steps at global batch 256: 1 process {t1:.1f} s,"
        )
        print(f"  2 processes {t2:.1f} s, speed-up {t1 / t2:.2f}x (gloo, CPU)")


if __name__ == "__main__":
    main()
