r"""The entropy-sum ELBO as one TorchMetrics metric: the three entropies and their sum in one update.

It sums the functional ``_update`` statistics of the three entropies (:mod:`.entropy`) in one state vector,
so one update and one DDP sync give all four values; ``compute`` applies the functional ``_compute`` helpers.
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
from lightning_entropy_vae.metrics.entropy import _prior_logdet, _squared_residual, _warn_if_fixed_variance

__all__ = ["EntropySumELBO"]


class EntropySumELBO(SumAndCountMetric):
    r"""The entropy-sum ELBO and its three terms in one update; nats per data point.

    .. math::

        \underbrace{\tfrac1N\sum_n \mathcal{H}[q(z|x_n)]}_{\texttt{encoder}}
        - \underbrace{\mathcal{H}[p(z)]}_{\texttt{prior}}
        - \underbrace{\tfrac1N\sum_n \mathbb{E}_q\mathcal{H}[p(x|z)]}_{\texttt{decoder}}
        = \texttt{sum}

    At every stationary point of a Gaussian VAE with learned variances the ELBO equals ``sum``
    (Damm et al., AISTATS 2023), so ``sum`` is a smooth, sample-free estimate of the ELBO.

    ``update`` takes the vocabulary (``enc_logvar``, ``dec_logvar``, ``prior_logvar``, ``x`` or
    ``dec_mean``, or ``posterior``/``prior``/``likelihood``); other keys are ignored. An optional
    ``weight`` ``(B,)`` weighs the points (0 drops a point, NaN-safe).
    ``compute`` returns a dict with keys ``encoder``, ``prior``, ``decoder``, ``sum``, and with
    ``profile_decoder_variance=True`` also ``decoder_profiled`` and ``sum_profiled``: the decoder
    entropy :math:`\tfrac D2\log(2\pi e\sigma^{2*})` at the optimal variance
    :math:`\sigma^{2*} = \frac{1}{ND}\sum_n\|x_n-\mu(z_n)\|^2` (needs ``x`` and ``dec_mean``, or
    ``dec_sq_residual``), the right comparison for a VAE trained with a fixed decoder variance.

    Args:
        nan_strategy: ``"skip"`` (default) skips and counts non-finite batches and warns at ``compute()``;
            ``"ignore"`` skips them silently; ``"error"`` raises.
        profile_decoder_variance: also accumulate squared residuals for ``sum_profiled``.
        warn_fixed_variance: warn once when ``dec_logvar`` does not require grad in training mode.
        kwargs: passed to :class:`torchmetrics.Metric`.

    Example (a plain PyTorch loop):
        >>> metric = EntropySumELBO()
        >>> log_sigma2 = torch.nn.Parameter(torch.tensor(-1.0))
        >>> for _ in range(2):
        ...     metric.update(enc_logvar=torch.full((8, 2), -2.0), dec_logvar=log_sigma2, x=torch.zeros(8, 5))
        >>> {k: round(v.item(), 4) for k, v in metric.compute().items()}
        {'encoder': 0.8379, 'prior': 2.8379, 'decoder': 4.5947, 'sum': -6.5947}
    """

    higher_is_better = None
    _prefix = "entropy_sum"

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
        # log-det sums of the encoder, prior and decoder, (with profiling the squared-residual sum,)
        # then the latent and data dimensions the points span
        self._add_sum_states(6 if self.profile_decoder_variance else 5)

    def update(self, outputs: Mapping[str, Any] | None = None, /, *, weight: Tensor | None = None,
               **kwargs: Any) -> None:
        owner = "EntropySumELBO.update()"
        kw = merge_inputs(owner, outputs, kwargs)
        d = _in.data(kw.get("x"))
        # the means only where they are used: dec_mean for the squared residual, or for B and D without x
        enc = _in.encoder(None, kw.get("enc_logvar"), kw.get("posterior"), owner=owner, given=kw)
        batch, latent_dim = enc.logvar.shape
        p = _in.prior(kw.get("prior_logvar"), kw.get("prior"), latent_dim=latent_dim, batch=batch,
                     check_rows=False)
        need_mean = self.profile_decoder_variance or d.x is None
        dec = _in.decoder(kw.get("dec_mean") if need_mean else None, kw.get("dec_logvar"), kw.get("likelihood"), d,
                          owner=owner, data_dim=kw.get("data_dim"), given=kw)
        if dec.batch_size != batch or (d.batch_size is not None and d.batch_size != batch):
            check_batch(owner, encoder=batch, decoder=dec.batch_size, x=d.batch_size)
        _warn_if_fixed_variance(self, kw.get("dec_logvar"))
        if self.nan_strategy == "error":
            self._check_finite({"enc_logvar": enc.logvar, "prior_logvar": p.logvar, "dec_logvar": dec.logvar,
                                "dec_mean": dec.mean, "x": d.x}, weight)

        def statistics(per_sample: bool) -> list[Tensor]:
            stats = [_encoder_entropy_update(enc, per_sample), _prior_logdet(self, p, enc.logvar, per_sample),
                     _decoder_entropy_update(dec, per_sample)]
            if self.profile_decoder_variance:
                residual = _squared_residual(owner, kw, d, dec)
                stats.append(residual if per_sample else residual.sum())
            return stats

        self._accumulate(statistics, (float(latent_dim), float(dec.data_dim)), batch, enc.logvar, weight)

    def compute(self) -> dict[str, Tensor]:
        sums, count = self._totals()
        # the three terms at once (the functional helpers are elementwise): [encoder, prior, decoder]
        dims = torch.cat([sums[-2:-1].expand(2), sums[-1:]]) / count
        terms = _entropy_from_logdet(sums[:3], count, dims) / count
        encoder, prior, decoder = terms.unbind()
        out = {"encoder": encoder, "prior": prior, "decoder": decoder,
               "sum": _entropy_sum_compute(encoder, prior, decoder)}
        if self.profile_decoder_variance:
            out["decoder_profiled"] = _profiled_decoder_entropy_compute(sums[3], count, dims[2])
            out["sum_profiled"] = _entropy_sum_compute(encoder, prior, out["decoder_profiled"])
        return out
