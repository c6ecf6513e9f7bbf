"""TorchMetrics metrics over :mod:`lightning_entropy_vae.functional`: sum-and-count states, DDP-ready.

Each metric's ``update`` takes the package's vocabulary (a step's output dict, a ``VAEOutput``, or
keyword arguments) and ignores the vocabulary names it does not need, so one dict feeds them all; any other
key is a ``TypeError`` naming the closest valid name.
"""

from lightning_entropy_vae.metrics.collapse import PosteriorCollapse
from lightning_entropy_vae.metrics.elbo import ELBO, GaussianELBO
from lightning_entropy_vae.metrics.entropy import DecoderEntropy, EncoderEntropy, PriorEntropy
from lightning_entropy_vae.metrics.entropy_sum import EntropySumELBO

__all__ = [
    "ELBO",
    "DecoderEntropy",
    "EncoderEntropy",
    "EntropySumELBO",
    "GaussianELBO",
    "PosteriorCollapse",
    "PriorEntropy",
]
