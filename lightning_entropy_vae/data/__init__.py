"""Data that need no download: scikit-learn's digits, pPCA samples, toy manifolds and the streaming set-up."""

from lightning_entropy_vae.data.datamodule import (
    DigitsDataModule,
    TensorDataModule,
    ToyDataModule,
    split_tensor,
)
from lightning_entropy_vae.data.digits import load_digits_tensor
from lightning_entropy_vae.data.streaming import StreamingData, make_streaming_data
from lightning_entropy_vae.data.synthetic import (
    TOY_DATASETS,
    make_circle,
    make_eight_gaussians,
    make_pca_ring,
    make_ppca_data,
    make_swiss_roll,
)

__all__ = [
    "TOY_DATASETS",
    "DigitsDataModule",
    "StreamingData",
    "TensorDataModule",
    "ToyDataModule",
    "load_digits_tensor",
    "make_circle",
    "make_eight_gaussians",
    "make_pca_ring",
    "make_ppca_data",
    "make_streaming_data",
    "make_swiss_roll",
    "split_tensor",
]
