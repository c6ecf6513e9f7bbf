r"""The entropy of one Gaussian, the formula every entropy of the package is computed with.

:func:`_entropy_from_logdet` gives the entropy of ``count`` Gaussians of dimension ``dim`` whose covariances'
log-determinants sum to ``logdet``; the encoder, prior and decoder entropies (:mod:`.entropy`), the
per-latent entropies (:mod:`.collapse`) and the optimal-variance entropies (:mod:`.stationary`) all call it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_entropy_vae.functional._checks import LOG_2PI_E, as_float_tensor

__all__ = ["gaussian_entropy"]


def _entropy_from_logdet(logdet: Tensor, count: Any, dim: Any) -> Tensor:
    r"""Entropy of ``count`` Gaussians in ``dim`` dimensions: :math:`\tfrac12(\sum\log\det\Sigma + c\,k\log 2\pi e)`.

    Elementwise in its arguments: per sample (``count`` 1), summed over points, per latent (``dim`` 1).
    """
    return 0.5 * (logdet + count * dim * LOG_2PI_E)


def _logdet_from_entropy(entropy: Tensor, dim: int) -> Tensor:
    """The inverse of :func:`_entropy_from_logdet` for one Gaussian: the log-det behind a torch ``entropy()``."""
    return 2.0 * entropy - dim * LOG_2PI_E


def gaussian_entropy(logvar: Tensor | None = None, *, covariance: Tensor | None = None) -> Tensor:
    r"""Entropy of a Gaussian from its log-variances (diagonal) or its covariance matrix (full).

    .. math::

        \mathcal{H}[\mathcal{N}(m, \operatorname{diag}(s^2))] = \sum_i \tfrac12 \log(2\pi e\, s_i^2),
        \qquad
        \mathcal{H}[\mathcal{N}(m, \Sigma)] = \tfrac12 \log\det(2\pi e\, \Sigma)

    Args:
        logvar: log-variances of shape ``(..., K)``; the last dimension is summed.
        covariance: covariance matrices of shape ``(..., K, K)`` (positive definite).

    Returns:
        Entropies of shape ``(...)``, in nats.

    Raises:
        ValueError: if neither or both of ``logvar`` and ``covariance`` are given.

    Example:
        >>> gaussian_entropy(torch.zeros(3))  # 3 standard-normal dimensions
        tensor(4.2568)
        >>> gaussian_entropy(covariance=torch.eye(3))
        tensor(4.2568)
    """
    if (logvar is None) == (covariance is None):
        raise ValueError("Expected exactly one of `logvar` and `covariance`, but got " + (
            "both." if logvar is not None else "neither."))
    if logvar is not None:
        lv = as_float_tensor("logvar", logvar)
        return _entropy_from_logdet(lv.sum(-1), 1, lv.shape[-1])
    cov = as_float_tensor("covariance", covariance)
    if cov.dim() < 2 or cov.shape[-1] != cov.shape[-2]:
        raise ValueError(f"Expected `covariance` of shape (..., K, K), but got {tuple(cov.shape)}.")
    logdet = 2.0 * torch.linalg.cholesky(cov).diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return _entropy_from_logdet(logdet, 1, cov.shape[-1])
