r"""TorchMetrics metrics for the three entropies, averaged over data points (their sum: :mod:`.entropy_sum`).

Each metric sums the per-sample log-determinants of the functional ``_update`` helpers (and the
latent or data dimensions they span) over its points; ``compute`` applies the functional
``_compute`` helpers, so every formula lives once, in :mod:`lightning_entropy_vae.functional`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch  # noqa: F401  (the doctests use it)
from torch import Tensor

from lightning_entropy_vae.functional import _inputs as _in
from lightning_entropy_vae.functional._checks import as_float_tensor
from lightning_entropy_vae.functional.entropy import (
    _decoder_entropy_compute,
    _decoder_entropy_update,
    _encoder_entropy_compute,
    _encoder_entropy_update,
    _prior_entropy_compute,
)
from lightning_entropy_vae.metrics._base import SumAndCountMetric, merge_inputs
from lightning_entropy_vae.metrics._entropy_inputs import (
    decoder_inputs,
    encoder_of,
    prior_logdet,
    warn_if_fixed_variance,
)

__all__ = ["DecoderEntropy", "EncoderEntropy", "PriorEntropy"]


def __getattr__(name: str) -> Any:
    """``EntropySumELBO`` lived here up to 0.1.0 (now :mod:`.entropy_sum`): old imports and pickles still find it."""
    if name == "EntropySumELBO":
        from lightning_entropy_vae.metrics.entropy_sum import EntropySumELBO

        return EntropySumELBO
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _LogdetMetric(SumAndCountMetric):
    """One entropy: states ``{prefix}_logdet`` (the log-determinants' sum), ``{prefix}_dims`` (the dimensions the
    points span), ``{prefix}_count`` and ``{prefix}_skipped``; compute by its functional ``_compute``."""

    higher_is_better = None
    _compute_fn: Any = None

    def __init__(self, nan_strategy: str = "skip", **kwargs: Any) -> None:
        super().__init__(nan_strategy, **kwargs)
        self._add_sum_states()

    def _sum_layout(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        return (("logdet", ()), ("dims", ()))

    def _add_logdet(self, statistic: Callable[[bool], Tensor], dim: int, batch: int, like: Tensor,
                    weight: Tensor | None) -> None:
        self._accumulate(lambda per_sample: [statistic(per_sample)], (float(dim),), batch, like, weight)

    def compute(self) -> Tensor:
        count = self._count()
        return type(self)._compute_fn(self._state("logdet"), count, self._state("dims") / count)


class EncoderEntropy(_LogdetMetric):
    r"""Average encoder entropy :math:`\frac1N\sum_n\mathcal{H}[q(z|x_n)]`, nats per data point.

    .. math::

        \frac1N \sum_n \sum_h \tfrac12\log\!\left(2\pi e\,\tau_h^2(x_n)\right)

    ``update`` takes the vocabulary (a step's output dict, ``VAEOutput``, or keywords) and uses
    ``enc_logvar`` of shape ``(B, H)`` or a Gaussian ``posterior``; the other names of the vocabulary (and
    ``loss``) are ignored, any other key is an error. An optional ``weight`` ``(B,)`` weighs the points (0 drops
    a point, NaN-safe). States: ``encoder_entropy_logdet``, ``encoder_entropy_dims``, ``encoder_entropy_count``,
    ``encoder_entropy_skipped``, sums over the points.

    Args:
        nan_strategy: ``"skip"`` (default) skips and counts non-finite batches and warns at ``compute()``;
            ``"ignore"`` skips them silently; ``"error"`` raises.
        kwargs: passed to :class:`torchmetrics.Metric`.

    Raises:
        TypeError: a key or keyword that is neither a name of the vocabulary nor ``loss`` (with the closest name).
        ValueError: inputs of the wrong shape, or non-finite inputs with ``nan_strategy="error"``.

    Example (a plain PyTorch loop):
        >>> metric = EncoderEntropy()
        >>> for _ in range(3):
        ...     metric.update(enc_logvar=torch.zeros(16, 2))
        >>> metric.compute()
        tensor(2.8379)
    """

    _prefix = "encoder_entropy"
    _inputs = ("enc_logvar", "enc_mean", "posterior")
    _compute_fn = staticmethod(_encoder_entropy_compute)

    def update(self, outputs: Mapping[str, Any] | None = None, /, *, weight: Tensor | None = None,
               **kwargs: Any) -> None:
        kw = merge_inputs("EncoderEntropy.update()", outputs, kwargs, self._inputs)
        enc = encoder_of("EncoderEntropy.update()", kw)
        if self.nan_strategy == "error":
            self._check_finite({"enc_logvar": enc.logvar}, weight)
        batch, latent_dim = enc.logvar.shape
        self._add_logdet(partial(_encoder_entropy_update, enc), latent_dim, batch, enc.logvar, weight)


class PriorEntropy(_LogdetMetric):
    r"""Prior entropy :math:`\mathcal{H}[p(z)]`, averaged over the data points it was seen with.

    .. math::

        \sum_h \tfrac12 \log(2\pi e\,\alpha_h^2)

    A learnable prior (VAE-2) changes during an epoch; the value is then the mean over the epoch's
    data points, matching the other terms. ``update`` uses ``prior_logvar`` ``(H,)`` (or ``(B, H)``) or
    ``prior`` (default: N(0, I)), and ``enc_logvar``/``enc_mean``/``posterior`` for H and the batch size;
    the other names of the vocabulary are ignored, any other key is an error.

    Args:
        nan_strategy: ``"skip"`` (default), ``"ignore"`` or ``"error"``.
        kwargs: passed to :class:`torchmetrics.Metric`.

    Raises:
        TypeError: a key or keyword that is neither a name of the vocabulary nor ``loss`` (with the closest name).
        ValueError: inputs of the wrong shape, or non-finite inputs with ``nan_strategy="error"``.

    Example:
        >>> metric = PriorEntropy()
        >>> metric.update(enc_logvar=torch.zeros(16, 2), prior_logvar=torch.zeros(2))
        >>> metric.compute()
        tensor(2.8379)
    """

    _prefix = "prior_entropy"
    _inputs = ("prior_logvar", "prior", "enc_logvar", "enc_mean", "posterior")
    _compute_fn = staticmethod(_prior_entropy_compute)

    def update(self, outputs: Mapping[str, Any] | None = None, /, *, weight: Tensor | None = None,
               **kwargs: Any) -> None:
        kw = merge_inputs("PriorEntropy.update()", outputs, kwargs, self._inputs)
        enc = encoder_of("PriorEntropy.update()", kw)
        batch, latent_dim = enc.logvar.shape
        p = _in.prior(kw.get("prior_logvar"), kw.get("prior"), latent_dim=latent_dim, batch=batch,
                     check_rows=False)
        if self.nan_strategy == "error":
            self._check_finite({"prior_logvar": p.logvar}, weight)
        self._add_logdet(partial(prior_logdet, self, p, enc.logvar), latent_dim, batch, enc.logvar, weight)


class DecoderEntropy(_LogdetMetric):
    r"""Expected decoder entropy :math:`\frac1N\sum_n\mathbb{E}_{q(z|x_n)}\mathcal{H}[p(x|z)]`, nats per point.

    .. math::

        \frac1N \sum_n \frac1S\sum_s \sum_d \tfrac12\log\!\left(2\pi e\,\sigma_d^2(z_{n,s})\right)

    for a Gaussian decoder; a Bernoulli decoder with logits :math:`\eta` has
    :math:`\sum_d \operatorname{softplus}(\eta_d) - \sigma(\eta_d)\eta_d`, a categorical one
    :math:`\sum_d \operatorname{logsumexp}(\eta_d) - \sum_c \operatorname{softmax}(\eta_d)_c\,\eta_{dc}` per
    z-sample (the values of :func:`~lightning_entropy_vae.functional.decoder_entropy`).

    ``update`` uses one decoder: ``dec_logvar`` (``()``, ``(D,)``, ``(B, D)``, ``(B, 1)`` or ``(S, B, D)``) with
    ``x`` or ``dec_mean`` for B and D (or ``data_dim``); a Bernoulli decoder's ``dec_logits`` or ``dec_probs``
    ``(B, *data)`` (or ``(S, B, *data)`` with ``x``); a categorical decoder's ``dec_class_logits`` ``(B, *data, C)``
    (or ``(S, B, *data, C)`` with ``x``: class indices ``(B, *data)`` or one-hot vectors ``(B, *data, C)``); or a
    ``likelihood`` (Gaussian, ``Bernoulli``, ``Categorical``, ``OneHotCategorical``, ``ContinuousBernoulli``, or
    ``Independent`` of one). The other names of the vocabulary are ignored, any other key is an error. An optional
    ``weight`` ``(B,)`` weighs the points (0 drops a point, NaN-safe).

    Args:
        nan_strategy: ``"skip"`` (default), ``"ignore"`` or ``"error"``.
        warn_fixed_variance: warn once when ``dec_logvar`` does not require grad in training mode.
        kwargs: passed to :class:`torchmetrics.Metric`.

    Raises:
        TypeError: a key or keyword that is neither a name of the vocabulary nor ``loss`` (with the closest name), or
            an unsupported ``likelihood``.
        ValueError: two decoders, inputs of the wrong shape, or non-finite inputs with ``nan_strategy="error"``.

    Example:
        >>> metric = DecoderEntropy(warn_fixed_variance=False)
        >>> metric.update(dec_logvar=torch.tensor(0.0), x=torch.zeros(16, 3))
        >>> metric.compute()
        tensor(4.2568)
        >>> bernoulli = DecoderEntropy()
        >>> bernoulli.update(dec_logits=torch.zeros(16, 3))  # 3 fair coins: 3 log 2
        >>> bernoulli.update(dec_logits=torch.full((4, 3), 50.0))  # certain outcomes: 0
        >>> bernoulli.compute()  # (16 * 2.0794 + 4 * 0) / 20
        tensor(1.6636)
        >>> categorical = DecoderEntropy()
        >>> categorical.update(dec_class_logits=torch.zeros(8, 2, 5), x=torch.zeros(8, 2, dtype=torch.long))
        >>> categorical.compute()  # 2 uniform 5-way variables: 2 log 5
        tensor(3.2189)
    """

    _prefix = "decoder_entropy"
    _inputs = ("dec_logvar", "dec_mean", "dec_logits", "dec_class_logits", "dec_probs", "x", "likelihood", "data_dim")
    _compute_fn = staticmethod(_decoder_entropy_compute)

    def __init__(self, nan_strategy: str = "skip", warn_fixed_variance: bool = True, **kwargs: Any) -> None:
        super().__init__(nan_strategy, **kwargs)
        self.warn_fixed_variance = bool(warn_fixed_variance)
        self._warned_fixed = False

    def update(self, outputs: Mapping[str, Any] | None = None, /, *, weight: Tensor | None = None,
               **kwargs: Any) -> None:
        kw = merge_inputs("DecoderEntropy.update()", outputs, kwargs, self._inputs)
        likelihood, class_logits = kw.get("likelihood"), kw.get("dec_class_logits")
        # a categorical decoder's integer `x` holds class indices (is_categorical asked about a likelihood only)
        d = _in.data(kw.get("x"), classes=class_logits is not None
                     or (likelihood is not None and _in.is_categorical(None, likelihood)))
        dec = _in.decoder(kw.get("dec_mean"), kw.get("dec_logvar"), likelihood, d, owner="DecoderEntropy.update()",
                          data_dim=kw.get("data_dim"), given=kw, dec_logits=kw.get("dec_logits"),
                          dec_class_logits=class_logits, dec_probs=kw.get("dec_probs"))
        warn_if_fixed_variance(self, kw.get("dec_logvar"))
        if self.nan_strategy == "error":
            self._check_finite(decoder_inputs(kw, dec), weight)
        # the tensor whose dtype and device the sums take: the log-variances, a discrete decoder's parameters, or
        # the mean of a likelihood distribution without either
        like = dec.logvar if dec.logvar is not None else dec.params if dec.params is not None else \
            as_float_tensor("likelihood.mean", dec.dist.mean)
        self._add_logdet(partial(_decoder_entropy_update, dec), dec.data_dim, dec.batch_size, like, weight)
