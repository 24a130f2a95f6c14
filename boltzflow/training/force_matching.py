r"""Force matching: fit the flow's forces $\nabla_x \log q_\theta$ to reference forces.

Köhler, Krämer & Noé 2021, "Smooth Normalizing Flows" (NeurIPS), Sec. 4: a flow density
$q_\theta$ defines the potential $u_q(x) = -\log q_\theta(x)$ (kT) and the force
$F_q(x) = -\nabla_x u_q(x) = \nabla_x \log q_\theta(x)$. Force matching minimises

$$
L_{\mathrm{FM}}(\theta) = \frac{1}{N d} \sum_{i=1}^{N}
    \big\| F_q(x_i) - F(x_i) \big\|^2 \qquad [(\mathrm{kT}/\text{length})^2],
$$

the mean squared force error per coordinate (`sqrt(loss)` is the force RMSE), where
$F = -\nabla u$ are reference forces in kT per unit length: from an
[`Energy`][boltzflow.energies.base.Energy] (`target.force`) or stored with MD frames. For
$x_i \sim p$ this is the Fisher divergence between $p$ and $q_\theta$; it is zero
exactly when $q_\theta = p$ (on a connected support), with zero gradient there.
The loss needs $\partial_\theta \nabla_x \log q_\theta$ (a double backward), which
the smooth flows provide to any order, including through their root-finding inverses.
Force matching fixes $q$ only up to its normalisation and relative basin weights
(it sees no mass), so it is usually combined with NLL:
[`nll_force_matching`][boltzflow.training.force_matching.nll_force_matching].

Batches (`batch` argument, as the trainer passes them):

* `Tensor[n, *event_shape]` -- positions; reference forces `target.force(x)`
  (`n` energy evaluations);
* `Tensor[n, 2, *event_shape]` -- stored positions `[:, 0]` and forces `[:, 1]`
  (see [`stack_positions_forces`][boltzflow.training.force_matching.stack_positions_forces]; no
  evaluations);
* `(positions, forces)` -- the same as a pair;
* `int` -- that many positions drawn from the flow (detached) with target forces
  (a data-free variant: the Fisher divergence under $q$).

Non-finite reference or flow forces drop the sample from the average (counted in
`n_nonfinite`) and its gradient is zeroed.
"""

from __future__ import annotations

import torch

from boltzflow.training.losses import LossOutput, nll, reverse_kl

__all__ = [
    "stack_positions_forces",
    "flow_force",
    "force_matching",
    "nll_force_matching",
    "force_rmse",
]


def stack_positions_forces(positions: torch.Tensor, forces: torch.Tensor) -> torch.Tensor:
    """`[n, 2, *event_shape]`: the stored-forces batch layout (minibatched by rows)."""
    if positions.shape != forces.shape:
        raise ValueError(f"positions {tuple(positions.shape)} vs forces {tuple(forces.shape)}")
    return torch.stack([positions, forces], 1)


def flow_force(
    flow, x: torch.Tensor, create_graph: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""`(∇_x log q(x), log q(x))`: the force of $u_q = -\log q$ in kT per unit length.

    With `create_graph=True` the force stays differentiable in the flow parameters (what
    force matching needs) and in `x`.
    """
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        log_q = flow.log_prob(xr)
        (grad,) = torch.autograd.grad(log_q.sum(), xr, create_graph=create_graph)
    return grad, log_q


def _split(flow, batch, forces: str):
    """`(positions, stored forces or None)` of a data batch (module docstring layouts)."""
    if isinstance(batch, (tuple, list)):
        x, f = batch
        return x, f
    event = tuple(flow.event_shape)
    stored = tuple(batch.shape[1:]) == (2, *event)
    if forces == "data" or (forces == "auto" and stored):
        if not stored:
            raise ValueError(f"stored forces need a [n, 2, *{event}] batch, got {batch.shape}")
        return batch[:, 0], batch[:, 1]
    if tuple(batch.shape[1:]) != event:
        raise ValueError(f"batch of shape {tuple(batch.shape)} does not match event {event}")
    return batch, None


def _positions_and_forces(flow, target, batch, generator, forces: str):
    """`(x, F, n_evaluations)` for any accepted batch."""
    if isinstance(batch, int):
        with torch.no_grad():
            x, f = flow.sample(int(batch), generator=generator).x, None
    else:
        x, f = _split(flow, batch, forces)
    if f is not None:
        return x, f, 0
    if target is None:
        raise ValueError("force matching without stored forces needs a target")
    return x, target.force(x.detach()).to(x), int(x.shape[0])


def _per_sample_sq_error(flow, x, f_ref):
    f_q, _ = flow_force(flow, x, create_graph=True)
    err = (f_q - f_ref).reshape(x.shape[0], -1)
    return (err * err).mean(-1)


def force_matching(
    flow,
    target,
    batch,
    generator: torch.Generator | None = None,
    forces: str = "auto",
) -> LossOutput:
    r"""Mean squared force error per coordinate $L_{\mathrm{FM}}$ (module docstring).

    Args:
        flow: a [`Flow`][boltzflow.flows.base.Flow] whose `log_prob` is twice differentiable.
        target: an `Energy` (for `target.force`); may be `None` with stored forces.
        batch: positions, stored positions+forces, a pair, or a number of flow samples.
        generator: for flow samples when `batch` is an int.
        forces: `"auto"` (stored if the batch has the stored layout), `"data"` (stored,
            required) or `"target"` (always `target.force`).

    Returns:
        [`LossOutput`][boltzflow.training.losses.LossOutput] in (kT/length)²;
        `n_evaluations` counts reference force evaluations.
    """
    if forces not in ("auto", "data", "target"):
        raise ValueError(f"forces must be 'auto', 'data' or 'target', got {forces!r}")
    x, f_ref, n_eval = _positions_and_forces(flow, target, batch, generator, forces)
    f_ref = f_ref.detach()
    ref_ok = torch.isfinite(f_ref.reshape(x.shape[0], -1)).all(-1)
    f_ref = torch.where(ref_ok.reshape(-1, *([1] * (f_ref.dim() - 1))), f_ref, 0.0)
    sq = _per_sample_sq_error(flow, x, f_ref)
    finite = ref_ok & torch.isfinite(sq)
    safe = torch.where(finite, sq, torch.zeros_like(sq))
    loss = safe.sum() / finite.sum().clamp(min=1)
    return LossOutput(loss, n_eval, int((~finite).sum()))


def nll_force_matching(
    flow,
    target,
    batch,
    weight_force: float = 1.0,
    weight_nll: float = 1.0,
    weight_reverse_kl: float = 0.0,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    forces: str = "auto",
    energy_cap: float | None = None,
) -> LossOutput:
    r"""Weighted sum $w_N\,\mathrm{NLL} + w_F\,L_{\mathrm{FM}} + w_R\,\mathrm{KL}_{rev}$.

    NLL and force matching use the same positions (the data batch); the optional reverse-KL
    term draws `batch_size` flow samples (default: the data batch size).

    Args:
        batch: data positions, or stored positions + forces (`[n, 2, *event_shape]` or a pair).
        weight_force, weight_nll, weight_reverse_kl: non-negative weights (force term in
            (kT/length)², the others in kT).
        batch_size, energy_cap: for the reverse-KL term (see
            [`reverse_kl`][boltzflow.training.losses.reverse_kl]).
        generator, forces: as in
            [`force_matching`][boltzflow.training.force_matching.force_matching].

    Returns:
        [`LossOutput`][boltzflow.training.losses.LossOutput] with the counts of all terms added.
    """
    weights = (float(weight_force), float(weight_nll), float(weight_reverse_kl))
    if min(weights) < 0:
        raise ValueError(f"loss weights must be non-negative, got {weights}")
    if isinstance(batch, int):
        raise ValueError("nll_force_matching needs data (positions, with or without forces)")
    x, f_ref = _split(flow, batch, forces)
    fm = force_matching(flow, target, x if f_ref is None else (x, f_ref), forces="auto")
    terms = [(weights[0], fm)]
    if weights[1] > 0:
        terms.append((weights[1], nll(flow, target, x)))
    if weights[2] > 0:
        n = int(x.shape[0]) if batch_size is None else int(batch_size)
        terms.append(
            (weights[2], reverse_kl(flow, target, n, generator=generator, energy_cap=energy_cap))
        )
    loss = sum(w * t.loss for w, t in terms)
    return LossOutput(
        loss, sum(t.n_evaluations for _, t in terms), sum(t.n_nonfinite for _, t in terms)
    )


def force_rmse(flow, x: torch.Tensor, forces: torch.Tensor, chunk: int = 1024) -> float:
    r"""Root-mean-square force error per coordinate, $\sqrt{L_{\mathrm{FM}}}$, in kT per
    unit length, evaluated without a parameter graph (held-out frames)."""
    total, count = 0.0, 0
    for start in range(0, x.shape[0], int(chunk)):
        xs, fs = x[start : start + chunk], forces[start : start + chunk]
        f_q, _ = flow_force(flow, xs, create_graph=False)
        err = (f_q.detach() - fs).reshape(xs.shape[0], -1)
        ok = torch.isfinite(err).all(-1)
        total += float((err[ok] ** 2).sum())
        count += int(ok.sum()) * err.shape[1]
    return (total / max(count, 1)) ** 0.5


nll_force_matching.needs_data = True  # a data loss (see `weighted.needs_data`)
