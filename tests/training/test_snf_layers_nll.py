"""`snf_layers_nll`: maximum likelihood of an SNF's layers, and when it is the path likelihood."""

from __future__ import annotations

import math

import torch

from boltzflow.energies.double_well import DoubleWell2D
from boltzflow.flows.snf import add_stochastic_blocks, realnvp_flow
from boltzflow.runs.registry import LOSSES, resolve
from boltzflow.training.losses import nll, snf_layers_nll


def _setup(lambdas, seed=0):
    target = DoubleWell2D()
    flow = realnvp_flow(target, num_layers=4, hidden=8, seed=seed).double()
    snf = add_stochastic_blocks(
        flow, target, count=2, steps=10, step_size=0.5, lambdas=lambdas, placement="end"
    )
    return target, flow, snf


def test_it_is_the_nll_of_the_layers_and_spends_no_energies():
    target, flow, snf = _setup("target")
    x = target.sample(128, generator=torch.Generator().manual_seed(0)).double()
    n0 = target.n_evaluations
    out = snf_layers_nll(snf, target, x)
    assert out.n_evaluations == 0 and target.n_evaluations == n0
    assert float(out.loss) == float(nll(flow, target, x).loss)
    out.loss.backward()
    assert all(p.grad is not None for p in flow.parameters())
    assert resolve(LOSSES, "snf_layers_nll", "loss") is snf_layers_nll


def _paired_z(lambdas, n=4000):
    """z of the mean paired difference between the backward-path log q of `snf_nll` and the
    layers' log q, on exact target samples."""
    target, _, snf = _setup(lambdas)
    g = torch.Generator().manual_seed(1)
    x = target.sample(n, generator=g).double()
    with torch.no_grad():
        path = snf.backward_path(x, generator=g).log_q
        layers = -snf_layers_nll(snf, target, x[:1]).loss  # the loss is a batch mean
        members = [t for t in snf.transform.transforms if not t.stochastic]
        z, ladj = x, torch.zeros(n, dtype=x.dtype)
        for t in reversed(members):
            z, l_ = t.inverse(z)
            ladj = ladj + l_
        layers_all = snf.base.log_prob(z) + ladj
    assert math.isclose(float(layers), float(layers_all[0]), rel_tol=1e-12)
    d = path - layers_all
    assert torch.isfinite(d).all()
    return float(d.mean() / (d.std() / math.sqrt(n)))


def test_blocks_on_the_target_after_the_layers_give_the_path_likelihood_in_expectation():
    """Backward Metropolis steps at λ = 1 leave exact samples exact, so the path log q of
    `snf_nll` and the layers' log q agree in mean (calibrated paired z-test)."""
    assert abs(_paired_z("target")) < 4


def test_negative_control_blocks_below_lambda_one_are_not_the_path_likelihood():
    """At λ = 0.5 the backward kernel moves exact samples towards the prior: the two differ."""
    assert abs(_paired_z([0.5, 0.5])) > 6
