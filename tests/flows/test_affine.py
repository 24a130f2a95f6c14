"""ElementwiseAffine and DenseAffine: standardisation from (weighted) data, fixed variant,
active masks."""

from __future__ import annotations

import doctest

import pytest
import torch

from boltzflow.flows import affine
from boltzflow.flows.affine import DenseAffine, ElementwiseAffine, weighted_moments


def test_docstring_example():
    assert doctest.testmod(affine).failed == 0


def test_set_from_data_standardises():
    gen = torch.Generator().manual_seed(0)
    x = torch.tensor([3.0, -1.0, 0.5], dtype=torch.float64) + torch.tensor(
        [0.1, 4.0, 1.0], dtype=torch.float64
    ) * torch.randn(500, 3, generator=gen, dtype=torch.float64)
    layer = ElementwiseAffine(3).double().set_from_data(x)
    z, ladj = layer.inverse(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(z.std(0), torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(ladj, -torch.log(x.std(0)).sum().expand(500))


def test_fixed_variant_has_buffers_not_parameters():
    layer = ElementwiseAffine((2, 2), loc=1.0, scale=2.0, learnable=False)
    assert list(layer.parameters()) == []
    assert {"loc", "log_scale"} <= set(layer.state_dict())
    x, _ = layer(torch.zeros(1, 2, 2))
    assert torch.equal(x, torch.ones(1, 2, 2))


def test_active_mask_leaves_other_features_alone():
    layer = ElementwiseAffine(3, loc=5.0, scale=3.0, active=[False, True, False])
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    x, ladj = layer(z)
    assert torch.equal(x[:, [0, 2]], z[:, [0, 2]])
    torch.testing.assert_close(x[:, 1], 5.0 + 3.0 * z[:, 1])
    torch.testing.assert_close(ladj, torch.log(torch.tensor(3.0)).expand(4))


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="positive"):
        ElementwiseAffine(2, scale=torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="entries"):
        ElementwiseAffine(3, active=[True, False])


def test_dense_affine_set_from_weighted_data_whitens():
    """Set from weighted draws, the layer's inverse maps them to weighted mean 0 and
    covariance I; control: the unweighted moments differ."""
    gen = torch.Generator().manual_seed(0)
    a = torch.tensor([[2.0, 0.0, 0.0], [1.5, 0.5, 0.0], [-1.0, 0.3, 0.2]], dtype=torch.float64)
    x = (
        torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
        + torch.randn(800, 3, generator=gen, dtype=torch.float64) @ a.T
    )
    probs = torch.softmax(torch.randn(800, generator=gen, dtype=torch.float64), 0)
    layer = DenseAffine(3).double().set_from_data(x, probs=probs)
    z, ladj = layer.inverse(x)
    mean, cov = weighted_moments(z, probs)
    torch.testing.assert_close(mean, torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-10)
    torch.testing.assert_close(cov, torch.eye(3, dtype=torch.float64), rtol=0, atol=1e-10)
    _, cov_x = weighted_moments(x, probs)
    torch.testing.assert_close(ladj, -0.5 * torch.logdet(cov_x).expand(800))
    mean_u, _ = weighted_moments(z)
    assert mean_u.abs().max() > 1e-3


def test_dense_affine_rejects_periodic_features():
    from boltzflow.flows.builders import spline_coupling_flow

    with pytest.raises(ValueError, match="periodic"):
        spline_coupling_flow(3, periodic=[True, False, False], affine="dense")
    with pytest.raises(ValueError, match="affine must be"):
        spline_coupling_flow(3, affine="full")
