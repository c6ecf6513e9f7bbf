r"""Closed-form stationary variances and the "profiled" entropy sum for fixed-variance models.

At a stationary point the decoder and prior variances take closed forms (THEORY.md):

.. math::

    \sigma^{2*} = \frac{1}{N D}\sum_n \mathbb{E}_q\|x_n - \mu(z)\|^2,
    \qquad
    \alpha_h^{2*} = \frac1N\sum_n \left(\nu_h(x_n)^2 + \tau_h^2(x_n)\right)

A VAE trained with a *fixed* decoder variance (VAE-0, plain MSE) never reaches the first one, so its
entropy sum is not the limit of its ELBO. The *profiled* entropy sum replaces the decoder entropy by
its value at :math:`\sigma^{2*}`, which is what the ELBO would converge to with a learned variance.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_entropy_vae.functional import _inputs as _in
from lightning_entropy_vae.functional._inputs import LOG_2PI_E
from lightning_entropy_vae.functional.entropy import _encoder_entropy_per_sample

__all__ = [
    "optimal_decoder_variance",
    "optimal_prior_variance",
    "profiled_decoder_entropy",
    "profiled_entropy_sum",
]


def _squared_residual(d: _in.Data, mean: Tensor) -> Tensor:
    """Per-sample ``||x - mu(z)||^2`` averaged over the z samples, shape (B,), from flattened ``x`` and means."""
    sq = (d.x - mean).square().sum(-1)
    return sq.mean(0) if sq.dim() == 2 else sq


def _residual_inputs(x: Any, dec_mean: Any, owner: str) -> tuple[_in.Data, Tensor]:
    """Checked, flattened ``x`` (B, D) and ``dec_mean`` (B, D) or (S, B, D)."""
    d = _in.data(x)
    if d.x is None or dec_mean is None:
        raise _in.missing_inputs_error(owner, "`x` and `dec_mean`")
    return d, _in._flatten_decoder("dec_mean", _in.as_float_tensor("dec_mean", dec_mean), d)


def _squared_residual_sum(x: Any, dec_mean: Any, owner: str) -> tuple[Tensor, int, int]:
    """Sum over (S-averaged) samples and dimensions of ``(x - mu)^2``; returns (sum, B, D)."""
    d, mean = _residual_inputs(x, dec_mean, owner)
    return _squared_residual(d, mean).sum(), d.x.shape[0], d.x.shape[1]


def optimal_decoder_variance(x: Tensor, dec_mean: Tensor, **_: Any) -> Tensor:
    r"""Stationary decoder variance :math:`\sigma^{2*}` = mean squared residual per dimension.

    Args:
        x: data ``(B, D)``. dec_mean: decoder means ``(B, D)`` or ``(S, B, D)`` for the drawn z.

    Example:
        >>> optimal_decoder_variance(torch.ones(4, 2), torch.zeros(4, 2))
        tensor(1.)
    """
    sq, b, d = _squared_residual_sum(x, dec_mean, "optimal_decoder_variance()")
    return sq / (b * d)


def optimal_prior_variance(enc_mean: Tensor, enc_logvar: Tensor, **_: Any) -> Tensor:
    r"""Stationary prior variances :math:`\alpha_h^{2*} = \frac1B\sum_n(\nu_h^2 + \tau_h^2)`, shape ``(H,)``.

    Example:
        >>> optimal_prior_variance(torch.ones(4, 2), torch.zeros(4, 2))
        tensor([2., 2.])
    """
    enc = _in.encoder(enc_mean, enc_logvar, None, owner="optimal_prior_variance()")
    if enc.mean is None:
        raise _in.missing_inputs_error("optimal_prior_variance()", "`enc_mean` and `enc_logvar`")
    return (enc.mean.square() + enc.logvar.exp()).mean(0)


def profiled_decoder_entropy(x: Tensor, dec_mean: Tensor, **_: Any) -> Tensor:
    r"""Decoder entropy at the stationary variance: :math:`\tfrac D2 \log(2\pi e\,\sigma^{2*})`.

    Example:
        >>> profiled_decoder_entropy(torch.ones(4, 2), torch.zeros(4, 2))  # sigma^2* = 1, D = 2
        tensor(2.8379)
    """
    sq, b, d = _squared_residual_sum(x, dec_mean, "profiled_decoder_entropy()")
    return 0.5 * d * (LOG_2PI_E + torch.log(sq / (b * d)))


def profiled_entropy_sum(
    x: Tensor,
    dec_mean: Tensor,
    enc_logvar: Tensor | None = None,
    *,
    prior_logvar: Tensor | None = None,
    posterior: Any = None,
    prior: Any = None,
    **_: Any,
) -> Tensor:
    r"""Entropy sum with the decoder entropy taken at :math:`\sigma^{2*}` (for fixed-variance VAEs).

    .. math::

        \tfrac1B\sum_n \mathcal{H}[q(z|x_n)] - \mathcal{H}[p(z)] - \tfrac D2\log(2\pi e\,\sigma^{2*})

    Example:
        >>> profiled_entropy_sum(torch.ones(4, 2), torch.zeros(4, 2), torch.zeros(4, 1))  # q = p, sigma^2* = 1
        tensor(-2.8379)
    """
    enc = _in.encoder(None, enc_logvar, posterior, owner="profiled_entropy_sum()")
    p = _in.prior(prior_logvar, prior, latent_dim=enc.logvar.shape[-1], batch=enc.logvar.shape[0])
    sq, b, d = _squared_residual_sum(x, dec_mean, "profiled_entropy_sum()")
    return (_encoder_entropy_per_sample(enc) - p.entropy).mean() - 0.5 * d * (LOG_2PI_E + torch.log(sq / (b * d)))
