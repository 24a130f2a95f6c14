"""MCMC kernels as `(init, step)` pairs over immutable, resumable states.

* [`IndependenceMH`][boltzflow.sampling.kernels.IndependenceMH] -- flow independence proposals
  (global moves);
* [`MALA`][boltzflow.sampling.kernels.MALA] -- Metropolis-adjusted Langevin;
* [`HMC`][boltzflow.sampling.kernels.HMC] -- Hamiltonian Monte Carlo
  ([`leapfrog`][boltzflow.sampling.kernels.leapfrog] is reusable; torus `wrap`);
* [`LatentHMC`][boltzflow.sampling.kernels.LatentHMC] -- HMC on the flow-pulled-back energy
  (NeuTra), via [`PulledBackEnergy`][boltzflow.sampling.kernels.PulledBackEnergy];
* [`Mixture`][boltzflow.sampling.kernels.Mixture] -- cycles and random mixtures of the above, with
  per-kernel acceptance.

Run them with [`boltzflow.sampling.chains.run_chain`][boltzflow.sampling.chains.run_chain].
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
