"""scikit-learn's bundled 8x8 handwritten digits as a float32 tensor (no download needed)."""

from __future__ import annotations

import torch
from torch import Tensor


def load_digits_tensor(standardize: bool = False) -> Tensor:
    """The 1,797 images of ``sklearn.datasets.load_digits``, flattened to (1797, 64) float32.

    The raw pixel values are integers 0-16; they are divided by 16, so the result lies in [0, 1].
    With ``standardize=True`` every pixel is then shifted to mean 0 and scaled to standard deviation 1
    over the whole set (pixels that are constant keep their scale: only the mean is removed).
    :class:`~lightning_entropy_vae.data.DigitsDataModule` instead standardises with training-split statistics.

    Args:
        standardize: standardise each pixel over the full set.

    Returns:
        Float32 tensor (1797, 64).

    Raises:
        ImportError: if scikit-learn is not installed.

    Example:
        >>> x = load_digits_tensor()
        >>> x.shape, x.dtype, float(x.min()), float(x.max())
        (torch.Size([1797, 64]), torch.float32, 0.0, 1.0)
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "`load_digits_tensor` needs scikit-learn; install it with `pip install scikit-learn`."
        ) from err
    x = torch.as_tensor(load_digits().data, dtype=torch.float32) / 16.0
    if standardize:
        mean, std = pixel_statistics(x)
        x = (x - mean) / std
    return x


def pixel_statistics(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-pixel mean and standard deviation of ``x`` (N, D); zero standard deviations become 1."""
    mean = x.mean(dim=0)
    std = x.std(dim=0)
    return mean, torch.where(std > 0, std, torch.ones_like(std))
