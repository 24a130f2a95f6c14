r"""Pieces of tail-adaptive flows: a Student-t/Gaussian base, group mixing, a tail transform.

A flow with a Gaussian base and splines with linear tails has Gaussian marginal tails; as an
importance proposal for a heavier-tailed target its weights have infinite variance. Two
remedies, both built from the pieces here by
[`tail_adaptive_flow`][boltzflow.flows.tail_builders.tail_adaptive_flow]:

* **mTAF** (Laszkiewicz, Lederer & Fischer 2022, "Marginal tail-adaptive normalizing flows"):
  a base with Student-t marginals of learnable degrees of freedom on the heavy-tailed
  dimensions ([`StudentTNormal`][boltzflow.flows.tails.StudentTNormal]), linear layers that mix
  only within the light and within the heavy group
  ([`GroupLinear`][boltzflow.flows.tails.GroupLinear]), then autoregressive splines whose
  linear tails carry each base marginal's tail to the output.
* **TTF** (Hickling & Prangle 2025, "Flexible tails for normalizing flows"): a Gaussian base
  and a final elementwise [`TailTransform`][boltzflow.flows.tails.TailTransform] with
  learnable left and right tail weights.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from boltzflow.energies.heavy_tails import student_t_log_prob
from boltzflow.flows.base import Transform, TransformResult
from boltzflow.flows.distributions import BaseDistribution

__all__ = ["StudentTNormal", "GroupLinear", "TailTransform", "student_t_log_prob"]

_LOG_2PI = math.log(2 * math.pi)
_LOG_2 = math.log(2.0)


class StudentTNormal(BaseDistribution):
    r"""Product base: $\mathcal N(0,1)$ on light dimensions, Student-t$(\nu_j)$ on heavy ones.

    $$\log p(z) = \sum_{i \notin H} \big(-\tfrac12 z_i^2 - \tfrac12\log 2\pi\big)
    + \sum_{j \in H} \log t_{\nu_j}(z_j),$$

    the mTAF base of Laszkiewicz, Lederer & Fischer (2022). The degrees of freedom are
    parametrized as $\nu_j = \nu_{\min} + e^{\theta_j}$ and learnable by default.

    Sampling is reparametrized in $\nu$: $z_j = \varepsilon_j \sqrt{\nu_j / (2 G_j)}$ with
    $\varepsilon_j \sim \mathcal N(0,1)$ and $G_j \sim \mathrm{Gamma}(\nu_j/2, 1)$, whose
    gradient in $\nu_j$ is torch's implicit Gamma reparametrization. The Gamma draws use a
    seed taken from `generator`, so draws are reproducible from the generator.

    Args:
        heavy: bool mask over the (flat) event; `True` marks a Student-t dimension.
        df: initial degrees of freedom of the heavy dimensions: a scalar or one value per
            heavy dimension.
        learnable: learn the degrees of freedom (otherwise they are a buffer).
        df_min: lower bound $\nu_{\min}$.

    Examples:
        >>> base = StudentTNormal([True, False], df=1.0)
        >>> base.sample(4, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([4, 2])
    """

    def __init__(self, heavy, df=1.0, learnable: bool = True, df_min: float = 0.05):
        heavy = torch.as_tensor(heavy, dtype=torch.bool).reshape(-1)
        super().__init__(heavy.numel())
        n = int(heavy.sum())
        df = torch.broadcast_to(torch.as_tensor(df, dtype=torch.get_default_dtype()), (n,))
        if not bool((df > df_min).all()):
            raise ValueError(f"degrees of freedom must exceed df_min = {df_min}")
        self.df_min = float(df_min)
        self.register_buffer("heavy", heavy)
        self.register_buffer("heavy_index", torch.nonzero(heavy).reshape(-1))
        self.register_buffer("light_index", torch.nonzero(~heavy).reshape(-1))
        raw = torch.log(df - df_min).clone()
        if learnable and n > 0:
            self.raw_df = nn.Parameter(raw)
        else:
            self.register_buffer("raw_df", raw)

    @property
    def df(self) -> torch.Tensor:
        """Degrees of freedom $\\nu_j$ of the heavy dimensions, `Tensor[n_heavy]`."""
        return self.df_min + torch.exp(self.raw_df)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = self._empty(n).normal_(generator=generator)
        if self.heavy_index.numel() == 0:
            return eps
        seed = int(torch.randint(2**62, (), generator=generator, device=eps.device).item())
        devices = [eps.device] if eps.device.type == "cuda" else []
        alpha = (0.5 * self.df).expand(n, -1)
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            gamma = torch._standard_gamma(alpha)
        tiny = torch.finfo(eps.dtype).tiny
        heavy = eps[:, self.heavy_index] * torch.sqrt(0.5 * self.df / gamma.clamp_min(tiny))
        return eps.index_copy(1, self.heavy_index, heavy)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        flat = z.reshape(z.shape[0], -1)
        light = flat[:, self.light_index]
        lp = -0.5 * (light * light).sum(-1) - 0.5 * light.shape[1] * _LOG_2PI
        if self.heavy_index.numel():
            lp = lp + student_t_log_prob(flat[:, self.heavy_index], self.df).sum(-1)
        return lp


class GroupLinear(Transform):
    r"""Invertible linear map that mixes features only within groups (mTAF's group mixing).

    For each group $g$ with feature indices $I_g$ and a fixed permutation $\pi_g$ of them,

    $$x_{I_g} = L_g U_g\, z_{\pi_g(I_g)}, \qquad
    \mathrm{ladj} = \sum_g \sum_k \log (U_g)_{kk},$$

    with $L_g$ unit lower triangular and $U_g$ upper triangular with positive diagonal
    $e^{m_{kk}}$ (an LU parametrization; both from one learnable matrix $M_g$, initialised to
    zero, so the layer starts as the permutation). The inverse uses two triangular solves.
    Features of different groups never mix, so a heavy-tailed coordinate stays heavy-tailed
    and a light one light (Laszkiewicz, Lederer & Fischer 2022, Section 4).

    Args:
        groups: integer label per flat feature (e.g. 0 light, 1 heavy).
        generator: draws the within-group permutations (identity if `None`).
        learnable: learn the LU factors (otherwise a pure within-group permutation).
    """

    def __init__(self, groups, generator: torch.Generator | None = None, learnable: bool = True):
        super().__init__()
        groups = torch.as_tensor(groups, dtype=torch.long).reshape(-1)
        self.dim = groups.numel()
        self.n_groups = 0
        self.mats = nn.ParameterList()
        for label in torch.unique(groups).tolist():
            index = torch.nonzero(groups == label).reshape(-1)
            perm = (
                index
                if generator is None
                else index[torch.randperm(len(index), generator=generator)]
            )
            self.register_buffer(f"index_{self.n_groups}", index)
            self.register_buffer(f"perm_{self.n_groups}", perm)
            self.n_groups += 1
        self.learnable = bool(learnable)
        if self.learnable:
            for g in range(self.n_groups):
                k = len(getattr(self, f"index_{g}"))
                self.mats.append(nn.Parameter(torch.zeros(k, k)))

    def _factors(self, g: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = self.mats[g]
        eye = torch.eye(m.shape[0], dtype=m.dtype, device=m.device)
        lower = torch.tril(m, -1) + eye
        log_diag = torch.diagonal(m)
        upper = torch.triu(m, 1) + torch.diag(torch.exp(log_diag))
        return lower, upper, log_diag

    def forward(self, z: torch.Tensor) -> TransformResult:
        flat = z.reshape(z.shape[0], -1)
        out, ladj = torch.empty_like(flat), flat.new_zeros(flat.shape[0])
        for g in range(self.n_groups):
            index, perm = getattr(self, f"index_{g}"), getattr(self, f"perm_{g}")
            part = flat[:, perm]
            if self.learnable:
                lower, upper, log_diag = self._factors(g)
                part = part @ (lower @ upper).T
                ladj = ladj + log_diag.sum()
            out[:, index] = part
        return TransformResult(out.reshape(z.shape), ladj)

    def inverse(self, x: torch.Tensor) -> TransformResult:
        flat = x.reshape(x.shape[0], -1)
        out, ladj = torch.empty_like(flat), flat.new_zeros(flat.shape[0])
        for g in range(self.n_groups):
            index, perm = getattr(self, f"index_{g}"), getattr(self, f"perm_{g}")
            part = flat[:, index]
            if self.learnable:
                lower, upper, log_diag = self._factors(g)
                part = torch.linalg.solve_triangular(lower, part.T, upper=False, unitriangular=True)
                part = torch.linalg.solve_triangular(upper, part, upper=True).T
                ladj = ladj - log_diag.sum()
            out[:, perm] = part
        return TransformResult(out.reshape(x.shape), ladj)


def _inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))


class TailTransform(Transform):
    r"""Elementwise tail transform with learnable left and right tail weights (TTF).

    With $s = \operatorname{sign}(z)$, $\lambda_s$ the tail weight of that side and
    $U(z) = \operatorname{erfc}(|z|/\sqrt2) = 2\Phi(-|z|) \in (0, 1]$,

    $$x = \mu + \sigma\, \frac{s}{\lambda_s}\big(U(z)^{-\lambda_s} - 1\big), \qquad
    \log\Big|\frac{dx}{dz}\Big| = \log\sigma + \log 2 + \log\varphi(z)
    - (1 + \lambda_s)\log U(z),$$

    the tail transform of Hickling & Prangle (2025). For standard normal $z$, $|x-\mu|/\sigma$
    is generalized-Pareto with shape $\lambda_s$ on each side: the tail decays like
    $|x|^{-1/\lambda_s}$, i.e. like a Student-t with $\nu = 1/\lambda_s$; as $\lambda \to 0$
    the tail becomes exponential (the lightest this layer produces). Near $z = 0$,
    $x \approx \mu + \sigma\sqrt{2/\pi}\,z$. The inverse is closed-form:
    $|z| = -\Phi^{-1}\big(\tfrac12 (1 + \lambda_s |x-\mu|/\sigma)^{-1/\lambda_s}\big)$,
    computed in log space (`log_ndtr`, `ndtri`) so deep tails stay finite.

    The weights are $\lambda = \lambda_{\min} + \operatorname{softplus}(\theta)$.

    Args:
        dim: number of (flat) features.
        tail_weights: initial $\lambda$: scalar, `[dim]` (both sides) or `[2, dim]`
            (left, right).
        loc, scale: initial $\mu$, $\sigma$ (scalars or `[dim]`).
        learnable_tails: learn $\lambda$ (`False`: fixed tails, a buffer).
        learnable_affine: learn $\mu$ and $\sigma$.
        lambda_min: lower bound of the tail weights.
    """

    def __init__(
        self,
        dim: int,
        tail_weights=0.1,
        loc=0.0,
        scale=1.0,
        learnable_tails: bool = True,
        learnable_affine: bool = True,
        lambda_min: float = 1e-3,
    ):
        super().__init__()
        self.dim, self.lambda_min = int(dim), float(lambda_min)
        dtype = torch.get_default_dtype()
        lam = torch.broadcast_to(torch.as_tensor(tail_weights, dtype=dtype), (2, self.dim))
        if not bool((lam > lambda_min).all()):
            raise ValueError(f"tail weights must exceed lambda_min = {lambda_min}")
        raw = _inverse_softplus(lam - lambda_min).clone()
        loc = torch.broadcast_to(torch.as_tensor(loc, dtype=dtype), (self.dim,)).clone()
        scale = torch.broadcast_to(torch.as_tensor(scale, dtype=dtype), (self.dim,))
        # sigma * sqrt(2/pi) is the slope at 0: start with unit slope times `scale`.
        log_sigma = torch.log(scale * math.sqrt(math.pi / 2)).clone()
        for name, value, learn in (
            ("raw_tails", raw, learnable_tails),
            ("loc", loc, learnable_affine),
            ("log_sigma", log_sigma, learnable_affine),
        ):
            if learn:
                setattr(self, name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)

    @property
    def tail_weights(self) -> torch.Tensor:
        """Tail weights $\\lambda$, `Tensor[2, dim]` (row 0 left, row 1 right)."""
        return self.lambda_min + F.softplus(self.raw_tails)

    def _side(self, positive: torch.Tensor) -> torch.Tensor:
        lam = self.tail_weights
        return torch.where(positive, lam[1], lam[0])

    def forward(self, z: torch.Tensor) -> TransformResult:
        flat = z.reshape(z.shape[0], -1)
        lam = self._side(flat > 0)
        log_u = _LOG_2 + torch.special.log_ndtr(-flat.abs())  # log erfc(|z|/sqrt 2)
        y = torch.sign(flat) * torch.expm1(-lam * log_u) / lam
        x = self.loc + torch.exp(self.log_sigma) * y
        log_phi = -0.5 * flat * flat - 0.5 * _LOG_2PI
        ladj = (self.log_sigma + _LOG_2 + log_phi - (1 + lam) * log_u).sum(-1)
        return TransformResult(x.reshape(z.shape), ladj)

    def inverse(self, x: torch.Tensor) -> TransformResult:
        flat = x.reshape(x.shape[0], -1)
        y = (flat - self.loc) * torch.exp(-self.log_sigma)
        lam = self._side(y > 0)
        log_u = -torch.log1p(lam * y.abs()) / lam
        a = -torch.special.ndtri(0.5 * torch.exp(log_u))
        z = torch.sign(y) * a.clamp_min(0)
        log_phi = -0.5 * z * z - 0.5 * _LOG_2PI
        ladj = -(self.log_sigma + _LOG_2 + log_phi - (1 + lam) * log_u).sum(-1)
        return TransformResult(z.reshape(x.shape), ladj)
