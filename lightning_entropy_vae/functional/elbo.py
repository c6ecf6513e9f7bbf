r"""The sampled Gaussian ELBO from the same pieces: reconstruction log-likelihood minus KL.

.. math::

    \mathcal{F}(x) = \frac1S\sum_{s}\log\mathcal{N}\!\left(x;\,\mu(z_s),\,\operatorname{diag}\sigma^2(z_s)\right)
    - \mathrm{KL}\!\left(q(z|x)\,\|\,p(z)\right),\qquad z_s \sim q(z|x)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

from lightning_entropy_vae.functional import _inputs as _in
from lightning_entropy_vae.functional._inputs import LOG_2PI
from lightning_entropy_vae.functional.entropy import Reduction, _reduce

__all__ = ["gaussian_elbo", "gaussian_kl", "gaussian_log_likelihood"]


def _log_likelihood_per_sample(dec: _in.Decoder, d: _in.Data) -> Tensor:
    if dec.layout == "dist":
        target = d.raw if dec.lead == 1 else d.raw.unsqueeze(0)
        ll = _in.as_float_tensor("likelihood.log_prob(x)", dec.dist.log_prob(target))
        ll = _in._sum_to(ll, dec.lead)
        return ll.mean(0) if dec.lead == 2 else ll
    sq = (d.x - dec.mean).square()  # (B, D) or (S, B, D)
    lv, dim = dec.logvar, dec.data_dim
    if dec.layout == "scalar":
        ll = -0.5 * (dim * (LOG_2PI + lv) + sq.sum(-1) * torch.exp(-lv))
    elif dec.layout == "per_dim":
        ll = -0.5 * (dim * LOG_2PI + lv.sum() + (sq * torch.exp(-lv)).sum(-1))
    else:  # (B, D), (S, B, D), or (B, 1) / (S, B, 1): one variance shared by the D dimensions
        width = dim if lv.shape[-1] == 1 else 1
        ll = -0.5 * (dim * LOG_2PI + lv.sum(-1) * width + (sq * torch.exp(-lv)).sum(-1))
    return ll.mean(0) if ll.dim() == 2 else ll


def _as_mvn(mean: Tensor, logvar: Tensor, dist: Any) -> MultivariateNormal:
    if dist is not None:
        base = dist.base_dist if isinstance(dist, Independent) else dist
        if not isinstance(base, Normal):
            return MultivariateNormal(dist.mean, covariance_matrix=dist.covariance_matrix)
    return MultivariateNormal(mean, covariance_matrix=torch.diag_embed(logvar.exp()))


def _kl_per_latent(enc: _in.Encoder, p: _in.Prior) -> Tensor:
    """Marginal KL per latent (B, H) between diagonal Gaussians (exact for diagonal q and p)."""
    lvq, mean = enc.logvar, enc.mean
    lvp = p.logvar if p.logvar is not None else torch.zeros((), dtype=lvq.dtype, device=lvq.device)
    diff = mean if p.mean is None else mean - p.mean
    return 0.5 * (torch.exp(lvq - lvp) + diff.square() * torch.exp(-lvp) - 1.0 - lvq + lvp)


def _kl_from_column_sums(count: Any, logvar_sum: Tensor, exp_logvar_sum: Tensor, mean_sq_sum: Tensor,
                         prior_logvar: Tensor | None) -> Tensor:
    """Sum over ``count`` points of the per-latent KL to a zero-mean diagonal prior, from column sums.

    The sum over n of ``0.5 * (exp(lvq - lvp) + mean^2 exp(-lvp) - 1 - lvq + lvp)`` is
    ``0.5 * (exp(-lvp) * (sum exp(lvq) + sum mean^2) - count - sum lvq + count * lvp)``. Elementwise:
    ``count`` may be a number or a tensor that broadcasts against the ``(..., H)`` sums (one row per batch).
    """
    spread = exp_logvar_sum + mean_sq_sum
    if prior_logvar is None:
        return 0.5 * (spread - count - logvar_sum)
    return 0.5 * (torch.exp(-prior_logvar) * spread - count - logvar_sum + count * prior_logvar)


def _kl_per_latent_sums(enc: _in.Encoder, p: _in.Prior, logvar_sum: Tensor, mean_sq_sum: Tensor) -> Tensor:
    """Batch sum of :func:`_kl_per_latent`, shape (H,), from column sums where the prior allows.

    For one zero-mean prior ``(H,)`` shared by the batch, :func:`_kl_from_column_sums` needs one
    full-size op (the ``exp``) instead of ten.
    """
    if p.mean is not None or (p.logvar is not None and p.logvar.dim() == 2):
        return _kl_per_latent(enc, p).sum(0)
    return _kl_from_column_sums(enc.logvar.shape[0], logvar_sum, enc.logvar.exp().sum(0), mean_sq_sum, p.logvar)


def _kl_per_sample(enc: _in.Encoder, p: _in.Prior, posterior: Any) -> Tensor:
    full_q = enc.entropy is not None
    full_p = p.dist is not None and not isinstance(
        p.dist.base_dist if isinstance(p.dist, Independent) else p.dist, Normal
    )
    if not (full_q or full_p):
        return _kl_per_latent(enc, p).sum(-1)
    q = _as_mvn(enc.mean, enc.logvar, posterior)
    prior_mean = p.mean if p.mean is not None else torch.zeros_like(enc.logvar[0])
    prior_logvar = p.logvar if p.logvar is not None else torch.zeros_like(enc.logvar[0])
    pz = _as_mvn(prior_mean, prior_logvar, p.dist)
    return kl_divergence(q, pz)


def gaussian_log_likelihood(
    x: Tensor,
    dec_mean: Tensor | None = None,
    dec_logvar: Tensor | None = None,
    *,
    likelihood: Any = None,
    reduction: Reduction = "mean",
    **_: Any,
) -> Tensor:
    r"""Gaussian reconstruction log-likelihood :math:`\frac1S\sum_s \log\mathcal{N}(x;\mu(z_s),\sigma^2(z_s))`.

    Args:
        x: data ``(B, D)`` (or ``(B, C, H, W)``, flattened).
        dec_mean: decoder means ``(B, D)`` or ``(S, B, D)``.
        dec_logvar: ``()``, ``(D,)``, ``(B, D)`` or ``(S, B, D)``.
        likelihood: instead of the two tensors, a Gaussian ``torch.distributions`` object.
        reduction: ``"mean"`` (nats per data point), ``"sum"`` or ``"none"`` (shape ``(B,)``).

    Example:
        >>> gaussian_log_likelihood(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor(0.0))
        tensor(-2.7568)
    """
    d = _in.data(x)
    if d.x is None:
        raise _in.missing_inputs_error("gaussian_log_likelihood()", "`x`")
    dec = _in.decoder(dec_mean, dec_logvar, likelihood, d, owner="gaussian_log_likelihood()", need_mean=True)
    return _reduce(_log_likelihood_per_sample(dec, d), reduction)


def gaussian_kl(
    enc_mean: Tensor | None = None,
    enc_logvar: Tensor | None = None,
    *,
    prior_logvar: Tensor | None = None,
    posterior: Any = None,
    prior: Any = None,
    reduction: Reduction = "mean",
    **_: Any,
) -> Tensor:
    r"""KL divergence :math:`\mathrm{KL}(q(z|x)\,\|\,p(z))` in closed form.

    .. math::

        \tfrac12\sum_h\left(\frac{\tau_h^2 + \nu_h^2}{\alpha_h^2} - 1 - \log\frac{\tau_h^2}{\alpha_h^2}\right)

    Full-covariance posteriors or priors (``MultivariateNormal``, ``LowRankMultivariateNormal``) use
    the general Gaussian KL.

    Example:
        >>> gaussian_kl(torch.zeros(4, 2), torch.zeros(4, 2))  # q = p
        tensor(0.)
    """
    enc = _in.encoder(enc_mean, enc_logvar, posterior, owner="gaussian_kl()")
    if enc.mean is None:
        raise _in.missing_inputs_error("gaussian_kl()", "`enc_mean` and `enc_logvar` (or a `posterior`)")
    p = _in.prior(prior_logvar, prior, latent_dim=enc.logvar.shape[-1], batch=enc.logvar.shape[0])
    return _reduce(_kl_per_sample(enc, p, posterior), reduction)


def gaussian_elbo(
    x: Tensor | None = None,
    enc_mean: Tensor | None = None,
    enc_logvar: Tensor | None = None,
    dec_mean: Tensor | None = None,
    dec_logvar: Tensor | None = None,
    *,
    prior_logvar: Tensor | None = None,
    posterior: Any = None,
    prior: Any = None,
    likelihood: Any = None,
    reduction: Reduction = "mean",
    **_: Any,
) -> Tensor:
    r"""Sampled Gaussian ELBO of a minibatch, from the pieces a VAE step computes.

    .. math::

        \mathcal{F}(x_n) = \frac1S\sum_s \log\mathcal{N}(x_n;\mu(z_{n,s}),\sigma^2(z_{n,s}))
        - \mathrm{KL}(q(z|x_n)\,\|\,p(z))

    ``dec_mean`` holds :math:`\mu(z)` for the z the step drew (S = 1 for shape ``(B, D)``).
    Use it when your module does not return its own per-sample ``elbo``.

    Example:
        >>> x = torch.zeros(2, 3)
        >>> gaussian_elbo(x, torch.zeros(2, 1), torch.zeros(2, 1), torch.zeros(2, 3), torch.tensor(0.0))
        tensor(-2.7568)
    """
    d = _in.data(x)
    if d.x is None and likelihood is None:
        raise _in.missing_inputs_error("gaussian_elbo()", "`x`")
    if d.x is None:
        raise _in.missing_inputs_error("gaussian_elbo()", "`x` (the data the `likelihood` scores)")
    enc = _in.encoder(enc_mean, enc_logvar, posterior, owner="gaussian_elbo()")
    if enc.mean is None:
        raise _in.missing_inputs_error("gaussian_elbo()", "`enc_mean` and `enc_logvar` (or a `posterior`)")
    p = _in.prior(prior_logvar, prior, latent_dim=enc.logvar.shape[-1], batch=enc.logvar.shape[0])
    dec = _in.decoder(dec_mean, dec_logvar, likelihood, d, owner="gaussian_elbo()", need_mean=True)
    _in.check_batch("gaussian_elbo()", encoder=enc.logvar.shape[0], decoder=dec.batch_size, x=d.batch_size)
    return _reduce(_log_likelihood_per_sample(dec, d) - _kl_per_sample(enc, p, posterior), reduction)
