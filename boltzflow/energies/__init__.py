"""Reduced energies (units of kT): the Energy protocol and targets."""

from boltzflow.energies.base import CallableEnergy, Energy, Observable, StateSets

__all__ = ["Energy", "CallableEnergy", "Observable", "StateSets"]
