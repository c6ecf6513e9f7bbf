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
from lightning_entropy_vae.functional._checks import as_float_tensor, check_keywords, missing_inputs_error
from lightning_entropy_vae.functional.entropy import (
    _encoder_entropy_compute,
    _encoder_entropy_update,
    _entropy_sum_compute,
    _points,
    _prior_entropy_compute,
    _prior_entropy_update,
)
from lightning_entropy_vae.functional.gaussian import _entropy_from_logdet

__all__ = [
    "fixed_decoder_variance",
    "optimal_decoder_variance",
    "optimal_prior_variance",
    "profiled_decoder_entropy",
    "profiled_entropy_sum",
]


def _squared_residual_update(d: _in.Data, mean: Tensor) -> Tensor:
    """Per-sample ``||x - mu(z)||^2`` averaged over the z samples, shape (B,), from flattened ``x`` and means."""
    sq = (d.x - mean).square().sum(-1)
    return sq.mean(0) if sq.dim() == 2 else sq


def _profiled_decoder_entropy_compute(sq_sum: Tensor, count: Any, data_dim: int) -> Tensor:
    """Decoder entropy per point at sigma^2* = ``sq_sum / (count * D)``: the Gaussian entropy of that variance."""
    sigma2 = sq_sum / (count * data_dim)
    return _entropy_from_logdet(data_dim * torch.log(sigma2), 1, data_dim)


def _residual_inputs(x: Any, dec_mean: Any, owner: str) -> tuple[_in.Data, Tensor]:
    """Checked, flattened ``x`` (B, D) and ``dec_mean`` (B, D) or (S, B, D)."""
    d = _in.data(x)
    if d.x is None or dec_mean is None:
        raise missing_inputs_error(owner, "`x` and `dec_mean`")
    return d, _in.flatten_decoder("dec_mean", as_float_tensor("dec_mean", dec_mean), d)


def fixed_decoder_variance(dec_logvar: Any) -> bool:
    """Whether a step's ``dec_logvar`` looks fixed: a Python number, or one tensor value per model (``()``, ``(1,)``
    or ``(D,)``) that does not require grad, outside inference mode (where nothing requires grad).

    A fixed variance (VAE-0, plain MSE training) keeps the ELBO away from the entropy sum; see
    :func:`profiled_entropy_sum`. A learnable parameter returned through ``.detach()`` looks fixed too.

    Example:
        >>> fixed_decoder_variance(torch.tensor(0.0)), fixed_decoder_variance(torch.nn.Parameter(torch.tensor(0.0)))
        (True, False)
    """
    if isinstance(dec_logvar, (int, float)) and not isinstance(dec_logvar, bool):  # a Python number
        return True
    return (isinstance(dec_logvar, Tensor) and dec_logvar.dim() <= 1 and not dec_logvar.requires_grad
            and not dec_logvar.is_inference())


def optimal_decoder_variance(*, x: Tensor | None = None, dec_mean: Tensor | None = None,
                             **vocabulary: Any) -> Tensor:
    r"""Stationary decoder variance :math:`\sigma^{2*}` = mean squared residual per dimension.

    Args:
        x: data ``(B, D)``. dec_mean: decoder means ``(B, D)`` or ``(S, B, D)`` for the drawn z.

    Raises:
        ValueError: a Bernoulli or categorical decoder among the inputs (``dec_logits``, ``dec_class_logits``,
            ``dec_probs`` or such a ``likelihood``): this is defined for Gaussian decoders only.

    Example:
        >>> optimal_decoder_variance(x=torch.ones(4, 2), dec_mean=torch.zeros(4, 2))
        tensor(1.)
    """
    check_keywords("optimal_decoder_variance()", vocabulary, ("x", "dec_mean"))
    _in.require_gaussian("optimal_decoder_variance()", "the mean squared residual of a Gaussian decoder", vocabulary)
    d, mean = _residual_inputs(x, dec_mean, "optimal_decoder_variance()")
    return _squared_residual_update(d, mean).sum() / d.x.numel()


def optimal_prior_variance(*, enc_mean: Tensor | None = None, enc_logvar: Tensor | None = None,
                           **vocabulary: Any) -> Tensor:
    r"""Stationary prior variances :math:`\alpha_h^{2*} = \frac1B\sum_n(\nu_h^2 + \tau_h^2)`, shape ``(H,)``.

    Example:
        >>> optimal_prior_variance(enc_mean=torch.ones(4, 2), enc_logvar=torch.zeros(4, 2))
        tensor([2., 2.])
    """
    check_keywords("optimal_prior_variance()", vocabulary, ("enc_mean", "enc_logvar"))
    enc = _in.encoder(enc_mean, enc_logvar, None, owner="optimal_prior_variance()")
    if enc.mean is None:
        raise missing_inputs_error("optimal_prior_variance()", "`enc_mean` and `enc_logvar`")
    return (enc.mean.square() + enc.logvar.exp()).mean(0)


def profiled_decoder_entropy(*, x: Tensor | None = None, dec_mean: Tensor | None = None,
                             **vocabulary: Any) -> Tensor:
    r"""Decoder entropy at the stationary variance: :math:`\tfrac D2 \log(2\pi e\,\sigma^{2*})`.

    Raises:
        ValueError: a Bernoulli or categorical decoder among the inputs (``dec_logits``, ``dec_class_logits``,
            ``dec_probs`` or such a ``likelihood``): this is defined for Gaussian decoders only.

    Example:
        >>> profiled_decoder_entropy(x=torch.ones(4, 2), dec_mean=torch.zeros(4, 2))  # sigma^2* = 1, D = 2
        tensor(2.8379)
    """
    check_keywords("profiled_decoder_entropy()", vocabulary, ("x", "dec_mean"))
    _in.require_gaussian("profiled_decoder_entropy()", "the Gaussian entropy at the stationary variance", vocabulary)
    d, mean = _residual_inputs(x, dec_mean, "profiled_decoder_entropy()")
    batch, data_dim = d.x.shape
    return _profiled_decoder_entropy_compute(_squared_residual_update(d, mean).sum(), batch, data_dim)


def profiled_entropy_sum(
    *,
    x: Tensor | None = None,
    dec_mean: Tensor | None = None,
    enc_logvar: Tensor | None = None,
    prior_logvar: Tensor | None = None,
    posterior: Any = None,
    prior: Any = None,
    **vocabulary: Any,
) -> Tensor:
    r"""Entropy sum with the decoder entropy taken at :math:`\sigma^{2*}` (for fixed-variance VAEs).

    .. math::

        \tfrac1B\sum_n \mathcal{H}[q(z|x_n)] - \mathcal{H}[p(z)] - \tfrac D2\log(2\pi e\,\sigma^{2*})

    Raises:
        ValueError: a Bernoulli or categorical decoder among the inputs (``dec_logits``, ``dec_class_logits``,
            ``dec_probs`` or such a ``likelihood``): this is defined for Gaussian decoders only.

    Example:
        >>> profiled_entropy_sum(x=torch.ones(4, 2), dec_mean=torch.zeros(4, 2), enc_logvar=torch.zeros(4, 1))
        tensor(-2.8379)
    """
    check_keywords("profiled_entropy_sum()", vocabulary, ("x", "dec_mean", "enc_logvar", "prior_logvar",
                                                          "posterior", "prior"))
    _in.require_gaussian("profiled_entropy_sum()", "the Gaussian entropy at the stationary variance", vocabulary)
    enc = _in.encoder(None, enc_logvar, posterior, owner="profiled_entropy_sum()")
    batch, latent_dim = enc.logvar.shape
    p = _in.prior(prior_logvar, prior, latent_dim=latent_dim, batch=batch)
    d, mean = _residual_inputs(x, dec_mean, "profiled_entropy_sum()")
    return _entropy_sum_compute(
        _encoder_entropy_compute(*_points(_encoder_entropy_update(enc), batch, "mean"), latent_dim),
        _prior_entropy_compute(*_points(_prior_entropy_update(p, enc.logvar), batch, "mean"), latent_dim),
        _profiled_decoder_entropy_compute(_squared_residual_update(d, mean).sum(), batch, d.x.shape[1]),
    )
