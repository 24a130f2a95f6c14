r"""The base distribution of rigid-body flows: uniform positions in the box times Haar on $S^3$.

For $N$ molecules in an orthorhombic box of volume $V = L_x L_y L_z$, positions are uniform
in $[0, L_x) \times [0, L_y) \times [0, L_z)$ (a torus: the log-density does not depend on
how positions are wrapped) and orientations uniform on $S^3$, whose pushforward to $SO(3)$ is
the Haar measure. With respect to Lebesgue measure on positions times the surface measure on
$S^3$ (area $2\pi^2$),

$$
\log p(x) = -N\,\big(\log V + \log 2\pi^2\big).
$$
"""

from __future__ import annotations

import math

import torch

from boltzflow.coordinates.quaternion import LOG_S3_AREA, random_quaternion
from boltzflow.flows.distributions import BaseDistribution
from boltzflow.flows.rigid.charts import join_state

__all__ = ["RigidBodyBase"]


class RigidBodyBase(BaseDistribution):
    """Uniform positions in the box × uniform unit quaternions, event shape `(7 N,)`.

    Args:
        n_molecules: $N$.
        box: orthorhombic box edges `(3,)` in nm.
    """

    def __init__(self, n_molecules: int, box):
        super().__init__((7 * int(n_molecules),))
        self.n_molecules = int(n_molecules)
        self.register_buffer(
            "box", torch.as_tensor(box, dtype=torch.get_default_dtype()).reshape(3)
        )
        self.log_density = -self.n_molecules * (
            math.log(float(torch.prod(self.box.double()))) + LOG_S3_AREA
        )

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`n` states `(n, 7 N)`: positions uniform in the box, quaternions uniform on $S^3$."""
        anchor = self._anchor
        r = torch.rand(
            n, self.n_molecules, 3, generator=generator, dtype=anchor.dtype, device=anchor.device
        )
        q = random_quaternion(
            (n, self.n_molecules), generator=generator, dtype=anchor.dtype, device=anchor.device
        )
        return join_state(r * self.box, q)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """The constant $-N(\\log V + \\log 2\\pi^2)$, shape `[batch]`."""
        return torch.full_like(z[:, 0], self.log_density)
