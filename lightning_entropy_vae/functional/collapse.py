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
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from lightning_entropy_vae.functional import _inputs as _in
from lightning_entropy_vae.functional._inputs import LOG_2PI_E
from lightning_entropy_vae.functional.elbo import _kl_from_column_sums, _kl_per_latent

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


def latent_entropy(enc_logvar: Tensor | None = None, *, posterior: Any = None, **_: Any) -> Tensor:
    r"""Average encoder entropy per latent :math:`\bar{\mathcal{H}}_h`, shape ``(H,)``.

    For a full-covariance posterior this uses the marginal variances.

    Example:
        >>> latent_entropy(torch.zeros(5, 3))
        tensor([1.4189, 1.4189, 1.4189])
    """
    enc = _in.encoder(None, enc_logvar, posterior, owner="latent_entropy()")
    return 0.5 * (LOG_2PI_E + enc.logvar.mean(0))


def latent_kl(
    enc_mean: Tensor | None = None,
    enc_logvar: Tensor | None = None,
    *,
    prior_logvar: Tensor | None = None,
    posterior: Any = None,
    prior: Any = None,
    **_: Any,
) -> Tensor:
    r"""Average KL per latent :math:`\frac1N\sum_n \mathrm{KL}(q(z_h|x_n)\,\|\,p(z_h))`, shape ``(H,)``.

    Exact for diagonal posteriors and priors; for full covariances it is the KL of the marginals.

    Example:
        >>> latent_kl(torch.zeros(5, 2), torch.zeros(5, 2))
        tensor([0., 0.])
    """
    enc = _in.encoder(enc_mean, enc_logvar, posterior, owner="latent_kl()")
    if enc.mean is None:
        raise _in.missing_inputs_error("latent_kl()", "`enc_mean` and `enc_logvar` (or a `posterior`)")
    p = _in.prior(prior_logvar, prior, latent_dim=enc.logvar.shape[-1], batch=enc.logvar.shape[0])
    return _kl_per_latent(enc, p).mean(0)


def latent_mean_variance(enc_mean: Tensor | None = None, *, posterior: Any = None, **_: Any) -> Tensor:
    r"""Variance over the data of the posterior mean, :math:`\operatorname{Var}_x \mathbb{E}_q[z_h]`, ``(H,)``.

    Population variance (divides by N), as in Burda et al.'s active-unit count.

    Example:
        >>> latent_mean_variance(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        tensor([1., 0.])
    """
    if posterior is not None:
        enc_mean = _in.encoder(None, None, posterior, owner="latent_mean_variance()").mean
    if enc_mean is None:
        raise _in.missing_inputs_error("latent_mean_variance()", "`enc_mean` (or a `posterior`)")
    mean = _in.as_float_tensor("enc_mean", enc_mean)
    return mean.var(0, correction=0)


def _prior_latent_entropy_sum(p: _in.Prior, batch: int, like: Tensor) -> Tensor:
    """Sum over the batch of each latent's prior entropy ``0.5 * log(2 pi e alpha_h^2)``, shape ``(H,)``."""
    if p.logvar is None:
        return torch.full(like.shape[-1:], 0.5 * LOG_2PI_E * batch, dtype=like.dtype, device=like.device)
    if p.logvar.dim() == 2:  # (B, H): each sample's own prior
        return 0.5 * (batch * LOG_2PI_E + p.logvar.sum(0))
    return 0.5 * batch * (LOG_2PI_E + p.logvar)


#: Rows of the per-latent sums that :class:`~lightning_entropy_vae.PosteriorCollapse` accumulates.
LATENT_SUM_ROWS = ("latent_entropy", "latent_kl", "mean_sum", "mean_sq_sum", "prior_latent_entropy")


def _latent_sums_from_columns(count: Any, logvar_sum: Tensor, exp_logvar_sum: Tensor, mean_sum: Tensor,
                              mean_sq_sum: Tensor, prior_logvar: Tensor | None) -> Tensor:
    """Per-latent sums over ``count`` points, shape ``(..., 5, H)`` with rows :data:`LATENT_SUM_ROWS`.

    From the column sums of ``logvar``, ``exp(logvar)``, ``mean`` and ``mean**2`` over the points and a
    zero-mean prior shared by them (``prior_logvar`` ``None`` for N(0, I), or ``(..., H)``):
    encoder entropy ``0.5 * (count * log(2 pi e) + sum logvar)``, the KL of :func:`_kl_from_column_sums`,
    the two mean sums, and ``count`` times the prior's entropy ``0.5 * (log(2 pi e) + prior_logvar)``.
    ``count`` is a number or a tensor broadcasting against the sums (one row per batch).
    """
    prior = 0.5 * count * (LOG_2PI_E if prior_logvar is None else LOG_2PI_E + prior_logvar)
    # a number (count and prior both plain) is filled on the sums' device: no host-to-device copy
    prior = prior.expand_as(logvar_sum) if isinstance(prior, Tensor) else torch.full_like(logvar_sum, prior)
    return torch.stack([
        0.5 * (count * LOG_2PI_E + logvar_sum),
        _kl_from_column_sums(count, logvar_sum, exp_logvar_sum, mean_sq_sum, prior_logvar),
        mean_sum,
        mean_sq_sum,
        prior,
    ], dim=-2)


def _check_criterion(criterion: str, threshold: float | None) -> float:
    if criterion not in COLLAPSE_CRITERIA:
        raise ValueError(f"Expected `criterion` to be one of {COLLAPSE_CRITERIA}, but got {criterion!r}.")
    if threshold is None:
        return DEFAULT_THRESHOLDS[criterion]
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"Expected `threshold` to be a float, but got {type(threshold).__name__}.")
    return float(threshold)


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
        if prior_latent_entropy is None:
            return latent_entropy >= t
        return latent_entropy >= prior_latent_entropy - (0.5 * LOG_2PI_E - t)
    if criterion == "kl":
        if latent_kl is None:
            raise ValueError("collapsed_latents(criterion='kl') needs `latent_kl`, but got None.")
        return latent_kl < t
    if latent_mean_variance is None:
        raise ValueError("collapsed_latents(criterion='active_units') needs `latent_mean_variance`, but got None.")
    return latent_mean_variance < t


def posterior_collapse(
    enc_mean: Tensor | None = None,
    enc_logvar: Tensor | None = None,
    *,
    prior_logvar: Tensor | None = None,
    posterior: Any = None,
    prior: Any = None,
    criterion: Criterion = "entropy",
    threshold: float | None = None,
    **_: Any,
) -> dict[str, Tensor]:
    r"""All per-latent statistics and the collapse flags for one batch (or a whole data set).

    Returns:
        A dict of ``(H,)`` tensors: ``latent_entropy``, ``prior_latent_entropy``, ``latent_kl``,
        ``latent_mean_variance``, ``collapsed`` (bool), and the scalar ``num_active`` (int).

    Example:
        >>> stats = posterior_collapse(torch.randn(100, 2) * torch.tensor([1.0, 0.0]),
        ...                            torch.tensor([-3.0, 0.0]).expand(100, 2))
        >>> stats["collapsed"], stats["num_active"]
        (tensor([False,  True]), tensor(1))
    """
    t = _check_criterion(criterion, threshold)
    enc = _in.encoder(enc_mean, enc_logvar, posterior, owner="posterior_collapse()")
    if enc.mean is None:
        raise _in.missing_inputs_error("posterior_collapse()", "`enc_mean` and `enc_logvar` (or a `posterior`)")
    p = _in.prior(prior_logvar, prior, latent_dim=enc.logvar.shape[-1], batch=enc.logvar.shape[0])
    stats = {
        "latent_entropy": 0.5 * (LOG_2PI_E + enc.logvar.mean(0)),
        "prior_latent_entropy": _prior_latent_entropy_sum(p, enc.logvar.shape[0], enc.logvar) / enc.logvar.shape[0],
        "latent_kl": _kl_per_latent(enc, p).mean(0),
        "latent_mean_variance": enc.mean.var(0, correction=0),
    }
    stats["collapsed"] = collapsed_latents(**stats, criterion=criterion, threshold=t)
    stats["num_active"] = (~stats["collapsed"]).sum()
    return stats
