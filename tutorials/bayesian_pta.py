# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Pulsar timing array posterior: emcee and boltzflow side by side
#
# A pulsar timing array (PTA) looks for a gravitational-wave background as red noise that is
# correlated between pulsars by the Hellings–Downs curve. The standard analysis marginalizes
# the Fourier coefficients of the red processes analytically (one Cholesky per likelihood
# call) and samples the power-law amplitudes and spectral indices: 2 per pulsar plus 2 for
# the background, 22 parameters for 10 pulsars. With emcee this takes hundreds of likelihood
# evaluations per effective sample.
#
# This tutorial samples it with Hamiltonian Monte Carlo with a dense mass matrix and long
# trajectories, the gradient-based route. (The `pta-sim` recipe itself uses the gradient-free
# route, flow-preconditioned SMC followed by independence-MH draws from its final flow, which
# costs fewer plain-likelihood evaluations per effective sample than either emcee or HMC
# once a gradient is counted at its price: `systems/pta-sim/README.md` has the table.)
# The posterior is a curved ridge, 45–75× narrower locally than its global spread: emcee's
# stretch move and short HMC trajectories both crawl along it by a random walk, whereas 32
# leapfrog steps, with the step size and the mass matrix adapted in warm-up from the chains'
# own history, cross it in a few trajectories.
# A likelihood evaluation with its gradient counts as one evaluation here (it costs about six
# plain evaluations of wall time for this likelihood). After the chains have finished, a
# normalizing flow is trained on their draws and gives the evidence by importance sampling;
# that cannot bias the chains, and the importance weights keep the evidence estimate
# unbiased whatever the flow learned.
#
# With `BOLTZFLOW_SMOKE=1` the tutorial runs a 3-pulsar array (8 parameters) in under a
# minute; without it, the 10-pulsar array of `systems/pta-sim` in about 50 minutes (35 of
# them for emcee).

# %%
import math
import os
import time

import emcee
import matplotlib.pyplot as plt
import numpy as np
import torch

from boltzflow.energies.astro_pta import PTAPosterior
from boltzflow.flows.builders import spline_coupling_flow
from boltzflow.sampling import diagnostics
from boltzflow.sampling.emcee_move import emcee_sampler
from boltzflow.sampling.hybrid import Evidence, GlobalMoves, LocalMoves, Schedule, hybrid

torch.set_num_threads(1)
SMOKE = os.environ.get("BOLTZFLOW_SMOKE") == "1"

if SMOKE:
    post = PTAPosterior(seed=0, n_pulsars=3, n_toas=60, n_freq=5)
    EMCEE = dict(n_samples=32 * 1500, walkers=32)
    N_HMC = 8 * 300
    EVIDENCE, EVIDENCE_LR = Evidence(samples=4000, train_steps=300), 1e-3
    FLOW = dict(num_layers=4, hidden=32)
else:
    post = PTAPosterior(seed=0)
    EMCEE = dict(n_samples=46 * 36000, walkers=46, burn_fraction=0.1)  # 40,000 steps, ~35 min
    N_HMC = 8 * 500
    EVIDENCE, EVIDENCE_LR = Evidence(samples=10000, train_steps=300), 3e-4
    FLOW = dict(num_layers=6, hidden=64)
print(f"{post.dim} parameters:", ", ".join(post.names))

# %% [markdown]
# ## emcee with the stretch move
# The walkers start from prior draws; the first part of the run (half at smoke size, a fifth
# at full size) is discarded as burn-in.
# Every likelihood call, burn-in included, is counted.

# %%
t0 = time.perf_counter()
res_emcee = emcee_sampler(None, post, seed=0, **EMCEE)
print(f"emcee: {res_emcee.energy_evaluations} evaluations, {time.perf_counter() - t0:.0f} s")

# %% [markdown]
# ## boltzflow: dense-metric HMC, then a flow for the evidence
# `hybrid(local=LocalMoves(kind="hmc", metric="dense"))` runs batched chains from prior draws:
# 100 Adam steps on the energy leave the prior's tails, then four warm-up rounds of 60
# trajectories adapt each chain's step size and re-estimate the mass matrix from the round's
# draws (burn-in never enters it). Rounds of 30 trajectories are too few here: the 8-parameter
# smoke array then ends with R-hat 1.06–1.22 over three seeds, against 1.03–1.04 with 60.
# `repeats=(1, 0)` switches the flow's independence moves off; `Evidence(train_steps=...)`
# trains the flow on the finished chains.

# %%
flow = spline_coupling_flow(post, seed=0, **FLOW).double()
t0 = time.perf_counter()
res_bf = hybrid(
    flow,
    post,
    n_samples=N_HMC,
    seed=0,
    schedule=Schedule(chains=8, warmup_rounds=4, init_steps=100, repeats=(1, 0)),
    local=LocalMoves(kind="hmc", metric="dense", n_leapfrog=32, jitter=0.5, steps=60),
    global_moves=GlobalMoves(steps=0, train_steps=0, lr=EVIDENCE_LR),
    evidence=EVIDENCE,
)
print(f"boltzflow: {res_bf.energy_evaluations} evaluations, {time.perf_counter() - t0:.0f} s")
print(f"HMC acceptance {res_bf.info['local_acceptance']:.2f}, R-hat {res_bf.info['rhat_max']:.3f}")

# %% [markdown]
# ## Likelihood evaluations per effective sample
# Effective sample size: the smallest bulk ESS over the parameters (arviz, rank-normalized,
# chains or walkers as chains). Walkers of one ensemble are not independent chains, so for
# emcee the walkers × steps / τ figure (emcee's own autocorrelation time) is computed too,
# and the more favourable of the two is used. A run shorter than about 50 τ underestimates
# τ and flatters emcee: at 15,000 steps its τ estimate was 700 steps, at 40,000 steps 1,075.
# The evidence draws are not counted: they are not needed for the samples. An evaluation with
# its gradient counts as one here; on the 22-parameter array a gradient costs about 7.6 plain
# evaluations (`python benchmarks/bayes.py --only pta` measures the ratio and charges it), so
# counted at cost HMC's advantage over emcee there is about 1.6x, not the 12x of this count
# (`systems/pta-sim/README.md`).


# %%
def theta_chains(res):
    x = res.x.reshape(-1, post.dim)
    with torch.no_grad():
        return post.constrain(x).theta.reshape(*res.x.shape[:2], -1).numpy()


n_evidence = EVIDENCE.samples
cost = {}
for name, res, n in [("emcee", res_emcee, 0), ("boltzflow", res_bf, n_evidence)]:
    ess = diagnostics.ess(theta_chains(res)).min()
    cost[name] = (res.energy_evaluations - n) / ess
    print(
        f"{name:10s} min bulk ESS {ess:8.0f}   evaluations per effective sample {cost[name]:8.1f}"
    )
kept = res_emcee.x.transpose(0, 1).numpy()  # [steps, walkers, dim], after burn-in
tau = emcee.autocorr.integrated_time(kept, quiet=True).max()
cost_tau = res_emcee.energy_evaluations / (kept.shape[0] * kept.shape[1] / tau)
print(f"emcee from tau = {tau:.0f} steps: {cost_tau:.1f} evaluations per effective sample")
cost["emcee"] = min(cost["emcee"], cost_tau)
ratio = cost["emcee"] / cost["boltzflow"]
print(f"boltzflow needs {ratio:.1f}x fewer likelihood evaluations per effective sample")

# %% [markdown]
# ## Do the posteriors agree?
# For every parameter, the difference of the two posterior means in units of their combined
# Monte Carlo standard error.

# %%
th_e, th_b = theta_chains(res_emcee), theta_chains(res_bf)
diff = np.abs(th_e.mean((0, 1)) - th_b.mean((0, 1)))
z = diff / np.hypot(diagnostics.mcse(th_e, "bulk"), diagnostics.mcse(th_b, "bulk"))
for name, m_e, m_b, zi in zip(post.names, th_e.mean((0, 1)), th_b.mean((0, 1)), z, strict=True):
    print(f"{name:12s} emcee {m_e:8.3f}  boltzflow {m_b:8.3f}  |z| = {zi:.2f}")

fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
for ax, i in zip(axes, (-2, -1), strict=True):
    bins = np.linspace(
        min(th_e[..., i].min(), th_b[..., i].min()), max(th_e[..., i].max(), th_b[..., i].max()), 40
    )
    ax.hist(th_e[..., i].ravel(), bins, density=True, alpha=0.5, label="emcee")
    ax.hist(th_b[..., i].ravel(), bins, density=True, histtype="step", lw=2, label="boltzflow")
    ax.axvline(post.injected[post.names[i]], color="k", ls="--", label="injected")
    ax.set_xlabel(post.names[i])
axes[0].legend()
fig.tight_layout()

# %% [markdown]
# ## Evidence
# Importance sampling with the flow gives log Z with a bootstrap standard error; the
# PSIS k̂ diagnostic (arviz) flags an unreliable estimate above 0.7. k̂ sees only the
# proposal's tails: the coverage check scores held-out chain draws under the flow and flags
# an evidence whose proposal misses posterior mass (`boltzflow.sampling.coverage`).

# %%
ev = res_bf.info["evidence"]
log_z, k_hat = ev["log_z"], ev["pareto_k"]
print(f"log Z = {log_z['mean']:.3f} ± {log_z['stderr']:.3f}  (PSIS k̂ = {k_hat:.2f})")
print(f"importance ESS fraction {ev['ess_fraction']:.2f}")
print(f"coverage {ev['coverage']:.2f}, flagged: {ev['flagged']}")

# %% [markdown]
# ## Checks

# %%
assert np.all(z < 4.0), z  # every marginal mean agrees within 4 combined MCSE (Bonferroni)
assert math.isfinite(ev["log_z"]["mean"]) and 0 < ev["log_z"]["stderr"] < 0.5
assert res_bf.info["rhat_max"] < 1.1 and res_bf.info["ess_bulk_min"] > 100, res_bf.info
# The efficiency claim is for the 22-parameter array: on the 3-pulsar smoke array emcee's
# stretch move is competitive (its posterior is dominated by upper limits, not by ridges).
if not SMOKE:
    assert res_bf.info["rhat_max"] < 1.01 and ratio > 10.0, (res_bf.info, ratio)
