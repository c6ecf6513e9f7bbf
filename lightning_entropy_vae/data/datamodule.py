"""LightningDataModules over in-memory tensors: generic, scikit-learn digits and the toy sets."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lightning_entropy_vae.data.digits import load_digits_tensor, pixel_statistics
from lightning_entropy_vae.data.manifolds import make_cosine, make_lemniscate, make_manifold, make_spiral_3d
from lightning_entropy_vae.data.synthetic import (
    _check_positive_int,
    make_circle,
    make_eight_gaussians,
    make_pca_ring,
    make_ppca_data,
    make_swiss_roll,
)

TOY_DATASETS = {
    "circle": make_circle,
    "cosine": make_cosine,
    "eight_gaussians": make_eight_gaussians,
    "lemniscate": make_lemniscate,
    "manifold": make_manifold,
    "pca_ring": make_pca_ring,
    "ppca": make_ppca_data,
    "spiral_3d": make_spiral_3d,
    "swiss_roll": make_swiss_roll,
}
"""Generators by name, called as ``fn(n, seed=..., **kwargs)`` ("ppca" needs ``data_dim``, ``latent_dim``)."""


def _check_data(name: str, x: Any) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"Expected `{name}` to be a torch.Tensor, but got {type(x).__name__}.")
    if x.dim() < 2 or x.shape[0] == 0 or not x.is_floating_point():
        raise ValueError(
            f"Expected `{name}` to be a floating tensor of shape (samples, ...) with at least one sample,"
            f" but got dtype {x.dtype} and shape {tuple(x.shape)}."
        )


def split_tensor(x: Tensor, val_fraction: float, seed: int = 0) -> tuple[Tensor, Tensor | None]:
    """Split the rows of ``x`` at random (seeded) into a training and a validation part.

    Args:
        x: data (N, ...).
        val_fraction: share of rows for validation, in [0, 1); 0 gives no validation part (None).
        seed: seed of the permutation.

    Returns:
        ``(train, val)``, with ``round(val_fraction * N)`` validation rows.

    Example:
        >>> train, val = split_tensor(torch.arange(10.0).reshape(10, 1), val_fraction=0.2)
        >>> train.shape, val.shape
        (torch.Size([8, 1]), torch.Size([2, 1]))
    """
    if not (isinstance(val_fraction, (int, float)) and 0 <= val_fraction < 1):
        raise ValueError(f"Expected `val_fraction` to be a float in [0, 1), but got {val_fraction!r}.")
    n_val = round(val_fraction * x.shape[0])
    if n_val == 0:
        return x, None
    if n_val == x.shape[0]:
        raise ValueError(
            f"`val_fraction={val_fraction}` leaves no training rows out of {x.shape[0]}; lower it."
        )
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    return x[perm[n_val:]], x[perm[:n_val]]


class TensorDataModule(LightningDataModule):
    """A LightningDataModule over in-memory tensors; batches are 1-tuples ``(x,)`` with x (B, ...).

    For streaming (online) training pass ``shuffle=False`` and a small ``batch_size``, e.g. the
    stream of :func:`~lightning_entropy_vae.data.make_streaming_data` with ``batch_size=10``.

    Args:
        train: training data (N, ...), floating point.
        val: optional validation data (M, ...) with the same trailing shape; without it there is no
            validation loop (``val_dataloader`` returns an empty list).
        batch_size: rows per batch.
        shuffle: shuffle the training rows every epoch.
        num_workers: DataLoader worker processes.
        drop_last: drop the last incomplete training batch.

    Raises:
        TypeError: if ``train`` or ``val`` is not a tensor.
        ValueError: if an argument is out of range or the shapes disagree.

    Example:
        >>> dm = TensorDataModule(torch.randn(10, 3), batch_size=4)
        >>> [x.shape[0] for (x,) in dm.train_dataloader()]
        [4, 4, 2]
    """

    def __init__(
        self,
        train: Tensor,
        val: Tensor | None = None,
        batch_size: int = 128,
        shuffle: bool = True,
        num_workers: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        _check_data("train", train)
        if val is not None:
            _check_data("val", val)
            if val.shape[1:] != train.shape[1:]:
                raise ValueError(
                    f"Expected `val` rows of shape {tuple(train.shape[1:])} like `train`,"
                    f" but got {tuple(val.shape[1:])}."
                )
        _check_positive_int("batch_size", batch_size)
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"Expected `num_workers` to be a non-negative int, but got {num_workers!r}.")
        self.train = train
        self.val = val
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.num_workers = num_workers
        self.drop_last = drop_last

    @property
    def data_dim(self) -> int:
        """Number of features per (flattened) row."""
        return self.train[0].numel()

    def _loader(self, x: Tensor, shuffle: bool, drop_last: bool) -> DataLoader:
        return DataLoader(
            TensorDataset(x),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            drop_last=drop_last,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train, self.shuffle, self.drop_last)

    def val_dataloader(self) -> DataLoader | list:
        return [] if self.val is None else self._loader(self.val, False, False)


class DigitsDataModule(TensorDataModule):
    """scikit-learn's 8x8 digits (1797 x 64, pixels / 16 in [0, 1]) with a seeded train/val split.

    The data are loaded at construction (they ship with scikit-learn; nothing downloads). With
    ``standardize=True`` both splits are standardised with the training split's per-pixel ``mean``
    and ``std`` (kept as attributes; constant pixels keep scale 1).

    Args:
        batch_size: rows per batch.
        val_fraction: share of the 1797 images held out for validation, in [0, 1).
        seed: seed of the split.
        standardize: standardise the pixels with training-split statistics.
        num_workers: DataLoader worker processes.

    Example:
        >>> dm = DigitsDataModule(batch_size=64)
        >>> dm.train.shape, dm.val.shape
        (torch.Size([1438, 64]), torch.Size([359, 64]))
    """

    def __init__(
        self,
        batch_size: int = 128,
        val_fraction: float = 0.2,
        seed: int = 0,
        standardize: bool = False,
        num_workers: int = 0,
    ) -> None:
        train, val = split_tensor(load_digits_tensor(), val_fraction, seed)
        self.mean: Tensor | None = None
        self.std: Tensor | None = None
        if standardize:
            self.mean, self.std = pixel_statistics(train)
            train = (train - self.mean) / self.std
            val = None if val is None else (val - self.mean) / self.std
        super().__init__(train, val, batch_size=batch_size, shuffle=True, num_workers=num_workers)
        self.save_hyperparameters()


class ToyDataModule(TensorDataModule):
    """A synthetic data set by name (see ``TOY_DATASETS``), generated once and split into train/val.

    Args:
        name: a key of ``TOY_DATASETS``: ``"circle"``, ``"cosine"``, ``"eight_gaussians"``, ``"lemniscate"``,
            ``"manifold"``, ``"pca_ring"``, ``"ppca"``, ``"spiral_3d"`` or ``"swiss_roll"``.
        n: number of points generated (before the split).
        val_fraction: share held out for validation, in [0, 1).
        batch_size: rows per batch.
        seed: seed of the data and of the split.
        num_workers: DataLoader worker processes.
        **kwargs: passed to the generator (e.g. ``noise_std``; ``data_dim`` and ``latent_dim`` for "ppca").

    Example:
        >>> dm = ToyDataModule("pca_ring", n=1000, val_fraction=0.1, noise_std=0.01)
        >>> dm.train.shape, dm.val.shape
        (torch.Size([900, 10]), torch.Size([100, 10]))
    """

    def __init__(
        self,
        name: str,
        n: int = 10_000,
        val_fraction: float = 0.1,
        batch_size: int = 128,
        seed: int = 0,
        num_workers: int = 0,
        **kwargs: Any,
    ) -> None:
        if name not in TOY_DATASETS:
            raise ValueError(f"Expected `name` to be one of {tuple(TOY_DATASETS)}, but got {name!r}.")
        train, val = split_tensor(TOY_DATASETS[name](n, seed=seed, **kwargs), val_fraction, seed)
        super().__init__(train, val, batch_size=batch_size, shuffle=True, num_workers=num_workers)
        self.save_hyperparameters()
