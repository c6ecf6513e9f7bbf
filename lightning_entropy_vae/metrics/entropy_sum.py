r"""The entropy-sum ELBO as one TorchMetrics metric: the three entropies and their sum in one update.

It sums the functional ``_update`` statistics of the three entropies in named states, so one update gives all
four values; ``compute`` applies the functional ``_compute`` helpers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from lightning_entropy_vae.functional import _inputs as _in
from lightning_entropy_vae.functional._checks import check_batch
from lightning_entropy_vae.functional.entropy import (
    _decoder_entropy_update,
    _encoder_entropy_update,
    _entropy_sum_compute,
)
from lightning_entropy_vae.functional.gaussian import _entropy_from_logdet
from lightning_entropy_vae.functional.stationary import _profiled_decoder_entropy_compute
from lightning_entropy_vae.metrics._base import SumAndCountMetric, merge_inputs
from lightning_entropy_vae.metrics._entropy_inputs import (
    decoder_inputs,
    prior_logdet,
    squared_residual,
    warn_if_fixed_variance,
)

__all__ = ["EntropySumELBO"]

#: what the prior parser returns without `prior_logvar` and `prior`: N(0, I)
_STANDARD_PRIOR = _in.Prior(None, None, None)


class EntropySumELBO(SumAndCountMetric):
    r"""The entropy-sum ELBO and its three terms in one update; nats per data point.

    .. math::

        \underbrace{\tfrac1N\sum_n \mathcal{H}[q(z|x_n)]}_{\texttt{encoder}}
        - \underbrace{\mathcal{H}[p(z)]}_{\texttt{prior}}
        - \underbrace{\tfrac1N\sum_n \mathbb{E}_q\mathcal{H}[p(x|z)]}_{\texttt{decoder}}
        = \texttt{sum}

    At every stationary point of a Gaussian VAE with learned variances the ELBO equals ``sum``
    (Damm et al., AISTATS 2023), so ``sum`` is a smooth, sample-free estimate of the ELBO; so it does for a
    Bernoulli or categorical decoder whose logits are linear in its last layer (Warnken et al., arXiv 2501.09022).

    ``update`` takes the vocabulary: ``enc_logvar`` ``(B, H)`` (or a ``posterior``), ``prior_logvar`` ``(H,)`` (or a
    ``prior``; default N(0, I)) and one decoder, as :class:`~.entropy.DecoderEntropy` reads it: ``dec_logvar`` with
    ``x`` or ``dec_mean``; ``dec_logits`` or ``dec_probs`` ``(B, *data)``; ``dec_class_logits`` ``(B, *data, C)``
    (with ``x`` as class indices ``(B, *data)`` or one-hot vectors); or a ``likelihood``. The other names of the
    vocabulary (and ``loss``) are ignored, any other key is an error. An optional ``weight`` ``(B,)`` weighs the
    points (0 drops a point, NaN-safe).
    ``compute`` returns a dict with keys ``encoder``, ``prior``, ``decoder``, ``sum``, and with
    ``profile_decoder_variance=True`` also ``decoder_profiled`` and ``sum_profiled``: the decoder
    entropy :math:`\tfrac D2\log(2\pi e\sigma^{2*})` at the optimal variance
    :math:`\sigma^{2*} = \frac{1}{ND}\sum_n\|x_n-\mu(z_n)\|^2` (needs ``x`` and ``dec_mean``, or
    ``dec_sq_residual``), the right comparison for a VAE trained with a fixed decoder variance (Gaussian decoders
    only).

    Args:
        nan_strategy: ``"skip"`` (default) skips and counts non-finite batches and warns at ``compute()``;
            ``"ignore"`` skips them silently; ``"error"`` raises.
        profile_decoder_variance: also accumulate squared residuals for ``sum_profiled``.
        warn_fixed_variance: warn once when ``dec_logvar`` does not require grad in training mode.
        kwargs: passed to :class:`torchmetrics.Metric`.

    Raises:
        TypeError: a key or keyword that is neither a name of the vocabulary nor ``loss`` (with the closest name), or
            an unsupported ``likelihood``.
        ValueError: two decoders, inputs of the wrong shape, a non-Gaussian decoder with
            ``profile_decoder_variance=True``, or non-finite inputs with ``nan_strategy="error"``.

    Example (a plain PyTorch loop):
        >>> metric = EntropySumELBO()
        >>> log_sigma2 = torch.nn.Parameter(torch.tensor(-1.0))
        >>> for _ in range(2):
        ...     metric.update(enc_logvar=torch.full((8, 2), -2.0), dec_logvar=log_sigma2, x=torch.zeros(8, 5))
        >>> {k: round(v.item(), 4) for k, v in metric.compute().items()}
        {'encoder': 0.8379, 'prior': 2.8379, 'decoder': 4.5947, 'sum': -6.5947}

    A Bernoulli decoder (its logits, here 5 fair coins: a decoder entropy of 5 log 2):
        >>> metric = EntropySumELBO()
        >>> metric.update(enc_logvar=torch.full((8, 2), -2.0), dec_logits=torch.zeros(8, 5))
        >>> {k: round(v.item(), 4) for k, v in metric.compute().items()}
        {'encoder': 0.8379, 'prior': 2.8379, 'decoder': 3.4657, 'sum': -5.4657}
    """

    higher_is_better = None
    _prefix = "entropy_sum"
    _inputs = ("enc_logvar", "dec_logvar", "prior_logvar", "dec_mean", "dec_logits", "dec_class_logits", "dec_probs",
               "x", "posterior", "prior", "likelihood", "data_dim", "dec_sq_residual")

    def __init__(
        self,
        nan_strategy: str = "skip",
        profile_decoder_variance: bool = False,
        warn_fixed_variance: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(nan_strategy, **kwargs)
        self.profile_decoder_variance = bool(profile_decoder_variance)
        self.warn_fixed_variance = bool(warn_fixed_variance) and not self.profile_decoder_variance
        self._warned_fixed = False
        self._add_sum_states()

    def _sum_layout(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        # log-det sums of the encoder, prior and decoder, (with profiling the squared-residual sum,)
        # then the latent and data dimensions the points span
        residual = (("sq_residual", ()),) if self.profile_decoder_variance else ()
        return (("encoder_logdet", ()), ("prior_logdet", ()), ("decoder_logdet", ()), *residual,
                ("latent_dims", ()), ("data_dims", ()))

    def update(self, outputs: Mapping[str, Any] | None = None, /, *, weight: Tensor | None = None,
               **kwargs: Any) -> None:
        owner = "EntropySumELBO.update()"
        kw = merge_inputs(owner, outputs, kwargs, self._inputs)
        if self.profile_decoder_variance:
            try:
                _in.require_gaussian(owner + " with profile_decoder_variance=True",
                                     "the decoder entropy at the optimal variance, the mean squared residual", kw)
            except ValueError as err:
                raise ValueError(f"{err} As metrics: EntropySumELBO() without profiling, and ELBO.") from None
        likelihood, class_logits = kw.get("likelihood"), kw.get("dec_class_logits")
        # a categorical decoder's integer `x` holds class indices (is_categorical called for a likelihood only: this
        # path runs every step)
        d = _in.data(kw.get("x"), classes=class_logits is not None
                     or (likelihood is not None and _in.is_categorical(None, likelihood)))
        # the means only where they are used: dec_mean for the squared residual, or for B and D without x
        enc = _in.encoder(None, kw.get("enc_logvar"), kw.get("posterior"), owner=owner, given=kw)
        batch, latent_dim = enc.logvar.shape
        prior_logvar, prior = kw.get("prior_logvar"), kw.get("prior")
        p = _STANDARD_PRIOR if prior_logvar is None and prior is None else _in.prior(
            prior_logvar, prior, latent_dim=latent_dim, batch=batch, check_rows=False)
        need_mean = self.profile_decoder_variance or d.x is None
        dec = _in.decoder(kw.get("dec_mean") if need_mean else None, kw.get("dec_logvar"), likelihood, d, owner=owner,
                          data_dim=kw.get("data_dim"), given=kw, dec_logits=kw.get("dec_logits"),
                          dec_class_logits=class_logits, dec_probs=kw.get("dec_probs"))
        if dec.batch_size != batch or (d.batch_size is not None and d.batch_size != batch):
            check_batch(owner, encoder=batch, decoder=dec.batch_size, x=d.batch_size)
        warn_if_fixed_variance(self, kw.get("dec_logvar"))
        if self.nan_strategy == "error":
            self._check_finite({"enc_logvar": enc.logvar, "prior_logvar": p.logvar, **decoder_inputs(kw, dec),
                                "x": d.x}, weight)

        def statistics(per_sample: bool) -> list[Tensor]:
            stats = [_encoder_entropy_update(enc, per_sample), prior_logdet(self, p, enc.logvar, per_sample),
                     _decoder_entropy_update(dec, per_sample)]
            if self.profile_decoder_variance:
                residual = squared_residual(owner, kw, d, dec)
                stats.append(residual if per_sample else residual.sum())
            return stats

        self._accumulate(statistics, (float(latent_dim), float(dec.data_dim)), batch, enc.logvar, weight)

    def compute(self) -> dict[str, Tensor]:
        count = self._count()
        # the three terms at once (the functional helpers are elementwise): [encoder, prior, decoder]
        logdets = torch.stack([self.entropy_sum_encoder_logdet, self.entropy_sum_prior_logdet,
                               self.entropy_sum_decoder_logdet])
        dims = torch.stack([self.entropy_sum_latent_dims, self.entropy_sum_latent_dims, self.entropy_sum_data_dims])
        dims = dims / count
        terms = _entropy_from_logdet(logdets, count, dims) / count
        encoder, prior, decoder = terms.unbind()
        out = {"encoder": encoder, "prior": prior, "decoder": decoder,
               "sum": _entropy_sum_compute(encoder, prior, decoder)}
        if self.profile_decoder_variance:
            out["decoder_profiled"] = _profiled_decoder_entropy_compute(self.entropy_sum_sq_residual, count, dims[2])
            out["sum_profiled"] = _entropy_sum_compute(encoder, prior, out["decoder_profiled"])
        return out
