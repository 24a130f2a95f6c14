r"""Path-gradient losses: reverse and forward KL without the score term.

**Reverse KL** (Roeder, Wu & Duvenaud 2017, "sticking the landing"; Vaitl et al. 2022,
"Gradients should stay on path", Phys. Rev. E). With $x = T_\theta(z)$, $z \sim p_z$,

$$
\nabla_\theta\,\mathbb E_z\big[\log q_\theta(x) + u(x)\big]
= \mathbb E_z\Big[\big(\nabla_x \log q_{\theta'}(x) + \nabla_x u(x)\big)^{\top}
  \frac{\partial x}{\partial\theta}\Big]_{\theta'=\theta}
  + \mathbb E_z\big[\partial_\theta \log q_\theta(x)\big|_{x\ \text{fixed}}\big].
$$

The last (score) term has zero mean, $\mathbb E_q[\partial_\theta \log q_\theta] = 0$, and
[`path_reverse_kl`][boltzflow.training.path_gradients.path_reverse_kl] drops it: the estimator
stays unbiased and its variance vanishes at $q_\theta = p$, where
$\nabla_x(\log q + u) = 0$ for every sample.

**Forward KL** (Vaitl et al. 2024, "Fast and unified path gradient estimators for normalizing
flows", Sec. 4). $\mathrm{KL}(p\,\|\,q_\theta) = \mathrm{KL}(p^z_\theta\,\|\,p_z)$ with the
pulled-back target $p^z_\theta(z) = p(T_\theta(z))\,|\det \partial_z T_\theta|$, sampled by
$z = T_\theta^{-1}(x)$, $x \sim p$: a reverse KL in latent space. Its path gradient keeps only
the dependence through $z$,

$$
\nabla_\theta \mathrm{KL} \approx \frac1N\sum_i \Big(\nabla_z\big[-u(T_{\theta'}(z))
+ \log|\det \partial_z T_{\theta'}(z)| - \log p_z(z)\big]\Big)^{\top}_{z=z_i}
\frac{\partial z_i}{\partial\theta},
$$

unbiased because $\mathbb E_{p^z_\theta}[\partial_\theta \log p^z_\theta] = 0$. The target's
forces $-\nabla u$ enter through $\nabla_z u(T(z)) = J^\top \nabla_x u$: the fit is regularized by
the energy, not only by the data ([`path_nll`][boltzflow.training.path_gradients.path_nll]).

**Estimators.** `"dropin"`: evaluate $\log q$ a second time with the parameters detached
(`torch.func.functional_call`), so that autograd differentiates through $x$ only; any flow with
an inverse qualifies. `"fast"`: carry $G = \nabla_x \log q(x)$ forward alongside sampling with a
rule per layer ([`Transform.forward_and_score`][boltzflow.flows.base.Transform.forward_and_score];
a layer without a fast rule uses its own drop-in, one detached inverse pass) and minimise the
surrogate $x\cdot(G + \nabla u)_{\text{detached}}$, one backward pass through the sampling graph
(Vaitl et al. 2024, Sec. 3). `"auto"` takes `"fast"` when some layer has a fast rule.
Both work in train and eval mode. The returned `loss` value is the usual estimate
($\mathbb E[u + \log q]$, or the NLL), with the path gradient attached.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from boltzflow.flows.base import with_fixed_parameters
from boltzflow.training.losses import LossOutput, _energy, _mask_grad_rows, _masked_mean, soft_cap

__all__ = [
    "ESTIMATORS",
    "path_estimator",
    "layers_without_score_rule",
    "sample_and_score",
    "path_reverse_kl",
    "path_nll",
    "ForceCache",
    "naive_detached_logdet_kl",
]

logger = logging.getLogger(__name__)

ESTIMATORS = ("auto", "fast", "dropin")


def layers_without_score_rule(flow, every: bool = False, inverse: bool = False) -> list[str]:
    """Names of the transforms of `flow` (members of compositions, recursively) without a fast
    score rule (all of them with `every`): those the fast estimator covers with their own
    drop-in. `inverse` asks about the inverse rule (`inverse_and_score`, used by `path_nll`)
    instead of `forward_and_score`."""
    found: list[str] = []
    rule = "has_inverse_score_rule" if inverse else "has_score_rule"

    def walk(t, name):
        members = getattr(t, "transforms", None)
        if isinstance(members, nn.ModuleList):
            for i, member in enumerate(members):
                walk(member, f"{name}.{i}")
        elif every or not getattr(t, rule, False):
            found.append(f"{name} ({type(t).__name__})")

    walk(flow.transform, "transform")
    return found


def path_estimator(flow, estimator: str = "auto", inverse: bool = False) -> str:
    """The estimator a path loss uses on `flow`: `"fast"` or `"dropin"`.

    `"fast"` carries the score through every layer: with the layer's fast rule where it has one,
    otherwise with that layer's own drop-in (one detached `inverse` pass,
    [`Transform.forward_and_score`][boltzflow.flows.base.Transform.forward_and_score]);
    [`layers_without_score_rule`][boltzflow.training.path_gradients.layers_without_score_rule]
    lists the latter. `"dropin"` evaluates `log_prob` of the whole flow a second time with
    detached parameters.

    Args:
        flow: a deterministic [`Flow`][boltzflow.flows.base.Flow].
        estimator: `"auto"` (`"fast"` when some layer has a fast rule, else `"dropin"`),
            `"fast"` or `"dropin"`.
        inverse: decide for the inverse rules (`inverse_and_score`, the forward-KL path
            gradient of `path_nll`).

    Raises:
        ValueError: an unknown name, or a stochastic flow (it has no density to differentiate).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown path-gradient estimator {estimator!r} (known: {ESTIMATORS})")
    if getattr(flow, "is_stochastic", False):
        raise ValueError("path gradients need log q(x); a stochastic flow has path weights only")
    if estimator != "auto":
        return estimator
    n_layers = len(layers_without_score_rule(flow, every=True))
    missing = layers_without_score_rule(flow, inverse=inverse)
    return "fast" if len(missing) < n_layers else "dropin"


def _base_score(base, z: torch.Tensor) -> torch.Tensor:
    r"""$\nabla_z \log p_z(z)$, detached (zero where the density is flat)."""
    with torch.enable_grad():
        leaf = z.detach().requires_grad_(True)
        log_p = base.log_prob(leaf).sum()
        if not log_p.requires_grad:
            return torch.zeros_like(leaf)
        (g,) = torch.autograd.grad(log_p, leaf, allow_unused=True)
    return torch.zeros_like(leaf) if g is None else g


def sample_and_score(flow, n: int, generator: torch.Generator | None = None):
    r"""Draw `n` samples with $\log q(x)$ and the score $G = \nabla_x \log q(x)$ in one pass.

    `x` and `log_q` are reparametrized (differentiable in the parameters); `score` is computed
    with the parameters held fixed and is detached (layers without a fast rule use their
    drop-in).

    Returns:
        `(x, log_q, score)`: shapes `[n, *event_shape]`, `[n]`, `[n, *event_shape]`.
    """
    z = flow.base.sample(int(n), generator=generator)
    x, ladj, score = flow.transform.forward_and_score(z, _base_score(flow.base, z))
    return x, flow.base.log_prob(z) - ladj, score


def _row_finite(t: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(t.reshape(t.shape[0], -1)).all(-1)


def _finite_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(t with its non-finite rows set to 0, which rows were finite)`."""
    ok = _row_finite(t)
    return torch.where(ok.reshape(-1, *[1] * (t.dim() - 1)), t, 0.0), ok


def path_reverse_kl(
    flow,
    target,
    batch_size: int,
    generator: torch.Generator | None = None,
    energy_cap: float | None = None,
    estimator: str = "auto",
) -> LossOutput:
    r"""Reverse KL $\mathbb E_q[u + \log q_\theta]$ with the path-gradient estimator.

    The value is the same estimate as [`reverse_kl`][boltzflow.training.losses.reverse_kl];
    the gradient drops the zero-mean score term (module docstring; Vaitl et al. 2022):

    * `"dropin"`: $L = \frac1N \sum_i [u(x_i) + \log q_{\bar\theta}(x_i)]$ with
      $\bar\theta$ the detached parameters and $x_i = T_\theta(z_i)$;
    * `"fast"`: $L = \frac1N \sum_i [u(x_i) + x_i \cdot \bar G_i]$ plus a constant that
      restores the value, $\bar G_i = \nabla_x \log q(x_i)$ carried forward by the layers' rules.

    Args:
        flow: a deterministic [`Flow`][boltzflow.flows.base.Flow].
        target: an [`Energy`][boltzflow.energies.base.Energy] (kT), differentiable in `x`.
        batch_size: flow samples `N`.
        generator: `torch.Generator` on the flow's device.
        energy_cap: soft cap of the energies, as in `reverse_kl`.
        estimator: `"auto"`, `"fast"` or `"dropin"`
            ([`path_estimator`][boltzflow.training.path_gradients.path_estimator]).

    Returns:
        [`LossOutput`][boltzflow.training.losses.LossOutput]; samples with a non-finite energy,
        density or score are dropped and counted.
    """
    kind = path_estimator(flow, estimator)
    if kind == "fast":
        x, log_q, score = sample_and_score(flow, int(batch_size), generator)
        score, finite_score = _finite_rows(score)
        keep: list = [None]
        x = _mask_grad_rows(x, keep)
        surrogate = (x * score).reshape(x.shape[0], -1).sum(-1)
        log_q = log_q.detach() + surrogate - surrogate.detach()
    else:
        x = flow.sample(int(batch_size), generator=generator).x
        keep = [None]
        x = _mask_grad_rows(x, keep)
        log_q = with_fixed_parameters(flow, "log_prob", x)
        finite_score = torch.ones_like(log_q, dtype=torch.bool)
    u = _energy(target, x)
    if energy_cap is not None:
        u = soft_cap(u, float(energy_cap))
    per_sample = u + log_q
    finite = torch.isfinite(per_sample) & finite_score
    keep[0] = finite
    return LossOutput(_masked_mean(per_sample, finite), int(x.shape[0]), (~finite).sum())


path_reverse_kl.path_gradient = "reverse"


def path_nll(
    flow,
    target,
    data: torch.Tensor,
    generator: torch.Generator | None = None,
    estimator: str = "auto",
    forces: torch.Tensor | None = None,
) -> LossOutput:
    r"""Negative log-likelihood of target samples with the forward-KL path gradient.

    With $z_i = T_\theta^{-1}(x_i)$, $x_i \sim p$ and $F = -\nabla u$ (detached), the path
    gradient of $\mathrm{KL}(p^z_\theta\|p_z) = \mathrm{KL}(p\|q_\theta)$ (module docstring;
    Vaitl et al. 2024) is computed by one of two surrogates with the same gradient:

    * `"dropin"`: $L = \frac1N \sum_i \big[F(x_i)\cdot \tilde x_i
      + \log|\det\partial_z T_{\bar\theta}(z_i)| - \log p_z(z_i)\big]$, with $z_i$ carrying the
      parameters' graph and a second pass $\tilde x_i = T_{\bar\theta}(z_i)$ with detached
      parameters $\bar\theta$;
    * `"fast"`: $L = \frac1N \sum_i \big(\bar s_i - \nabla\log p_z(\bar z_i)\big)\cdot z_i$,
      with $z_i$ from the one inverse pass (carrying the parameters' graph) and
      $\bar s_i = \nabla_z \log p^z_\theta(z_i)$, the score of the pulled-back target, carried
      from $F(x_i)$ down to the latent space by the layers' inverse score rules
      ([`Transform.inverse_and_score`][boltzflow.flows.base.Transform.inverse_and_score]) in
      the same pass. It costs one vector-Jacobian product per layer beyond maximum likelihood
      instead of a second flow pass.

    A base distribution with parameters of its own gets its ordinary gradient
    $-\nabla_\phi \log p_z(z_i)$ from both (it does not enter $p^z_\theta$).

    The returned value is the ordinary NLL $-\frac1N\sum_i \log q_\theta(x_i)$.

    Args:
        flow: a deterministic [`Flow`][boltzflow.flows.base.Flow] (inverse and forward).
        target: an [`Energy`][boltzflow.energies.base.Energy] with `force(x)` ($-\nabla u$, kT).
        data: target samples `[N, *event_shape]`.
        generator: unused (uniform signature).
        estimator: `"auto"`, `"fast"` or `"dropin"`
            ([`path_estimator`][boltzflow.training.path_gradients.path_estimator]).
        forces: $-\nabla u$ at `data` when already known (the trainer's
            [`ForceCache`][boltzflow.training.path_gradients.ForceCache]); otherwise one force
            evaluation per data point.

    Returns:
        [`LossOutput`][boltzflow.training.losses.LossOutput] with `n_evaluations` the number of
        force evaluations made (`N`, or 0 with `forces`); rows with a non-finite force, density
        or score are dropped and counted.
    """
    del generator
    kind = path_estimator(flow, estimator, inverse=True)
    n_evaluations = 0 if forces is not None else int(data.shape[0])
    force = target.force(data.detach()) if forces is None else forces
    force = force.detach().to(data)
    force, usable = _finite_rows(force)
    keep: list = [None]
    if kind == "fast":
        z, ladj_inv, pulled_score = flow.transform.inverse_and_score(data, force)
        direction, finite_score = _finite_rows(pulled_score - _base_score(flow.base, z))
        usable = usable & finite_score
        z = _mask_grad_rows(z, keep)
        log_pz = flow.base.log_prob(z)
        value = -(log_pz + ladj_inv)
        # a learnable base's own parameters keep their ordinary gradient (z enters detached)
        pulled = (direction * z).reshape(z.shape[0], -1).sum(-1) - flow.base.log_prob(z.detach())
    else:
        z, ladj_inv = flow.transform.inverse(data)
        z = _mask_grad_rows(z, keep)
        x_tilde, ladj = with_fixed_parameters(flow.transform, "forward", z)
        log_pz = flow.base.log_prob(z)
        pulled = (force * x_tilde).reshape(z.shape[0], -1).sum(-1) + ladj - log_pz
        value = -(log_pz + ladj_inv)
    per_sample = value.detach() + pulled - pulled.detach()
    finite = torch.isfinite(per_sample) & usable
    keep[0] = finite
    return LossOutput(_masked_mean(per_sample, finite), n_evaluations, (~finite).sum())


path_nll.path_gradient = "forward"
path_nll.needs_data = True
path_nll.takes_forces = True


class ForceCache:
    r"""The target's forces $-\nabla u$ at the rows of a fixed data set, each row evaluated at
    most once.

    A `path_nll` stage revisits every data point once per epoch, and the forces at a data point
    never change: the [`Trainer`][boltzflow.training.trainer.Trainer] keeps one cache per such
    stage and passes `forces=cache(rows)` to the loss, so a stage costs at most `len(data)`
    force evaluations instead of `steps × batch_size`.

    Args:
        target: an [`Energy`][boltzflow.energies.base.Energy] with `force(x)` (kT per unit of x).
        data: the stage's data `[N, *event_shape]`.

    Attributes:
        n_evaluations: force evaluations made so far.
    """

    def __init__(self, target, data: torch.Tensor):
        self.target, self.data = target, data
        self.forces = torch.full_like(data, float("nan"))
        self.known = torch.zeros(data.shape[0], dtype=torch.bool, device=data.device)
        self.n_evaluations = 0

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        """Forces at `data[rows]`, `[len(rows), *event_shape]` (non-finite ones stay so)."""
        rows = rows.to(self.known.device)
        missing = torch.unique(rows[~self.known[rows]])
        if len(missing):
            with torch.no_grad():
                force = self.target.force(self.data[missing]).detach()
            self.forces[missing] = force.to(self.forces)
            self.known[missing] = True
            self.n_evaluations += int(len(missing))
        return self.forces[rows]


def naive_detached_logdet_kl(
    flow, target, batch_size: int, generator: torch.Generator | None = None
) -> LossOutput:
    r"""A *wrong* estimator kept as a negative control: reverse KL with the log-det detached,
    $\frac1N\sum_i [u(x_i) + \log p_z(z_i) - \overline{\mathrm{ladj}}(z_i)]$.

    It drops $\nabla_\theta \mathrm{ladj}$ along the path as well as the score term, and is
    biased; the tests check that the unbiasedness z-test detects it.
    """
    z = flow.base.sample(int(batch_size), generator=generator)
    x, ladj = flow.transform.forward(z)
    per_sample = _energy(target, x) + flow.base.log_prob(z) - ladj.detach()
    finite = torch.isfinite(per_sample)
    return LossOutput(_masked_mean(per_sample, finite), int(x.shape[0]), (~finite).sum())
