"""Negative controls: each check in ``checks.py`` fails on a deliberately broken transform."""

from __future__ import annotations

import math

import pytest
import torch
from nflows.transforms.splines.rational_quadratic import rational_quadratic_spline
from torch import nn

from boltzflow.flows.affine import ElementwiseAffine
from boltzflow.flows.base import Transform, TransformResult
from boltzflow.flows.circular import CircularSpline, CircularSplineCoupling

from .checks import (
    assert_ladj_matches_jacobian,
    assert_periodic,
    assert_round_trip,
    batch_jacobian,
)


def _affine() -> ElementwiseAffine:
    return ElementwiseAffine(
        3, loc=torch.tensor([0.5, -1.0, 2.0]), scale=torch.tensor([2.0, 0.5, 3.0])
    ).double()


def _z(n: int = 4, d: int = 3) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


class WrongLadjAffine(ElementwiseAffine):
    """Reports ``ladj`` without the contribution of the last feature."""

    def forward(self, z):
        x, ladj = super().forward(z)
        return TransformResult(x, ladj - self.log_scale[-1])


class BatchMixing(Transform):
    """Subtracts the batch mean: a bijection per sample that secretly couples samples."""

    def forward(self, z):
        return TransformResult(z - 0.1 * z.mean(0), z.new_zeros(z.shape[0]))


class WrongInverse(ElementwiseAffine):
    def inverse(self, x):
        z, ladj = super().inverse(x)
        return TransformResult(z * (1 + 1e-4), ladj)


def test_correct_affine_passes_every_check():
    layer, z = _affine(), _z()
    assert_ladj_matches_jacobian(layer.forward, z)
    assert_ladj_matches_jacobian(layer.inverse, z)
    assert_round_trip(layer.forward, layer.inverse, z)


def test_jacobian_check_catches_wrong_ladj():
    layer = WrongLadjAffine(3, loc=0.5, scale=torch.tensor([2.0, 0.5, 3.0])).double()
    with pytest.raises(AssertionError, match="slogdet"):
        assert_ladj_matches_jacobian(layer.forward, _z())


def test_jacobian_check_catches_cross_sample_dependence():
    with pytest.raises(AssertionError, match="depends on another"):
        batch_jacobian(lambda v: BatchMixing()(v).y, _z())


def test_round_trip_check_catches_wrong_inverse():
    layer = WrongInverse(3, loc=0.5, scale=2.0).double()
    with pytest.raises(AssertionError, match="round trip"):
        assert_round_trip(layer.forward, layer.inverse, _z())


class UntiedCircularSpline(CircularSpline):
    """A spline on [-π, π] whose end derivatives are independent: continuous values, but a
    density jump across the seam."""

    def __init__(self, features: int, num_bins: int):
        super().__init__(features, num_bins)
        self.end_derivative = nn.Parameter(torch.full((features, 1), 1.5))

    def _map(self, z, inverse):
        n = z.shape[0]
        shape = (n, *self.unnormalized_widths.shape)
        derivs = torch.cat([self.unnormalized_derivatives, self.end_derivative], -1)
        y, lad = rational_quadratic_spline(
            z,
            self.unnormalized_widths.expand(shape),
            self.unnormalized_heights.expand(shape),
            derivs.expand(n, *derivs.shape),
            inverse=inverse,
            left=-math.pi,
            right=math.pi,
            bottom=-math.pi,
            top=math.pi,
        )
        return TransformResult(y, lad.sum(-1))


def _angles(n: int = 3, d: int = 2) -> torch.Tensor:
    u = torch.rand(n, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return (2 * u - 1) * math.pi


def test_periodicity_check_catches_untied_boundary_derivatives():
    spline = UntiedCircularSpline(2, 4).double()
    periodic = torch.ones(2, dtype=torch.bool)
    assert_ladj_matches_jacobian(spline.forward, _angles())  # a valid bijection of [-π, π]
    with pytest.raises(AssertionError, match="seam"):
        assert_periodic(spline.forward, _angles(), periodic, -math.pi, math.pi)


class RawAngleCoupling(CircularSplineCoupling):
    """Feeds the conditioning angle itself (not cos/sin) to the conditioner."""

    def _embed(self, cond):
        return torch.cat([cond, cond], 1)


def test_periodicity_check_catches_non_periodic_conditioner():
    periodic = torch.ones(2, dtype=torch.bool)
    good = CircularSplineCoupling([1, 0], periodic, 8, 1, 4).double()
    bad = RawAngleCoupling([1, 0], periodic, 8, 1, 4).double()
    bad.load_state_dict(good.state_dict())
    assert_periodic(good.forward, _angles(), periodic, -math.pi, math.pi)
    with pytest.raises(AssertionError, match="seam of feature 1"):
        assert_periodic(bad.forward, _angles(), periodic, -math.pi, math.pi)
