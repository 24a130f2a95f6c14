r"""The one Metropolis–Hastings acceptance rule (Metropolis et al. 1953; Hastings 1970).

$\log\alpha = -(u_\text{new} - u_\text{old}) + \log q_\text{ratio}$, accepted with probability
$\min(1, e^{\log\alpha})$. It lives in this torch-only core module so that every user shares
it: the MCMC kernels of `boltzflow.sampling` (re-exported by `boltzflow.sampling.base`) and the
Metropolis blocks of stochastic normalizing flows in `boltzflow.flows.stochastic`. The uniforms
are drawn on the device and in the dtype of `log_alpha`, from an explicit generator.
"""

from __future__ import annotations

import torch

__all__ = ["log_acceptance_ratio", "metropolis_hastings_accept"]


def log_acceptance_ratio(
    energy_old: torch.Tensor, energy_new: torch.Tensor, log_q_ratio: torch.Tensor | float = 0.0
) -> torch.Tensor:
    r"""`log α = -(u_new - u_old) + log q_ratio`, with non-finite proposals mapped to `-inf`.

    A non-finite proposed energy (NaN, `+inf` or `-inf`) is never accepted, and a NaN
    `log_q_ratio` rejects. A chain whose current energy is non-finite (NaN or `+inf`, e.g.
    a bad starting point) accepts any proposal with finite energy and finite `log_q_ratio`,
    so it can escape. NaN is never produced.
    """
    energy_old = torch.as_tensor(energy_old)
    energy_new = torch.as_tensor(energy_new)
    neg_inf = torch.tensor(-torch.inf, dtype=energy_new.dtype, device=energy_new.device)
    # a non-finite current energy is treated as +inf: any finite proposal is an improvement
    energy_old = torch.where(
        torch.isfinite(energy_old), energy_old, torch.full_like(energy_old, torch.inf)
    )
    log_alpha = energy_old - energy_new + log_q_ratio
    log_alpha = torch.where(torch.isfinite(energy_new), log_alpha, neg_inf)
    return torch.where(torch.isnan(log_alpha), neg_inf, log_alpha)


def metropolis_hastings_accept(
    log_alpha: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Accept each chain with probability $\min(1, e^{\log\alpha})$.

    Returns `(accepted: BoolTensor[chains], acceptance_prob: Tensor[chains])`. NaN
    `log_alpha` is treated as `-inf` (reject).
    """
    log_alpha = torch.where(
        torch.isnan(log_alpha), torch.full_like(log_alpha, -torch.inf), log_alpha
    )
    u = torch.rand(
        log_alpha.shape, generator=generator, dtype=log_alpha.dtype, device=log_alpha.device
    )
    accepted = torch.log(u) < log_alpha
    return accepted, torch.exp(torch.clamp(log_alpha, max=0.0))
