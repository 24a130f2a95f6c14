r"""Training losses for Boltzmann generators.

Every loss has the signature `loss(flow, target, batch, ..., generator=None)` and returns a
[`LossOutput`][boltzflow.training.losses.LossOutput] -- a NamedTuple whose first field is the scalar
to minimise, so `loss(...).loss.backward()` (or `loss(...)[0]`) keeps the "(flow, target, batch) ->
scalar" contract while also reporting how many energies were evaluated and how many were dropped.

* [`reverse_kl`][boltzflow.training.losses.reverse_kl] --
  $\mathbb E_{x\sim q_\theta}[u(x) + \log q_\theta(x)] = \mathrm{KL}(q_\theta\,\|\,p) - \log Z$,
  estimated with reparametrized flow samples (Rezende & Mohamed 2015, "Variational inference with
  normalizing flows"; Noé et al. 2019, "Boltzmann generators", Science 365, eaaw1147). Needs
  energies only, no data.
* [`nll`][boltzflow.training.losses.nll] --
  $-\mathbb E_{x\sim p}[\log q_\theta(x)] = \mathrm{KL}(p\,\|\,q_\theta) + \mathrm{const}$, maximum
  likelihood on samples of the target (Noé et al. 2019, "training by example").
* [`mixed_kl`][boltzflow.training.losses.mixed_kl] --
  $w\,\mathrm{NLL} + (1-w)\,\mathrm{KL}_{\mathrm{rev}}$ (Noé et al. 2019 combine both).
* [`forward_kl_is`][boltzflow.training.losses.forward_kl_is] -- the forward KL
  $\mathrm{KL}(p\,\|\,q_\theta)$ without data, by self-normalized importance weights on the flow's
  own samples (Müller et al. 2019, "Neural importance sampling", ACM TOG 38:145). Mass-covering
  where reverse KL is mode-seeking: a mode the flow covers keeps its mass.

Non-finite values. A sample whose energy (or flow log-density) is NaN or `±inf` is dropped
from the average and counted in `n_nonfinite`; the gradient flowing back through it is
zeroed *before* it reaches the flow, so a masked sample can never turn the parameter gradients
into NaN (an upstream zero times an infinite local derivative would). Dropping samples biases
the estimate; a large `n_nonfinite` means the flow puts mass where the target is undefined.
For training only, `energy_cap` replaces energies above the cap by the smooth, monotone
[`soft_cap`][boltzflow.training.losses.soft_cap] `u_c + log(1 + u - u_c)`, so that a rare
high-energy clash cannot dominate the gradient.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = [
    "LossOutput",
    "soft_cap",
    "reverse_kl",
    "nll",
    "mixed_kl",
    "forward_kl_is",
    "snf_reverse_kl",
    "snf_nll",
    "snf_layers_nll",
]


class LossOutput(NamedTuple):
    """Result of a loss evaluation.

    Attributes:
        loss: scalar tensor to minimise (differentiable in the flow parameters).
        n_evaluations: number of target energy evaluations the loss performed.
        n_nonfinite: number of samples dropped from the average because their energy or
            log-density was NaN or `±inf` (an `int`, or a 0-d tensor where reading it would
            wait for the device).
    """

    loss: torch.Tensor
    n_evaluations: int
    n_nonfinite: int | torch.Tensor


def soft_cap(u: torch.Tensor, cap: float) -> torch.Tensor:
    r"""Logarithmic soft cap: $u$ below `cap`, $c + \log(1 + u - c)$ above.

    Continuous with a continuous first derivative (slope 1 at the cap), monotone increasing,
    and `+inf` maps to `+inf` (still counted as non-finite by the losses).
    """
    excess = (u - cap).clamp(min=0.0)
    return torch.where(u > cap, cap + torch.log1p(excess), u)


def _energy(target, x: torch.Tensor) -> torch.Tensor:
    """Reduced energy `u(x)` of an [`Energy`][boltzflow.energies.base.Energy] or a plain
    callable."""
    fn = getattr(target, "energy", target)
    return fn(x)


def _mask_grad_rows(x: torch.Tensor, keep: list) -> torch.Tensor:
    """Identity on `x` whose backward zeroes the gradient rows where `keep[0]` is False.

    `keep` is a one-element list filled in *after* the forward pass (the mask is only known
    once the energies exist); the hook reads it during the backward pass.
    """
    if not x.requires_grad:
        return x
    y = x.view_as(x)

    def hook(grad: torch.Tensor) -> torch.Tensor:
        mask = keep[0].reshape(-1, *([1] * (grad.dim() - 1)))
        return torch.where(mask, grad, torch.zeros_like(grad))

    y.register_hook(hook)
    return y


def _masked_mean(values: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over `finite` entries, with zero gradient into the others."""
    safe = torch.where(finite, values, torch.zeros_like(values))
    return safe.sum() / finite.sum().clamp(min=1)


def reverse_kl(
    flow,
    target,
    batch_size: int,
    generator: torch.Generator | None = None,
    energy_cap: float | None = None,
) -> LossOutput:
    r"""Reverse KL divergence up to the constant $-\log Z$.

    $$
    L(\theta) = \frac1{N_f} \sum_{i:\ \text{finite}}
    \big[u(x_i) + \log q_\theta(x_i)\big], \qquad x_i = f_\theta(z_i),\ z_i \sim p_z,
    $$

    with `flow.sample` reparametrized, so $\nabla_\theta L$ is the usual
    reparametrization (path + score) estimator. At the optimum $q_\theta = p$, every
    term equals $-\log Z$, so `loss + log_z` estimates $\mathrm{KL}(q\|p) \ge 0$.

    Args:
        flow: a [`Flow`][boltzflow.flows.base.Flow] (`sample(n, generator) -> (x, z, log_q)`).
        target: an [`Energy`][boltzflow.energies.base.Energy] (energies in kT, shape `[batch]`).
        batch_size: number of flow samples `N`.
        generator: `torch.Generator` on the flow's device, for reproducible draws.
        energy_cap: if given, energies above it are softened by
            [`soft_cap`][boltzflow.training.losses.soft_cap] (training
            only: the returned loss is then no longer an estimate of `KL - log Z`).

    Returns:
        [`LossOutput`][boltzflow.training.losses.LossOutput] with `n_evaluations = batch_size` and
        `n_nonfinite` the number of samples with non-finite energy or log-density
        (`N_f = N - n_nonfinite`).
    """
    sample = flow.sample(int(batch_size), generator=generator)
    keep: list = [None]
    u = _energy(target, _mask_grad_rows(sample.x, keep))
    if energy_cap is not None:
        u = soft_cap(u, float(energy_cap))
    per_sample = u + sample.log_q
    finite = torch.isfinite(per_sample)
    keep[0] = finite
    n_nonfinite = (~finite).sum()  # a tensor: counting must not wait for the device
    return LossOutput(_masked_mean(per_sample, finite), int(sample.x.shape[0]), n_nonfinite)


def nll(flow, target, data: torch.Tensor, generator: torch.Generator | None = None) -> LossOutput:
    r"""Negative log-likelihood of target samples (forward KL up to a constant).

    $$
    L(\theta) = -\frac1{N_f} \sum_{i:\ \text{finite}} \log q_\theta(x_i),
    \qquad x_i \sim p,
    $$

    which equals $\mathrm{KL}(p\|q_\theta) - H(p)$ in expectation.

    Args:
        flow: a [`Flow`][boltzflow.flows.base.Flow] (uses `log_prob`).
        target: unused (kept for the uniform loss signature; may be `None`).
        data: target samples `[batch, *event_shape]` (moved to the flow's dtype by the caller).
        generator: unused (uniform signature).

    Returns:
        [`LossOutput`][boltzflow.training.losses.LossOutput] with `n_evaluations = 0` and
        `n_nonfinite` the number of data points where the flow density is zero or undefined (dropped
        from the mean).
    """
    del target, generator
    log_q = flow.log_prob(data)
    finite = torch.isfinite(log_q)
    n_bad = int((~finite).sum())
    if n_bad:
        # Re-evaluate on the finite rows only: the parameter gradient of a NaN or infinite
        # log-density is itself NaN, and masking the mean (0 x NaN) would not stop it.
        log_q = flow.log_prob(data[finite])
        finite = torch.isfinite(log_q)
    return LossOutput(-_masked_mean(log_q, finite), 0, n_bad)


def mixed_kl(
    flow,
    target,
    data: torch.Tensor,
    batch_size: int | None = None,
    weight_forward: float = 0.5,
    generator: torch.Generator | None = None,
    energy_cap: float | None = None,
) -> LossOutput:
    r"""Weighted sum $w\,\mathrm{NLL}(\text{data}) + (1-w)\,\mathrm{KL}_{\mathrm{rev}}$.

    Args:
        data: target samples for the NLL term.
        batch_size: flow samples for the reverse-KL term (default: `len(data)`).
        weight_forward: $w \in [0, 1]$; 1 is pure NLL, 0 pure reverse KL.
        generator, energy_cap: as in [`reverse_kl`][boltzflow.training.losses.reverse_kl].

    Returns:
        [`LossOutput`][boltzflow.training.losses.LossOutput] with the counts of both terms added.
    """
    if not 0.0 <= weight_forward <= 1.0:
        raise ValueError(f"weight_forward must lie in [0, 1], got {weight_forward}")
    n = int(data.shape[0]) if batch_size is None else int(batch_size)
    fwd = nll(flow, target, data)
    rev = reverse_kl(flow, target, n, generator=generator, energy_cap=energy_cap)
    loss = weight_forward * fwd.loss + (1.0 - weight_forward) * rev.loss
    return LossOutput(
        loss, fwd.n_evaluations + rev.n_evaluations, fwd.n_nonfinite + rev.n_nonfinite
    )


def forward_kl_is(
    flow, target, batch_size: int, generator: torch.Generator | None = None
) -> LossOutput:
    r"""Forward KL by self-normalized importance sampling from the flow itself.

    $$
    L(\theta) = -\sum_i \bar w_i \log q_\theta(x_i), \qquad
    x_i \sim q_{\theta'},\quad
    \bar w_i = \frac{e^{-u(x_i) - \log q_{\theta'}(x_i)}}
                   {\sum_j e^{-u(x_j) - \log q_{\theta'}(x_j)}},
    $$

    with $\theta' = \theta$ held fixed (samples and weights carry no gradient), so
    $\nabla_\theta L$ estimates $\nabla_\theta \mathrm{KL}(p\,\|\,q_\theta)$
    (Müller et al. 2019). Unlike [`reverse_kl`][boltzflow.training.losses.reverse_kl] it does not
    reward dropping a mode: its optimum covers all the mass the flow can see. The estimate is only
    as good as the weights' ESS, so start from a flow that covers the target (e.g. reverse KL at a
    higher temperature).

    Args:
        flow: a [`Flow`][boltzflow.flows.base.Flow] (`sample` and `log_prob`).
        target: an [`Energy`][boltzflow.energies.base.Energy].
        batch_size: number of flow samples `N`.
        generator: `torch.Generator` on the flow's device.

    Returns:
        [`LossOutput`][boltzflow.training.losses.LossOutput] with `n_evaluations = batch_size` and
        `n_nonfinite` the samples with a non-finite log-weight (weight 0). The value is a weighted
        NLL, not a KL.
    """
    with torch.no_grad():
        sample = flow.sample(int(batch_size), generator=generator)
        log_w = -_energy(target, sample.x) - sample.log_q
        finite = torch.isfinite(log_w)
        weights = torch.softmax(torch.where(finite, log_w, torch.full_like(log_w, -torch.inf)), 0)
    n_nonfinite = int((~finite).sum())
    if not bool(finite.any()):
        zero = sum(p.sum() * 0.0 for p in flow.parameters())
        return LossOutput(zero, int(sample.x.shape[0]), n_nonfinite)
    keep = finite & (weights > 0)
    log_q = flow.log_prob(sample.x[keep])
    return LossOutput(-(weights[keep] * log_q).sum(), int(sample.x.shape[0]), n_nonfinite)


def snf_reverse_kl(
    flow,
    target,
    batch_size: int,
    generator: torch.Generator | None = None,
    energy_cap: float | None = None,
) -> LossOutput:
    r"""Reverse KL between the forward and backward path measures of a stochastic flow.

    $$
    L = E_{\text{path}\sim\mu_z P_f}\big[u(x) + \log p_z(z) - \textstyle\sum_t \delta_t\big]
      = \mathrm{KL}(\mu_z P_f \,\|\, \mu_x P_b) - \log Z,
    $$

    with $\delta_t$ the log-dets and path increments of `boltzflow.flows.stochastic` (Wu,
    Köhler & Noé 2020, eq. 8). The estimator is `reverse_kl` applied to the path sample
    (gradients pass through the blocks' reparametrized noise, not through accept/reject
    decisions); for a deterministic flow both are the same loss. `n_evaluations` counts every
    target evaluation, the blocks' included.
    """
    count = _EvaluationCount(flow, target)
    out = reverse_kl(flow, target, batch_size, generator=generator, energy_cap=energy_cap)
    return out._replace(n_evaluations=max(count.spent(), out.n_evaluations))


def snf_nll(
    flow, target, data: torch.Tensor, generator: torch.Generator | None = None
) -> LossOutput:
    r"""Maximum likelihood of a stochastic flow on target samples, through the backward path.

    $$
    L = -E_{x\sim p,\ \text{path}\sim P_b(x\to z)}\big[\log p_z(z) - \textstyle\sum_t
    \delta_t\big] = \mathrm{KL}(\mu_x P_b \,\|\, \mu_z P_f) + \text{const},
    $$

    the forward KL between the path measures (Wu, Köhler & Noé 2020): each data point is run
    backwards through the flow (`Flow.backward_path`), the blocks sampling their backward
    kernels. For a deterministic flow it equals `nll`. Non-finite values are dropped and
    counted; `n_evaluations` counts the blocks' target evaluations.
    """
    count = _EvaluationCount(flow, target)
    log_q = flow.backward_path(data, generator=generator).log_q
    finite = torch.isfinite(log_q)
    return LossOutput(-_masked_mean(log_q, finite), count.spent(), int((~finite).sum()))


def snf_layers_nll(
    flow, target, data: torch.Tensor, generator: torch.Generator | None = None
) -> LossOutput:
    r"""Maximum likelihood of the deterministic layers of a stochastic flow, blocks left out.

    $$
    L = -\frac1{N_f}\sum_i \log q_\text{layers}(x_i), \qquad x_i \sim p,
    $$

    with $q_\text{layers}$ the density of the flow's base pushed through its invertible layers
    only (the same modules, in order, without the sampling blocks of
    `boltzflow.flows.stochastic`). For blocks that all sit after the last layer and sample the
    target ($\lambda = 1$, Metropolis-corrected, so in detailed balance with $p$), this is
    `snf_nll` in expectation up to a constant: the backward kernel started at $x\sim p$ ends at
    $y_0 \sim p$, and the blocks' increments $u(y_0) - u(x)$ average to zero (Wu, Köhler & Noé
    2020, Sec. 3). It then trains the same parameters as `snf_nll` without the blocks' target
    evaluations, which is how a recipe runs the maximum-likelihood stage of its deterministic
    counterpart before sampling with the blocks. For blocks between layers or at
    $\lambda < 1$ it is a pre-training of the layers, not the path likelihood. For a
    deterministic flow it equals `nll`.

    Args:
        flow: a [`Flow`][boltzflow.flows.base.Flow] whose `transform` is a
            [`Compose`][boltzflow.flows.base.Compose] of layers and blocks.
        target: unused (uniform signature).
        data: target samples `[batch, *event_shape]`.
        generator: unused (the layers are deterministic).

    Returns:
        [`LossOutput`][boltzflow.training.losses.LossOutput] with `n_evaluations = 0`.
    """
    from boltzflow.flows.base import Compose, Flow

    members = list(getattr(flow.transform, "transforms", [flow.transform]))
    if any(isinstance(t, Compose) and t.stochastic for t in members):
        raise ValueError("snf_layers_nll needs the stochastic blocks at the top level of the flow")
    layers = Flow(flow.base, Compose([t for t in members if not t.stochastic]))
    return nll(layers, target, data, generator)


# Data losses take a minibatch of target samples as `batch` (read by `weighted.needs_data`).
for _loss in (nll, mixed_kl, snf_nll, snf_layers_nll):
    _loss.needs_data = True


class _EvaluationCount:
    """Target evaluations spent from now on by the loss's target and by the energies the
    flow's stochastic blocks hold (a tempered training target is a copy of the blocks' one, with
    its own counter; each distinct counter is counted once)."""

    def __init__(self, flow, target):
        held = [getattr(m, "target", None) for m in flow.modules() if getattr(m, "stochastic", 0)]
        unique = {id(t): t for t in [target, *held] if hasattr(t, "n_evaluations")}
        self.targets = list(unique.values())
        self.start = [t.n_evaluations for t in self.targets]

    def spent(self) -> int:
        return sum(t.n_evaluations - n0 for t, n0 in zip(self.targets, self.start, strict=True))
