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
from lightning_entropy_vae.functional._checks import as_float_tensor, missing_inputs_error
from lightning_entropy_vae.functional.entropy import (
    _decoder_entropy_compute,
    _decoder_entropy_update,
    _encoder_entropy_compute,
    _encoder_entropy_update,
    _prior_entropy_compute,
    _prior_entropy_update,
)
from lightning_entropy_vae.functional.stationary import (
    _squared_residual_update,
    fixed_decoder_variance,
)
from lightning_entropy_vae.metrics._base import SumAndCountMetric, merge_inputs, rank_zero_warn

__all__ = ["DecoderEntropy", "EncoderEntropy", "PriorEntropy"]


def __getattr__(name: str) -> Any:
    """``EntropySumELBO`` lived here up to 0.1.0 (now :mod:`.entropy_sum`): old imports and pickles still find it."""
    if name == "EntropySumELBO":
        from lightning_entropy_vae.metrics.entropy_sum import EntropySumELBO

        return EntropySumELBO
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _encoder_of(owner: str, kw: Mapping[str, Any]) -> _in.Encoder:
    return _in.encoder(kw.get("enc_mean"), kw.get("enc_logvar"), kw.get("posterior"), owner=owner, given=kw)


def _decoder_of(owner: str, kw: Mapping[str, Any], d: _in.Data) -> _in.Decoder:
    return _in.decoder(kw.get("dec_mean"), kw.get("dec_logvar"), kw.get("likelihood"), d, owner=owner,
                       data_dim=kw.get("data_dim"), given=kw)


def _prior_logdet(metric: SumAndCountMetric, p: _in.Prior, like: Tensor, per_sample: bool) -> Tensor:
    """The prior's log-determinant statistic; a standard normal's is a cached zero (no op per update)."""
    if p.logvar is None and p.dist is None:
        return metric._last_constants[1][-1]  # set by _accumulate before it asks for the statistics
    return _prior_entropy_update(p, like, per_sample)


def _warn_if_fixed_variance(metric: Any, dec_logvar: Any) -> None:
    """Warn once when a constant decoder log-variance without gradient is seen in training mode."""
    if metric.warn_fixed_variance and not metric._warned_fixed and metric.training and \
            fixed_decoder_variance(dec_logvar):
        metric._warned_fixed = True
        rank_zero_warn(
            f"{type(metric).__name__}: `dec_logvar` does not require grad, so the decoder variance looks fixed"
            " (VAE-0 / plain MSE training). The ELBO of such a model does not converge to the entropy sum:"
            " their gap stays 0.5*(D - R/sigma^2) per point. Use EntropySumELBO(profile_decoder_variance=True)"
            " for the entropy sum at the optimal variance sigma^2* = mean squared residual ('sum_profiled')."
            " If the variance is learned and this is an evaluation without gradients, call `.eval()` on the"
            " metric or pass warn_fixed_variance=False."
        )


def _squared_residual(owner: str, kw: Mapping[str, Any], d: _in.Data, dec: _in.Decoder) -> Tensor:
    """Per-sample ``||x - mu(z)||^2`` (mean over z samples), or a given ``dec_sq_residual`` (B,)."""
    given = kw.get("dec_sq_residual")
    if given is not None:
        return as_float_tensor("dec_sq_residual", given)
    if d.x is None or dec.mean is None:
        raise missing_inputs_error(
            owner + " with profile_decoder_variance=True", "`x` and `dec_mean` (or `dec_sq_residual`)", kw
        )
    return _squared_residual_update(d, dec.mean)


class _LogdetMetric(SumAndCountMetric):
    """One entropy: state ``[log-det sum, dimensions spanned, count, skipped]``; compute by its ``_compute``."""

    higher_is_better = None
    _compute_fn: Any = None

    def __init__(self, nan_strategy: str = "skip", **kwargs: Any) -> None:
        super().__init__(nan_strategy, **kwargs)
        self._add_sum_states(2)

    def _add_logdet(self, statistic: Callable[[bool], Tensor], dim: int, batch: int, like: Tensor,
                    weight: Tensor | None) -> None:
        self._accumulate(lambda per_sample: [statistic(per_sample)], (float(dim),), batch, like, weight)

    def compute(self) -> Tensor:
        (logdet, dims), count = self._totals()
        return type(self)._compute_fn(logdet, count, dims / count)

    def plot(self, val: Any = None, ax: Any = None) -> Any:
        """Plot the value (or a list of values) with TorchMetrics' plotting helper."""
        return self._plot(val, ax)


class EncoderEntropy(_LogdetMetric):
    r"""Average encoder entropy :math:`\frac1N\sum_n\mathcal{H}[q(z|x_n)]`, nats per data point.

    .. math::

        \frac1N \sum_n \sum_h \tfrac12\log\!\left(2\pi e\,\tau_h^2(x_n)\right)

    ``update`` takes the vocabulary (a step's output dict, ``VAEOutput``, or keywords) and uses
    ``enc_logvar`` of shape ``(B, H)`` or a Gaussian ``posterior``; other keys are ignored. An optional
    ``weight`` ``(B,)`` weighs the points (0 drops a point, NaN-safe).

    Args:
        nan_strategy: ``"skip"`` (default) skips and counts non-finite batches and warns at ``compute()``;
            ``"ignore"`` skips them silently; ``"error"`` raises.
        kwargs: passed to :class:`torchmetrics.Metric`.

    Example (a plain PyTorch loop):
        >>> metric = EncoderEntropy()
        >>> for _ in range(3):
        ...     metric.update(enc_logvar=torch.zeros(16, 2))
        >>> metric.compute()
        tensor(2.8379)
    """

    _prefix = "encoder_entropy"
    _compute_fn = staticmethod(_encoder_entropy_compute)

    def update(self, outputs: Mapping[str, Any] | None = None, /, *, weight: Tensor | None = None,
               **kwargs: Any) -> None:
        kw = merge_inputs("EncoderEntropy.update()", outputs, kwargs)
        enc = _encoder_of("EncoderEntropy.update()", kw)
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
    ``prior`` (default: N(0, I)), and ``enc_logvar``/``enc_mean``/``posterior`` for H and the batch size.

    Example:
        >>> metric = PriorEntropy()
        >>> metric.update(enc_logvar=torch.zeros(16, 2), prior_logvar=torch.zeros(2))
        >>> metric.compute()
        tensor(2.8379)
    """

    _prefix = "prior_entropy"
    _compute_fn = staticmethod(_prior_entropy_compute)

    def update(self, outputs: Mapping[str, Any] | None = None, /, *, weight: Tensor | None = None,
               **kwargs: Any) -> None:
        kw = merge_inputs("PriorEntropy.update()", outputs, kwargs)
        enc = _encoder_of("PriorEntropy.update()", kw)
        batch, latent_dim = enc.logvar.shape
        p = _in.prior(kw.get("prior_logvar"), kw.get("prior"), latent_dim=latent_dim, batch=batch,
                     check_rows=False)
        if self.nan_strategy == "error":
            self._check_finite({"prior_logvar": p.logvar}, weight)
        self._add_logdet(partial(_prior_logdet, self, p, enc.logvar), latent_dim, batch, enc.logvar, weight)


class DecoderEntropy(_LogdetMetric):
    r"""Expected decoder entropy :math:`\frac1N\sum_n\mathbb{E}_{q(z|x_n)}\mathcal{H}[p(x|z)]`, nats per point.

    .. math::

        \frac1N \sum_n \frac1S\sum_s \sum_d \tfrac12\log\!\left(2\pi e\,\sigma_d^2(z_{n,s})\right)

    ``update`` uses ``dec_logvar`` (``()``, ``(D,)``, ``(B, D)``, ``(B, 1)`` or ``(S, B, D)``) with ``x`` or
    ``dec_mean`` for B and D, or a Gaussian ``likelihood``.

    Args:
        nan_strategy: ``"skip"`` (default), ``"ignore"`` or ``"error"``.
        warn_fixed_variance: warn once when ``dec_logvar`` does not require grad in training mode.

    Example:
        >>> metric = DecoderEntropy(warn_fixed_variance=False)
        >>> metric.update(dec_logvar=torch.tensor(0.0), x=torch.zeros(16, 3))
        >>> metric.compute()
        tensor(4.2568)
    """

    _prefix = "decoder_entropy"
    _compute_fn = staticmethod(_decoder_entropy_compute)

    def __init__(self, nan_strategy: str = "skip", warn_fixed_variance: bool = True, **kwargs: Any) -> None:
        super().__init__(nan_strategy, **kwargs)
        self.warn_fixed_variance = bool(warn_fixed_variance)
        self._warned_fixed = False

    def update(self, outputs: Mapping[str, Any] | None = None, /, *, weight: Tensor | None = None,
               **kwargs: Any) -> None:
        kw = merge_inputs("DecoderEntropy.update()", outputs, kwargs)
        dec = _decoder_of("DecoderEntropy.update()", kw, _in.data(kw.get("x")))
        _warn_if_fixed_variance(self, kw.get("dec_logvar"))
        if self.nan_strategy == "error":
            self._check_finite({"dec_logvar": dec.logvar, "dec_mean": dec.mean}, weight)
        like = dec.logvar if dec.logvar is not None else as_float_tensor("likelihood.mean", dec.dist.mean)
        self._add_logdet(partial(_decoder_entropy_update, dec), dec.data_dim, dec.batch_size, like, weight)
