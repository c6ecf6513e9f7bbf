"""Synthetic data sets: probabilistic-PCA data and the paper's toy manifolds.

Every generator draws from its own seeded ``torch.Generator`` (the global RNG is untouched) and
returns a float32 tensor of shape (n, D). Nothing is downloaded.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"Expected `{name}` to be a positive int, but got {value!r}.")


def _check_noise_std(noise_std: float) -> None:
    if not (isinstance(noise_std, (int, float)) and noise_std >= 0):
        raise ValueError(f"Expected `noise_std` to be a non-negative float, but got {noise_std!r}.")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(gen: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def _finish(points: Tensor, noise_std: float, gen: torch.Generator) -> Tensor:
    """Add isotropic Gaussian noise of standard deviation ``noise_std`` and cast to float32."""
    return (points + noise_std * _randn(gen, *points.shape)).to(torch.float32)


def make_ppca_data(
    n: int,
    data_dim: int,
    latent_dim: int,
    noise_std: float = 0.1,
    seed: int = 0,
    param_seed: int | None = None,
) -> Tensor:
    r"""Samples of a probabilistic-PCA model.

    .. math:: x = W z + \mu + \epsilon,\quad z \sim N(0, I_H),\ \epsilon \sim N(0, \text{noise\_std}^2 I_D),

    with the loadings ``W`` (D, H) and the mean ``mu`` (D,) drawn once with i.i.d. N(0, 1) entries.

    Args:
        n: number of samples.
        data_dim: data dimension D.
        latent_dim: latent dimension H.
        noise_std: standard deviation of the isotropic noise.
        seed: seed of the samples (z and the noise).
        param_seed: seed of ``W`` and ``mu``; defaults to ``seed``. Fix it to draw fresh samples
            (another ``seed``) from the same model, e.g. for held-out data.

    Returns:
        Float32 tensor (n, D).

    Example:
        >>> make_ppca_data(500, data_dim=10, latent_dim=3).shape
        torch.Size([500, 10])
    """
    _check_positive_int("n", n)
    _check_positive_int("data_dim", data_dim)
    _check_positive_int("latent_dim", latent_dim)
    _check_noise_std(noise_std)
    param_gen = _generator(seed if param_seed is None else param_seed)
    loadings = _randn(param_gen, data_dim, latent_dim)
    mean = _randn(param_gen, data_dim)
    gen = _generator(seed)
    z = _randn(gen, n, latent_dim)
    return _finish(z @ loadings.T + mean, noise_std, gen)


def make_circle(n: int, radius: float = 1.0, noise_std: float = 0.05, seed: int = 0) -> Tensor:
    """Points on a circle of ``radius`` at uniform angles, plus Gaussian noise; (n, 2).

    Example:
        >>> make_circle(100).shape
        torch.Size([100, 2])
    """
    _check_positive_int("n", n)
    _check_noise_std(noise_std)
    gen = _generator(seed)
    angle = 2 * math.pi * torch.rand(n, generator=gen, dtype=torch.float64)
    return _finish(radius * torch.stack([angle.cos(), angle.sin()], dim=1), noise_std, gen)


def make_eight_gaussians(n: int, radius: float = 2.0, noise_std: float = 0.1, seed: int = 0) -> Tensor:
    """A mixture of eight equally weighted Gaussians (std ``noise_std``) centred on a circle; (n, 2).

    Example:
        >>> make_eight_gaussians(100).shape
        torch.Size([100, 2])
    """
    _check_positive_int("n", n)
    _check_noise_std(noise_std)
    gen = _generator(seed)
    angle = 2 * math.pi / 8 * torch.randint(0, 8, (n,), generator=gen).to(torch.float64)
    return _finish(radius * torch.stack([angle.cos(), angle.sin()], dim=1), noise_std, gen)


def make_swiss_roll(n: int, noise_std: float = 0.05, seed: int = 0) -> Tensor:
    r"""A swiss roll in 3-D, scaled to roughly unit size; (n, 3).

    With :math:`t = 1.5\pi(1 + 2u)`, :math:`u, v \sim U(0, 1)`: the point is
    :math:`(t\cos t,\ 21 v,\ t\sin t) / 10` (scikit-learn's parametrisation divided by 10), plus noise.

    Example:
        >>> make_swiss_roll(100).shape
        torch.Size([100, 3])
    """
    _check_positive_int("n", n)
    _check_noise_std(noise_std)
    gen = _generator(seed)
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=gen, dtype=torch.float64))
    height = 21 * torch.rand(n, generator=gen, dtype=torch.float64)
    return _finish(torch.stack([t * t.cos(), height, t * t.sin()], dim=1) / 10, noise_std, gen)


def make_pca_ring(
    n: int,
    data_dim: int = 10,
    noise_std: float = 0.05,
    seed: int = 0,
    param_seed: int | None = None,
) -> Tensor:
    r"""The paper's "PCA-ring": a noisy ring in 2-D mapped linearly to ``data_dim`` dimensions.

    .. math:: y = z / 10 + z / \lVert z \rVert,\quad z \sim N(0, I_2),\qquad x = A y + \epsilon,

    with a fixed random matrix ``A`` (D, 2) of i.i.d. N(0, 1) entries and
    :math:`\epsilon \sim N(0, \text{noise\_std}^2 I_D)`.

    Args:
        n: number of samples.
        data_dim: data dimension D.
        noise_std: standard deviation of the isotropic noise.
        seed: seed of the samples.
        param_seed: seed of ``A``; defaults to ``seed``.

    Example:
        >>> make_pca_ring(100).shape
        torch.Size([100, 10])
    """
    _check_positive_int("n", n)
    _check_positive_int("data_dim", data_dim)
    _check_noise_std(noise_std)
    matrix = _randn(_generator(seed if param_seed is None else param_seed), data_dim, 2)
    gen = _generator(seed)
    z = _randn(gen, n, 2)
    ring = z / 10 + z / z.norm(dim=1, keepdim=True)
    return _finish(ring @ matrix.T, noise_std, gen)


