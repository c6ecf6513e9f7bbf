"""Gaussian ``torch.distributions`` objects: which are accepted, and their shapes (private; used by :mod:`._inputs`).

Metadata only: type checks, shapes, and a sum over trailing dimensions of a value a distribution returned.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.distributions import (
    Distribution,
    Independent,
    LowRankMultivariateNormal,
    MultivariateNormal,
    Normal,
)

from lightning_entropy_vae.functional._checks import shape_of as _shape

_GAUSSIANS = (Normal, MultivariateNormal, LowRankMultivariateNormal)


def check_gaussian(name: str, dist: Any, role: str) -> Distribution:
    """Accept Normal, Independent(Normal), MultivariateNormal and LowRankMultivariateNormal."""
    base = dist.base_dist if isinstance(dist, Independent) else dist
    if not isinstance(dist, Distribution):
        raise TypeError(f"Expected `{name}` to be a torch.distributions.Distribution, or an object with a `.mean` and"
                        f" a `.logvar` (or `.var`, `.std`, `.scale`) tensor, but got {type(dist).__name__}.")
    if not isinstance(base, _GAUSSIANS):
        raise TypeError(
            f"Expected a Gaussian `{name}` (Normal, Independent(Normal), MultivariateNormal or"
            f" LowRankMultivariateNormal), but got {type(base).__name__}. The three-entropies result"
            f" covers Gaussian {role}s only."
        )
    return dist


def full_shape(dist: Distribution) -> tuple[int, ...]:
    """``batch_shape + event_shape`` as a tuple."""
    return _shape(dist.batch_shape) + _shape(dist.event_shape)


def sum_to(t: Tensor, ndim: int) -> Tensor:
    """Sum all trailing dimensions beyond the first ``ndim``."""
    return t.sum(dim=tuple(range(ndim, t.dim()))) if t.dim() > ndim else t


def is_diagonal(dist: Distribution | None) -> bool:
    """Whether a Gaussian distribution has a diagonal covariance (Normal or Independent(Normal))."""
    return isinstance(dist.base_dist if isinstance(dist, Independent) else dist, Normal)
