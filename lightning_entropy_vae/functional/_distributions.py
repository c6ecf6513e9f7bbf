"""``torch.distributions`` objects: which are accepted, and their shapes (private; used by :mod:`._inputs`).

Metadata only: type checks, shapes, and a sum over trailing dimensions of a value a distribution returned.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.distributions import (
    Bernoulli,
    Binomial,
    Categorical,
    ContinuousBernoulli,
    Distribution,
    Independent,
    LogNormal,
    LowRankMultivariateNormal,
    Multinomial,
    MultivariateNormal,
    NegativeBinomial,
    Normal,
    OneHotCategorical,
    Poisson,
)

from lightning_entropy_vae.functional._checks import shape_of as _shape

_GAUSSIANS = (Normal, MultivariateNormal, LowRankMultivariateNormal)
#: Likelihoods of the exponential family with a constant base measure besides the Gaussians, by decoder kind.
_DISCRETE = ((Bernoulli, "bernoulli"), (Categorical, "categorical"), (OneHotCategorical, "categorical"),
             (ContinuousBernoulli, "continuous_bernoulli"))
#: Exponential families whose base measure depends on x: E[log p(x|z)] is not minus an entropy for them.
_NONCONSTANT_BASE_MEASURE = (Poisson, Binomial, NegativeBinomial, Multinomial, LogNormal)
_LIKELIHOODS = ("Normal, MultivariateNormal, LowRankMultivariateNormal, Bernoulli, Categorical, OneHotCategorical,"
                " ContinuousBernoulli, or Independent of one of them")


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


def likelihood_kind(dist: Any) -> str:
    """The decoder kind of a ``likelihood``: ``"gaussian"``, ``"bernoulli"``, ``"categorical"`` or
    ``"continuous_bernoulli"``; a ``TypeError`` for a distribution the entropy-sum result does not cover."""
    base = dist.base_dist if isinstance(dist, Independent) else dist
    if not isinstance(dist, Distribution) or isinstance(base, _GAUSSIANS):
        check_gaussian("likelihood", dist, "decoder")  # the Gaussian checks and their messages
        return "gaussian"
    for family, kind in _DISCRETE:
        if isinstance(base, family):
            return kind
    name = type(base).__name__
    if isinstance(base, _NONCONSTANT_BASE_MEASURE):
        raise TypeError(
            f"Expected a `likelihood` with a constant base measure ({_LIKELIHOODS}), but got {name}. The"
            f" entropy-sum result does not hold for a {name} likelihood: its base measure depends on x, so the"
            " expected log-likelihood is not minus an expected entropy at stationary points (Warnken et al.,"
            " arXiv 2501.09022, replace it by pseudo-entropies)."
        )
    raise TypeError(
        f"Expected a `likelihood` the entropy-sum result covers ({_LIKELIHOODS}), but got {name}, which is not"
        " supported."
    )


def full_shape(dist: Distribution) -> tuple[int, ...]:
    """``batch_shape + event_shape`` as a tuple."""
    return _shape(dist.batch_shape) + _shape(dist.event_shape)


def sum_to(t: Tensor, ndim: int) -> Tensor:
    """Sum all trailing dimensions beyond the first ``ndim``."""
    return t.sum(dim=tuple(range(ndim, t.dim()))) if t.dim() > ndim else t


def is_diagonal(dist: Distribution | None) -> bool:
    """Whether a Gaussian distribution has a diagonal covariance (Normal or Independent(Normal))."""
    return isinstance(dist.base_dist if isinstance(dist, Independent) else dist, Normal)
