"""The remaining toy manifolds of the paper's verification experiments (its code's ``ToyDataset``).

A cosine and a lemniscate in 2-D, a spiral in 3-D and a k-dimensional manifold in D dimensions.
Like the generators in :mod:`lightning_entropy_vae.data.synthetic`, each draws from its own seeded
``torch.Generator`` and returns float32 (n, D). The paper's code then rescales every coordinate to
[0, 1] (``MinMaxScaler``); that is left to the caller.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_entropy_vae.data.synthetic import _check_noise_std, _check_positive_int, _finish, _generator, _randn


def _uniform(gen: torch.Generator, n: int, low: float, high: float) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=gen, dtype=torch.float64)


def make_cosine(n: int, noise_std: float = 0.05, seed: int = 0) -> Tensor:
    r"""A cosine curve in 2-D: :math:`(t, \cos t + 1)`, :math:`t \sim U(0, 3\pi)`, plus noise; (n, 2).

    Example:
        >>> make_cosine(100).shape
        torch.Size([100, 2])
    """
    _check_positive_int("n", n)
    _check_noise_std(noise_std)
    gen = _generator(seed)
    t = _uniform(gen, n, 0.0, 3 * math.pi)
    return _finish(torch.stack([t, t.cos() + 1], dim=1), noise_std, gen)


def make_lemniscate(n: int, noise_std: float = 0.05, seed: int = 0) -> Tensor:
    r"""The lemniscate of Gerono (a figure eight): :math:`(\cos t, \sin t \cos t) / 2`, plus noise; (n, 2).

    :math:`t \sim U(-\pi/2, 2\pi)`, as in the paper's code (so the right loop is drawn 1.5 times as often
    as the left one).

    Example:
        >>> make_lemniscate(100).shape
        torch.Size([100, 2])
    """
    _check_positive_int("n", n)
    _check_noise_std(noise_std)
    gen = _generator(seed)
    t = _uniform(gen, n, -0.5 * math.pi, 2 * math.pi)
    return _finish(torch.stack([t.cos(), t.sin() * t.cos()], dim=1) / 2, noise_std, gen)


def make_spiral_3d(n: int, noise_std: float = 0.05, seed: int = 0) -> Tensor:
    r"""One turn of a helix in 3-D, rotated by 45 degrees; (n, 3).

    With :math:`t \sim U(0, 1)`: :math:`a = 2.5\sin 2\pi t`, :math:`b = 2.5\cos 2\pi t`, :math:`c = 3t`;
    the point is :math:`(a - c,\ b,\ c + a) + 1.5`, plus noise.

    Example:
        >>> make_spiral_3d(100).shape
        torch.Size([100, 3])
    """
    _check_positive_int("n", n)
    _check_noise_std(noise_std)
    gen = _generator(seed)
    t = torch.rand(n, generator=gen, dtype=torch.float64)
    a, b, c = 2.5 * torch.sin(2 * math.pi * t), 2.5 * torch.cos(2 * math.pi * t), 3.0 * t
    return _finish(torch.stack([a - c, b, c + a], dim=1) + 1.5, noise_std, gen)


def make_manifold(
    n: int,
    latent_dim: int = 10,
    data_dim: int = 100,
    noise_std: float = 0.05,
    seed: int = 0,
    param_seed: int | None = None,
) -> Tensor:
    r"""A ``latent_dim``-dimensional manifold in ``data_dim`` dimensions (the paper's "manifold", k = 10, D = 100).

    The first k coordinates are :math:`u = 0.35\,\epsilon - 0.175`, :math:`\epsilon \sim N(0, I_k)`; each of
    the other D - k coordinates is :math:`0.35\cos(u_a^2 + u_b^2)` for two latent indices a, b drawn once
    (with replacement, as in the paper's code). The paper's code adds no noise to this data set; the
    default here adds ``noise_std`` like the other toy sets, so that the data have a density in D dimensions.

    Args:
        n: number of samples.
        latent_dim: intrinsic dimension k.
        data_dim: data dimension D, at least k.
        noise_std: standard deviation of the isotropic noise.
        seed: seed of the samples.
        param_seed: seed of the index pairs (a, b); defaults to ``seed``.

    Raises:
        ValueError: if an argument is out of range.

    Example:
        >>> make_manifold(50).shape
        torch.Size([50, 100])
    """
    _check_positive_int("n", n)
    _check_positive_int("latent_dim", latent_dim)
    _check_positive_int("data_dim", data_dim)
    _check_noise_std(noise_std)
    if data_dim < latent_dim:
        raise ValueError(
            f"Expected `data_dim` >= `latent_dim` = {latent_dim}, but got {data_dim}; the manifold needs"
            " at least as many data dimensions as latent ones."
        )
    pairs = torch.randint(0, latent_dim, (data_dim - latent_dim, 2),
                          generator=_generator(seed if param_seed is None else param_seed))
    gen = _generator(seed)
    base = 0.35 * _randn(gen, n, latent_dim) - 0.175
    rest = 0.35 * torch.cos(base[:, pairs[:, 0]].square() + base[:, pairs[:, 1]].square())
    return _finish(torch.cat([base, rest], dim=1), noise_std, gen)
