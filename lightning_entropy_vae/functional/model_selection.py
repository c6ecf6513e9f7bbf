r"""Model selection with the Bayesian information criterion (the paper's streaming experiment)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["bic"]


def bic(elbo: Tensor | float, num_parameters: int, num_points: int) -> Tensor:
    r"""Bayesian information criterion from a per-data-point ELBO (or entropy sum); lower is better.

    .. math::

        \mathrm{BIC} = k \ln N - 2 L, \qquad L = N \cdot \mathcal{F}

    where :math:`\mathcal{F}` is the mean ELBO per data point over the N points scored. For the
    paper's linear VAEs, :math:`k = H D + 1` (decoder weights plus the decoder variance).

    Args:
        elbo: mean ELBO (or entropy sum) per data point, any shape (e.g. one value per batch).
        num_parameters: k, the number of free parameters.
        num_points: N, the number of data points the ELBO was averaged over.

    Raises:
        ValueError: if ``num_parameters`` is negative or ``num_points`` is not positive.

    Example:
        >>> bic(torch.tensor(-10.0), num_parameters=21, num_points=10)
        tensor(248.3543)
    """
    if isinstance(num_parameters, bool) or not isinstance(num_parameters, int) or num_parameters < 0:
        raise ValueError(f"Expected `num_parameters` to be a non-negative int, but got {num_parameters!r}.")
    if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points <= 0:
        raise ValueError(f"Expected `num_points` to be a positive int, but got {num_points!r}.")
    return num_parameters * math.log(num_points) - 2.0 * num_points * torch.as_tensor(elbo)
