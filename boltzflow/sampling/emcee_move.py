r"""An emcee move that proposes independently from a normalizing flow.

For walkers at :math:`x` the move draws :math:`x' \sim q` from the flow and emcee accepts with

.. math:: \alpha = \min\Bigl(1, \frac{p(x')\,q(x)}{p(x)\,q(x')}\Bigr),

i.e. the proposal returns the log q-ratio ``log q(x) - log q(x')`` that emcee's
:class:`emcee.moves.MHMove` expects (independence Metropolis–Hastings; Hastings 1970, Tierney
1994). Mixed with emcee's own ensemble moves, e.g.
``moves=[(StretchMove(), 0.7), (FlowMove(flow), 0.3)]``, each move leaves the target invariant,
so the mixture does too (Tierney 1994, §2.4); the flow supplies jumps between modes that the
stretch move (Goodman & Weare 2010) cannot make.

emcee hands moves its legacy :class:`numpy.random.RandomState`; the flow is driven by a
``torch.Generator`` seeded from it, so a seeded emcee run is reproducible end to end.
"""

from __future__ import annotations

import numpy as np
import torch
from emcee.moves import MHMove

__all__ = ["FlowMove"]


class FlowMove(MHMove):
    """Independence proposals from ``flow`` for every walker (an :class:`emcee.moves.MHMove`).

    Args:
        flow: anything with ``sample(n, generator) -> (x, z, log_q)`` and ``log_prob(x)``
            over the same coordinates as emcee's walkers (``[n_walkers, ndim]``), usually a
            :class:`~boltzflow.flows.base.Flow` trained on the target.
        dtype: dtype the flow is evaluated in.

    Attributes:
        n_proposed: walker proposals made so far (the acceptance rate is read from emcee).
    """

    def __init__(self, flow, dtype: torch.dtype = torch.float64):
        self.flow = flow
        self.dtype = dtype
        self.n_proposed = 0
        params = next(iter(flow.parameters()), None) if hasattr(flow, "parameters") else None
        self.device = params.device if params is not None else torch.device("cpu")
        super().__init__(self._propose, ndim=int(getattr(flow, "dim", 0)) or None)

    def _generator(self, random: np.random.RandomState) -> torch.Generator:
        seed = int(random.randint(0, 2**31 - 1)) * (2**31) + int(random.randint(0, 2**31 - 1))
        return torch.Generator(device=self.device).manual_seed(seed)

    @torch.no_grad()
    def _propose(self, coords: np.ndarray, random: np.random.RandomState):
        n = coords.shape[0]
        g = self._generator(random)
        sample = self.flow.sample(n, generator=g)
        x_old = torch.as_tensor(coords, dtype=self.dtype, device=self.device)
        log_q_old = self.flow.log_prob(x_old)
        factors = (log_q_old - sample.log_q).double().cpu().numpy()
        # a proposal with undefined density is rejected; NaN never reaches emcee
        factors = np.where(
            np.isnan(factors) | ~np.isfinite(sample.log_q.double().cpu().numpy()), -np.inf, factors
        )
        self.n_proposed += n
        return sample.x.double().cpu().numpy(), factors
