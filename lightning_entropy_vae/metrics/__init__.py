"""TorchMetrics metrics over :mod:`lightning_entropy_vae.functional`: sum-and-count states, DDP-ready.

Each metric's ``update`` takes the package's vocabulary (a step's output dict, a ``VAEOutput``, or
keyword arguments) and ignores keys it does not need, so one dict feeds them all.
"""

from lightning_entropy_vae.metrics.collapse import PosteriorCollapse
from lightning_entropy_vae.metrics.elbo import GaussianELBO
from lightning_entropy_vae.metrics.entropy import DecoderEntropy, EncoderEntropy, PriorEntropy
from lightning_entropy_vae.metrics.entropy_sum import EntropySumELBO

__all__ = [
    "DecoderEntropy",
    "EncoderEntropy",
    "EntropySumELBO",
    "GaussianELBO",
    "PosteriorCollapse",
    "PriorEntropy",
]
