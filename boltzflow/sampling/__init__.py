"""MCMC kernels over immutable state, flow-based samplers and reweighting.

Rooms, one idea each:

* :mod:`boltzflow.sampling.base` -- the kernel contract and the one MH acceptance;
* :mod:`boltzflow.sampling.kernels` -- IMH (and its batched sweep), MALA, HMC, latent HMC
  (NeuTra), mixtures;
* :mod:`boltzflow.sampling.chains` -- :func:`run_chain`;
* :mod:`boltzflow.sampling.adaptation` -- warm-up step-size and metric adaptation;
* :mod:`boltzflow.sampling.proposals` -- defensive proposal densities around a flow;
* :mod:`boltzflow.sampling.diagnostics` -- τ_int, ESS, R-hat, MCSE (emcee/arviz);
* :mod:`boltzflow.sampling.reweighting` -- ESS, log Z, PSIS k̂, expectations, ΔF (log-weights
  and their rule: :mod:`boltzflow.weights`);
* :mod:`boltzflow.sampling.runners` -- ``SamplingResult`` and its builders, importance
  sampling, flow IMH, and the plumbing the runners share;
* runners by family: :mod:`~boltzflow.sampling.neutra`, :mod:`~boltzflow.sampling.lattice_hmc`,
  :mod:`~boltzflow.sampling.hybrid`, :mod:`~boltzflow.sampling.emcee_move`,
  :mod:`~boltzflow.sampling.bayes_anneal`.
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
