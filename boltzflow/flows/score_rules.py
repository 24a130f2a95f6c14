r"""Fast score rules of coupling layers (Vaitl et al. 2024, "Fast and unified path gradient
estimators for normalizing flows", Sec. 3).

A layer's `forward_and_score` carries $G = \nabla \log q$ through the layer alongside the
map; `inverse_and_score` does the same for the inverse map (see
[`Transform.forward_and_score`][boltzflow.flows.base.Transform.forward_and_score]). A coupling
layer maps its active coordinates elementwise given the frozen ones, in either direction, so one
rule serves every coupling layer and both directions: the layer supplies its map, and
[`coupling_rule`][boltzflow.flows.score_rules.coupling_rule] does the rest.
"""

from __future__ import annotations

import torch

from boltzflow.flows.base import ScoredResult

__all__ = ["coupling_score", "coupling_rule", "scored_input"]


def coupling_score(
    z, z_active, y_active, log_deriv, score, gather, scatter, local=None
) -> torch.Tensor:
    r"""Score rule of a coupling layer that maps the active coordinates elementwise.

    The layer sends $z = (z_f, z_a)$ to $y = (z_f, h(z_a; \theta(z_f)))$, $h$ acting elementwise
    with log-derivatives $\lambda = \log h'(z_a)$ and $l = \sum \lambda$. Solving
    $G_y J = G_z - \nabla_z l$ block by block (the Jacobian is triangular):

    $$
    G_{y,a} = \big(G_{z,a} - \partial_{z_a} l\big)\,e^{-\lambda}, \qquad
    G_{y,f} = G_{z,f} - \partial_{z_f}\big[l + G_{y,a}\cdot h\big]_{G_{y,a}\ \text{fixed}},
    $$

    one local derivative of the elementwise map and one vector-Jacobian product through the
    conditioner (Vaitl et al. 2024, Sec. 3). Derivatives are taken with respect to the inputs
    only, so nothing accumulates in the parameters' gradients.

    Args:
        z: the layer input `[batch, ...]`, requiring grad, from which `z_active` was taken and
            the conditioner was evaluated.
        z_active: the active coordinates that entered $h$ (a tensor derived from `z`).
        y_active: $h(z_a)$, same shape as `z_active`.
        log_deriv: $\lambda$, same shape as `y_active`.
        score: $G_z$, detached, shape of `z`.
        gather: `gather(t)` takes the active coordinates of a tensor shaped like `z`.
        scatter: `scatter(t, values)` returns `t` with its active coordinates replaced.
        local: $\partial_{z_a} l$ when the layer has it in closed form
            ([`boltzflow.flows.spline_slope`][boltzflow.flows.spline_slope]), same shape as
            `z_active`; otherwise autograd computes it (one backward pass through $h$).

    Returns:
        $G_y$, detached, shape of `z`.
    """
    total = log_deriv.sum()
    if local is None and total.requires_grad:
        (local,) = torch.autograd.grad(total, z_active, retain_graph=True, allow_unused=True)
    g_active = gather(score) if local is None else gather(score) - local
    g_active = g_active * torch.exp(-log_deriv.detach())
    (through,) = torch.autograd.grad(
        total + (g_active * y_active).sum(), z, retain_graph=True, allow_unused=True
    )
    g_frozen = score if through is None else score - through
    return scatter(g_frozen, g_active).detach()


def coupling_rule(z, score, run, gather, scatter) -> ScoredResult:
    """A coupling layer's `forward_and_score` from its parts, with
    [`coupling_score`][boltzflow.flows.score_rules.coupling_score]. With `run` the layer's inverse
    map, the same rule is its `inverse_and_score` (the inverse is a coupling layer too).

    Args:
        z, score: as in `Transform.forward_and_score`.
        run: `run(z) -> (z_active, y, y_active, log_deriv[, local])`: the layer's forward map
            of `z` (requiring grad), with the active coordinates `z_active` taken from `z` before
            they enter the elementwise map, the output `y`, its active part, the elementwise
            log-derivatives and, optionally, their closed-form derivative `local` (see
            `coupling_score`).
        gather, scatter: as in `coupling_score`.
    """
    with torch.enable_grad():
        z = scored_input(z)
        z_active, y, y_active, log_deriv, *local = run(z)
        new = coupling_score(z, z_active, y_active, log_deriv, score, gather, scatter, *local)
    return ScoredResult(y, log_deriv.reshape(log_deriv.shape[0], -1).sum(-1), new)


def scored_input(z: torch.Tensor) -> torch.Tensor:
    """`z` itself when it carries a graph, else a leaf copy requiring grad (for input VJPs)."""
    return z if z.requires_grad else z.detach().requires_grad_(True)
