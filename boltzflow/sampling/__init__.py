"""MCMC kernels over immutable state, flow-based samplers and reweighting.

* :mod:`boltzflow.sampling.kernels` -- IMH, MALA, HMC, latent HMC (NeuTra), mixtures;
* :mod:`boltzflow.sampling.chains` -- :func:`run_chain`;
* :mod:`boltzflow.sampling.diagnostics` -- τ_int, ESS, R-hat, MCSE (emcee/arviz);
* :mod:`boltzflow.sampling.reweighting` -- importance weights, ESS, log Z, PSIS k̂, ΔF;
* :mod:`boltzflow.sampling.runners` -- recipe-level samplers returning ``SamplingResult``.
"""

from boltzflow.sampling.chains import ChainResult, run_chain
from boltzflow.sampling.kernels import (
    HMC,
    MALA,
    IndependenceMH,
    LatentHMC,
    Mixture,
    PulledBackEnergy,
)
from boltzflow.sampling.reweighting import (
    ReweightingResult,
    expectation,
    free_energy_difference,
    log_weights,
    reweight,
)
from boltzflow.sampling.runners import SamplingResult, flow_imh, importance_sampling

__all__ = [
    "ChainResult",
    "run_chain",
    "HMC",
    "MALA",
    "IndependenceMH",
    "LatentHMC",
    "Mixture",
    "PulledBackEnergy",
    "ReweightingResult",
    "expectation",
    "free_energy_difference",
    "log_weights",
    "reweight",
    "SamplingResult",
    "flow_imh",
    "importance_sampling",
]
