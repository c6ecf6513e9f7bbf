"""What the entropy metrics read from the vocabulary, shared by :mod:`.entropy` and :mod:`.entropy_sum` (private)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from lightning_entropy_vae.functional import _inputs as _in
from lightning_entropy_vae.functional._checks import DISCRETE_DECODER_KEYS, as_float_tensor, missing_inputs_error
from lightning_entropy_vae.functional.entropy import _prior_entropy_update
from lightning_entropy_vae.functional.stationary import _squared_residual_update, fixed_decoder_variance
from lightning_entropy_vae.metrics._base import SumAndCountMetric, rank_zero_warn


def encoder_of(owner: str, kw: Mapping[str, Any]) -> _in.Encoder:
    return _in.encoder(kw.get("enc_mean"), kw.get("enc_logvar"), kw.get("posterior"), owner=owner, given=kw)


def decoder_inputs(kw: Mapping[str, Any], dec: _in.Decoder) -> dict[str, Any]:
    """The decoder's tensors under the names they were given, for the ``nan_strategy="error"`` check."""
    if dec.params is None:
        return {"dec_logvar": dec.logvar, "dec_mean": dec.mean}
    name = next((key for key in DISCRETE_DECODER_KEYS if kw.get(key) is not None), "likelihood")
    return {name: dec.params}


def prior_logdet(metric: SumAndCountMetric, p: _in.Prior, like: Tensor, per_sample: bool) -> Tensor:
    """The prior's log-determinant statistic; a standard normal's is a cached zero (no op per update)."""
    if p.logvar is None and p.dist is None:
        return metric._last_constants[1][-1]  # set by _accumulate before it asks for the statistics
    return _prior_entropy_update(p, like, per_sample)


def warn_if_fixed_variance(metric: Any, dec_logvar: Any) -> None:
    """Warn once when a constant decoder log-variance without gradient is seen in training mode."""
    if not metric.warn_fixed_variance or metric._warned_fixed or not metric.training:
        return
    if isinstance(dec_logvar, Tensor) and dec_logvar.requires_grad:  # a learned variance: the common case
        return
    if fixed_decoder_variance(dec_logvar):
        metric._warned_fixed = True
        rank_zero_warn(
            f"{type(metric).__name__}: `dec_logvar` does not require grad, so the decoder variance looks fixed"
            " (VAE-0, a squared-error loss; a BCE-trained model should pass `dec_logits` or `dec_probs` instead of"
            " `dec_mean` and `dec_logvar`). The ELBO of such a model does not converge to the entropy sum:"
            " their gap stays 0.5*(D - R/sigma^2) per point. Use EntropySumELBO(profile_decoder_variance=True)"
            " for the entropy sum at the optimal variance sigma^2* = mean squared residual ('sum_profiled')."
            " If the variance is learned and this is an evaluation without gradients, call `.eval()` on the"
            " metric or pass warn_fixed_variance=False."
        )


def squared_residual(owner: str, kw: Mapping[str, Any], d: _in.Data, dec: _in.Decoder) -> Tensor:
    """Per-sample ``||x - mu(z)||^2`` (mean over z samples), or a given ``dec_sq_residual`` (B,)."""
    given = kw.get("dec_sq_residual")
    if given is not None:
        return as_float_tensor("dec_sq_residual", given)
    if d.x is None or dec.mean is None:
        raise missing_inputs_error(
            owner + " with profile_decoder_variance=True", "`x` and `dec_mean` (or `dec_sq_residual`)", kw
        )
    return _squared_residual_update(d, dec.mean)
