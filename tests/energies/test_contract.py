"""The Energy contract: every hook the package reads from a target is declared on Energy, and
each declared hook's default means "not provided"."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from boltzflow.energies.base import CallableEnergy, Energy, EnergyTerms

PACKAGE = Path(__file__).resolve().parents[2] / "boltzflow"

# ``target.name`` / ``self.target.name`` reads, and getattr/hasattr discovery of a name.
_READ = re.compile(r"(?<![\w.])target\.([A-Za-z_]\w*)|self\.target\.([A-Za-z_]\w*)")
_DISCOVER = re.compile(r"(?:getattr|hasattr)\((?:self\.)?target, \"(\w+)\"")

# Reads of one target class's own attributes, where the code is written for that class only.
SUBCLASS_READS = {
    ("flows/lattice_gauge.py", "beta"),  # U1Wilson: the gauge flow fits its tree to β
    ("molecular/md.py", "cartesian"),  # AlanineDipeptideTarget: its MD
    ("molecular/md.py", "mol"),
    ("molecular/md.py", "temperature"),
    ("molecular/umbrella.py", "cartesian"),  # AlanineDipeptideTarget: its umbrella sampling
    ("molecular/umbrella.py", "mol"),
    ("molecular/umbrella.py", "pool"),
    ("molecular/umbrella.py", "temperature"),
    ("cli/md.py", "md_frames"),  # ``boltzflow md`` runs a molecular recipe's MD
    ("molecular/ice_reference.py", "ice"),  # IceXITarget: its MBAR temperature ladder
    ("molecular/ice_reference.py", "md_states"),
    ("molecular/ice_reference.py", "potential_energy"),
}

# getattr/hasattr stays only where objects other than an Energy are accepted on purpose.
DUCK_TYPED = {
    "energy",  # losses accept a plain callable u(x) as the target
    "n_evaluations",  # ... and then count no evaluations
    "constrain",  # prior_energy: any object without a prior is a TypeError
    "log_prior",
    "periodic_mask",  # flow builders take a target or a bare event shape
}


def _reads() -> dict[tuple[str, str], str]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for match in _READ.finditer(path.read_text()):
            out[(rel, match.group(1) or match.group(2))] = "read"
        for match in _DISCOVER.finditer(path.read_text()):
            out[(rel, match.group(1))] = "discovered"
    return out


def test_the_source_scan_finds_reads():
    """The scanner itself: it sees plain reads and getattr discovery in the package."""
    reads = _reads()
    assert ("runs/pipeline.py", "observables") in reads
    assert ("molecular/umbrella.py", "cartesian") in reads
    assert len(reads) > 40


def test_every_hook_the_package_reads_is_declared_on_energy():
    bare = Energy(1)
    undeclared = sorted(
        f"{where}: target.{name}"
        for (where, name) in _reads()
        if (where, name) not in SUBCLASS_READS and not hasattr(bare, name)
    )
    assert undeclared == []


def test_getattr_discovery_is_left_only_where_plain_objects_are_accepted():
    discovered = sorted(
        f"{where}: {name}" for (where, name), how in _reads().items() if how == "discovered"
    )
    assert [d for d in discovered if d.rsplit(": ", 1)[1] not in DUCK_TYPED] == []


# ------------------------------------------------------------------------------- defaults
@pytest.fixture
def bare():
    return CallableEnergy(lambda x: 0.5 * (x**2).sum(-1), event_shape=2)


@pytest.mark.parametrize(
    "name", ["log_z", "periodic_mask", "period", "n_modes", "means", "parameter_names"]
)
def test_attribute_hooks_default_to_none(bare, name):
    assert getattr(Energy, name) is None and getattr(bare, name) is None


X = torch.zeros(3, 2)
NOT_PROVIDED = {
    "sample": (4,),
    "sample_prior": (4,),
    "constrain": (X,),
    "log_prior": (X,),
    "exact_observable": ("x1",),
    "exact_free_energy": ("a_vs_b",),
    "reference_stderr": ("a_vs_b",),
    "mode_assignment": (X,),
    "training_data": ("md",),
}


@pytest.mark.parametrize("name", sorted(NOT_PROVIDED))
def test_method_hooks_default_to_not_implemented(bare, name):
    with pytest.raises(NotImplementedError, match="CallableEnergy"):
        getattr(bare, name)(*NOT_PROVIDED[name])


def test_an_energy_without_energy_is_not_implemented():
    with pytest.raises(NotImplementedError, match="neither _energy nor terms"):
        Energy(2).energy(X)


@pytest.mark.parametrize(
    ("name", "args"),
    [("observables", ()), ("state_sets", ()), ("report_figures", (X, X[:, 0]))]
    + [("report_data", (X, X[:, 0]))],
)
def test_collection_hooks_default_to_empty(bare, name, args):
    out = getattr(bare, name)(*args)
    assert len(out) == 0


def test_close_does_nothing(bare):
    assert bare.close() is None
    bare.close()  # twice is fine
    assert bare.energy(X).shape == (3,)


def test_default_terms_temper_all_of_the_energy(bare):
    terms = bare._energy_terms(torch.ones(3, 2))
    assert isinstance(terms, EnergyTerms)
    assert terms.log_measure == () and terms.outside is None
    hot = bare.at_temperature(4.0)
    torch.testing.assert_close(hot.energy(torch.ones(3, 2)), torch.full((3,), 0.25))
