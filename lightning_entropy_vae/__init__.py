"""Sample-free ELBO estimates, convergence signals and posterior-collapse flags for Gaussian VAEs.

For Gaussian VAEs the ELBO converges to a sum of three entropies (Damm et al., AISTATS 2023).
This package computes them (:mod:`lightning_entropy_vae.functional`), accumulates them as
TorchMetrics metrics (:mod:`lightning_entropy_vae.metrics`) and logs them during training with a
Lightning callback (:class:`EntropyMonitor`).
"""

from typing import TYPE_CHECKING, Any

from lightning_entropy_vae.capture import Capture, capture
from lightning_entropy_vae.metrics import (
    ELBO,
    DecoderEntropy,
    EncoderEntropy,
    EntropySumELBO,
    GaussianELBO,
    PosteriorCollapse,
    PriorEntropy,
)
from lightning_entropy_vae.outputs import VAEOutput

__version__ = "0.1.0"

if TYPE_CHECKING:
    from lightning_entropy_vae.callbacks import EntropyConvergence, EntropyMonitor


def __getattr__(name: str) -> Any:
    # The callbacks import Lightning (seconds); metric and function users need not pay for it.
    if name in ("EntropyConvergence", "EntropyMonitor"):
        from lightning_entropy_vae import callbacks

        return getattr(callbacks, name)
    raise AttributeError(f"module 'lightning_entropy_vae' has no attribute {name!r}")

__all__ = [
    "ELBO",
    "Capture",
    "DecoderEntropy",
    "EncoderEntropy",
    "EntropyConvergence",
    "EntropyMonitor",
    "EntropySumELBO",
    "GaussianELBO",
    "PosteriorCollapse",
    "PriorEntropy",
    "VAEOutput",
    "__version__",
    "capture",
]
