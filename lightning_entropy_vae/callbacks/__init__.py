"""Lightning callbacks."""

from lightning_entropy_vae.callbacks.entropy_monitor import EntropyMonitor

__all__ = ["EntropyMonitor"]
