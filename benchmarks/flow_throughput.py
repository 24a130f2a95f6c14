"""Sampling throughput: boltzflow's default spline flow vs the same flow in bare nflows.

For each dimension, ``spline_coupling_flow(dim, seed=0)`` is timed through ``Flow.sample(n)``
(samples with their log-density) and compared with an ``nflows.flows.Flow`` built from the
identical transform stack (``boltzflow.flows.nflows_adapter.to_nflows``) and nflows'
``StandardNormal``, timed through ``sample_and_log_prob(n)``. Both run in this process,
interleaved, with the median over repeats; the ratio boltzflow/nflows should be ≥ 0.9.

Modes: ``no_grad`` (drawing samples) and ``grad`` (one reverse-KL-style step:
sample, ``log_q.mean()``, backward).

Usage: ``python benchmarks/flow_throughput.py [--dims 2 16] [--batch 4096] [--repeats 15]``
``[--device cuda]`` (about a minute on one CPU thread).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from nflows.distributions.normal import StandardNormal as NflowsNormal
from nflows.flows import Flow as NflowsFlow

from boltzflow.flows.builders import spline_coupling_flow
from boltzflow.flows.nflows_adapter import to_nflows


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, grad: bool, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    if grad:
        fn().mean().backward()
    else:
        with torch.no_grad():
            fn()
    _sync(device)
    return time.perf_counter() - start


def compare(dim: int, batch: int, repeats: int, grad: bool, device) -> tuple[float, float]:
    flow = spline_coupling_flow(dim, seed=0).to(device)
    bare = NflowsFlow(to_nflows(flow.transform), NflowsNormal([dim])).to(device)
    with torch.no_grad():  # same distribution, or the comparison is meaningless
        x = flow.sample(256, generator=torch.Generator().manual_seed(0)).x
        err = (flow.log_prob(x) - bare.log_prob(x)).abs().max().item()
    if err > 1e-3:
        raise RuntimeError(f"nflows stack disagrees with the boltzflow flow ({err:.2g})")

    def ours():
        return flow.sample(batch).log_q

    def theirs():
        return bare.sample_and_log_prob(batch)[1]

    times: dict[str, list[float]] = {"boltzflow": [], "nflows": []}
    pair = [("boltzflow", ours), ("nflows", theirs)]
    for _, fn in pair:  # warm-up
        _timed(fn, grad, device)
    for r in range(repeats):
        for name, fn in pair if r % 2 == 0 else pair[::-1]:
            flow.zero_grad(set_to_none=True)
            times[name].append(_timed(fn, grad, device))
    return batch / statistics.median(times["boltzflow"]), batch / statistics.median(times["nflows"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 16])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    print(
        f"device={device} batch={args.batch} repeats={args.repeats} threads={args.threads} (median)"
    )
    print(f"{'dim':>4} {'mode':>8} {'boltzflow/s':>12} {'nflows/s':>12} {'ratio':>6}")
    ratios = []
    for dim in args.dims:
        for grad in (False, True):
            ours, theirs = compare(dim, args.batch, args.repeats, grad, device)
            ratios.append(ours / theirs)
            mode = "grad" if grad else "no_grad"
            print(f"{dim:>4} {mode:>8} {ours:>12.0f} {theirs:>12.0f} {ours / theirs:>6.3f}")
    verdict = "ok" if min(ratios) >= 0.9 else "BELOW TARGET"
    print(f"min ratio {min(ratios):.3f} (target >= 0.9): {verdict}")


if __name__ == "__main__":
    main()
