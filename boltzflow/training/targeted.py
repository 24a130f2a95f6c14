r"""The training loss of learned (targeted) free-energy perturbation.

A flow $f$ maps configurations $x$ of a state $A$ ($p_A \propto e^{-u_A}$, e.g. MD at
$T_A$) towards a state $B$ ($p_B \propto e^{-u_B}$). Each $x$ gets the targeted weight
(Jarzynski 2002; Wirnsberger et al. 2020, "Targeted free energy estimation via learned
mappings", J. Chem. Phys. 153, 144112)

$$
\log w(x) = -u_B(f(x)) + u_A(x) + \log|\det J_f(x)|,
\qquad \Delta F_{AB} = -\ln \mathbb E_{x\sim p_A}[w(x)] \quad (\text{kT}),
$$

and [`targeted_fep`][boltzflow.training.targeted.targeted_fep] minimises

$$
L(\theta) = \mathbb E_{x\sim p_A}[-\log w(x)]
= \mathrm{KL}(f_\#p_A \,\|\, p_B) + \Delta F_{AB} \;\ge\; \Delta F_{AB},
$$

the reverse KL between the pushed-forward state $A$ and $B$ up to the constant $\Delta F_{AB}$,
estimated on minibatches of $A$ samples (Wirnsberger et al. 2020, eq. 12; Köhler et al. 2023,
"Rigid body flows for sampling molecular crystal structures", ICML). $u_A(x)$ does not depend on
the flow; it is read from the flow's base, $u_A = -\log p_\text{base}$ (a
[`SampleSetBase`][boltzflow.flows.sample_set.SampleSetBase] stores it for its rows), so the loss
value is the bound above rather than a shifted one. The estimator of $\Delta F$ with its error
lives in [`boltzflow.sampling.targeted_fep`][boltzflow.sampling.targeted_fep]: it must use $A$
samples that the training never saw.
"""

from __future__ import annotations

import torch

from boltzflow.training.losses import LossOutput, _energy, _mask_grad_rows, _masked_mean, soft_cap

__all__ = ["targeted_fep", "targeted_log_weights"]


def targeted_log_weights(flow, target, x_a: torch.Tensor, energy_cap: float | None = None):
    r"""Per-sample $\log w = -u_B(f(x)) + u_A(x) + \log|\det J_f(x)|$, differentiable in the flow.

    Args:
        flow: a [`Flow`][boltzflow.flows.base.Flow]; `flow.forward(x) -> (f(x), ladj)` and
            `flow.base.log_prob(x)` $= -u_A(x)$ (up to a constant that cancels in gradients).
        target: the [`Energy`][boltzflow.energies.base.Energy] of state $B$ (kT).
        x_a: samples of state $A$ `[n, *event_shape]`.
        energy_cap: if given, $u_B$ above it is softened by
            [`soft_cap`][boltzflow.training.losses.soft_cap] (training only).

    Returns:
        `(log_w [n], keep)` where `keep` is the one-element list the gradient mask of $f(x)$
        reads (fill it with the finite mask before calling `backward`).
    """
    y, ladj = flow.forward(x_a)
    keep: list = [None]
    u_b = _energy(target, _mask_grad_rows(y, keep))
    if energy_cap is not None:
        u_b = soft_cap(u_b, float(energy_cap))
    with torch.no_grad():
        log_p_a = flow.base.log_prob(x_a)  # = -u_A(x_a)
    return -u_b - log_p_a + ladj, keep


def targeted_fep(
    flow,
    target,
    data: torch.Tensor,
    generator: torch.Generator | None = None,
    energy_cap: float | None = None,
) -> LossOutput:
    r"""Targeted FEP loss $\frac1{N_f}\sum_{i:\ \text{finite}} -\log w(x_i)$ on a minibatch of
    state-$A$ samples (module docstring): $\mathrm{KL}(f_\#p_A\|p_B) + \Delta F_{AB}$ in
    expectation.

    Args:
        flow: the targeted map as a [`Flow`][boltzflow.flows.base.Flow] whose base gives
            $-u_A$ (a [`SampleSetBase`][boltzflow.flows.sample_set.SampleSetBase]).
        target: the [`Energy`][boltzflow.energies.base.Energy] of state $B$.
        data: samples $x_i \sim p_A$ `[batch, *event_shape]` (the stage's data).
        generator: unused (the map is deterministic).
        energy_cap: see [`reverse_kl`][boltzflow.training.losses.reverse_kl].

    Returns:
        [`LossOutput`][boltzflow.training.losses.LossOutput] with `n_evaluations = batch` and
        the samples with a non-finite weight dropped (their gradient zeroed) and counted.
    """
    del generator
    log_w, keep = targeted_log_weights(flow, target, data, energy_cap)
    finite = torch.isfinite(log_w)
    keep[0] = finite
    return LossOutput(_masked_mean(-log_w, finite), int(data.shape[0]), (~finite).sum())


targeted_fep.needs_data = True  # minibatches of state-A samples (`weighted.needs_data`)
