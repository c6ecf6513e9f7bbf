r"""The mean of an autocorrelated series and its standard error by the method of batch means.

Successive minibatch statistics of a training run (the gap between the sampled ELBO and the entropy sum, batch
by batch) are autocorrelated: the weights move a little between batches, so neighbours are alike and the plain
standard error :math:`s/\sqrt{K}` is too small. The method of batch means (the convergence diagnostics of
stochastic optimisation, e.g. Chee & Toulis, AISTATS 2018; Lang, Zhang & Xiao's SASA, NeurIPS 2019) splits the
window into :math:`G` consecutive groups and reads the spread of the group means: groups much longer than the
correlation time are nearly independent, so

.. math::

    \bar g = \frac{\sum_j W_j \bar g_j}{\sum_j W_j},
    \qquad
    \widehat{\mathrm{se}}^2 = \frac{G}{G-1}\,\frac{\sum_j W_j^2 (\bar g_j - \bar g)^2}{(\sum_j W_j)^2},

with :math:`\bar g_j` the weighted mean of group :math:`j` and :math:`W_j` its total weight (its points). With
equal weights this is the sample standard deviation of the :math:`G` group means over :math:`\sqrt G`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["batch_means"]


def batch_means(values: Any, weights: Any = None, *, groups: int = 10) -> tuple[Tensor, Tensor]:
    r"""The weighted mean of a series and its batch-means standard error.

    .. math::

        \widehat{\mathrm{se}}^2 = \frac{G}{G-1}\,\frac{\sum_j W_j^2 (\bar g_j - \bar g)^2}{(\sum_j W_j)^2}

    The :math:`K` values are split, in order, into :math:`G = \min(\text{groups}, K)` consecutive groups of
    :math:`\lfloor K/G\rfloor` or :math:`\lceil K/G\rceil` values (``torch.tensor_split``); a group's mean is
    weighted by ``weights`` (each value's points, for per-batch means of batches of unequal size).

    Args:
        values: ``(K,)`` the series, oldest first (per-batch means: nats per point).
        weights: ``(K,)`` positive weights (per-batch point counts), or ``None`` for equal weights.
        groups: the number of groups :math:`G` (at least 2).

    Returns:
        ``(mean, se)``: 0-d float64 tensors.

    Raises:
        ValueError: ``values`` not 1-d with at least 2 entries, ``weights`` of another shape or not positive,
            ``groups`` < 2.

    Example:
        >>> mean, se = batch_means(torch.tensor([1.0, 3.0, 1.0, 3.0]), groups=2)
        >>> mean, se
        (tensor(2., dtype=torch.float64), tensor(0., dtype=torch.float64))
        >>> batch_means(torch.tensor([1.0, 1.0, 3.0, 3.0]), groups=2)[1]
        tensor(1., dtype=torch.float64)
    """
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 2:
        raise ValueError(f"Expected `groups` to be an int >= 2, but got {groups!r}.")
    g = torch.as_tensor(values, dtype=torch.float64)
    if g.dim() != 1 or g.numel() < 2:
        raise ValueError(f"Expected `values` of shape (K,) with K >= 2, but got shape {tuple(g.shape)}.")
    if weights is None:
        w = torch.ones_like(g)
    else:
        w = torch.as_tensor(weights, dtype=torch.float64, device=g.device)
        if w.shape != g.shape:
            raise ValueError(f"Expected `weights` of shape {tuple(g.shape)} matching `values`, but got"
                             f" {tuple(w.shape)}.")
        if not bool((w > 0).all()):
            raise ValueError(f"Expected positive `weights`, but got a minimum of {float(w.min())}.")
    totals, sizes = _batch_means_update(g, w, groups)
    return _batch_means_compute(totals, sizes)


def _batch_means_update(values: Tensor, weights: Tensor, groups: int) -> tuple[Tensor, Tensor]:
    """Per group, ``(sum_k w_k g_k, sum_k w_k)`` over ``min(groups, K)`` consecutive groups: ``(G,)`` each.
    Totals of processes that saw different batches at the same time add up group by group."""
    count = min(groups, values.numel())
    totals = torch.stack([part.sum() for part in torch.tensor_split(weights * values, count)])
    sizes = torch.stack([part.sum() for part in torch.tensor_split(weights, count)])
    return totals, sizes


def _batch_means_compute(totals: Tensor, sizes: Tensor) -> tuple[Tensor, Tensor]:
    """The weighted mean and its batch-means standard error from the groups' totals and weights."""
    count, total = totals.numel(), sizes.sum()
    mean = totals.sum() / total
    spread = (totals - sizes * mean).square().sum()  # sum_j W_j^2 (g_j - g)^2
    se = (spread * count / (count - 1)).sqrt() / total
    return mean, se
