"""Report figures: every one is written without pyplot and without touching the backend."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

# Writes every report figure boltzflow makes (the samples files for the posterior figures are
# written beforehand); prints the backend before/after and whether pyplot got imported.
# rcParams is read raw (dict.__getitem__) because reading "backend" the normal way resolves an
# automatic backend, which imports pyplot by itself.
SCRIPT = textwrap.dedent(
    """
    import json, math, sys
    from pathlib import Path

    import matplotlib

    def raw_backend():
        return repr(dict.__getitem__(matplotlib.rcParams, "backend"))

    before = raw_backend()
    import torch

    import boltzflow
    from boltzflow.reporting import figures as plots
    from boltzflow.reporting.figures_bayes import posterior_figures
    from boltzflow.reporting.figures_molecular import plot_ramachandran

    out = Path(sys.argv[1])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 3, generator=g, dtype=torch.float64)
    lw = -0.5 * x[:, 0] ** 2
    plots.plot_training({"step": list(range(20)), "loss": [1.0 / (i + 1) for i in range(20)],
                         "ess_step": [0, 10], "ess_fraction": [0.2, 0.6]}, out / "training.png")
    plots.plot_log_weights(lw, out / "log_weights.png")
    plots.plot_marginals(x, lw, out / "marginals.png", reference=x)
    plots.plot_samples_2d(x, lw, out / "samples_2d.png", centers=x[:3])
    plots.plot_histogram(out / "magnetization.png", "m", x[:, 0], lw)
    plots.plot_histogram(out / "charge.png", "Q", x[:, 1].round(), lw, discrete=True)
    angles = (math.pi * torch.tanh(x[:, 0]), math.pi * torch.tanh(x[:, 1]))
    plot_ramachandran(out / "ramachandran.png", angles, lw, md=angles)
    for kind in ("mcmc", "is"):
        print(kind, posterior_figures(out / kind, ["a", "b", "c"]), file=sys.stderr)
    state = {"before": before, "after_figures": raw_backend(),
             "pyplot": "matplotlib.pyplot" in sys.modules}
    # writing samples.nc imports arviz, which imports pyplot: the backend must still be kept
    from boltzflow.reporting.idata import read_samples
    read_samples(out / "mcmc" / "samples.nc")
    state["after_arviz"] = raw_backend()
    state["backend"] = matplotlib.get_backend()
    print(json.dumps(state))
    """
)


def _write_samples(folder, mcmc: bool) -> None:
    """``samples.nc`` with 2 chains x 200 draws of three named scalars (MCMC or importance)."""
    import torch

    from boltzflow.reporting.idata import to_inference_data, write_samples
    from boltzflow.sampling.runners import SamplingResult

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 200, 3, generator=g, dtype=torch.float64)
    res = SamplingResult(
        x=x,
        log_weight=-0.5 * x[..., 0] ** 2,
        energy=0.5 * (x**2).sum(-1),
        accepted=(torch.rand(2, 200, generator=g) < 0.5) if mcmc else None,
        method="mcmc" if mcmc else "importance",
        energy_evaluations=400,
        wall_seconds=0.0,
        info={},
    )
    folder.mkdir()
    write_samples(to_inference_data(res, names=["a", "b", "c"]), folder / "samples.nc")


FIGURES = [
    "training.png",
    "log_weights.png",
    "marginals.png",
    "samples_2d.png",
    "magnetization.png",
    "charge.png",
    "ramachandran.png",
    "mcmc/pair.png",
    "mcmc/trace.png",
    "is/pair.png",
]


@pytest.mark.parametrize("backend", [None, "svg"])
def test_report_figures_leave_the_backend_alone(tmp_path, backend):
    _write_samples(tmp_path / "mcmc", mcmc=True)
    _write_samples(tmp_path / "is", mcmc=False)
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    if backend:
        env["MPLBACKEND"] = backend  # a user's choice, e.g. a notebook's inline backend
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    state = json.loads(proc.stdout.strip().splitlines()[-1])
    assert state["pyplot"] is False
    assert state["after_figures"] == state["before"]
    assert state["after_arviz"] == state["before"]
    if backend:
        assert state["backend"] == backend
    for name in FIGURES:
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
    assert not (tmp_path / "is" / "trace.png").exists()  # importance samples: no trace plot
