"""MCMC kernels over immutable state, flow-based samplers and reweighting.

Rooms, one idea each:

* [`boltzflow.sampling.base`][boltzflow.sampling.base] -- the kernel contract and the one MH
  acceptance;
* [`boltzflow.sampling.kernels`][boltzflow.sampling.kernels] -- IMH (and its batched sweep), MALA,
  HMC, latent HMC (NeuTra), mixtures;
* [`boltzflow.sampling.chains`][boltzflow.sampling.chains] --
  [`run_chain`][boltzflow.sampling.chains.run_chain];
* [`boltzflow.sampling.adaptation`][boltzflow.sampling.adaptation] -- warm-up step-size and metric
  adaptation;
* [`boltzflow.sampling.proposals`][boltzflow.sampling.proposals] -- defensive proposal densities
  around a flow;
* [`boltzflow.sampling.diagnostics`][boltzflow.sampling.diagnostics] -- τ_int, ESS, R-hat, MCSE
  (emcee/arviz);
* [`boltzflow.sampling.reweighting`][boltzflow.sampling.reweighting] -- ESS, log Z, PSIS k̂,
  expectations, ΔF (log-weights
  and their rule: [`boltzflow.weights`][boltzflow.weights]);
* [`boltzflow.sampling.runners`][boltzflow.sampling.runners] -- `SamplingResult` and its builders,
  importance sampling, flow IMH, and the plumbing the runners share;
* runners by family: [`neutra`][boltzflow.sampling.neutra],
  [`lattice_hmc`][boltzflow.sampling.lattice_hmc], [`hybrid`][boltzflow.sampling.hybrid],
  [`emcee_move`][boltzflow.sampling.emcee_move], [`bayes_anneal`][boltzflow.sampling.bayes_anneal],
  [`smc`][boltzflow.sampling.smc] (flow-preconditioned SMC, gradient-free; with
  [`smc_moves`][boltzflow.sampling.smc_moves] and
  [`smc_reference`][boltzflow.sampling.smc_reference]).
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
