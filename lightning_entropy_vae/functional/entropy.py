r"""The three entropies of a VAE and their sum (Damm et al., AISTATS 2023; Warnken et al., arXiv 2501.09022).

All values are **nats per data point**: a mean over the batch (and over the decoder's z samples),
a sum over latent dimensions H and data dimensions D.

.. math::

    \mathcal{F} \;\to\; \underbrace{\tfrac1N\sum_n \mathcal{H}[q(z|x_n)]}_{\text{encoder}}
    - \underbrace{\mathcal{H}[p(z)]}_{\text{prior}}
    - \underbrace{\tfrac1N\sum_n \mathbb{E}_{q(z|x_n)}\mathcal{H}[p(x|z)]}_{\text{decoder}}

The encoder and prior are Gaussian; the decoder is Gaussian, Bernoulli, categorical or continuous Bernoulli (the
exponential families with a constant base measure, for which the ELBO equals the sum at stationary points when the
natural parameters are linear in the decoder's last layer).

Every entropy here is one formula, :func:`~.gaussian._entropy_from_logdet`: the entropy of ``count`` Gaussians of
dimension ``dim`` whose covariances' log-determinants sum to ``logdet``. Each quantity has an ``_update``
that returns its per-sample sufficient statistic (a log-determinant) and a ``_compute`` that turns
their sum over ``count`` points into nats; the metrics call the same two. A non-Gaussian decoder's statistic is the
log-determinant of the Gaussians with the same entropy (:func:`~.gaussian._logdet_from_entropy`), so its ``_compute``
is the same.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from lightning_entropy_vae.functional import _discrete
from lightning_entropy_vae.functional import _inputs as _in
from lightning_entropy_vae.functional._checks import as_float_tensor, check_batch, check_keywords
from lightning_entropy_vae.functional.gaussian import _entropy_from_logdet, _logdet_from_entropy, gaussian_entropy

# gaussian_entropy lives in .gaussian; importable from here as in 0.1.0
__all__ = ["decoder_entropy", "encoder_entropy", "entropy_sum", "gaussian_entropy", "prior_entropy"]

Reduction = Literal["mean", "sum", "none"]
_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction: Any) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"Expected `reduction` to be one of 'mean', 'sum', 'none', but got {reduction!r}.")


def _points(statistic: Tensor, batch: int, reduction: Reduction) -> tuple[Tensor, Any]:
    """An ``_update``'s statistic and its count as ``_compute`` takes them: per sample (count 1) for
    ``reduction="none"`` (a per-point constant expanded to ``(B,)``), else the batch sum (count B)."""
    if reduction == "none":
        return statistic.expand(batch), 1
    return statistic, batch


def _per_sample(reduction: Reduction) -> bool:
    return reduction == "none"


def _per_point(total: Tensor, count: Any, reduction: Reduction) -> Tensor:
    return total / count if reduction == "mean" else total


# ----------------------------------------------------------------------------------------- encoder
def _encoder_entropy_update(enc: _in.Encoder, per_sample: bool = False) -> Tensor:
    """Log-determinant of the posterior covariance: summed over the batch (``()``), or per sample ``(B,)``."""
    if enc.full is None:
        return enc.logvar.sum(-1) if per_sample else enc.logvar.sum()
    entropy = as_float_tensor("posterior.entropy()", _in.sum_to(enc.full.entropy(), 1))
    logdet = _logdet_from_entropy(entropy, enc.logvar.shape[-1])
    return logdet if per_sample else logdet.sum()


def _encoder_entropy_compute(logdet: Tensor, count: Any, latent_dim: int, reduction: Reduction = "mean") -> Tensor:
    return _per_point(_entropy_from_logdet(logdet, count, latent_dim), count, reduction)


def encoder_entropy(
    *, enc_logvar: Tensor | None = None, posterior: Any = None, reduction: Reduction = "mean", **vocabulary: Any
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
        vocabulary: other names of the vocabulary are accepted and ignored, so a step's output dict
            feeds every function; any other keyword is a ``TypeError``.

    Example:
        >>> encoder_entropy(enc_logvar=torch.zeros(8, 2))  # q = N(0, I) for every x: 2 * 1.4189
        tensor(2.8379)
    """
    check_keywords("encoder_entropy()", vocabulary, ("enc_logvar", "posterior", "reduction"))
    _check_reduction(reduction)
    enc = _in.encoder(None, enc_logvar, posterior, owner="encoder_entropy()")
    logdet, count = _points(_encoder_entropy_update(enc, _per_sample(reduction)), enc.logvar.shape[0], reduction)
    return _encoder_entropy_compute(logdet, count, enc.logvar.shape[-1], reduction)


# ------------------------------------------------------------------------------------------- prior
def _prior_entropy_update(p: _in.Prior, like: Tensor, per_sample: bool = False) -> Tensor:
    """Log-determinant of the prior covariance, summed over the ``like.shape[0]`` points of the batch (``()``),
    or per sample (``()`` when one prior holds for all of them, ``(B,)`` for a ``(B, H)`` ``prior_logvar``).

    ``like``: the encoder's ``(B, H)`` log-variances, whose dtype and device a standard normal's zero takes.
    """
    batch = like.shape[0]
    if p.dist is not None and not _in.is_diagonal(p.dist):
        logdet = _logdet_from_entropy(as_float_tensor("prior.entropy()", p.dist.entropy()), like.shape[-1])
        return logdet if per_sample else logdet * batch
    if p.logvar is None:
        return torch.zeros((), dtype=like.dtype, device=like.device)
    if p.logvar.dim() == 2:
        return p.logvar.sum(-1) if per_sample else p.logvar.sum()
    return p.logvar.sum() if per_sample else p.logvar.sum() * batch


def _prior_entropy_compute(logdet: Tensor, count: Any, latent_dim: int, reduction: Reduction = "mean") -> Tensor:
    return _per_point(_entropy_from_logdet(logdet, count, latent_dim), count, reduction)


def prior_entropy(
    *,
    prior_logvar: Tensor | None = None,
    latent_dim: int | None = None,
    prior: Any = None,
    enc_logvar: Tensor | None = None,
    enc_mean: Tensor | None = None,
    posterior: Any = None,
    **vocabulary: Any,
) -> Tensor:
    r"""Prior entropy :math:`\mathcal{H}[p(z)] = \sum_h \tfrac12\log(2\pi e\,\alpha_h^2)`.

    The default prior is the standard normal (:math:`\alpha^2 = 1`), whose entropy is
    :math:`\tfrac{H}{2}\log(2\pi e)`. ``H`` comes from ``latent_dim``, ``prior_logvar`` or the
    encoder inputs; a ``(B, H)`` ``prior_logvar`` (each sample's own prior) gives the mean over samples.

    Args:
        prior_logvar: learnable prior log-variances :math:`\log\alpha^2` of shape ``(H,)`` (VAE-2).
        latent_dim: number of latents H, for the standard normal prior.
        prior: instead, a Gaussian ``torch.distributions`` object over ``(H,)``.
        enc_logvar, enc_mean, posterior: used only to read H (and the dtype and device).

    Example:
        >>> prior_entropy(latent_dim=2)
        tensor(2.8379)
        >>> prior_entropy(prior_logvar=torch.zeros(2))
        tensor(2.8379)
    """
    check_keywords("prior_entropy()", vocabulary,
                   ("prior_logvar", "latent_dim", "prior", "enc_logvar", "enc_mean", "posterior"))
    if latent_dim is None:
        if isinstance(prior_logvar, Tensor) and prior_logvar.dim() >= 1:
            latent_dim = prior_logvar.shape[-1]
        elif enc_logvar is not None or posterior is not None:  # (B, *latent) or a posterior: H after flattening
            latent_dim = _in.encoder(None, enc_logvar, posterior, owner="prior_entropy()").logvar.shape[-1]
        elif isinstance(enc_mean, Tensor) and enc_mean.dim() >= 2:
            latent_dim = enc_mean[0].numel()
        elif prior is not None:
            moments = _in.gaussian_moments("prior", prior)
            latent_dim = (tuple(prior.batch_shape) + tuple(prior.event_shape) if moments is None
                          else tuple(moments[0].shape))[-1]
        else:
            raise ValueError(
                "prior_entropy() needs the number of latents: pass `latent_dim`, `prior_logvar`,"
                " `prior` or `enc_logvar`, but got none of them."
            )
    p = _in.prior(prior_logvar, prior, latent_dim=latent_dim)
    floats = [as_float_tensor(n, v) for n, v in (("enc_logvar", enc_logvar), ("enc_mean", enc_mean))
              if isinstance(v, Tensor)]
    if p.logvar is not None and p.logvar.dim() == 2:  # (B, H): each sample's own prior, the mean over them
        like = p.logvar
    else:  # one prior: the entropy of one point (a standard normal follows the encoder's dtype and device)
        like = (floats[0] if floats else torch.zeros(())).new_empty((1, latent_dim))
    return _prior_entropy_compute(_prior_entropy_update(p, like), like.shape[0], latent_dim)


# ----------------------------------------------------------------------------------------- decoder
def _decoder_entropy_update(dec: _in.Decoder, per_sample: bool = False) -> Tensor:
    r"""Log-determinant of the decoder covariance, averaged over the S z-samples: summed over the batch
    (``()``), or per sample (``()`` when one variance holds for every point: ``dec_logvar`` ``()`` or
    ``(D,)``; else ``(B,)``). A Bernoulli, categorical or continuous Bernoulli decoder's: that of the Gaussians with
    its entropy."""
    d, lv = dec.data_dim, dec.logvar
    if dec.params is not None:  # Bernoulli or categorical
        logdet = _logdet_from_entropy(_discrete.entropy(dec.layout, dec.params, dec.lead), d)
        return logdet if per_sample else logdet.sum()
    if dec.layout == "scalar":
        return lv * (d if per_sample else d * dec.batch_size)
    if dec.layout == "per_dim":
        return lv.sum() if per_sample else lv.sum() * dec.batch_size
    if dec.layout == "dist":
        ent = as_float_tensor("likelihood.entropy()", _in.sum_to(dec.dist.entropy(), dec.lead))
        logdet = _logdet_from_entropy(ent, d)
        logdet = logdet.mean(0) if dec.lead == 2 else logdet
    else:
        logdet = lv.sum(-1) * (d if lv.shape[-1] == 1 else 1)  # (B, 1) or (S, B, 1): one variance for all D
        logdet = logdet.mean(0) if dec.layout == "per_z" else logdet
    return logdet if per_sample else logdet.sum()


def _decoder_entropy_compute(logdet: Tensor, count: Any, data_dim: int, reduction: Reduction = "mean") -> Tensor:
    return _per_point(_entropy_from_logdet(logdet, count, data_dim), count, reduction)


def decoder_entropy(
    *,
    dec_logvar: Tensor | None = None,
    dec_mean: Tensor | None = None,
    x: Tensor | None = None,
    likelihood: Any = None,
    dec_logits: Tensor | None = None,
    dec_class_logits: Tensor | None = None,
    dec_probs: Tensor | None = None,
    reduction: Reduction = "mean",
    **vocabulary: Any,
) -> Tensor:
    r"""Expected decoder entropy :math:`\frac1B\sum_n \mathbb{E}_{q(z|x_n)}\mathcal{H}[p(x|z)]`.

    .. math::

        \frac1B \sum_n \frac1S \sum_{s} \sum_{d=1}^{D} \tfrac12 \log\!\left(2\pi e\,\sigma_d^2(z_{n,s})\right)

    For a scalar :math:`\sigma^2` (VAE-1/2) this is :math:`\tfrac D2\log(2\pi e\sigma^2)`; for a
    latent-dependent variance (VAE-3) the expectation over :math:`q` uses the S samples the step drew.
    A Bernoulli decoder with logits :math:`\eta` has :math:`\sum_d \operatorname{softplus}(\eta_d) -
    \sigma(\eta_d)\eta_d`, a categorical one :math:`\sum_d \operatorname{logsumexp}(\eta_d) -
    \sum_c \operatorname{softmax}(\eta_d)_c\,\eta_{dc}` (D: the number of observed variables).
    Pass one decoder: the Gaussian tensors, ``dec_logits``, ``dec_class_logits``, ``dec_probs`` or a ``likelihood``.

    Args:
        dec_logvar: decoder log-variances of shape ``()``, ``(D,)``, ``(B, D)``, ``(B, 1)`` or ``(S, B, D)``.
        dec_mean: decoder means ``(B, D)`` or ``(S, B, D)``; gives B and D for a constant variance.
        x: the data ``(B, D)`` (or ``(B, C, H, W)``, flattened); gives B and D when ``dec_mean`` is absent.
        likelihood: instead, a ``torch.distributions`` object with batch and event shape ``(B, *data)`` or
            ``(S, B, *data)``: Gaussian, ``Bernoulli``, ``Categorical``, ``OneHotCategorical`` or
            ``ContinuousBernoulli`` (or ``Independent`` of one).
        dec_logits: a Bernoulli decoder's logits, the shape of ``x`` ``(B, *data)`` (or ``(S, B, *data)``).
        dec_class_logits: a categorical decoder's class logits ``(B, *data, C)`` (or ``(S, B, *data, C)``).
        dec_probs: a Bernoulli decoder's probabilities ``(B, *data)``; logs clamped at -100.
        reduction: ``"mean"`` (nats per data point), ``"sum"`` or ``"none"`` (shape ``(B,)``).

    Raises:
        ValueError: two decoders, or shapes that disagree.
        TypeError: an unsupported ``likelihood``.

    Example:
        >>> decoder_entropy(dec_logvar=torch.tensor(0.0), x=torch.zeros(4, 3))  # sigma^2 = 1, D = 3
        tensor(4.2568)
        >>> decoder_entropy(dec_logits=torch.zeros(4, 3))  # 3 fair coins: 3 log 2
        tensor(2.0794)
        >>> decoder_entropy(dec_class_logits=torch.zeros(4, 2, 5))  # 2 uniform 5-way variables: 2 log 5
        tensor(3.2189)
    """
    check_keywords("decoder_entropy()", vocabulary, ("dec_logvar", "dec_mean", "x", "likelihood", "reduction"))
    _check_reduction(reduction)
    d = _in.data(x, classes=_in.is_categorical(dec_class_logits, likelihood))
    dec = _in.decoder(dec_mean, dec_logvar, likelihood, d, owner="decoder_entropy()", dec_logits=dec_logits,
                      dec_class_logits=dec_class_logits, dec_probs=dec_probs)
    logdet, count = _points(_decoder_entropy_update(dec, _per_sample(reduction)), dec.batch_size, reduction)
    return _decoder_entropy_compute(logdet, count, dec.data_dim, reduction)


# --------------------------------------------------------------------------------------------- sum
def _entropy_sum_compute(encoder: Tensor, prior: Tensor, decoder: Tensor) -> Tensor:
    """The entropy-sum ELBO from its three terms (per point, or summed over the same points)."""
    return encoder - prior - decoder


def entropy_sum(
    *,
    enc_logvar: Tensor | None = None,
    dec_logvar: Tensor | None = None,
    prior_logvar: Tensor | None = None,
    dec_mean: Tensor | None = None,
    x: Tensor | None = None,
    posterior: Any = None,
    prior: Any = None,
    likelihood: Any = None,
    dec_logits: Tensor | None = None,
    dec_class_logits: Tensor | None = None,
    dec_probs: Tensor | None = None,
    data_dim: int | None = None,
    reduction: Reduction = "mean",
    **vocabulary: Any,
) -> Tensor:
    r"""The entropy-sum ELBO: encoder entropy minus prior entropy minus decoder entropy.

    .. math::

        \tfrac1B\sum_n \mathcal{H}[q(z|x_n)] \;-\; \mathcal{H}[p(z)] \;-\;
        \tfrac1B\sum_n \mathbb{E}_{q}\mathcal{H}[p(x|z)]

    At every stationary point of a Gaussian VAE's ELBO (with learned decoder variance) this equals
    the ELBO. It is sample-free for VAE-1/2 and smooth in the parameters. For VAE-1 the encoder and
    prior constants cancel: :math:`\frac1B\sum_n\sum_h \tfrac12\log\tau_h^2 - \tfrac D2\log(2\pi e\sigma^2)`.
    The same holds for Bernoulli and categorical decoders whose logits are linear in the decoder's last layer
    (Warnken et al., arXiv 2501.09022), with their entropies (:func:`decoder_entropy`).

    Args:
        enc_logvar: ``(B, H)``. dec_logvar: ``()``, ``(D,)``, ``(B, D)``, ``(B, 1)`` or ``(S, B, D)``.
        prior_logvar: ``(H,)`` or ``(B, H)``, optional (default: standard normal prior).
        dec_mean, x: give B and D for a constant decoder variance.
        posterior, prior: Gaussian ``torch.distributions`` objects instead of tensors.
        likelihood: a Gaussian, ``Bernoulli``, ``Categorical``, ``OneHotCategorical`` or ``ContinuousBernoulli``
            ``torch.distributions`` object instead of the decoder tensors.
        dec_logits, dec_class_logits, dec_probs: a Bernoulli or categorical decoder (:func:`decoder_entropy`).
        data_dim: D, for a decoder variance of one value per point (``(B, 1)``) or per model when neither ``x``
            nor ``dec_mean`` is given.
        reduction: ``"mean"`` (nats per data point), ``"sum"`` or ``"none"`` (shape ``(B,)``).

    Raises:
        ValueError: two decoders, or batch sizes or shapes that disagree.
        TypeError: an unsupported distribution.

    Example:
        >>> enc_logvar = torch.full((8, 2), -2.0)
        >>> entropy_sum(enc_logvar=enc_logvar, dec_logvar=torch.tensor(-1.0), x=torch.zeros(8, 5))
        tensor(-6.5947)
        >>> entropy_sum(enc_logvar=enc_logvar, dec_logits=torch.zeros(8, 5))  # -2 - 5 log 2
        tensor(-5.4657)
    """
    check_keywords("entropy_sum()", vocabulary, ("enc_logvar", "dec_logvar", "prior_logvar", "dec_mean", "x",
                                                 "posterior", "prior", "likelihood", "data_dim", "reduction"))
    _check_reduction(reduction)
    d = _in.data(x, classes=_in.is_categorical(dec_class_logits, likelihood))
    enc = _in.encoder(None, enc_logvar, posterior, owner="entropy_sum()")
    batch, latent_dim = enc.logvar.shape
    p = _in.prior(prior_logvar, prior, latent_dim=latent_dim, batch=batch)
    dec = _in.decoder(dec_mean, dec_logvar, likelihood, d, owner="entropy_sum()", data_dim=data_dim,
                      dec_logits=dec_logits, dec_class_logits=dec_class_logits, dec_probs=dec_probs)
    check_batch("entropy_sum()", encoder=batch, decoder=dec.batch_size, x=d.batch_size)
    per_sample = _per_sample(reduction)
    terms = []
    for stat, compute, dim in ((_encoder_entropy_update(enc, per_sample), _encoder_entropy_compute, latent_dim),
                               (_prior_entropy_update(p, enc.logvar, per_sample), _prior_entropy_compute, latent_dim),
                               (_decoder_entropy_update(dec, per_sample), _decoder_entropy_compute, dec.data_dim)):
        terms.append(compute(*_points(stat, batch, reduction), dim, reduction))
    return _entropy_sum_compute(*terms)
