# %% [markdown]
# # Smooth flows: force matching and MD on the learned potential
#
# A normalizing flow defines a potential, `u_q(x) = -log q(x)` (in kT), and forces
# `∇ log q(x)`. Köhler, Krämer & Noé (2021, "Smooth Normalizing Flows") point out two things
# this makes possible when the flow is C∞:
#
# 1. **Force matching**: MD frames come with forces; fitting `∇ log q` to them adds a lot of
#    information per frame beyond the positions that maximum likelihood uses.
# 2. **The flow as an MD potential**: velocity Verlet conserves energy only if the forces are
#    smooth. A spline flow is only C¹ (its forces jump at knots), a smooth flow is C∞.
#
# We use the 2-D double well `u = -0.5 x1 - 6 x1² + x1⁴ + x2²/2` (two wells, a 9 kT barrier,
# exact ΔF between the wells). Its exact samples with their forces play the role of MD frames.
#
# Set `BOLTZFLOW_SMOKE=1` to run at a tiny size (as CI does).

# %%
import os

import torch

from boltzflow.dynamics import (
    FlowPotential,
    energy_drift,
    langevin,
    maxwell_boltzmann,
    velocity_verlet,
)
from boltzflow.energies import DoubleWell2D
from boltzflow.flows.smooth_coupling import smooth_coupling_flow
from boltzflow.sampling.reweighting import free_energy_difference, log_weights, reweight
from boltzflow.training import train
from boltzflow.training.force_matching import force_rmse, stack_positions_forces

SMOKE = os.environ.get("BOLTZFLOW_SMOKE") == "1"
torch.set_num_threads(1 if SMOKE else max(1, torch.get_num_threads()))

target = DoubleWell2D()
frames = target.sample(6000, generator=torch.Generator().manual_seed(0))
forces = target.force(frames)  # kT per unit length; from MD these come with every frame
train_data = stack_positions_forces(frames[:5000], forces[:5000])  # [n, 2, 2]
held_x, held_f = frames[5000:], forces[5000:]
print(f"{len(train_data)} training frames, {len(held_x)} held-out frames")

# %% [markdown]
# ## Train: NLL alone vs NLL + force matching
# The force-matching loss is the mean squared force error per coordinate,
# `mean |∇ log q(x) - F(x)|² / d`. Its gradient needs the derivative of a force with respect
# to the flow parameters (a double backward); the smooth flow provides it, including through
# its root-finding inverse. `fast="density"` (default) makes `log q` closed-form.

# %%
steps = 100 if SMOKE else 1500
common = dict(steps=steps, batch_size=256, lr=3e-3)


def make_flow():
    return smooth_coupling_flow(
        target, num_layers=4, hidden=32 if SMOKE else 64, num_components=6, seed=0
    ).double()


flows = {}
for name, stage in {
    "nll": dict(common, loss="nll", data=train_data[:, 0]),
    "nll+fm": dict(common, loss="nll_force_matching", data=train_data, weight_force=0.2),
}.items():
    flows[name] = make_flow()
    train(flows[name], target, [stage], seed=0, progress=False)
    print(f"{name:7s} held-out force RMSE {force_rmse(flows[name], held_x, held_f):.3f} kT")

rmse = {name: force_rmse(flow, held_x, held_f) for name, flow in flows.items()}

# %% [markdown]
# ## Reweight
# Importance weights `log w = -u(x) - log q(x)` correct the flow exactly; the free energy
# between the wells (`x1 < 0` vs `x1 ≥ 0`) is compared with its exact value.

# %%
flow = flows["nll+fm"]
with torch.no_grad():
    s = flow.sample(4000 if SMOKE else 50_000, generator=torch.Generator().manual_seed(1))
lw = log_weights(target, s.x, s.log_q)
r = reweight(lw, seed=0)
df = free_energy_difference(s.x[:, 0] < 0, s.x[:, 0] >= 0, lw, seed=0)
df_exact = target.exact_free_energy("left_vs_right")
print(f"ESS fraction {r.ess_fraction:.3f}")
print(f"ΔF = {df.mean:.3f} ± {df.stderr:.3f} kT (exact {df_exact:.3f})")

# %% [markdown]
# ## MD on the learned potential
# NVE velocity Verlet on `u_q`: with smooth forces the total energy oscillates at O(dt²) and
# does not drift (`benchmarks/smooth.py` compares with a spline flow). Langevin dynamics
# (BAOAB) on `u_q` samples `q` itself, so its mean potential energy must equal the flow's own
# `E_q[-log q]`, estimated from flow samples.

# %%
potential = FlowPotential(flow)
x0 = s.x[:32].detach()
n_md = 400 if SMOKE else 10_000
nve = velocity_verlet(
    potential,
    x0,
    maxwell_boltzmann(x0, generator=torch.Generator().manual_seed(2)),
    dt=0.005,
    n_steps=n_md,
    record_every=10,
)
drift = energy_drift(nve, per_steps=10_000)
print(f"NVE drift {drift.rms:.2e} kT per 1e4 steps, fluctuation {drift.fluctuation:.2e} kT")

chains = s.x[:1000].detach()  # independent chains started in q; the last frames are used
md = langevin(
    potential,
    chains,
    dt=0.02,
    n_steps=200,
    friction=5.0,
    generator=torch.Generator().manual_seed(3),
    record_every=200,
)
u_md, u_flow = md.potential[-1], -s.log_q.detach()
se = (u_md.var() / len(u_md) + u_flow.var() / len(u_flow)).sqrt()
print(f"<u_q> Langevin {u_md.mean():.3f}, flow samples {u_flow.mean():.3f} (± {se:.3f}) kT")

# %% [markdown]
# ## Checks

# %%
assert rmse["nll+fm"] < (0.8 if SMOKE else 0.5) * rmse["nll"], rmse
assert r.ess_fraction > (0.5 if SMOKE else 0.9)
assert abs(df.mean - df_exact) < 4 * df.stderr + 0.02
assert drift.n_nonfinite == 0 and drift.rms < 1e-2
assert abs(u_md.mean() - u_flow.mean()) < 4 * se
