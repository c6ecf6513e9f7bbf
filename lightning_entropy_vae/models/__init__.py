"""Reference models that emit the package's step vocabulary."""

from lightning_entropy_vae.models.gaussian_vae import GaussianVAE

__all__ = ["GaussianVAE"]
