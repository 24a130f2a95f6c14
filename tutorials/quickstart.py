# %% [markdown]
# # Quick start: log Z of the 32-D many-well
#
# The many-well has 16 independent double wells, so 65,536 modes, and an exact normalizer
# `log Z = 16 log Z_2D`. We train a spline coupling flow on it, reweight its samples, and check
# that the importance estimate of log Z agrees with the exact value within its error.
#
# Set `BOLTZFLOW_SMOKE=1` to run at a tiny size (as CI does).

# %%
import os

import torch

from boltzflow.energies import ManyWell
from boltzflow.flows.builders import spline_coupling_flow
from boltzflow.reporting.figures import plot_marginals
from boltzflow.sampling.reweighting import expectation, log_weights, reweight
from boltzflow.training import train

SMOKE = os.environ.get("BOLTZFLOW_SMOKE") == "1"
torch.set_num_threads(1 if SMOKE else max(1, torch.get_num_threads()))
torch.manual_seed(0)

target = ManyWell(dim=32)
print(f"exact log Z = {target.log_z:.4f}")

# %% [markdown]
# ## Train
# Maximum likelihood on exact samples of the target (cheap here, since the target has an exact
# sampler), then a short reverse-KL stage that uses only the energy.

# %%
flow = spline_coupling_flow(
    target, num_layers=4 if SMOKE else 8, hidden=64 if SMOKE else 128, seed=0
)
steps = 150 if SMOKE else 3000
result = train(
    flow,
    target,
    [
        {"loss": "nll", "data": "exact", "steps": steps, "batch_size": 512, "lr": 1e-3},
        {"loss": "reverse_kl", "steps": steps // 3, "batch_size": 512, "lr": 2e-4},
    ],
    seed=0,
)
print(f"trained {result.steps} steps, {result.energy_evaluations} energy evaluations")

# %% [markdown]
# ## Reweight
# `log w = -u(x) - log q(x)`; the mean weight estimates `Z`, and the Kish ESS says how many
# independent target samples the weighted set is worth.

# %%
with torch.no_grad():
    s = flow.sample(5_000 if SMOKE else 100_000, generator=torch.Generator().manual_seed(1))
    lw = log_weights(target, s.x, s.log_q)
r = reweight(lw, seed=0)
z = (r.log_z.mean - target.log_z) / r.log_z.stderr
print(f"ESS fraction {r.ess_fraction:.3f}, PSIS k = {r.pareto_k:.2f}")
print(f"log Z = {r.log_z.mean:.4f} ± {r.log_z.stderr:.4f} (exact {target.log_z:.4f}, z = {z:+.2f})")

frac = expectation((s.x[:, 0] > 0).double(), lw)
print(
    f"P(x1 > 0) = {frac.mean:.4f} ± {frac.stderr:.4f} "
    f"(exact {target.exact_observable('frac_x1_positive'):.4f})"
)

# %%
plot_marginals(s.x[:, :4], lw, "quickstart_marginals.png", reference=target.sample(20_000))

# %% [markdown]
# ## Checks
# The importance estimate is consistent whatever the flow; its error bar must cover the truth.

# %%
assert r.n_nonfinite == 0
assert abs(z) < 3.0, f"log Z off by {z:.2f} standard errors"
assert abs(frac.mean - target.exact_observable("frac_x1_positive")) < 4 * frac.stderr + 1e-3
if not SMOKE:
    assert r.ess_fraction > 0.1
print("quickstart: all checks passed")
