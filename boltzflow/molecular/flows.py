r"""Flows on molecular internal coordinates with torsion/stiff-coordinate structured masks.

Internal coordinates split into a few *soft* periodic torsions (rotors: φ, ψ, ω, methyl
groups) and many *stiff* coordinates (bonds, angles, improper torsions) whose distribution is
nearly Gaussian given the rotors.
[`internal_coordinate_flow`][boltzflow.molecular.flows.internal_coordinate_flow] stacks blocks of
four coupling layers (Dinh et al. 2017; spline couplings of Durkan et al. 2019, circular on the
torus as in Rezende et al. 2020,
[`CircularSplineCoupling`][boltzflow.flows.circular.CircularSplineCoupling]):

1. half of the periodic torsions, conditioned on everything else;
2. the other half of the periodic torsions;
3. a random half of the stiff coordinates, conditioned on *all* torsions and the other half;
4. the remaining stiff coordinates.

so every stiff coordinate is transformed conditionally on the full set of rotors, as in the
internal-coordinate Boltzmann generators of Noé et al. 2019 (Science 365, eaaw1147). Circular
shifts move the seam of the circular splines between blocks, and a learnable elementwise
affine map ends the flow on the stiff coordinates. The base is
[`MixedNormalTorus`][boltzflow.flows.distributions.MixedNormalTorus]: $\mathcal N(0,1)$ on stiff and
uniform on periodic coordinates.
"""

from __future__ import annotations

import torch

from boltzflow.flows.affine import ElementwiseAffine
from boltzflow.flows.base import Compose, Flow
from boltzflow.flows.builders import structured_masks
from boltzflow.flows.circular import CircularShift, CircularSplineCoupling
from boltzflow.flows.distributions import MixedNormalTorus

__all__ = ["internal_coordinate_flow", "structured_masks"]


def internal_coordinate_flow(
    target,
    num_blocks: int = 2,
    hidden: int = 128,
    num_res_blocks: int = 2,
    num_bins: int = 8,
    tail_bound: float = 5.0,
    periodic=None,
    seed: int | None = None,
    num_layers: int | None = None,
) -> Flow:
    """Spline coupling flow with torsion/stiff structured masks for internal coordinates.

    Args:
        target: an Energy with flat `event_shape` and a `periodic_mask` (or pass
            `periodic`).
        num_blocks: blocks of four couplings (`num_layers`, if given, sets
            `num_blocks = num_layers // 4`, at least 1).
        hidden, num_res_blocks: width and depth of each conditioner's ResidualNet.
        num_bins, tail_bound: spline bins; interval half-width of the Euclidean splines.
        seed: makes masks, shifts and weights deterministic.

    Examples:
        >>> import torch
        >>> class T:
        ...     event_shape = torch.Size([6])
        ...     periodic_mask = torch.tensor([1, 1, 0, 0, 0, 0]).bool()
        >>> flow = internal_coordinate_flow(T(), num_blocks=1, hidden=16, seed=0)
        >>> flow.sample(3).x.shape
        torch.Size([3, 6])
    """
    periodic = target.periodic_mask if periodic is None else periodic
    periodic = torch.as_tensor(periodic, dtype=torch.bool).reshape(-1)
    if num_layers is not None:
        num_blocks = max(1, int(num_layers) // 4)
    dim = periodic.numel()
    # deliberate CPU generator: structural masks and shifts, the same flow on every device
    g = torch.Generator().manual_seed(0 if seed is None else int(seed) + 1)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(int(seed))
        layers = []
        for i, m in enumerate(structured_masks(periodic, num_blocks, g)):
            if i > 0 and i % 4 == 0 and periodic.any():
                layers.append(CircularShift.random(dim, periodic, generator=g))
            layers.append(
                CircularSplineCoupling(m, periodic, hidden, num_res_blocks, num_bins, tail_bound)
            )
        if (~periodic).any():
            layers.append(ElementwiseAffine(dim, active=~periodic))
    return Flow(MixedNormalTorus(periodic), Compose(layers))
