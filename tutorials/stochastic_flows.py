# %% [markdown]
# # Stochastic normalizing flows on the double well: plain flow vs flow + Metropolis blocks
#
# A stochastic normalizing flow (Wu, Köhler & Noé 2020) puts sampling blocks between the
# invertible layers of a flow. Each block runs a few Metropolis steps on an energy interpolated
# between the prior and the target, and returns a *path* log-weight increment instead of a
# log-determinant. The weights $w = e^{-u(x) - \log q_\text{path}}$ stay exact: their mean is
# $Z$, with no integral over the blocks' noise.
#
# Here we train a RealNVP flow with and without blocks on the 2-D double well
# $u = -0.5\,x_1 - 6\,x_1^2 + x_1^4 + \tfrac12 x_2^2$, from the energy alone, and compare the
# reweighted free-energy profile along $x_1$ with the exact one.
#
# Set `BOLTZFLOW_SMOKE=1` to run at a tiny size (as CI does).

# %%
import math
import os

import numpy as np
import torch

from boltzflow.energies.double_well import DoubleWell2D
from boltzflow.flows.snf import add_stochastic_blocks, realnvp_flow
from boltzflow.sampling.reweighting import free_energy_difference, reweight
from boltzflow.training import train
from boltzflow.weights import importance_log_weights

SMOKE = os.environ.get("BOLTZFLOW_SMOKE") == "1"
torch.set_num_threads(1)
target = DoubleWell2D()
print(f"exact log Z = {target.log_z:.4f}")

# %% [markdown]
# ## Two flows from the same seed
# The SNF has three Metropolis blocks (λ = 1/3, 2/3, 1), placed after every second coupling;
# `flow.sample(n)` now returns a `PathSample`, and `flow.log_prob(x)` refuses: only path weights
# exist.

# %%
plain = realnvp_flow(target, num_layers=6, hidden=32, seed=0)
snf = add_stochastic_blocks(
    realnvp_flow(target, num_layers=6, hidden=32, seed=0),
    target,
    kind="metropolis",
    count=3,
    steps=3 if SMOKE else 10,
    step_size=0.25,
)
print(snf.transform)

# %% [markdown]
# ## Training: reverse KL between the path measures, first at 3× the temperature
# For the plain flow `snf_reverse_kl` is the ordinary reverse KL.

# %%
steps = (30, 30) if SMOKE else (300, 500)
for flow in (plain, snf):
    stages = [
        {"loss": "snf_reverse_kl", "steps": steps[0], "batch_size": 256, "lr": 1e-3},
        {"loss": "snf_reverse_kl", "steps": steps[1], "batch_size": 256, "lr": 3e-4},
    ]
    hot = target.at_temperature(3.0)
    train(flow, hot, stages[:1], seed=0, progress=False)
    result = train(flow, target, stages[1:], seed=1, progress=False)
    print(f"{'SNF' if flow is snf else 'plain'}: {result.energy_evaluations} energy evaluations")

# %% [markdown]
# ## Path weights, log Z and the free-energy profile

# %%
n = 4000 if SMOKE else 100_000
edges = np.linspace(-2.25, 2.25, 31)
centres = 0.5 * (edges[1:] + edges[:-1])
u1 = target.a * centres + target.b * centres**2 + target.c * centres**4
results = {}
for name, flow in (("plain", plain), ("SNF", snf)):
    flow.eval()
    with torch.no_grad():
        s = flow.sample(n, generator=torch.Generator().manual_seed(7))
        log_w = importance_log_weights(target.energy(s.x), s.log_q)
    rw = reweight(log_w.double(), seed=0)
    dF = free_energy_difference(s.x[:, 0] < 0, s.x[:, 0] >= 0, log_w, seed=0)
    w = torch.exp(log_w - log_w.max()).numpy()
    hist, _ = np.histogram(s.x[:, 0].numpy(), edges, weights=w)
    with np.errstate(divide="ignore"):
        profile = -np.log(hist / np.diff(edges))
    ok = np.isfinite(profile)
    profile = profile - (profile[ok] - u1[ok]).mean()
    rmse = float(np.sqrt(np.mean((profile[ok] - u1[ok]) ** 2)))
    results[name] = (rw, dF, rmse, s.is_path)
    print(
        f"{name:5s}: path={s.is_path}, ESS {rw.ess_fraction:.2f}, "
        f"log Z {rw.log_z.mean:.3f} ± {rw.log_z.stderr:.3f}, "
        f"ΔF {dF.mean:.2f} ± {dF.stderr:.2f} kT, "
        f"profile RMSE {rmse:.2f} kT over {ok.sum()} bins"
    )
print(f"exact: log Z {target.log_z:.3f}, ΔF {target.exact_free_energy('left_vs_right'):.2f} kT")

# %% [markdown]
# ## Figure (skipped at smoke size)

# %%
if not SMOKE:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(centres, u1 - u1.min(), "k-", label="exact")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("free energy (kT)")
    ax.legend()
    fig.savefig("stochastic_flows_profile.png", dpi=120)

# %% [markdown]
# ## Checks: both estimates agree with the exact values within their errors

# %%
exact_dF = target.exact_free_energy("left_vs_right")
for name, (rw, dF, rmse, is_path) in results.items():
    assert is_path == (name == "SNF")
    assert abs(rw.log_z.mean - target.log_z) < 5 * rw.log_z.stderr + 0.02, name
    assert abs(dF.mean - exact_dF) < 5 * dF.stderr + 0.05, name
    assert math.isfinite(rmse)
