"""Sample-free ELBO estimates, convergence signals and posterior-collapse flags for Gaussian VAEs.

For Gaussian VAEs the ELBO converges to a sum of three entropies (Damm et al., AISTATS 2023).
This package computes them (:mod:`lightning_entropy_vae.functional`), accumulates them as
TorchMetrics metrics (:mod:`lightning_entropy_vae.metrics`) and logs them during training with a
Lightning callback (:class:`EntropyMonitor`).
"""

from lightning_entropy_vae.callbacks import EntropyMonitor
from lightning_entropy_vae.metrics import (
    DecoderEntropy,
    EncoderEntropy,
    EntropySumELBO,
    GaussianELBO,
    PosteriorCollapse,
    PriorEntropy,
)
from lightning_entropy_vae.outputs import VAEOutput

__version__ = "0.1.0"

__all__ = [
    "DecoderEntropy",
    "EncoderEntropy",
    "EntropyMonitor",
    "EntropySumELBO",
    "GaussianELBO",
    "PosteriorCollapse",
    "PriorEntropy",
    "VAEOutput",
    "__version__",
]
