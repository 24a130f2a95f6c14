"""Losses against exact answers: an affine flow matching a correlated Gaussian target."""

from __future__ import annotations

import math

import pytest
import torch

from boltzflow.training.losses import LossOutput, mixed_kl, nll, reverse_kl, soft_cap

from .helpers import (
    COV,
    MEAN,
    HolesGaussian,
    affine_flow,
    affine_moments,
    exact_flow,
    flat_grad,
    gaussian_kl,
    gaussian_target,
    set_affine,
    trainable_mask,
)

torch.set_num_threads(1)

# two-sided normal quantile for a per-component false-alarm rate of ~1e-5
Z_MAX = 4.4


def perturbed_flow():
    return set_affine(affine_flow(), MEAN + torch.tensor([0.3, -0.2]), COV * 1.5)


def batch_gradients(loss_fn, flow, n_batches, seed):
    """Flattened gradients of ``n_batches`` independent batch losses, ``[n_batches, P]``."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([flat_grad(loss_fn(flow, g), flow) for _ in range(n_batches)])


def z_scores(grads, flow):
    grads = grads[:, trainable_mask(flow)]
    se = grads.std(0) / math.sqrt(grads.shape[0])
    return grads.mean(0) / se


def rkl(flow, g):
    return reverse_kl(flow, gaussian_target(), 64, generator=g).loss


def nll_exact(flow, g):
    return nll(flow, None, gaussian_target().sample(64, generator=g)).loss


# ------------------------------------------------------------------ reverse KL
def test_reverse_kl_exact_flow_is_constant_minus_log_z():
    """u(x) + log q(x) = -log Z for every sample of an exact flow: zero variance."""
    target, flow = gaussian_target(), exact_flow()
    x, _, log_q = flow.sample(500, generator=torch.Generator().manual_seed(0))
    per_sample = target.energy(x) + log_q
    torch.testing.assert_close(per_sample, torch.full_like(per_sample, -target.log_z))
    out = reverse_kl(flow, target, 500, generator=torch.Generator().manual_seed(0))
    assert isinstance(out, LossOutput)
    assert out.n_evaluations == 500 and out.n_nonfinite == 0
    assert abs(float(out.loss.detach()) + target.log_z) < 1e-12


def test_reverse_kl_path_term_vanishes_for_exact_flow():
    r"""∇θ[u(fθ(z)) + log qθ(fθ(z))] = (∇x u + ∇x log q)·∂x/∂θ + ∂θ log qθ(x)|x.

    For q = p the path term is exactly zero, so the reparametrized gradient equals the score
    term computed at fixed x; for a perturbed flow it does not (negative control).
    """
    target = gaussian_target()
    for flow, exact in ((exact_flow(), True), (perturbed_flow(), False)):
        g = torch.Generator().manual_seed(1)
        total = flat_grad(reverse_kl(flow, target, 256, generator=g).loss, flow)
        x = flow.sample(256, generator=torch.Generator().manual_seed(1)).x.detach()
        score = flat_grad(flow.log_prob(x).mean(), flow)
        gap = (total - score).abs().max()
        if exact:
            assert gap < 1e-10
            assert score.abs().max() > 1e-3  # the score term itself is not zero per batch
        else:
            assert gap > 0.1


def test_reverse_kl_gradient_vanishes_in_expectation():
    exact = z_scores(batch_gradients(rkl, exact_flow(), 300, seed=2), exact_flow())
    assert exact.abs().max() < Z_MAX, exact
    perturbed = z_scores(batch_gradients(rkl, perturbed_flow(), 300, seed=2), perturbed_flow())
    assert perturbed.abs().max() > 10 * Z_MAX, perturbed


def test_reverse_kl_estimates_kl_minus_log_z():
    """E[loss] + log Z = KL(q||p), exact for Gaussians, within 4.4 standard errors."""
    target, flow = gaussian_target(), perturbed_flow()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        losses = torch.stack([reverse_kl(flow, target, 200, generator=g).loss for _ in range(100)])
    mean, cov = affine_moments(flow)
    kl = gaussian_kl(mean, cov, MEAN, COV)
    se = float(losses.std() / math.sqrt(len(losses)))
    assert abs(float(losses.mean()) + target.log_z - kl) < Z_MAX * se
    assert kl > 20 * se  # the check has power: KL is far from 0


# ------------------------------------------------------------------------ NLL
def test_nll_gradient_vanishes_in_expectation_on_exact_samples():
    exact = z_scores(batch_gradients(nll_exact, exact_flow(), 300, seed=4), exact_flow())
    assert exact.abs().max() < Z_MAX, exact
    perturbed = z_scores(
        batch_gradients(nll_exact, perturbed_flow(), 300, seed=4), perturbed_flow()
    )
    assert perturbed.abs().max() > 10 * Z_MAX, perturbed


def test_nll_estimates_cross_entropy():
    """E_p[-log q] = KL(p||q) + H(p) with H(p) = ½ log det(2πe Σ)."""
    target, flow = gaussian_target(), perturbed_flow()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        losses = torch.stack(
            [nll(flow, target, target.sample(200, generator=g)).loss for _ in range(100)]
        )
    mean, cov = affine_moments(flow)
    entropy = 0.5 * float(torch.logdet(2 * math.pi * math.e * COV))
    expected = gaussian_kl(MEAN, COV, mean, cov) + entropy
    se = float(losses.std() / math.sqrt(len(losses)))
    assert abs(float(losses.mean()) - expected) < Z_MAX * se
    out = nll(flow, target, target.sample(10))
    assert out.n_evaluations == 0 and out.n_nonfinite == 0


def test_mixed_kl_is_weighted_sum():
    target, flow = gaussian_target(), perturbed_flow()
    data = target.sample(32, generator=torch.Generator().manual_seed(6))
    w = 0.3
    out = mixed_kl(
        flow, target, data, 48, weight_forward=w, generator=torch.Generator().manual_seed(7)
    )
    fwd = nll(flow, target, data).loss
    rev = reverse_kl(flow, target, 48, generator=torch.Generator().manual_seed(7)).loss
    torch.testing.assert_close(out.loss, w * fwd + (1 - w) * rev)
    assert out.n_evaluations == 48
    with pytest.raises(ValueError):
        mixed_kl(flow, target, data, weight_forward=1.5)


# ----------------------------------------------------------------- non-finite
def test_nonfinite_energies_are_masked_counted_and_give_finite_gradients():
    target, flow = HolesGaussian(), affine_flow()
    out = reverse_kl(flow, target, 400, generator=torch.Generator().manual_seed(8))
    grad = flat_grad(out.loss, flow)
    assert torch.isfinite(grad).all()

    x, _, log_q = flow.sample(400, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        u = target.energy(x)
    finite = torch.isfinite(u)
    assert int((torch.isnan(u)).sum()) > 10 and int(torch.isinf(u).sum()) > 10
    assert out.n_nonfinite == int((~finite).sum())
    expected = (u[finite] + log_q[finite]).mean()
    torch.testing.assert_close(out.loss.detach(), expected.detach())

    # negative control: masking the values alone lets NaN from sqrt'(x<0) reach the parameters
    u = target.energy(x)
    naive = torch.where(finite, u + log_q, torch.zeros_like(u)).sum() / finite.sum()
    assert not torch.isfinite(flat_grad(naive, flow)).all()


def test_all_nonfinite_gives_zero_loss_and_gradient():
    target = HolesGaussian()
    flow = set_affine(affine_flow(), torch.tensor([5.0, 0.0]), torch.eye(2, dtype=torch.float64))
    out = reverse_kl(flow, target, 50, generator=torch.Generator().manual_seed(9))
    assert out.n_nonfinite == 50
    assert float(out.loss.detach()) == 0.0
    assert (flat_grad(out.loss, flow) == 0).all()


def test_soft_cap_is_smooth_monotone_and_identity_below():
    u = torch.tensor([-3.0, 5.0, 10.0, 10.0 + 1e-9, 20.0, 1e30, math.inf], dtype=torch.float64)
    u.requires_grad_(True)
    c = soft_cap(u, 10.0)
    (g,) = torch.autograd.grad(c.sum(), u)
    c = c.detach()
    assert torch.equal(c[:3], u[:3].detach())
    assert abs(float(c[4]) - (10 + math.log(11))) < 1e-12
    assert float(c[5]) < 100 and math.isinf(float(c[6]))
    assert (torch.diff(c[:6]) >= 0).all()
    assert abs(float(g[3]) - 1.0) < 1e-6 and float(g[2]) == 1.0


def test_energy_cap_bounds_reverse_kl_gradient():
    """A flow far out in a steep quartic: the cap keeps the loss and gradients moderate."""
    target = gaussian_target()
    flow = set_affine(affine_flow(), torch.tensor([1e4, 0.0]), torch.eye(2, dtype=torch.float64))
    g0 = flat_grad(
        reverse_kl(flow, target, 64, generator=torch.Generator().manual_seed(0)).loss, flow
    )
    out = reverse_kl(flow, target, 64, generator=torch.Generator().manual_seed(0), energy_cap=100.0)
    g1 = flat_grad(out.loss, flow)
    assert float(out.loss.detach()) < 200 and torch.isfinite(g1).all()
    assert g1.norm() < 1e-3 * g0.norm()


def test_nll_drops_non_finite_data_rows_without_poisoning_the_gradient():
    """NaN data rows are counted and dropped; the parameter gradients stay those of the rest."""
    from boltzflow.flows.builders import spline_coupling_flow

    flow = spline_coupling_flow((2,), num_layers=2, hidden=8, seed=0).double()
    data = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    bad = torch.cat([data, torch.full((4, 2), math.nan, dtype=torch.float64)])
    out = nll(flow, None, bad)
    assert out.n_nonfinite == 4
    out.loss.backward()
    grads = [p.grad.clone() for p in flow.parameters()]
    flow.zero_grad()
    ref = nll(flow, None, data)
    ref.loss.backward()
    assert ref.n_nonfinite == 0 and torch.equal(out.loss, ref.loss)
    for g, p in zip(grads, flow.parameters(), strict=True):
        assert torch.isfinite(g).all() and torch.allclose(g, p.grad)
