r"""Free energies by (learned) targeted free-energy perturbation, and plain FEP beside them.

For held-out samples $x_i \sim p_A$ and a map $f$ (Jarzynski 2002, "Targeted free energy
perturbation", Phys. Rev. E 65, 046122; Wirnsberger et al. 2020, J. Chem. Phys. 153, 144112),

$$
\log w_i = -u_B(f(x_i)) + u_A(x_i) + \log|\det J_f(x_i)|, \qquad
\widehat{\Delta F}_{AB} = -\ln \frac1N \sum_i w_i \quad (\text{kT}).
$$

$f = \mathrm{id}$ is plain free-energy perturbation (Zwanzig 1954, J. Chem. Phys. 22, 1420).
Everything about the weights comes from
[`boltzflow.sampling.reweighting`][boltzflow.sampling.reweighting]:
$\widehat{\Delta F} = -\log\hat Z$ of [`reweight`][boltzflow.sampling.reweighting.reweight]
(so the error is its bootstrap standard error), the Kish ESS and PSIS $\hat k$ (above 0.7 the
estimate is unreliable even when the bootstrap error looks small). The samples must be
independent of the ones $f$ was trained on (separate MD or held-out frames), or the estimate is
biased low. Per molecule, $\Delta F/N$ and its error are divided by $N$.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from boltzflow.sampling.reweighting import Estimate, reweight
from boltzflow.weights import importance_log_weights

__all__ = [
    "FEPResult",
    "flow_fep_log_weights",
    "fep_log_weights",
    "fep_estimate",
    "targeted_and_plain_fep",
]


class FEPResult(NamedTuple):
    r"""A free-energy estimate from perturbation weights.

    Attributes:
        delta_f: $\Delta F_{AB}$ in kT with its bootstrap standard error.
        ess: Kish effective sample size of the weights.
        ess_fraction: `ess / n`.
        pareto_k: PSIS $\hat k$ of the weights.
        n: number of $A$ samples.
        n_nonfinite: samples with a non-finite weight (weight 0).
    """

    delta_f: Estimate
    ess: float
    ess_fraction: float
    pareto_k: float
    n: int
    n_nonfinite: int

    def per_molecule(self, n_molecules: int) -> Estimate:
        r"""$\Delta F / N$ with its standard error divided by $N$."""
        return Estimate(self.delta_f.mean / n_molecules, self.delta_f.stderr / n_molecules)

    def as_dict(self, n_molecules: int | None = None) -> dict:
        """JSON-ready dict (`mean`, `stderr` in kT, ESS, k̂; per molecule when `n_molecules`)."""
        out = {
            "mean": self.delta_f.mean,
            "stderr": self.delta_f.stderr,
            "unit": "kT",
            "ess": self.ess,
            "ess_fraction": self.ess_fraction,
            "pareto_k": self.pareto_k,
            "n": self.n,
            "n_nonfinite": self.n_nonfinite,
        }
        if n_molecules:
            per = self.per_molecule(int(n_molecules))
            out.update(
                per_molecule={"mean": per.mean, "stderr": per.stderr}, n_molecules=n_molecules
            )
        return out


def _energy(energy, x: torch.Tensor) -> torch.Tensor:
    return getattr(energy, "energy", energy)(x)


@torch.no_grad()
def fep_log_weights(u_a: torch.Tensor, u_b: torch.Tensor, ladj=0.0) -> torch.Tensor:
    r"""$\log w = -u_B + u_A + \mathrm{ladj}$ `[n]` from energies already computed, with the one
    rule for non-finite values ([`boltzflow.weights`][boltzflow.weights]).

    Args:
        u_a: $u_A(x_i)$ `[n]` (kT).
        u_b: $u_B(f(x_i))$ `[n]` (kT); $u_B(x_i)$ for plain FEP.
        ladj: $\log|\det J_f(x_i)|$ `[n]` (0 for plain FEP).
    """
    return importance_log_weights(u_b, -u_a - ladj)


@torch.no_grad()
def flow_fep_log_weights(flow, target, x_a: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    r"""Targeted weights of held-out $A$ samples through `flow` `[n]`, in batches.

    Args:
        flow: a [`Flow`][boltzflow.flows.base.Flow] whose `forward` is $f$ and whose base gives
            $\log p_\text{base} = -u_A$ (a
            [`SampleSetBase`][boltzflow.flows.sample_set.SampleSetBase]).
        target: the [`Energy`][boltzflow.energies.base.Energy] of state $B$.
        x_a: samples of $A$ `[n, *event_shape]`, not used in training.
        batch_size: samples per flow and energy call.
    """
    out = []
    for x in torch.split(x_a, int(batch_size)):
        y, ladj = flow.forward(x)
        out.append(fep_log_weights(-flow.base.log_prob(x), _energy(target, y), ladj))
    return torch.cat(out)


def fep_estimate(log_w, *, n_bootstrap: int = 200, seed: int | None = 0) -> FEPResult:
    r"""$\Delta F_{AB} = -\ln \overline{w}$ with the bootstrap error, ESS and $\hat k$ of
    [`reweight`][boltzflow.sampling.reweighting.reweight].

    Args:
        log_w: perturbation log-weights `[n]` (targeted or plain).
        n_bootstrap, seed: the bootstrap of the error.
    """
    rw = reweight(log_w, n_bootstrap=n_bootstrap, seed=seed)
    se = rw.log_z.stderr if math.isfinite(rw.log_z.mean) else math.inf
    return FEPResult(
        Estimate(-rw.log_z.mean, se), rw.ess, rw.ess_fraction, rw.pareto_k, rw.n, rw.n_nonfinite
    )


@torch.no_grad()
def targeted_and_plain_fep(
    flow, target, x_a: torch.Tensor, *, n_bootstrap: int = 200, seed: int | None = 0
) -> dict[str, FEPResult]:
    r"""Learned FEP through `flow` and plain FEP on the same held-out $A$ samples.

    Args:
        flow: the targeted map (see
            [`flow_fep_log_weights`][boltzflow.sampling.targeted_fep.flow_fep_log_weights]).
        target: the [`Energy`][boltzflow.energies.base.Energy] of state $B$.
        x_a: held-out samples of $A$ `[n, *event_shape]`.
        n_bootstrap, seed: the bootstrap of the errors.

    Returns:
        `{"flow": FEPResult, "plain": FEPResult}`; plain FEP uses
        $\log w = -u_B(x) + u_A(x)$ on the same $x$.
    """
    log_w = flow_fep_log_weights(flow, target, x_a)
    u_a = -flow.base.log_prob(x_a)
    plain = fep_log_weights(u_a, _energy(target, x_a))
    return {
        "flow": fep_estimate(log_w, n_bootstrap=n_bootstrap, seed=seed),
        "plain": fep_estimate(plain, n_bootstrap=n_bootstrap, seed=seed),
    }
