r"""Fitting a flow to data inside a sampler: maximum likelihood on a fixed set of draws.

Samplers that train their proposal on their own history (the hybrid sampler's warm-up,
flow-emcee, annealed importance-weighted training) need a short, plain loop rather than the
staged [`Trainer`][boltzflow.training.trainer.Trainer]: Adam (Kingma & Ba 2015) on the negative
log-likelihood

$$
\mathcal L(\phi) = -\frac1B \sum_{b=1}^{B} \log q_\phi(x_{i_b}),
$$

the forward KL $\mathrm{KL}(p\,\|\,q_\phi)$ up to a constant when the data are draws from
$p$ (mass covering; flowMC: Gabrié, Rotskoff & Vanden-Eijnden 2022, PNAS 119,
e2109420119). Minibatch indices $i_b$ are drawn with replacement from an explicit
generator, uniformly or with given probabilities (an importance-weighted NLL, Müller et al.
2019, "Neural importance sampling", ACM TOG 38, 145).
"""

from __future__ import annotations

import logging

import torch

from boltzflow.flows.affine import ElementwiseAffine
from boltzflow.training.losses import nll

__all__ = ["fit_nll", "fit_affine_to_data"]

logger = logging.getLogger(__name__)

CLIP_GRAD_NORM = 10.0
"""Gradient-norm clip of `fit_nll`."""


def fit_nll(
    flow,
    data: torch.Tensor,
    steps: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    probs: torch.Tensor | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> list[float]:
    """Adam on the flow's negative log-likelihood of `data [n, *event]`; returns the losses.

    Gradients are clipped to norm 10; batches of `min(batch_size, n)` indices are drawn with
    replacement from `generator`: uniformly, or `batch_size` with probabilities
    `probs [n]` (a weighted NLL). `optimizer` continues an existing optimizer instead of a
    fresh Adam at `lr`. Data points where the flow's density is not finite are dropped from
    their batch's mean, and a step whose loss is not finite is skipped; both are counted and
    logged as one warning at the end. The flow is left in eval mode.

    Returns:
        the loss of every step taken (skipped steps are not listed); `[]` when `steps <= 0`
        or the flow has no trainable parameter.
    """
    params = [p for p in flow.parameters() if p.requires_grad]
    if not params or steps <= 0:
        return []
    opt = optimizer if optimizer is not None else torch.optim.Adam(params, lr=lr)
    losses, skipped, dropped, seen = [], 0, 0, 0
    flow.train()
    for _ in range(int(steps)):
        if probs is None:
            n = min(batch_size, data.shape[0])
            idx = torch.randint(data.shape[0], (n,), generator=generator, device=generator.device)
        else:
            g_probs = probs.to(generator.device)  # multinomial draws on the generator's device
            idx = torch.multinomial(g_probs, int(batch_size), replacement=True, generator=generator)
        out = nll(flow, None, data[idx.to(data.device)])
        loss, dropped, seen = out.loss, dropped + out.n_nonfinite, seen + int(idx.numel())
        if not torch.isfinite(loss):
            skipped += 1
            continue
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP_GRAD_NORM)
        opt.step()
        losses.append(float(loss.detach()))
    flow.eval()
    if skipped or dropped:
        logger.warning(
            "NLL training dropped %d of %d data points whose flow density was not finite and "
            "skipped %d of %d steps whose loss was not finite",
            dropped,
            seen,
            skipped,
            int(steps),
        )
    return losses


def fit_affine_to_data(flow, data: torch.Tensor) -> None:
    """Set every [`ElementwiseAffine`][boltzflow.flows.affine.ElementwiseAffine] layer of `flow` to
    the per-coordinate mean and standard deviation of `data [n, *event]` (a data-dependent
    initialisation before [`fit_nll`][boltzflow.training.fit.fit_nll])."""
    for m in flow.modules():
        if isinstance(m, ElementwiseAffine):
            m.set_from_data(data)
