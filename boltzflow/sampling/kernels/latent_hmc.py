r"""HMC in a normalizing flow's latent space (NeuTra / flow-HMC).

With a flow `x = f(z)` the target $p(x) \propto e^{-u(x)}$ pulls back to the latent
density $\tilde p(z) = p(f(z))\,|\det J_f(z)|$, i.e. to the energy

$$
U(z) = u(f(z)) - \log|\det \partial f/\partial z| .
$$

The flow's base density does **not** enter: if the flow were exact, `U` would be the base
energy (e.g. `½|z|²` up to a constant) and HMC would see an isotropic Gaussian. HMC on `U`
([`HMC`][boltzflow.sampling.kernels.HMC]) therefore samples `z` whose image `f(z)` is
exactly distributed as `p`, for any invertible `f`; a good flow only makes it mix faster.
`∫ e^{-U(z)} dz = ∫ e^{-u(x)} dx`, so `log Z` is unchanged.

References: Hoffman et al. (2019), "NeuTra-lizing bad geometry in Hamiltonian Monte Carlo using
neural transport", arXiv:1903.03704; Foreman et al. (2021), "HMC with normalizing flows",
arXiv:2112.01586. Local moves in latent space cannot cross between well separated modes
(Grenioux et al. 2023); mix them with [`IndependenceMH`][boltzflow.sampling.kernels.IndependenceMH].
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from boltzflow.energies.base import Energy
from boltzflow.flows.base import Flow
from boltzflow.sampling.base import StepInfo
from boltzflow.sampling.kernels.hmc import HMC, PositionMap
from boltzflow.sampling.kernels.mala import GradientState
from boltzflow.sampling.kernels.mh import where_chains
from boltzflow.weights import importance_log_weights

__all__ = ["PulledBackEnergy", "LatentHMCState", "LatentHMC"]


class PulledBackEnergy(Energy):
    r"""The target pulled back through a flow: `U(z) = u(f(z)) - ladj(z)` in kT.

    `event_shape` is the flow's latent shape; each evaluation costs one flow forward pass and
    one target evaluation (counted by both this energy and `target`). `log_z` equals the
    target's. Temperature acts on `u` only: `at_temperature` pulls back the tempered
    target, never rescales the log-det.
    """

    def __init__(self, target: Energy, flow: Flow):
        super().__init__(flow.event_shape)
        self.target = target
        self.flow = flow
        self.log_z = target.log_z

    def _energy(self, z: torch.Tensor) -> torch.Tensor:
        x, ladj = self.flow.forward(z)
        return self.target.energy(x) - ladj

    def at_temperature(self, temperature_scale: float) -> PulledBackEnergy:
        return PulledBackEnergy(self.target.at_temperature(temperature_scale), self.flow)


class LatentHMCState(NamedTuple):
    """State of [`LatentHMC`][boltzflow.sampling.kernels.LatentHMC]: configuration `x = f(z)`,
    target energy `u(x)` (kT), RNG state, latent point `z`, latent energy `U(z)` and its gradient
    `∂U/∂z`."""

    x: torch.Tensor
    energy: torch.Tensor
    rng_state: torch.Tensor
    z: torch.Tensor
    latent_energy: torch.Tensor
    latent_grad: torch.Tensor


class LatentHMC:
    r"""HMC on [`PulledBackEnergy`][boltzflow.sampling.kernels.PulledBackEnergy] (NeuTra); states
    and infos report `x = f(z)`.

    Args:
        target: the [`Energy`][boltzflow.energies.base.Energy] `u` (kT).
        flow: an invertible [`Flow`][boltzflow.flows.base.Flow] (held fixed).
        step_size, n_leapfrog, mass, wrap, jitter: as for
            [`HMC`][boltzflow.sampling.kernels.HMC], acting in latent space.

    `Info.log_weight` is `-u(x) - log q(x) = -U(z) - log p_z(z)`, the flow's importance
    weight of the current point (a free diagnostic of flow quality).
    """

    State = LatentHMCState

    def __init__(
        self,
        target: Energy,
        flow: Flow,
        step_size: float | torch.Tensor,
        n_leapfrog: int,
        mass: float | torch.Tensor = 1.0,
        wrap: PositionMap | float | None = None,
        jitter: float = 0.0,
    ):
        self.target = target
        self.flow = flow
        self.latent_target = PulledBackEnergy(target, flow)
        self.hmc = HMC(
            self.latent_target, step_size, n_leapfrog, mass=mass, wrap=wrap, jitter=jitter
        )

    def _from_latent(self, x: torch.Tensor, inner: GradientState) -> LatentHMCState:
        """Build the state from a latent HMC state at `z` with `x = f(z)` already known."""
        return LatentHMCState(
            x, self._target_energy(inner), inner.rng_state, inner.x, inner.energy, inner.grad
        )

    def _target_energy(self, inner: GradientState) -> torch.Tensor:
        # u(f(z)) = U(z) + ladj(z); one flow pass, no target evaluation
        with torch.no_grad():
            _, ladj = self.flow.forward(inner.x)
        return inner.energy + ladj

    def _to_latent(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.flow.inverse(x)[0]

    def init(self, x0: torch.Tensor, seed: int | torch.Generator | None = None) -> LatentHMCState:
        """Start at `z0 = f⁻¹(x0)` (one flow inverse, one energy + gradient evaluation)."""
        inner = self.hmc.init(self._to_latent(x0), seed)
        return self._from_latent(x0.detach(), inner)

    def adopt(self, state) -> LatentHMCState:
        """Take over any state with `x`, `energy`, `rng_state`.

        The latent point, `U` and `∂U/∂z` are always recomputed from `x` (one flow inverse
        and one energy + gradient evaluation), so a state from another flow is never misread.
        """
        inner = self.hmc.init(self._to_latent(state.x), seed=0)  # RNG replaced below
        inner = inner._replace(rng_state=state.rng_state)
        return self._from_latent(state.x, inner)

    def step(self, state: LatentHMCState) -> tuple[LatentHMCState, StepInfo]:
        """One HMC step in latent space; `x`, `u` follow through `f`."""
        inner = GradientState(state.z, state.latent_energy, state.rng_state, state.latent_grad)
        inner, hmc_info = self.hmc.step(inner)
        acc = hmc_info.accepted
        with torch.no_grad():
            x_new, ladj = self.flow.forward(inner.x)
            log_pz = self.flow.base.log_prob(inner.x)
        x = where_chains(acc, x_new, state.x)
        u = torch.where(acc, inner.energy + ladj, state.energy)
        new_state = LatentHMCState(x, u, inner.rng_state, inner.x, inner.energy, inner.grad)
        log_w = importance_log_weights(inner.energy, log_pz)
        return new_state, StepInfo(acc, hmc_info.acceptance_prob, u, log_w)
