"""Lightning callbacks."""

from lightning_entropy_vae.callbacks.entropy_convergence import EntropyConvergence
from lightning_entropy_vae.callbacks.entropy_monitor import EntropyMonitor

__all__ = ["EntropyConvergence", "EntropyMonitor"]
