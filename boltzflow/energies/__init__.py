"""Reduced energies (units of kT): the Energy protocol and targets."""

from boltzflow.energies.base import CallableEnergy, Energy, Observable, StateSets
from boltzflow.energies.double_well import DoubleWell2D, ManyWell
from boltzflow.energies.gaussians import CorrelatedGaussian, Funnel, GaussianMixture, gmm40

__all__ = [
    "Energy",
    "CallableEnergy",
    "Observable",
    "StateSets",
    "DoubleWell2D",
    "ManyWell",
    "GaussianMixture",
    "gmm40",
    "Funnel",
    "CorrelatedGaussian",
]
