"""boltzflow: Boltzmann generators for scientific sampling.

Train a normalizing flow towards an unnormalized target ``p(x) ∝ exp(-u(x))`` and correct
it exactly by importance reweighting or inside MCMC. See the README for a quick start.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("boltzflow")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.1.0"

__all__ = ["__version__"]
