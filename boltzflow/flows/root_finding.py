r"""Inverting monotone elementwise maps by root finding, with implicit (IFT) gradients.

Smooth mixture transforms (Köhler, Krämer & Noé 2021, "Smooth Normalizing Flows", NeurIPS)
have no closed-form inverse. For a strictly increasing elementwise map
$f(\,\cdot\,;\theta): [a, b] \to [f(a), f(b)]$ and a value $y$, the root
$x = f^{-1}(y;\theta)$ is found by Newton's method safeguarded by bisection
(Press et al., *Numerical Recipes*, `rtsafe`): a bracket $[\ell, h] \ni x$ is shrunk at
every iterate, and a Newton step that leaves the bracket is replaced by its midpoint. The
iteration runs to the dtype's precision (`|f(x) - y| ≲ 4ε` or a bracket narrower than
`4ε`), so a float64 round trip is exact to ~1e-15.

Gradients never pass through the solver's iterations. The inverse function theorem gives

$$
\frac{\partial x}{\partial y} = \frac{1}{f'(x)}, \qquad
\frac{\partial x}{\partial \theta} = -\frac{\partial_\theta f(x;\theta)}{f'(x)},
$$

evaluated at the root. [`RootInverse`][boltzflow.flows.root_finding.RootInverse] implements this
backward with differentiable torch operations of the *forward* function at the root, and the root it
uses there is the Function's own (saved) output. Differentiating the backward again therefore
re-enters this same implicit rule, so higher derivatives (`create_graph=True`: forces of a density
that contains an inverse, and their parameter gradients in force matching) are exact as well.

Contract of the elementwise map `fn(x, params) -> (y, dy/dx)`: `x` has shape `[...]`,
`params` `[..., P]` (one parameter vector per element, elements independent), both outputs
have the shape of `x`, and `dy/dx > 0`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["ElementwiseMap", "bracketed_newton", "RootInverse", "invert"]

ElementwiseMap = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def bracketed_newton(
    fn: ElementwiseMap,
    y: torch.Tensor,
    params: torch.Tensor,
    lower: float = 0.0,
    upper: float = 1.0,
    max_iter: int = 100,
    x0: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Solve `fn(x, params)[0] = y` elementwise for `x ∈ [lower, upper]` (no gradients).

    Newton iterates $x \leftarrow x - (f(x) - y)/f'(x)$, kept inside a bracket that is
    updated from the sign of $f(x) - y$ at every iterate; a step that would leave the
    bracket (or is not finite) becomes a bisection step. Converges for any continuous strictly
    increasing $f$ with $f(\text{lower}) \le y \le f(\text{upper})$; quadratically
    once Newton steps are accepted.

    Args:
        fn: elementwise map `fn(x, params) -> (f(x), f'(x))`.
        y: targets `[...]`.
        params: `[..., P]`.
        lower, upper: the bracket (the domain of `fn`).
        max_iter: iteration cap (bisection alone halves the bracket 100 times).
        x0: starting point (default: `y` clamped into the bracket, exact for the identity).

    Returns:
        `x` with the shape of `y`; NaN where `y` is NaN.
    """
    eps = torch.finfo(y.dtype).eps
    xtol = 4 * eps * max(1.0, abs(lower), abs(upper))
    lo = torch.full_like(y, lower)
    hi = torch.full_like(y, upper)
    x = (y if x0 is None else x0).clamp(lower, upper)
    ftol = 4 * eps * torch.clamp(y.abs(), min=1.0)
    done = ~torch.isfinite(y)
    for _ in range(max_iter):
        fx, dfx = fn(x, params)
        r = fx - y
        done = done | (r.abs() <= ftol) | (hi - lo <= xtol)
        if bool(done.all()):
            break
        lo = torch.where(r < 0, x, lo)
        hi = torch.where(r > 0, x, hi)
        newton = x - r / dfx
        bisect = ~torch.isfinite(newton) | (newton <= lo) | (newton >= hi)
        step = torch.where(bisect, 0.5 * (lo + hi), newton)
        x = torch.where(done, x, step)
    return torch.where(torch.isfinite(y), x, y)


class RootInverse(torch.autograd.Function):
    r"""`x = f^{-1}(y; θ)` by [`bracketed_newton`][boltzflow.flows.root_finding.bracketed_newton],
    differentiable by the inverse function theorem to any order (see the module docstring).

    `RootInverse.apply(fn, y, params, lower, upper) -> x`.
    """

    @staticmethod
    def forward(ctx, fn, y, params, lower, upper):
        x = bracketed_newton(fn, y.detach(), params.detach(), lower, upper)
        ctx.fn = fn
        ctx.save_for_backward(x, params)
        return x

    @staticmethod
    def backward(ctx, grad_x):
        x, params = ctx.saved_tensors
        need_y, need_params = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        # During a ``create_graph=True`` backward grad mode is on: keep the graph, so that the
        # saved root ``x`` (this Function's output) carries its own implicit derivative.
        create = torch.is_grad_enabled()
        with torch.enable_grad():
            if create:
                theta = params.view_as(params)  # fresh node: ∂/∂θ below is the partial one
            else:
                x, grad_x = x.detach(), grad_x.detach()
                theta = params.detach().requires_grad_(need_params)
            fx, dfx = ctx.fn(x, theta)
            v = grad_x / dfx
            grad_params = None
            if need_params:
                (grad_params,) = torch.autograd.grad(fx, theta, -v, create_graph=create)
        if not create:
            v = v.detach()
        return None, (v if need_y else None), grad_params, None, None


def invert(
    fn: ElementwiseMap,
    y: torch.Tensor,
    params: torch.Tensor,
    lower: float = 0.0,
    upper: float = 1.0,
) -> torch.Tensor:
    r"""Differentiable inverse `x = f^{-1}(y; θ)` of an increasing elementwise map.

    Args:
        fn: `fn(x, params) -> (f(x), f'(x))`, elementwise, increasing on `[lower, upper]`.
        y: `[...]` with `f(lower) ≤ y ≤ f(upper)`.
        params: `[..., P]`.
        lower, upper: the domain of `fn`.

    Returns:
        `x` of the shape of `y`; gradients to `y` and `params` (and their derivatives)
        by the inverse function theorem.

    Examples:
        >>> import torch
        >>> cube = lambda x, p: (x**3 * p[..., 0] + x * p[..., 1], 3 * x**2 * p[..., 0] + p[..., 1])
        >>> p = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
        >>> float(invert(cube, torch.tensor([2.0], dtype=torch.float64), p, 0.0, 2.0))
        1.0
    """
    return RootInverse.apply(fn, y, params, float(lower), float(upper))
