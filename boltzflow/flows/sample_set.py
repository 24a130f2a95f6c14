r"""A flow base that is a set of samples of a state $A$: targeted free-energy perturbation.

In learned (targeted) free-energy perturbation (Jarzynski 2002, "Targeted free energy
perturbation", Phys. Rev. E 65, 046122; Wirnsberger et al. 2020, "Targeted free energy estimation
via learned mappings", J. Chem. Phys. 153, 144112) the flow $f$ does not start from a simple
distribution but from configurations $x \sim p_A \propto e^{-u_A}$ of a state $A$ (MD frames),
and maps them towards a state $B$ with $p_B \propto e^{-u_B}$. With
[`SampleSetBase`][boltzflow.flows.sample_set.SampleSetBase] as the base of a
[`Flow`][boltzflow.flows.base.Flow],

$$
\log q(f(x)) = -u_A(x) - \log|\det J_f(x)|, \qquad
\log w = -u_B(f(x)) - \log q(f(x)) = -u_B(f(x)) + u_A(x) + \log|\det J_f(x)|,
$$

so the ordinary importance machinery (the one log-weight rule of
[`boltzflow.weights`][boltzflow.weights], the trainer's held-out ESS, `importance_sampling`,
[`reweight`][boltzflow.sampling.reweighting.reweight]) gives the targeted weights unchanged.
The base density is $e^{-u_A}$, *unnormalized*: it is off by $\log Z_A$, so the "log Z" these
weights estimate is $\log Z_B - \log Z_A = -\Delta F_{AB}$ (kT), which is what targeted FEP
wants (Köhler et al. 2023, "Rigid body flows for sampling molecular crystal structures", ICML).
"""

from __future__ import annotations

import numpy as np
import torch

from boltzflow.flows.affine import ElementwiseAffine
from boltzflow.flows.base import Compose, Flow
from boltzflow.flows.distributions import BaseDistribution, StandardNormal

__all__ = ["SampleSetBase", "identity_flow"]


class SampleSetBase(BaseDistribution):
    r"""A fixed set of configurations of state $A$ with their reduced energies $u_A$.

    `sample(n)` returns rows of the set: without replacement while `n` does not exceed its size
    (a random subset), otherwise whole random permutations followed by a subset, so every row is
    drawn as evenly as possible. `log_prob(x)` is $-u_A(x)$ (unnormalized; module docstring):
    a row of the set reads its stored energy (exact match of the values, no energy evaluation);
    any other point is evaluated with `energy`.

    Args:
        samples: configurations `[n, *event_shape]` (e.g. MD frames of state $A$).
        energies: $u_A$ of each row `[n]` in kT, or `None` to evaluate them with `energy`.
        energy: the reduced energy of state $A$ (an
            [`Energy`][boltzflow.energies.base.Energy] or a callable `x -> Tensor[n]`), for
            points outside the set and for `energies = None`; `None` allows set rows only.
        known: further configurations `[m, *event_shape]` and their energies `[m]` that
            `log_prob` reads without evaluating but `sample` never draws (the training frames,
            when the set itself holds the held-out ones).
    """

    def __init__(
        self,
        samples: torch.Tensor,
        energies: torch.Tensor | None = None,
        energy=None,
        known: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        samples = torch.as_tensor(samples)
        super().__init__(samples.shape[1:])
        if samples.shape[0] < 1:
            raise ValueError("a sample set needs at least one configuration")
        self.energy = energy
        if energies is None:
            if energy is None:
                raise ValueError("give the energies of the samples or the energy to compute them")
            with torch.no_grad():
                energies = _energy_of(energy, samples)
        energies = torch.as_tensor(energies).reshape(-1)
        if energies.shape[0] != samples.shape[0]:
            raise ValueError(f"{samples.shape[0]} samples but {energies.shape[0]} energies")
        # not persistent: a saved flow holds its transform, not the data it started from
        self.register_buffer("samples", samples.clone(), persistent=False)
        self.register_buffer("energies", energies.clone(), persistent=False)
        if known is not None:
            known_x, known_u = torch.as_tensor(known[0]), torch.as_tensor(known[1]).reshape(-1)
            if known_x.shape[1:] != samples.shape[1:] or known_x.shape[0] != known_u.shape[0]:
                raise ValueError("known configurations and energies do not match the set")
        else:
            known_x, known_u = samples[:0], energies[:0]
        self.register_buffer("known_samples", known_x.clone(), persistent=False)
        self.register_buffer("known_energies", known_u.clone(), persistent=False)
        self._index: dict[bytes, int] | None = None
        self.n_evaluated = 0
        """Points whose $u_A$ was evaluated with `energy` (not found in the set)."""

    def __len__(self) -> int:
        return int(self.samples.shape[0])

    def _key(self, rows: torch.Tensor) -> list[bytes]:
        flat = rows.detach().to(device="cpu", dtype=self.samples.dtype).reshape(rows.shape[0], -1)
        arr = np.ascontiguousarray(flat.numpy())
        return [arr[i].tobytes() for i in range(arr.shape[0])]

    def _apply(self, fn, *args, **kwargs):
        self._index = None  # dtype or device changed: the keys change with them
        return super()._apply(fn, *args, **kwargs)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`n` rows of the set (without replacement up to its size), `[n, *event_shape]`."""
        size, n = len(self), int(n)
        device = generator.device if generator is not None else torch.device("cpu")
        perms = [torch.randperm(size, generator=generator, device=device)]
        while sum(len(p) for p in perms) < n:
            perms.append(torch.randperm(size, generator=generator, device=device))
        index = torch.cat(perms)[:n].to(self.samples.device)
        return self.samples[index]

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        r"""$-u_A(z)$ `[n]`: stored for rows of the set, evaluated with `energy` otherwise."""
        if self._index is None:
            rows = torch.cat([self.samples, self.known_samples.to(self.samples)])
            self._index = {k: i for i, k in enumerate(self._key(rows))}
        found = [self._index.get(k, -1) for k in self._key(z)]
        index = torch.as_tensor(found, dtype=torch.long, device=self.energies.device)
        energies = torch.cat([self.energies, self.known_energies.to(self.energies)])
        u = energies[index.clamp(min=0)].to(z.dtype)
        missing = index < 0
        if bool(missing.any()):
            if self.energy is None:
                raise KeyError(f"{int(missing.sum())} points are not in the sample set")
            with torch.no_grad():
                u_new = _energy_of(self.energy, z.detach()[missing]).to(u)
            u = u.masked_scatter(missing.to(u.device), u_new)
            self.n_evaluated += int(missing.sum())
        return -u.to(z.device)


def _energy_of(energy, x: torch.Tensor) -> torch.Tensor:
    fn = getattr(energy, "energy", energy)
    return fn(x)


def identity_flow(target_or_event_shape, *, affine: bool = False, seed: int | None = None) -> Flow:
    r"""A flow whose map starts as the identity: plain FEP, or a learnable elementwise affine map.

    With `affine = False` the transform is the identity, $f(x) = x$: with a
    [`SampleSetBase`][boltzflow.flows.sample_set.SampleSetBase] the weights are those of plain
    (Zwanzig 1954) free-energy perturbation, $\log w = -u_B(x) + u_A(x)$. With `affine = True` it
    is an [`ElementwiseAffine`][boltzflow.flows.affine.ElementwiseAffine] map
    $x \mapsto \mu + e^{s} \odot x$ started at $\mu = 0$, $s = 0$ on the non-periodic coordinates
    (the target's `periodic_mask` marks torsions, which stay unchanged), the smallest learnable
    targeted map. The base is a placeholder standard normal until a sample set replaces it.

    Args:
        target_or_event_shape: the target ([`Energy`][boltzflow.energies.base.Energy]) or an
            event shape.
        affine: learnable elementwise affine map instead of the identity.
        seed: unused (the map starts at the identity; kept for the builder contract).
    """
    del seed
    shape = getattr(target_or_event_shape, "event_shape", target_or_event_shape)
    base = StandardNormal(shape)
    if not affine:
        return Flow(base, Compose())
    periodic = getattr(target_or_event_shape, "periodic_mask", None)
    active = None if periodic is None else ~torch.as_tensor(periodic, dtype=torch.bool)
    if active is not None and not bool(active.any()):
        return Flow(base, Compose())
    return Flow(base, Compose(ElementwiseAffine(shape, active=active)))
