"""Data that need no download: scikit-learn's digits, pPCA samples, the paper's toy manifolds, the streaming set-up."""

from lightning_entropy_vae.data.datamodule import (
    TOY_DATASETS,
    DigitsDataModule,
    TensorDataModule,
    ToyDataModule,
    split_tensor,
)
from lightning_entropy_vae.data.digits import load_digits_tensor
from lightning_entropy_vae.data.manifolds import make_cosine, make_lemniscate, make_manifold, make_spiral_3d
from lightning_entropy_vae.data.streaming import StreamingData, make_streaming_data
from lightning_entropy_vae.data.synthetic import (
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
    "make_cosine",
    "make_eight_gaussians",
    "make_lemniscate",
    "make_manifold",
    "make_pca_ring",
    "make_ppca_data",
    "make_spiral_3d",
    "make_streaming_data",
    "make_swiss_roll",
    "split_tensor",
]
