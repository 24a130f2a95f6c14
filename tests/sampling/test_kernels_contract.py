"""The kernel contract, for every kernel: bit-for-bit resume, immutable states, rejection of
non-finite energies, dtype and device following the inputs."""

import math

import pytest
import torch

from boltzflow.energies.base import CallableEnergy
from boltzflow.flows.base import Flow, Transform, TransformResult
from boltzflow.flows.distributions import StandardNormal
from boltzflow.sampling.kernels import HMC, MALA, IndependenceMH, LatentHMC, Mixture

torch.set_num_threads(1)  # tiny tensors: threading only adds contention


class DiagAffine(Transform):
    """``x = shift + scale * z`` elementwise; ``ladj = Σ log|scale|``."""

    def __init__(self, shift, scale):
        super().__init__()
        self.register_buffer("shift", torch.as_tensor(shift))
        self.register_buffer("scale", torch.as_tensor(scale))

    def _ladj(self, n):
        return torch.log(self.scale.abs()).sum().expand(n)

    def forward(self, z):
        return TransformResult(self.shift + self.scale * z, self._ladj(z.shape[0]))

    def inverse(self, x):
        return TransformResult((x - self.shift) / self.scale, -self._ladj(x.shape[0]))


def hole_energy(x):
    """Gaussian with a forbidden region: ``+inf`` for ``x0 > 1``, NaN for ``x1 > 1.5``."""
    u = 0.5 * (x * x).sum(-1)
    u = torch.where(x[:, 0] > 1.0, torch.full_like(u, math.inf), u)
    return torch.where(x[:, 1] > 1.5, torch.full_like(u, math.nan), u)


def make(name, dtype=torch.float64, device="cpu"):
    target = CallableEnergy(hole_energy, 2)
    flow = Flow(
        StandardNormal(2),
        DiagAffine(torch.tensor([0.3, 0.3]), torch.tensor([1.5, 1.5])),
    ).to(dtype=dtype, device=device)
    return {
        "imh": lambda: IndependenceMH(flow, target),
        "mala": lambda: MALA(target, 0.3),
        "hmc": lambda: HMC(target, 0.3, 4),
        "hmc_torus": lambda: HMC(target, 0.3, 4, wrap=2 * math.pi),
        "latent_hmc": lambda: LatentHMC(target, flow, 0.3, 4),
        "cycle": lambda: Mixture([MALA(target, 0.3), IndependenceMH(flow, target)], repeats=(2, 1)),
        "random": lambda: Mixture([HMC(target, 0.3, 3), IndependenceMH(flow, target)], [1, 1]),
    }[name]()


NAMES = ["imh", "mala", "hmc", "hmc_torus", "latent_hmc", "cycle", "random"]


def start(n=16, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(123)
    x = 0.3 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return x.to(dtype=dtype, device=device)


def deep_clone(s):
    """Rebuild a (nested) NamedTuple state from copies of its tensors, as a resumed run would."""
    if isinstance(s, torch.Tensor):
        return s.clone()
    if isinstance(s, tuple) and hasattr(s, "_fields"):
        return type(s)(*[deep_clone(v) for v in s])
    return s


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, tuple):
        assert type(a) is type(b)
        for u, v in zip(a, b, strict=True):
            assert_same(u, v)
    else:
        assert a == b


@pytest.mark.parametrize("name", NAMES)
def test_resume_is_bit_for_bit(name):
    n = 6
    kernel = make(name)
    state = kernel.init(start(), seed=7)
    infos = []
    for _ in range(2 * n):
        state, info = kernel.step(state)
        infos.append(info)
    # n steps, then rebuild the state from copies and continue with a fresh kernel
    other = make(name)
    half = other.init(start(), seed=7)
    for _ in range(n):
        half, _ = other.step(half)
    resumed = deep_clone(half)
    fresh = make(name)
    for i in range(n):
        resumed, info = fresh.step(resumed)
        assert_same(info, infos[n + i])
    assert_same(resumed, state)


@pytest.mark.parametrize("name", NAMES)
def test_seeds_matter(name):
    a = make(name).init(start(), seed=1)
    b = make(name).init(start(), seed=2)
    k = make(name)
    for _ in range(3):
        a, _ = k.step(a)
        b, _ = k.step(b)
    assert not torch.equal(a.x, b.x)


@pytest.mark.parametrize("name", NAMES)
def test_step_does_not_mutate_its_input(name):
    kernel = make(name)
    state = kernel.init(start(), seed=0)
    snapshot = deep_clone(state)
    kernel.step(state)
    assert_same(state, snapshot)


@pytest.mark.parametrize("name", NAMES)
def test_nonfinite_energies_are_rejected(name):
    """Proposals into the ``+inf``/NaN region are rejected; nothing non-finite enters a state."""
    kernel = make(name)
    state = kernel.init(start(32), seed=0)
    n_rejected = 0
    for _ in range(60):
        state, info = kernel.step(state)
        n_rejected += int((~info.accepted).sum())
        assert torch.isfinite(state.x).all() and torch.isfinite(state.energy).all()
        assert (state.x[:, 0] <= 1.0).all() and (state.x[:, 1] <= 1.5).all()
        for field in info:
            assert not torch.isnan(field.to(torch.float64)).any()
        assert torch.isfinite(info.acceptance_prob).all()
        assert ((info.acceptance_prob >= 0) & (info.acceptance_prob <= 1)).all()
    assert n_rejected > 0


@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_float32(name):
    kernel = make(name, dtype=torch.float32)
    x0 = start(5, dtype=torch.float32)
    state = kernel.init(x0, seed=0)
    state, info = kernel.step(state)
    assert state.x.shape == (5, 2) and state.x.dtype == torch.float32
    assert state.energy.shape == (5,) and state.energy.dtype == torch.float32
    for field in ("accepted", "acceptance_prob", "energy", "log_weight"):
        assert getattr(info, field).shape == (5,)
    assert info.accepted.dtype == torch.bool


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_device_follows_inputs(name):
    kernel = make(name, device="cuda")
    state = kernel.init(start(8, device="cuda"), seed=0)
    for _ in range(3):
        state, info = kernel.step(state)
    assert state.x.device.type == "cuda" and state.energy.device.type == "cuda"
    assert info.acceptance_prob.device.type == "cuda"
    cpu = make(name)
    ref = cpu.init(start(8), seed=0)
    assert ref.x.device.type == "cpu"
