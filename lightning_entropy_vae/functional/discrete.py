r"""The ELBO of VAEs with Bernoulli and categorical decoders (Warnken et al., arXiv 2501.09022).

For an exponential-family decoder with a constant base measure whose natural parameters are linear in the
decoder's last layer, :math:`\eta = W h(z) + b`, stationarity in :math:`W` and :math:`b` gives
:math:`\mathbb{E}[x - \mu(\eta)] = 0` and :math:`\mathbb{E}[(x - \mu(\eta))\,h] = 0`, hence
:math:`\mathbb{E}[\log p(x|z)] = \mathbb{E}[x\cdot\eta - A(\eta)] = -\mathbb{E}\,\mathcal{H}[p(\cdot|z)]`: at stationary
points the ELBO is the entropy sum of :func:`~.entropy.entropy_sum`, with the decoder entropies of
:func:`~.entropy.decoder_entropy`. The encoder and the prior are Gaussian; the KL is that of :func:`~.elbo.gaussian_kl`.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from lightning_entropy_vae.functional._checks import check_keywords
from lightning_entropy_vae.functional.elbo import _elbo_inputs, _elbo_update, _reduce, _require_kind
from lightning_entropy_vae.functional.entropy import Reduction, _check_reduction

__all__ = ["bernoulli_elbo", "categorical_elbo"]


def bernoulli_elbo(
    *,
    x: Tensor | None = None,
    enc_mean: Tensor | None = None,
    enc_logvar: Tensor | None = None,
    dec_logits: Tensor | None = None,
    dec_probs: Tensor | None = None,
    prior_logvar: Tensor | None = None,
    posterior: Any = None,
    prior: Any = None,
    likelihood: Any = None,
    reduction: Reduction = "mean",
    **vocabulary: Any,
) -> Tensor:
    r"""Sampled ELBO of a minibatch with a Bernoulli decoder: log-likelihood from logits (or probabilities) minus KL.

    .. math::

        \mathcal{F}(x_n) = \frac1S\sum_s \sum_{d=1}^{D} \left[x_{nd}\,\eta_d(z_{n,s})
        - \operatorname{softplus}(\eta_d(z_{n,s}))\right] - \mathrm{KL}(q(z|x_n)\,\|\,p(z))

    ``x`` may hold any values in [0, 1] (gray levels, as ``binary_cross_entropy`` allows). From ``dec_probs``
    :math:`p` the log-likelihood is :math:`\sum_d x_d \log p_d + (1 - x_d)\log(1 - p_d)` with both logs clamped at
    -100, as ``torch.nn.functional.binary_cross_entropy`` computes it: a loss ``BCE(probs, x, reduction="sum") + KL``
    is minus this ELBO.

    Args:
        x: data ``(B, *data)`` in [0, 1], e.g. images ``(B, C, H, W)``.
        enc_mean, enc_logvar: encoder means and log-variances ``(B, H)`` (or a Gaussian ``posterior``).
        dec_logits: the decoder's logits :math:`\eta`, the shape of ``x`` (or ``(S, B, *data)`` for S z-samples).
        dec_probs: instead, its probabilities :math:`\sigma(\eta)`, the shape of ``x``.
        prior_logvar, prior: the prior (default N(0, I)).
        likelihood: instead of the tensors, a ``Bernoulli`` (or ``Independent(Bernoulli)``) distribution.
        reduction: ``"mean"`` (nats per data point), ``"sum"`` or ``"none"`` (shape ``(B,)``).

    Raises:
        ValueError: no Bernoulli decoder (a Gaussian or categorical one names the function for it), two decoders,
            missing inputs, or shapes that disagree.

    Example:
        >>> import torch
        >>> x, mean, logvar = torch.tensor([[1.0, 0.0]]), torch.zeros(1, 1), torch.zeros(1, 1)
        >>> logits = torch.tensor([[2.0, -1.0]])
        >>> bernoulli_elbo(x=x, enc_mean=mean, enc_logvar=logvar, dec_logits=logits)
        tensor(-0.4402)
        >>> torch.distributions.Bernoulli(logits=logits).log_prob(x).sum()
        tensor(-0.4402)
    """
    check_keywords("bernoulli_elbo()", vocabulary, ("x", "enc_mean", "enc_logvar", "dec_logits", "dec_probs",
                                                    "prior_logvar", "posterior", "prior", "likelihood", "reduction"))
    _check_reduction(reduction)
    decoder = {"dec_logits": dec_logits, "dec_probs": dec_probs,
               **{k: vocabulary.get(k) for k in ("dec_mean", "dec_logvar", "dec_class_logits")}}
    enc, p, dec, d = _elbo_inputs("bernoulli_elbo()", x, enc_mean, enc_logvar, prior_logvar, posterior, prior,
                                  likelihood, decoder, "`dec_logits` or `dec_probs` (or a Bernoulli `likelihood`)")
    _require_kind("bernoulli_elbo()", dec, ("bernoulli",))
    return _reduce(_elbo_update(enc, p, dec, d), reduction)


def categorical_elbo(
    *,
    x: Tensor | None = None,
    enc_mean: Tensor | None = None,
    enc_logvar: Tensor | None = None,
    dec_class_logits: Tensor | None = None,
    prior_logvar: Tensor | None = None,
    posterior: Any = None,
    prior: Any = None,
    likelihood: Any = None,
    reduction: Reduction = "mean",
    **vocabulary: Any,
) -> Tensor:
    r"""Sampled ELBO of a minibatch with a categorical decoder: class log-probabilities at ``x`` minus KL.

    .. math::

        \mathcal{F}(x_n) = \frac1S\sum_s \sum_{d=1}^{D} \sum_{c=1}^{C} x_{ndc}
        \log\operatorname{softmax}(\eta_d(z_{n,s}))_c - \mathrm{KL}(q(z|x_n)\,\|\,p(z))

    with :math:`x_{nd}` one-hot (class indices) or a probability vector over the C classes.

    Args:
        x: class indices ``(B, *data)`` of an integer dtype, or one-hot or probability vectors ``(B, *data, C)``.
        enc_mean, enc_logvar: encoder means and log-variances ``(B, H)`` (or a Gaussian ``posterior``).
        dec_class_logits: the decoder's class logits ``(B, *data, C)`` (or ``(S, B, *data, C)`` for S z-samples).
        prior_logvar, prior: the prior (default N(0, I)).
        likelihood: instead, a ``Categorical`` or ``OneHotCategorical`` distribution (or ``Independent`` of one).
        reduction: ``"mean"`` (nats per data point), ``"sum"`` or ``"none"`` (shape ``(B,)``).

    Raises:
        ValueError: no categorical decoder (a Gaussian or Bernoulli one names the function for it), two decoders,
            missing inputs, or shapes that disagree.

    Example:
        >>> import torch
        >>> x, mean, logvar = torch.tensor([[2, 0]]), torch.zeros(1, 1), torch.zeros(1, 1)
        >>> logits = torch.tensor([[[0.0, 1.0, 2.0], [0.5, 0.0, 0.0]]])
        >>> categorical_elbo(x=x, enc_mean=mean, enc_logvar=logvar, dec_class_logits=logits)
        tensor(-1.2020)
        >>> torch.distributions.Categorical(logits=logits).log_prob(x).sum()
        tensor(-1.2020)
    """
    check_keywords("categorical_elbo()", vocabulary, ("x", "enc_mean", "enc_logvar", "dec_class_logits",
                                                      "prior_logvar", "posterior", "prior", "likelihood",
                                                      "reduction"))
    _check_reduction(reduction)
    decoder = {"dec_class_logits": dec_class_logits,
               **{k: vocabulary.get(k) for k in ("dec_mean", "dec_logvar", "dec_logits", "dec_probs")}}
    enc, p, dec, d = _elbo_inputs("categorical_elbo()", x, enc_mean, enc_logvar, prior_logvar, posterior, prior,
                                  likelihood, decoder, "`dec_class_logits` (or a Categorical `likelihood`)")
    _require_kind("categorical_elbo()", dec, ("categorical",))
    return _reduce(_elbo_update(enc, p, dec, d), reduction)
