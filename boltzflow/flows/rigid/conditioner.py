r"""A permutation-equivariant conditioner for couplings over $N$ molecules (DeepSets pooling).

Given per-molecule features $g_i$ `(batch, N, F)` and pair features $e_{ij}$
`(batch, N, N, E)` (for example the periodic embedding of the minimum-image displacement
$r_j - r_i$), the conditioner returns per-molecule parameters

$$
m_{ij} = \sigma(A g_i + C g_j + W e_{ij} + b), \qquad
h_i = \frac{1}{N-1}\sum_{j \ne i} m_{ij}, \qquad
\theta_i = \varphi([g_i, h_i]),
$$

with a one-layer message ($\sigma$ = SiLU; $A g_i$ and $C g_j$ are computed once per molecule,
so a pair costs one small matrix product $W e_{ij}$) and a multilayer perceptron $\varphi$,
all shared by all molecules (Zaheer et al. 2017, "Deep sets"). Relabelling the molecules by
a permutation $\pi$ permutes the outputs,
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
        hidden: width of the messages and of $\\varphi$.
        depth: hidden layers of $\\varphi$.
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
        self.receiver = nn.Linear(node_features, hidden)
        self.sender = nn.Linear(node_features, hidden, bias=False)
        self.edge = nn.Linear(pair_features, hidden, bias=False)
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
        pre = self.receiver(nodes)[:, :, None] + self.sender(nodes)[:, None, :] + self.edge(pairs)
        h = self.pool(nn.functional.silu(pre))
        return self.update(torch.cat((nodes, h), dim=-1))
