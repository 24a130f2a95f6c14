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
`reference` (the ideal crystal, or the mean structure of MD frames, `mean_structure`),
positions move by centre-preserving affine couplings of the displacements from each molecule's
site ([`CentredPositionCoupling`][boltzflow.flows.rigid.couplings.CentredPositionCoupling]: the
flow commutes with translations of the whole crystal) and orientations by splines in a chart
about each molecule's reference rotation; molecules are then tied to their sites, and
relabelling them together with the reference leaves the density unchanged. The crystal layers are
bijections of compact crystals (no displacement from the centre beyond half a box edge), so a
flow with a reference is meant as a map of crystal samples (a sample-set base, targeted
free-energy perturbation), not as a sampler from the uniform base.

Reference: Köhler et al. 2023, "Rigid body flows for sampling molecular crystal structures".
"""

from __future__ import annotations

import torch

from boltzflow.flows.base import Compose, Flow
from boltzflow.flows.rigid.charts import mean_structure
from boltzflow.flows.rigid.contraction import OrientationContraction, PositionContraction
from boltzflow.flows.rigid.couplings import (
    CentredPositionCoupling,
    OrientationCoupling,
    PositionCoupling,
)
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


def _reference(reference, target, n: int, box):
    """Sites `(N, 3)` and rotations `(N, 4)` of the reference, or `(None, None)`."""
    if reference is None:
        return None, None
    if isinstance(reference, str):
        if reference != "target":
            raise ValueError("reference must be a rigid state, frames, None or 'target'")
        reference = target.reference_state
        if reference is None:
            raise ValueError(
                f"reference='target' needs a target with a reference_state; "
                f"{type(target).__name__} has none: give the reference state or frames"
            )
    reference = torch.as_tensor(reference, dtype=torch.float64)
    if reference.ndim == 2 and reference.shape[0] > 1:  # frames: their mean structure
        reference = mean_structure(reference, box)
    state = reference.to(torch.get_default_dtype()).reshape(n, 7)
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
    position_scale: float = 0.05,
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
        reference: a rigid state `(7 N,)` (sites and reference rotations), frames
            `(n, 7 N)` (their `mean_structure`), `"target"` for the target's `reference_state`
            (or an ice target's start structure), or `None`.
        position_scale: length scale (nm) of the displacement features and shifts of the
            position couplings (with a reference).
        orientation_bound: half-width of the orientation splines in the Rodrigues chart
            (default 1.0, a 90° rotation, with a reference; 2.0 without).
        scale: initial factor of the contractions (with a reference; 1 = identity).
        seed: seeds the conditioners' initial weights (torch's global RNG is left alone).

    Returns:
        A [`Flow`][boltzflow.flows.base.Flow] with event shape `(7 N,)`.
    """
    target = n_molecules
    n, box = _system(n_molecules, box)
    if box is None:
        raise ValueError("rigid_body_flow needs the box edges (nm)")
    sites, rotations = _reference(reference, target, n, box)
    local = sites is not None
    if orientation_bound is None:
        orientation_bound = 1.0 if local else 2.0
    net = {"num_bins": num_bins, "hidden": hidden, "depth": depth}
    centred = {"axis": 0, "scale": position_scale, "hidden": hidden, "depth": depth}
    turn = {"bound": orientation_bound, "position_scale": position_scale, **net}
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(int(seed))
        layers = []
        for _ in range(int(num_layers)):
            for axis in range(3):
                if local:
                    centred["axis"] = axis
                    layers.append(CentredPositionCoupling(n, box, sites, rotations, **centred))
                else:
                    layers.append(PositionCoupling(n, box, axis=axis, **net))
            for c in range(3):
                layers.append(
                    OrientationCoupling(
                        n, box, components=(c,), sites=sites, orientations=rotations, **turn
                    )
                )
        if local:
            layers.append(PositionContraction(n, box, sites, rotations, scale=scale))
            layers.append(OrientationContraction(n, box, sites, rotations, scale=scale))
    return Flow(RigidBodyBase(n, box), Compose(*layers))
