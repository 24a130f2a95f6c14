"""Every analytic target obeys the Energy contract: shapes, dtype/device, forces, temperature."""

import math

import pytest
import torch

from boltzflow.energies import (
    CorrelatedGaussian,
    DoubleWell2D,
    Funnel,
    GaussianMixture,
    ManyWell,
    gmm40,
)
from boltzflow.runs.registry import TARGETS, resolve

torch.set_num_threads(1)
F64 = torch.float64

TARGET_FACTORIES = {
    "double-well": lambda: DoubleWell2D(),
    "many-well": lambda: ManyWell(dim=8),
    "gmm": lambda: GaussianMixture([[0.0, 0.0], [3.0, 1.0]], [0.5, 1.5], [1.0, 3.0]),
    "gmm40": lambda: gmm40(),
    "funnel": lambda: Funnel(dim=5),
    "correlated-gaussian": lambda: CorrelatedGaussian(dim=4, condition_number=30.0, seed=1),
}
NAMES = sorted(TARGET_FACTORIES)


def points(e, n=16, dtype=F64, device="cpu"):
    g = torch.Generator().manual_seed(0)
    scale = 20.0 if isinstance(e, GaussianMixture) and e.n_modes == 40 else 1.5
    return (scale * torch.randn(n, e.dim, generator=g, dtype=F64)).to(dtype=dtype, device=device)


def test_registry_entries_build_the_targets():
    for name in NAMES:
        builder = resolve(TARGETS, name, "target")
        if name == "gmm":
            e = builder([[0.0, 1.0]], 1.0)
        else:
            e = builder()
        assert type(e) is type(TARGET_FACTORIES[name]())
        assert e.log_z is not None and math.isfinite(e.log_z)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_shape_and_dtype_follow_inputs(name, dtype):
    e = TARGET_FACTORIES[name]()
    x = points(e, dtype=dtype)
    u = e.energy(x)
    assert u.shape == (16,) and u.dtype == dtype and torch.isfinite(u).all()
    f = e.force(x)
    assert f.shape == x.shape and f.dtype == dtype
    if dtype == torch.float32:
        torch.testing.assert_close(u.double(), e.energy(x.double()), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_force_matches_finite_differences(name):
    e = TARGET_FACTORIES[name]()
    x = points(e, n=4)
    h = 1e-6
    eye = torch.eye(e.dim, dtype=F64)
    fd = torch.stack(
        [-(e.energy(x + h * eye[i]) - e.energy(x - h * eye[i])) / (2 * h) for i in range(e.dim)],
        -1,
    )
    torch.testing.assert_close(e.force(x), fd, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_temperature_scales_the_energy(name):
    e = TARGET_FACTORIES[name]()
    x = points(e)
    hot = e.at_temperature(2.5)
    torch.testing.assert_close(hot.energy(x), e.energy(x) / 2.5, rtol=1e-15, atol=0)
    assert e.temperature_scale == 1.0 and hot.temperature_scale == 2.5
    back = hot.at_temperature(1.0)
    assert back.log_z == pytest.approx(e.log_z, abs=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_wrong_shape_raises_clear_error(name):
    e = TARGET_FACTORIES[name]()
    with pytest.raises(ValueError, match="expects x of shape"):
        e.energy(torch.zeros(3, e.dim + 1, dtype=F64))
    with pytest.raises(ValueError, match="expects x of shape"):
        e.energy(torch.zeros(e.dim, dtype=F64))


@pytest.mark.parametrize("name", NAMES)
def test_sample_observables_and_state_sets(name):
    e = TARGET_FACTORIES[name]()
    a = e.sample(64, torch.Generator().manual_seed(3))
    b = e.sample(64, torch.Generator().manual_seed(3))
    assert a.shape == (64, e.dim) and a.dtype == F64 and torch.equal(a, b)
    assert e.sample(5, torch.Generator().manual_seed(3), dtype=torch.float32).dtype == torch.float32
    assert e.sample(0, torch.Generator().manual_seed(3)).shape == (0, e.dim)
    for key, obs in e.observables().items():
        assert obs.fn(a).shape == (64,)
        assert math.isfinite(e.exact_observable(key))
    for key, sets in e.state_sets().items():
        in_a, in_b = sets.in_a(a), sets.in_b(a)
        assert in_a.dtype == torch.bool and in_a.shape == (64,)
        assert not (in_a & in_b).any()
        assert math.isfinite(e.exact_free_energy(key))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_device_follows_inputs(name):
    e = TARGET_FACTORIES[name]()
    x = points(e, device="cuda")
    u = e.energy(x)
    assert u.device.type == "cuda"
    torch.testing.assert_close(u.cpu(), e.energy(x.cpu()), rtol=1e-12, atol=1e-12)
    g = torch.Generator(device="cuda").manual_seed(0)
    assert e.sample(8, g).device.type == "cuda"
