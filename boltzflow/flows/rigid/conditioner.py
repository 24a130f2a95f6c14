r"""A permutation-equivariant conditioner for couplings over $N$ molecules (DeepSets pooling).

Given per-molecule features $g_i$ `(batch, N, F)` and pair features $e_{ij}$
`(batch, N, N, E)` (for example the periodic embedding of the minimum-image displacement
$r_j - r_i$), the conditioner returns per-molecule parameters

$$
m_{ij} = \psi([g_i, g_j, e_{ij}]), \qquad
h_i = \frac{1}{N-1}\sum_{j \ne i} m_{ij}, \qquad
\theta_i = \varphi([g_i, h_i]),
$$

with multilayer perceptrons $\psi, \varphi$ shared by all molecules (Zaheer et al. 2017,
"Deep sets"). Relabelling the molecules by a permutation $\pi$ permutes the outputs,
$\theta_{\pi(i)}(\pi \cdot g, \pi \cdot e) = \theta_i(g, e)$, so a coupling whose elementwise
maps take $\theta_i$ is permutation-equivariant and its log-determinant (a sum over molecules)
is permutation-invariant. The last layer of $\varphi$ starts at zero, so a fresh coupling is
the identity.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SetConditioner"]


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.SiLU()]
    return nn.Sequential(*layers[:-1])


class SetConditioner(nn.Module):
    """Per-molecule outputs from per-molecule and pair features, equivariant under relabelling.

    Args:
        node_features: $F$, the size of $g_i$.
        pair_features: $E$, the size of $e_{ij}$.
        out_features: parameters per molecule.
        hidden: width of $\\psi$ and $\\varphi$.
        depth: hidden layers of each perceptron.
    """

    def __init__(
        self,
        node_features: int,
        pair_features: int,
        out_features: int,
        hidden: int = 64,
        depth: int = 2,
    ):
        super().__init__()
        self.message = _mlp([2 * node_features + pair_features] + [hidden] * depth)
        self.update = _mlp([node_features + hidden] + [hidden] * depth + [out_features])
        nn.init.zeros_(self.update[-1].weight)
        nn.init.zeros_(self.update[-1].bias)

    def pool(self, messages: torch.Tensor) -> torch.Tensor:
        """Mean over the other molecules $j \\ne i$ of `messages` `(batch, N, N, H)`."""
        n = messages.shape[1]
        if n == 1:
            return torch.zeros_like(messages[:, :, 0])
        off = 1.0 - torch.eye(n, dtype=messages.dtype, device=messages.device)
        return (messages * off[None, :, :, None]).sum(2) / (n - 1)

    def forward(self, nodes: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        """Parameters `(batch, N, out)` of `nodes` `(batch, N, F)`, `pairs` `(batch, N, N, E)`."""
        n = nodes.shape[1]
        gi = nodes[:, :, None].expand(-1, -1, n, -1)
        gj = nodes[:, None, :].expand(-1, n, -1, -1)
        h = self.pool(self.message(torch.cat((gi, gj, pairs), dim=-1)))
        return self.update(torch.cat((nodes, h), dim=-1))
