r"""The rigid-body flow builder, registered as the flow kind `"rigid-body"`.

`rigid_body_flow` stacks, from latent to configuration, `num_layers` blocks of six couplings
(box axes $x, y, z$ of the positions, then Rodrigues components $0, 1, 2$ of the orientations,
each conditioned on everything it keeps fixed through a permutation-equivariant set
conditioner) and, when a reference structure is given, a
[`PositionContraction`][boltzflow.flows.rigid.contraction.PositionContraction] and an
[`OrientationContraction`][boltzflow.flows.rigid.contraction.OrientationContraction] about it.
Its base is [`RigidBodyBase`][boltzflow.flows.rigid.distribution.RigidBodyBase] (uniform box ×
Haar). Every layer starts at the identity, so `flow.transform` is (to rounding) the identity
map at initialisation: used as a map of samples of a state $A$ (targeted free-energy
perturbation), training starts from plain free-energy perturbation.

Without a reference the flow treats all molecules alike (permutation-equivariant, circular
splines over whole box edges, wide orientation splines): a liquid or a generic model. With a
`reference` (the ideal crystal, or an MD mean), positions are splined in a `position_window`
about each molecule's site and orientations in a chart about its reference rotation; molecules
are then tied to their sites, and relabelling them together with the reference leaves the
density unchanged.

Reference: Köhler et al. 2023, "Rigid body flows for sampling molecular crystal structures".
"""

from __future__ import annotations

import torch

from boltzflow.flows.base import Compose, Flow
from boltzflow.flows.rigid.contraction import OrientationContraction, PositionContraction
from boltzflow.flows.rigid.couplings import OrientationCoupling, PositionCoupling
from boltzflow.flows.rigid.distribution import RigidBodyBase

__all__ = ["rigid_body_flow"]


def _system(n_molecules, box):
    """`(N, box)` from an int and a box, or from a target with `n_molecules` and `box`."""
    if isinstance(n_molecules, int):
        if box is None:
            raise ValueError("rigid_body_flow needs the box edges (nm)")
        return n_molecules, box
    n = getattr(n_molecules, "n_molecules", None)
    if n is None:
        raise TypeError("pass the number of molecules, or a target with n_molecules and box")
    return int(n), getattr(n_molecules, "box", None) if box is None else box


def _reference(reference, target, n: int):
    if reference is None:
        return None, None
    if isinstance(reference, str):
        if reference != "target":
            raise ValueError("reference must be a rigid state, None or 'target'")
        reference = target.reference_state
    state = torch.as_tensor(reference, dtype=torch.get_default_dtype()).reshape(n, 7)
    return state[:, :3], state[:, 3:]


def rigid_body_flow(
    n_molecules,
    box=None,
    *,
    num_layers: int = 2,
    hidden: int = 64,
    depth: int = 2,
    num_bins: int = 8,
    reference=None,
    position_window: float | None = None,
    orientation_bound: float | None = None,
    scale: float = 1.0,
    seed: int | None = None,
) -> Flow:
    """A flow on $(\\mathbb{R}^3 \\times S^3)^N$ for rigid molecules in a periodic box.

    Args:
        n_molecules: $N$, or a target with attributes `n_molecules` and `box`.
        box: orthorhombic box edges `(3,)` nm (default: the target's).
        num_layers: blocks of six couplings (three position axes, three Rodrigues components).
        hidden, depth: width and hidden layers of each set conditioner's perceptrons.
        num_bins: spline bins $K$.
        reference: a rigid state `(7 N,)` (sites and reference rotations), `"target"` for the
            target's `reference_state`, or `None`.
        position_window: half-width (nm) of the position splines about the sites (default
            0.1 nm with a reference; without one, circular splines over the box).
        orientation_bound: half-width of the orientation splines in the Rodrigues chart
            (default 0.5 with a reference, 2.0 without).
        scale: initial factor of the contractions (with a reference; 1 = identity).
        seed: seeds the conditioners' initial weights (torch's global RNG is left alone).

    Returns:
        A [`Flow`][boltzflow.flows.base.Flow] with event shape `(7 N,)`.
    """
    target = n_molecules
    n, box = _system(n_molecules, box)
    if box is None:
        raise ValueError("rigid_body_flow needs the box edges (nm)")
    sites, rotations = _reference(reference, target, n)
    local = sites is not None
    if local and position_window is None:
        position_window = 0.1
    if orientation_bound is None:
        orientation_bound = 0.5 if local else 2.0
    ref = {"sites": sites, "orientations": rotations}
    net = {"num_bins": num_bins, "hidden": hidden, "depth": depth}
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(int(seed))
        layers = []
        for _ in range(int(num_layers)):
            for axis in range(3):
                layers.append(
                    PositionCoupling(n, box, axis=axis, window=position_window, **ref, **net)
                )
            for component in range(3):
                layers.append(
                    OrientationCoupling(
                        n, box, components=(component,), bound=orientation_bound,
                        position_window=position_window, **ref, **net,
                    )
                )  # fmt: skip
        if local:
            layers.append(PositionContraction(n, box, sites, rotations, scale=scale))
            layers.append(OrientationContraction(n, box, sites, rotations, scale=scale))
    return Flow(RigidBodyBase(n, box), Compose(*layers))
