"""MCMC kernels as ``(init, step)`` pairs over immutable, resumable states.

* :class:`IndependenceMH` -- flow independence proposals (global moves);
* :class:`MALA` -- Metropolis-adjusted Langevin;
* :class:`HMC` -- Hamiltonian Monte Carlo (:func:`leapfrog` is reusable; torus ``wrap``);
* :class:`LatentHMC` -- HMC on the flow-pulled-back energy (NeuTra), via :class:`PulledBackEnergy`;
* :class:`Mixture` -- cycles and random mixtures of the above, with per-kernel acceptance.

Run them with :func:`boltzflow.sampling.chains.run_chain`.
"""

from boltzflow.sampling.kernels.hmc import (
    HMC,
    DenseMetric,
    LeapfrogResult,
    kinetic_energy,
    leapfrog,
    torus_wrap,
)
from boltzflow.sampling.kernels.imh import IMHState, IndependenceMH
from boltzflow.sampling.kernels.latent_hmc import LatentHMC, LatentHMCState, PulledBackEnergy
from boltzflow.sampling.kernels.mala import MALA, GradientState
from boltzflow.sampling.kernels.mh import energy_and_grad
from boltzflow.sampling.kernels.mixture import Mixture, MixtureInfo, MixtureState

__all__ = [
    "IndependenceMH",
    "IMHState",
    "MALA",
    "GradientState",
    "HMC",
    "DenseMetric",
    "leapfrog",
    "LeapfrogResult",
    "kinetic_energy",
    "torus_wrap",
    "LatentHMC",
    "LatentHMCState",
    "PulledBackEnergy",
    "Mixture",
    "MixtureState",
    "MixtureInfo",
    "energy_and_grad",
]
