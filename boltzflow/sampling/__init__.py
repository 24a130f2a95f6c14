"""MCMC kernels over immutable state, flow-based samplers and reweighting."""
