r"""The three entropies of a Gaussian VAE and their sum (Damm et al., AISTATS 2023).

All values are **nats per data point**: a mean over the batch (and over the decoder's z samples),
a sum over latent dimensions H and data dimensions D.

.. math::

    \mathcal{F} \;\to\; \underbrace{\tfrac1N\sum_n \mathcal{H}[q(z|x_n)]}_{\text{encoder}}
    - \underbrace{\mathcal{H}[p(z)]}_{\text{prior}}
    - \underbrace{\tfrac1N\sum_n \mathbb{E}_{q(z|x_n)}\mathcal{H}[p(x|z)]}_{\text{decoder}}
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from lightning_entropy_vae.functional import _inputs as _in
from lightning_entropy_vae.functional._inputs import LOG_2PI_E

__all__ = ["decoder_entropy", "encoder_entropy", "entropy_sum", "gaussian_entropy", "prior_entropy"]

Reduction = Literal["mean", "sum", "none"]


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
        lv = _in.as_float_tensor("logvar", logvar)
        return 0.5 * (lv.shape[-1] * LOG_2PI_E + lv.sum(-1))
    cov = _in.as_float_tensor("covariance", covariance)
    if cov.dim() < 2 or cov.shape[-1] != cov.shape[-2]:
        raise ValueError(f"Expected `covariance` of shape (..., K, K), but got {tuple(cov.shape)}.")
    return 0.5 * (cov.shape[-1] * LOG_2PI_E + torch.linalg.cholesky(cov).diagonal(dim1=-2, dim2=-1).log().sum(-1) * 2)


def _reduce(per_sample: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"Expected `reduction` to be one of 'mean', 'sum', 'none', but got {reduction!r}.")


# ----------------------------------------------------------------------------------------- encoder
def _encoder_entropy_per_sample(enc: _in.Encoder) -> Tensor:
    if enc.entropy is not None:
        return enc.entropy
    return 0.5 * (enc.logvar.shape[-1] * LOG_2PI_E + enc.logvar.sum(-1))


#: A batch sum written as ``raw * scale + offset``: one 0-d tensor (or None for a constant) and two
#: Python floats. Metrics stack the raws of several terms and apply all constants in one fused op.
Affine = tuple[Tensor | None, float, float]


def _encoder_entropy_update(enc: _in.Encoder) -> Affine:
    """Batch sum of the per-sample encoder entropy: ``0.5 * sum(logvar) + 0.5 * B * H * log(2 pi e)``."""
    if enc.entropy is not None:
        return enc.entropy.sum(), 1.0, 0.0
    return enc.logvar.sum(), 0.5, 0.5 * enc.logvar.numel() * LOG_2PI_E


def _prior_entropy_update(p: _in.Prior, batch: int, latent_dim: int) -> Affine:
    """Batch sum of the prior entropy (B times ``0.5 * (H log(2 pi e) + sum(prior_logvar))``)."""
    if p.dist is not None:
        return p.entropy, float(batch), 0.0
    if p.logvar is None:
        return None, 0.0, batch * p.entropy
    per_sample = p.logvar.dim() == 2  # (B, H): each sample's own prior
    return p.logvar.sum(), 0.5 if per_sample else 0.5 * batch, 0.5 * batch * latent_dim * LOG_2PI_E


def encoder_entropy(
    enc_logvar: Tensor | None = None, *, posterior: Any = None, reduction: Reduction = "mean", **_: Any
) -> Tensor:
    r"""Average encoder entropy :math:`\frac1B \sum_n \mathcal{H}[q(z|x_n)]`.

    .. math::

        \frac1B \sum_{n} \sum_{h=1}^{H} \tfrac12 \log\!\left(2\pi e\, \tau_h^2(x_n)\right)

    Args:
        enc_logvar: encoder log-variances :math:`\log\tau^2(x)` of shape ``(B, H)``.
        posterior: instead of ``enc_logvar``, a Gaussian ``torch.distributions`` object with batch and
            event shape ``(B, H)`` (``Normal``, ``Independent(Normal)``, ``MultivariateNormal``,
            ``LowRankMultivariateNormal``).
        reduction: ``"mean"`` (nats per data point), ``"sum"`` or ``"none"`` (shape ``(B,)``).

    Other vocabulary keys are accepted and ignored, so one dict feeds every function.

    Example:
        >>> encoder_entropy(torch.zeros(8, 2))  # q = N(0, I) for every x: 2 * 1.4189
        tensor(2.8379)
    """
    enc = _in.encoder(None, enc_logvar, posterior, owner="encoder_entropy()")
    return _reduce(_encoder_entropy_per_sample(enc), reduction)


# ------------------------------------------------------------------------------------------- prior
def prior_entropy(
    prior_logvar: Tensor | None = None,
    *,
    latent_dim: int | None = None,
    prior: Any = None,
    enc_logvar: Tensor | None = None,
    enc_mean: Tensor | None = None,
    posterior: Any = None,
    **_: Any,
) -> Tensor:
    r"""Prior entropy :math:`\mathcal{H}[p(z)] = \sum_h \tfrac12\log(2\pi e\,\alpha_h^2)`.

    The default prior is the standard normal (:math:`\alpha^2 = 1`), whose entropy is
    :math:`\tfrac{H}{2}\log(2\pi e)`. ``H`` comes from ``latent_dim``, ``prior_logvar`` or the
    encoder inputs.

    Args:
        prior_logvar: learnable prior log-variances :math:`\log\alpha^2` of shape ``(H,)`` (VAE-2).
        latent_dim: number of latents H, for the standard normal prior.
        prior: instead, a Gaussian ``torch.distributions`` object over ``(H,)``.
        enc_logvar, enc_mean, posterior: used only to read H.

    Example:
        >>> prior_entropy(latent_dim=2)
        tensor(2.8379)
        >>> prior_entropy(torch.zeros(2))
        tensor(2.8379)
    """
    if latent_dim is None:
        for value in (prior_logvar, enc_logvar, enc_mean):
            if isinstance(value, Tensor) and value.dim() >= 1:
                latent_dim = value.shape[-1]
                break
        else:
            if prior is not None or posterior is not None:
                dist = prior if prior is not None else posterior
                latent_dim = (tuple(dist.batch_shape) + tuple(dist.event_shape))[-1]
            else:
                raise ValueError(
                    "prior_entropy() needs the number of latents: pass `latent_dim`, `prior_logvar`,"
                    " `prior` or `enc_logvar`, but got none of them."
                )
    p = _in.prior(prior_logvar, prior, latent_dim=latent_dim)
    if isinstance(p.entropy, float):  # standard normal: follow the encoder's dtype and device (float64 stays)
        tensors = (v for v in (enc_logvar, enc_mean) if isinstance(v, Tensor) and v.is_floating_point())
        like = next(tensors, None)
        if like is None:
            return torch.as_tensor(p.entropy, dtype=torch.get_default_dtype())
        return torch.as_tensor(p.entropy, dtype=torch.promote_types(like.dtype, torch.float32), device=like.device)
    return p.entropy.mean() if p.entropy.dim() else p.entropy


# ----------------------------------------------------------------------------------------- decoder
def _decoder_entropy_per_sample(dec: _in.Decoder) -> Tensor:
    d = dec.data_dim
    if dec.layout == "dist":
        ent = _in._sum_to(dec.dist.entropy(), dec.lead)
        ent = _in.as_float_tensor("likelihood.entropy()", ent)
        return ent.mean(0) if dec.lead == 2 else ent
    lv = dec.logvar
    if dec.layout == "scalar":
        return (0.5 * d * (LOG_2PI_E + lv)).expand(dec.batch_size)
    if dec.layout == "per_dim":
        return (0.5 * (d * LOG_2PI_E + lv.sum())).expand(dec.batch_size)
    per = 0.5 * (d * LOG_2PI_E + lv.sum(-1) * (d if lv.shape[-1] == 1 else 1))
    return per.mean(0) if dec.layout == "per_z" else per


def _decoder_entropy_from_sums(count: Any, mean_logvar_sum: Tensor, data_dim: int) -> Tensor:
    """Sum over ``count`` points of the expected decoder entropy, from the sum of each point's mean log-variance.

    Every layout's per-point entropy is ``sum_d 0.5 * log(2 pi e sigma_d^2) = 0.5 * D * (log(2 pi e) + m_n)``
    with ``m_n`` the mean of the point's ``D`` (and ``S``) log-variances; elementwise in its arguments.
    """
    return 0.5 * data_dim * (count * LOG_2PI_E + mean_logvar_sum)


def _decoder_entropy_update(dec: _in.Decoder) -> Affine:
    """Batch sum of the per-sample expected decoder entropy, ``0.5 * B * D * log(2 pi e)`` plus log-variances."""
    b, d = dec.batch_size, dec.data_dim
    lv, offset = dec.logvar, 0.5 * b * d * LOG_2PI_E
    if dec.layout == "scalar":
        return lv, 0.5 * d * b, offset
    if dec.layout == "per_dim":
        return lv.sum(), 0.5 * b, offset
    width = d if dec.layout in ("per_sample", "per_z") and lv.shape[-1] == 1 else 1  # (B, 1): shared by D dims
    if dec.layout == "per_sample":
        return lv.sum(), 0.5 * width, offset
    if dec.layout == "per_z":
        return lv.sum(), 0.5 * width / lv.shape[0], offset
    return _decoder_entropy_per_sample(dec).sum(), 1.0, 0.0


def decoder_entropy(
    dec_logvar: Tensor | None = None,
    *,
    dec_mean: Tensor | None = None,
    x: Tensor | None = None,
    likelihood: Any = None,
    reduction: Reduction = "mean",
    **_: Any,
) -> Tensor:
    r"""Expected decoder entropy :math:`\frac1B\sum_n \mathbb{E}_{q(z|x_n)}\mathcal{H}[p(x|z)]`.

    .. math::

        \frac1B \sum_n \frac1S \sum_{s} \sum_{d=1}^{D} \tfrac12 \log\!\left(2\pi e\,\sigma_d^2(z_{n,s})\right)

    For a scalar :math:`\sigma^2` (VAE-1/2) this is :math:`\tfrac D2\log(2\pi e\sigma^2)`; for a
    latent-dependent variance (VAE-3) the expectation over :math:`q` uses the S samples the step drew.

    Args:
        dec_logvar: decoder log-variances of shape ``()``, ``(D,)``, ``(B, D)`` or ``(S, B, D)``.
        dec_mean: decoder means ``(B, D)`` or ``(S, B, D)``; gives B and D for a constant variance.
        x: the data ``(B, D)`` (or ``(B, C, H, W)``, flattened); gives B and D when ``dec_mean`` is absent.
        likelihood: instead, a Gaussian ``torch.distributions`` object with batch and event shape
            ``(B, D)`` or ``(S, B, D)``.
        reduction: ``"mean"`` (nats per data point), ``"sum"`` or ``"none"`` (shape ``(B,)``).

    Example:
        >>> decoder_entropy(torch.tensor(0.0), x=torch.zeros(4, 3))  # sigma^2 = 1, D = 3
        tensor(4.2568)
    """
    dec = _in.decoder(dec_mean, dec_logvar, likelihood, _in.data(x), owner="decoder_entropy()")
    return _reduce(_decoder_entropy_per_sample(dec), reduction)


# --------------------------------------------------------------------------------------------- sum
def entropy_sum(
    enc_logvar: Tensor | None = None,
    dec_logvar: Tensor | None = None,
    *,
    prior_logvar: Tensor | None = None,
    dec_mean: Tensor | None = None,
    x: Tensor | None = None,
    posterior: Any = None,
    prior: Any = None,
    likelihood: Any = None,
    reduction: Reduction = "mean",
    **_: Any,
) -> Tensor:
    r"""The entropy-sum ELBO: encoder entropy minus prior entropy minus decoder entropy.

    .. math::

        \tfrac1B\sum_n \mathcal{H}[q(z|x_n)] \;-\; \mathcal{H}[p(z)] \;-\;
        \tfrac1B\sum_n \mathbb{E}_{q}\mathcal{H}[p(x|z)]

    At every stationary point of a Gaussian VAE's ELBO (with learned decoder variance) this equals
    the ELBO. It is sample-free for VAE-1/2 and smooth in the parameters. For VAE-1 the encoder and
    prior constants cancel: :math:`\frac1B\sum_n\sum_h \tfrac12\log\tau_h^2 - \tfrac D2\log(2\pi e\sigma^2)`.

    Args:
        enc_logvar: ``(B, H)``. dec_logvar: ``()``, ``(D,)``, ``(B, D)`` or ``(S, B, D)``.
        prior_logvar: ``(H,)``, optional (default: standard normal prior).
        dec_mean, x: give B and D for a constant decoder variance.
        posterior, prior, likelihood: Gaussian ``torch.distributions`` objects instead of tensors.
        reduction: ``"mean"`` (nats per data point), ``"sum"`` or ``"none"`` (shape ``(B,)``).

    Example:
        >>> enc_logvar = torch.full((8, 2), -2.0)
        >>> entropy_sum(enc_logvar, torch.tensor(-1.0), x=torch.zeros(8, 5))  # 0.5*2*(-2) - 2.5*(log(2 pi e) - 1)
        tensor(-6.5947)
    """
    d = _in.data(x)
    enc = _in.encoder(None, enc_logvar, posterior, owner="entropy_sum()")
    latent_dim = enc.logvar.shape[-1]
    p = _in.prior(prior_logvar, prior, latent_dim=latent_dim, batch=enc.logvar.shape[0])
    dec = _in.decoder(dec_mean, dec_logvar, likelihood, d, owner="entropy_sum()")
    _in.check_batch("entropy_sum()", encoder=enc.logvar.shape[0], decoder=dec.batch_size, x=d.batch_size)
    per_sample = _encoder_entropy_per_sample(enc) - p.entropy - _decoder_entropy_per_sample(dec)
    return _reduce(per_sample, reduction)
