r"""Per-latent statistics and posterior-collapse flags.

A collapsed latent h has :math:`q(z_h|x) = p(z_h)` for every x: its average encoder entropy
equals the prior's entropy (1.4189 nats for N(0, 1)) and it adds nothing to the ELBO. The paper's
criterion counts latent h as collapsed when

.. math::

    \bar{\mathcal{H}}_h = \frac1N\sum_n \tfrac12\log(2\pi e\,\tau_h^2(x_n)) \;\ge\; 1.0\ \text{nat}

(:math:`\tau_h^2 \ge e/(2\pi) = 0.433`). For a learnable prior the threshold moves with that latent's
prior entropy: collapsed when :math:`\bar{\mathcal{H}}_h \ge \mathcal{H}[p(z_h)] - (1.4189 - 1.0)`.
Companions: the per-latent KL, and "active units" (Burda et al., 2016):
:math:`\operatorname{Var}_x \mathbb{E}_q[z_h] > 0.01`.

All per-latent statistics come from one per-point table (:func:`_latent_statistics_update`) whose sum
over the points :func:`_latent_statistics_compute` turns into values; :class:`PosteriorCollapse` sums the
same table over batches.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

from lightning_entropy_vae.functional import _inputs as _in
from lightning_entropy_vae.functional._checks import (
    LOG_2PI_E,
    as_float_tensor,
    check_keywords,
    missing_inputs_error,
    number_argument,
)
from lightning_entropy_vae.functional.elbo import _kl_compute, _kl_per_latent, _kl_update
from lightning_entropy_vae.functional.gaussian import _entropy_from_logdet

__all__ = [
    "COLLAPSE_CRITERIA",
    "DEFAULT_THRESHOLDS",
    "collapsed_latents",
    "latent_entropy",
    "latent_kl",
    "latent_mean_variance",
    "posterior_collapse",
]

Criterion = Literal["entropy", "kl", "active_units"]
#: The criteria :func:`collapsed_latents` understands.
COLLAPSE_CRITERIA: tuple[str, ...] = ("entropy", "kl", "active_units")
#: Default thresholds: 1.0 nat average encoder entropy (the paper), 0.01 nats KL, 0.01 variance.
DEFAULT_THRESHOLDS: dict[str, float] = {"entropy": 1.0, "kl": 0.01, "active_units": 0.01}
#: Rows of the per-point table of :func:`_latent_statistics_update`.
LATENT_ROWS = ("logvar", "prior_logvar", "ratio", "scaled_sq", "mean", "mean_sq")


def _latent_statistics_update(enc: _in.Encoder, p: _in.Prior, per_sample: bool = True) -> Tensor:
    """Per-latent sufficient statistics: per point ``(B, 6, H)`` with rows :data:`LATENT_ROWS`, or their sums
    over the batch ``(6, H)``. Every per-latent value is a function of their sums (:func:`_latent_statistics_compute`).
    """
    lv, mean = enc.logvar, enc.mean
    ratio, scaled_sq = _kl_update(enc, p)
    mean_sq = scaled_sq if p.logvar is None and p.mean is None else mean.square()
    prior_logvar = p.logvar.expand_as(lv) if p.logvar is not None else lv.new_zeros(()).expand_as(lv)
    rows = [lv, prior_logvar, ratio, scaled_sq, mean, mean_sq]
    if per_sample:
        return torch.stack(rows, dim=-2)
    return torch.stack([r.sum(0) for r in rows])


def _mean_variance_compute(mean_sum: Tensor, mean_sq_sum: Tensor, count: Any) -> Tensor:
    """Population variance from the sums of x and x^2 over ``count`` points (clamped at 0 against rounding)."""
    return (mean_sq_sum / count - (mean_sum / count).square()).clamp_min(0.0)


def _entropy_collapse_level(prior_latent_entropy: Tensor | None, threshold: float) -> Tensor | float:
    """The average encoder entropy from which a latent counts as collapsed under the ``"entropy"`` criterion.

    ``threshold`` below a standard normal's 0.5*log(2 pi e); a learnable prior moves it with its entropy.
    """
    if prior_latent_entropy is None:
        return threshold
    return prior_latent_entropy - (0.5 * LOG_2PI_E - threshold)


def _check_criterion(criterion: str, threshold: float | None) -> float:
    if criterion not in COLLAPSE_CRITERIA:
        raise ValueError(f"Expected `criterion` to be one of {COLLAPSE_CRITERIA}, but got {criterion!r}.")
    if threshold is None:
        return DEFAULT_THRESHOLDS[criterion]
    return float(number_argument("threshold", threshold, "a finite number", math.isfinite))


def _latent_statistics_compute(sums: Tensor, count: Any, criterion: str, threshold: float) -> dict[str, Tensor]:
    """Values and flags from the table of :func:`_latent_statistics_update` summed over ``count`` points.

    With no points (``count`` 0) every statistic and ``num_active``/``num_collapsed`` are NaN and no
    latent is flagged.
    """
    logvar, prior_logvar, ratio, scaled_sq, mean, mean_sq = sums.unbind(-2)
    stats = {
        "latent_entropy": _entropy_from_logdet(logvar, count, 1) / count,
        "prior_latent_entropy": _entropy_from_logdet(prior_logvar, count, 1) / count,
        "latent_kl": _kl_compute(count, logvar, prior_logvar, ratio, scaled_sq) / count,
        "latent_mean_variance": _mean_variance_compute(mean, mean_sq, count),
    }
    collapsed = collapsed_latents(**stats, criterion=criterion, threshold=threshold)
    seen = torch.as_tensor(count, device=sums.device) > 0
    nan = torch.full((), float("nan"), dtype=sums.dtype, device=sums.device)
    out = {**stats, "collapsed": collapsed,
           "num_active": torch.where(seen, (~collapsed).sum().to(sums.dtype), nan),
           "num_collapsed": torch.where(seen, collapsed.sum().to(sums.dtype), nan)}
    if criterion == "entropy":
        out["entropy_threshold"] = _entropy_collapse_level(stats["prior_latent_entropy"], threshold)
    return out


def latent_entropy(*, enc_logvar: Tensor | None = None, posterior: Any = None, **vocabulary: Any) -> Tensor:
    r"""Average encoder entropy per latent :math:`\bar{\mathcal{H}}_h`, shape ``(H,)``.

    For a full-covariance posterior this uses the marginal variances.

    Example:
        >>> latent_entropy(enc_logvar=torch.zeros(5, 3))
        tensor([1.4189, 1.4189, 1.4189])
    """
    check_keywords("latent_entropy()", vocabulary, ("enc_logvar", "posterior"))
    enc = _in.encoder(None, enc_logvar, posterior, owner="latent_entropy()")
    count = enc.logvar.shape[0]
    return _entropy_from_logdet(enc.logvar.sum(0), count, 1) / count


def _encoder_with_mean(owner: str, enc_mean: Any, enc_logvar: Any, posterior: Any) -> _in.Encoder:
    enc = _in.encoder(enc_mean, enc_logvar, posterior, owner=owner)
    if enc.mean is None:
        raise missing_inputs_error(owner, "`enc_mean` and `enc_logvar` (or a `posterior`)")
    return enc


def latent_kl(
    *,
    enc_mean: Tensor | None = None,
    enc_logvar: Tensor | None = None,
    prior_logvar: Tensor | None = None,
    posterior: Any = None,
    prior: Any = None,
    reduction: str = "mean",
    **vocabulary: Any,
) -> Tensor:
    r"""KL per latent :math:`\mathrm{KL}(q(z_h|x_n)\,\|\,p(z_h))`: averaged over the points, shape ``(H,)``, or per
    point with ``reduction="none"``, shape ``(B, H)``.

    Exact for diagonal posteriors and priors; for full covariances it is the KL of the marginals.

    Raises:
        ValueError: ``reduction`` other than ``"mean"`` or ``"none"``.

    Example:
        >>> latent_kl(enc_mean=torch.zeros(5, 2), enc_logvar=torch.zeros(5, 2))
        tensor([0., 0.])
        >>> latent_kl(enc_mean=torch.ones(3, 2), enc_logvar=torch.zeros(3, 2), reduction="none")[0]
        tensor([0.5000, 0.5000])
    """
    check_keywords("latent_kl()", vocabulary, ("enc_mean", "enc_logvar", "prior_logvar", "posterior", "prior",
                                               "reduction"))
    if reduction not in ("mean", "none"):
        raise ValueError(f"Expected `reduction` to be 'mean' or 'none', but got {reduction!r}.")
    enc = _encoder_with_mean("latent_kl()", enc_mean, enc_logvar, posterior)
    p = _in.prior(prior_logvar, prior, latent_dim=enc.logvar.shape[-1], batch=enc.logvar.shape[0])
    per_point = _kl_per_latent(enc, p)
    return per_point if reduction == "none" else per_point.mean(0)


def latent_mean_variance(*, enc_mean: Tensor | None = None, posterior: Any = None, **vocabulary: Any) -> Tensor:
    r"""Variance over the data of the posterior mean, :math:`\operatorname{Var}_x \mathbb{E}_q[z_h]`, ``(H,)``.

    Population variance (divides by N), as in Burda et al.'s active-unit count.

    Example:
        >>> latent_mean_variance(enc_mean=torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        tensor([1., 0.])
    """
    check_keywords("latent_mean_variance()", vocabulary, ("enc_mean", "posterior"))
    if posterior is not None:
        enc_mean = _in.encoder(None, None, posterior, owner="latent_mean_variance()").mean
    if enc_mean is None:
        raise missing_inputs_error("latent_mean_variance()", "`enc_mean` (or a `posterior`)")
    mean = as_float_tensor("enc_mean", enc_mean)
    return _mean_variance_compute(mean.sum(0), mean.square().sum(0), mean.shape[0])


def collapsed_latents(
    latent_entropy: Tensor | None = None,
    *,
    prior_latent_entropy: Tensor | None = None,
    latent_kl: Tensor | None = None,
    latent_mean_variance: Tensor | None = None,
    criterion: Criterion = "entropy",
    threshold: float | None = None,
) -> Tensor:
    r"""Boolean collapse flags per latent, shape ``(H,)``, under the chosen criterion.

    - ``"entropy"`` (the paper): :math:`\bar{\mathcal{H}}_h \ge \mathcal{H}[p(z_h)] - (\tfrac12\log 2\pi e - t)`,
      i.e. :math:`\bar{\mathcal{H}}_h \ge t` (default 1.0) for a standard normal prior.
    - ``"kl"``: average KL of the latent below t (default 0.01 nats).
    - ``"active_units"``: :math:`\operatorname{Var}_x\mathbb{E}_q[z_h]` below t (default 0.01).

    Example:
        >>> collapsed_latents(torch.tensor([0.2, 1.3]))
        tensor([False,  True])
    """
    t = _check_criterion(criterion, threshold)
    if criterion == "entropy":
        if latent_entropy is None:
            raise ValueError("collapsed_latents(criterion='entropy') needs `latent_entropy`, but got None.")
        return latent_entropy >= _entropy_collapse_level(prior_latent_entropy, t)
    if criterion == "kl":
        if latent_kl is None:
            raise ValueError("collapsed_latents(criterion='kl') needs `latent_kl`, but got None.")
        return latent_kl < t
    if latent_mean_variance is None:
        raise ValueError("collapsed_latents(criterion='active_units') needs `latent_mean_variance`, but got None.")
    return latent_mean_variance < t


def posterior_collapse(
    *,
    enc_mean: Tensor | None = None,
    enc_logvar: Tensor | None = None,
    prior_logvar: Tensor | None = None,
    posterior: Any = None,
    prior: Any = None,
    criterion: Criterion = "entropy",
    threshold: float | None = None,
    **vocabulary: Any,
) -> dict[str, Tensor]:
    r"""All per-latent statistics and the collapse flags for one batch (or a whole data set).

    Returns:
        A dict of ``(H,)`` tensors: ``latent_entropy``, ``prior_latent_entropy``, ``latent_kl``,
        ``latent_mean_variance``, ``collapsed`` (bool), the scalars ``num_active`` and ``num_collapsed``
        (float, NaN with no points), and for the ``"entropy"`` criterion ``entropy_threshold``: each
        latent's collapse threshold (the threshold line of a plot).

    Example:
        >>> stats = posterior_collapse(enc_mean=torch.randn(100, 2) * torch.tensor([1.0, 0.0]),
        ...                            enc_logvar=torch.tensor([-3.0, 0.0]).expand(100, 2))
        >>> stats["collapsed"], stats["num_active"]
        (tensor([False,  True]), tensor(1.))
    """
    check_keywords("posterior_collapse()", vocabulary, ("enc_mean", "enc_logvar", "prior_logvar", "posterior",
                                                        "prior", "criterion", "threshold"))
    t = _check_criterion(criterion, threshold)
    enc = _encoder_with_mean("posterior_collapse()", enc_mean, enc_logvar, posterior)
    p = _in.prior(prior_logvar, prior, latent_dim=enc.logvar.shape[-1], batch=enc.logvar.shape[0])
    sums = _latent_statistics_update(enc, p, per_sample=False)
    return _latent_statistics_compute(sums, enc.logvar.shape[0], criterion, t)
