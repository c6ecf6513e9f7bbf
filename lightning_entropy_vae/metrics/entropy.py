r"""TorchMetrics metrics for the three entropies and their sum, averaged over data points."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from lightning_entropy_vae.functional import _inputs as _in
from lightning_entropy_vae.functional._inputs import LOG_2PI_E
from lightning_entropy_vae.functional.entropy import (
    _decoder_entropy_update,
    _encoder_entropy_update,
    _prior_entropy_update,
)
from lightning_entropy_vae.functional.stationary import _squared_residual
from lightning_entropy_vae.metrics._base import SumAndCountMetric, merge_inputs, rank_zero_warn

__all__ = ["DecoderEntropy", "EncoderEntropy", "EntropySumELBO", "PriorEntropy"]


def _encoder_of(owner: str, kw: Mapping[str, Any]) -> _in.Encoder:
    return _in.encoder(kw.get("enc_mean"), kw.get("enc_logvar"), kw.get("posterior"), owner=owner, given=kw)


def _warn_if_fixed_variance(metric: Any, dec_logvar: Any) -> None:
    """Warn once when a constant decoder log-variance without gradient is seen in training mode."""
    if (
        metric.warn_fixed_variance
        and not metric._warned_fixed
        and metric.training
        and isinstance(dec_logvar, Tensor)
        and dec_logvar.dim() <= 1
        and not dec_logvar.requires_grad
        and not dec_logvar.is_inference()
    ):
        metric._warned_fixed = True
        rank_zero_warn(
            f"{type(metric).__name__}: `dec_logvar` does not require grad, so the decoder variance looks fixed"
            " (VAE-0 / plain MSE training). The ELBO of such a model does not converge to the entropy sum:"
            " their gap stays 0.5*(D - R/sigma^2) per point. Use EntropySumELBO(profile_decoder_variance=True)"
            " for the entropy sum at the optimal variance sigma^2* = mean squared residual ('sum_profiled')."
            " If the variance is learned and this is an evaluation without gradients, call `.eval()` on the"
            " metric or pass warn_fixed_variance=False."
        )


def _squared_residual_total(kw: Mapping[str, Any], d: _in.Data, dec: _in.Decoder, owner: str) -> Tensor:
    """Batch sum of ``||x - mu(z)||^2`` (mean over z samples), or of a given ``dec_sq_residual`` (B,)."""
    given = kw.get("dec_sq_residual")
    if given is not None:
        return _in.as_float_tensor("dec_sq_residual", given).sum()
    if d.x is None or dec.mean is None:
        raise _in.missing_inputs_error(
            owner + " with profile_decoder_variance=True", "`x` and `dec_mean` (or `dec_sq_residual`)", kw
        )
    return _squared_residual(d, dec.mean).sum()


class EncoderEntropy(SumAndCountMetric):
    r"""Average encoder entropy :math:`\frac1N\sum_n\mathcal{H}[q(z|x_n)]`, nats per data point.

    .. math::

        \frac1N \sum_n \sum_h \tfrac12\log\!\left(2\pi e\,\tau_h^2(x_n)\right)

    ``update`` takes the vocabulary (a step's output dict, ``VAEOutput``, or keywords) and uses
    ``enc_logvar`` of shape ``(B, H)`` or a Gaussian ``posterior``; other keys are ignored.

    Args:
        nan_strategy: ``"skip"`` (default) skips and counts non-finite batches; ``"error"`` raises.
        kwargs: passed to :class:`torchmetrics.Metric`.

    Example (a plain PyTorch loop):
        >>> metric = EncoderEntropy()
        >>> for _ in range(3):
        ...     metric.update(enc_logvar=torch.zeros(16, 2))
        >>> metric.compute()
        tensor(2.8379)
    """

    higher_is_better = None
    _prefix = "encoder_entropy"

    def __init__(self, nan_strategy: str = "skip", **kwargs: Any) -> None:
        super().__init__(nan_strategy, **kwargs)
        self._add_sum_states(1)

    def update(self, outputs: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
        kw = merge_inputs("EncoderEntropy.update()", outputs, kwargs)
        enc = _encoder_of("EncoderEntropy.update()", kw)
        if self.nan_strategy == "error":
            self._check_finite({"enc_logvar": enc.logvar})
        self._accumulate_affine([_encoder_entropy_update(enc)], enc.logvar.shape[0], enc.logvar)

    def compute(self) -> Tensor:
        totals, count = self._totals()
        return totals[0] / count

    def plot(self, val: Any = None, ax: Any = None) -> Any:
        """Plot the value (or a list of values) with TorchMetrics' plotting helper."""
        return self._plot(val, ax)


class PriorEntropy(SumAndCountMetric):
    r"""Prior entropy :math:`\mathcal{H}[p(z)]`, averaged over the data points it was seen with.

    .. math::

        \sum_h \tfrac12 \log(2\pi e\,\alpha_h^2)

    A learnable prior (VAE-2) changes during an epoch; the value is then the mean over the epoch's
    data points, matching the other terms. ``update`` uses ``prior_logvar`` ``(H,)`` or ``prior``
    (default: N(0, I)), and ``enc_logvar``/``enc_mean``/``posterior`` for H and the batch size.

    Example:
        >>> metric = PriorEntropy()
        >>> metric.update(enc_logvar=torch.zeros(16, 2), prior_logvar=torch.zeros(2))
        >>> metric.compute()
        tensor(2.8379)
    """

    higher_is_better = None
    _prefix = "prior_entropy"

    def __init__(self, nan_strategy: str = "skip", **kwargs: Any) -> None:
        super().__init__(nan_strategy, **kwargs)
        self._add_sum_states(1)

    def update(self, outputs: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
        kw = merge_inputs("PriorEntropy.update()", outputs, kwargs)
        enc = _encoder_of("PriorEntropy.update()", kw)
        batch, latent_dim = enc.logvar.shape
        p = _in.prior(kw.get("prior_logvar"), kw.get("prior"), latent_dim=latent_dim, batch=batch)
        if self.nan_strategy == "error" and p.logvar is not None:
            self._check_finite({"prior_logvar": p.logvar})
        self._accumulate_affine([_prior_entropy_update(p, batch, latent_dim)], batch, enc.logvar)

    def compute(self) -> Tensor:
        totals, count = self._totals()
        return totals[0] / count

    def plot(self, val: Any = None, ax: Any = None) -> Any:
        """Plot the value (or a list of values) with TorchMetrics' plotting helper."""
        return self._plot(val, ax)


class DecoderEntropy(SumAndCountMetric):
    r"""Expected decoder entropy :math:`\frac1N\sum_n\mathbb{E}_{q(z|x_n)}\mathcal{H}[p(x|z)]`, nats per point.

    .. math::

        \frac1N \sum_n \frac1S\sum_s \sum_d \tfrac12\log\!\left(2\pi e\,\sigma_d^2(z_{n,s})\right)

    ``update`` uses ``dec_logvar`` (``()``, ``(D,)``, ``(B, D)`` or ``(S, B, D)``) with ``x`` or
    ``dec_mean`` for B and D, or a Gaussian ``likelihood``.

    Args:
        nan_strategy: ``"skip"`` (default) or ``"error"``.
        warn_fixed_variance: warn once when ``dec_logvar`` does not require grad in training mode.

    Example:
        >>> metric = DecoderEntropy(warn_fixed_variance=False)
        >>> metric.update(dec_logvar=torch.tensor(0.0), x=torch.zeros(16, 3))
        >>> metric.compute()
        tensor(4.2568)
    """

    higher_is_better = None
    _prefix = "decoder_entropy"

    def __init__(self, nan_strategy: str = "skip", warn_fixed_variance: bool = True, **kwargs: Any) -> None:
        super().__init__(nan_strategy, **kwargs)
        self.warn_fixed_variance = bool(warn_fixed_variance)
        self._warned_fixed = False
        self._add_sum_states(1)

    def update(self, outputs: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
        kw = merge_inputs("DecoderEntropy.update()", outputs, kwargs)
        dec = _in.decoder(
            kw.get("dec_mean"), kw.get("dec_logvar"), kw.get("likelihood"), _in.data(kw.get("x")),
            owner="DecoderEntropy.update()", data_dim=kw.get("data_dim"), given=kw,
        )
        _warn_if_fixed_variance(self, kw.get("dec_logvar"))
        if self.nan_strategy == "error":
            self._check_finite({"dec_logvar": dec.logvar, "dec_mean": dec.mean})
        like = dec.logvar if dec.logvar is not None else dec.dist.mean
        self._accumulate_affine([_decoder_entropy_update(dec)], dec.batch_size, like)

    def compute(self) -> Tensor:
        totals, count = self._totals()
        return totals[0] / count

    def plot(self, val: Any = None, ax: Any = None) -> Any:
        """Plot the value (or a list of values) with TorchMetrics' plotting helper."""
        return self._plot(val, ax)


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
    ``dec_mean``, or ``posterior``/``prior``/``likelihood``); other keys are ignored.
    ``compute`` returns a dict with keys ``encoder``, ``prior``, ``decoder``, ``sum``, and with
    ``profile_decoder_variance=True`` also ``decoder_profiled`` and ``sum_profiled``: the decoder
    entropy :math:`\tfrac D2\log(2\pi e\sigma^{2*})` at the optimal variance
    :math:`\sigma^{2*} = \frac{1}{ND}\sum_n\|x_n-\mu(z_n)\|^2` (needs ``x`` and ``dec_mean``), the
    right comparison for a VAE trained with a fixed decoder variance.

    Args:
        nan_strategy: ``"skip"`` (default) skips and counts non-finite batches; ``"error"`` raises.
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
        # encoder, prior, decoder sums; with profiling also the squared-residual sum and its element count
        self._add_sum_states(5 if self.profile_decoder_variance else 3)

    def update(self, outputs: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
        owner = "EntropySumELBO.update()"
        kw = merge_inputs(owner, outputs, kwargs)
        d = _in.data(kw.get("x"))
        enc = _encoder_of(owner, kw)
        batch, latent_dim = enc.logvar.shape
        p = _in.prior(kw.get("prior_logvar"), kw.get("prior"), latent_dim=latent_dim, batch=batch)
        dec = _in.decoder(
            kw.get("dec_mean"), kw.get("dec_logvar"), kw.get("likelihood"), d, owner=owner,
            data_dim=kw.get("data_dim"), given=kw,
        )
        if dec.batch_size != batch:
            _in.check_batch(owner, encoder=batch, decoder=dec.batch_size, x=d.batch_size)
        _warn_if_fixed_variance(self, kw.get("dec_logvar"))
        if self.nan_strategy == "error":
            named = {"enc_logvar": enc.logvar, "prior_logvar": p.logvar, "dec_logvar": dec.logvar,
                     "dec_mean": dec.mean, "x": d.x}
            self._check_finite({k: v for k, v in named.items() if v is not None})
        terms = [
            _encoder_entropy_update(enc),
            _prior_entropy_update(p, batch, latent_dim),
            _decoder_entropy_update(dec),
        ]
        if self.profile_decoder_variance:
            terms += [(_squared_residual_total(kw, d, dec, owner), 1.0, 0.0), (None, 0.0, float(batch * dec.data_dim))]
        self._accumulate_affine(terms, batch, enc.logvar)

    def compute(self) -> dict[str, Tensor]:
        return self._from_totals(*self._totals())

    def _from_totals(self, totals: Tensor, count: Tensor) -> dict[str, Tensor]:
        """The result from summed states (also used on differences of states, for windows)."""
        means = totals[:3] / count
        out = {"encoder": means[0], "prior": means[1], "decoder": means[2], "sum": means[0] - means[1] - means[2]}
        if self.profile_decoder_variance:
            sq, elements = totals[3], totals[4]
            data_dim = elements / count
            out["decoder_profiled"] = 0.5 * data_dim * (LOG_2PI_E + torch.log(sq / elements))
            out["sum_profiled"] = means[0] - means[1] - out["decoder_profiled"]
        return out
