r"""The Gaussian ELBO behind a squared-error VAE loss, and the Bernoulli (BCE) log-likelihood.

A VAE trained with a squared-error reconstruction loss is a Gaussian VAE with a fixed decoder variance. With a
per-point loss :math:`w_r \lVert x - \hat x\rVert^2 + w_k \mathrm{KL}` (sums over the D data and H latent
dimensions; a mean over them divides by D or H),

.. math::

    \text{loss} = w_k \Big(\frac{\lVert x - \hat x\rVert^2}{2\sigma^2} + \mathrm{KL}\Big),
    \qquad \sigma^2 = \frac{w_k}{2 w_r},
    \qquad \mathrm{ELBO} = -\frac{\text{loss}}{w_k} - \frac{D}{2}\log(2\pi\sigma^2).

So the loss is ``scale`` :math:`= w_k` times :math:`-\mathrm{ELBO}` up to a constant: a beta-VAE with a
squared error is a beta = 1 Gaussian VAE with :math:`\sigma^2 = \beta/2`. Return ``log(sigma^2)`` as
``dec_logvar`` (a tensor that does not require grad) and the callback logs the ELBO of this model, its entropy
sum, and ``sum_profiled`` (the entropy sum at the best fixed variance).

Conventions (``reconstruction``): ``"sum"`` (:math:`\lVert x - \hat x\rVert^2`, ``F.mse_loss(...,
reduction="sum")`` per point), ``"half_sum"`` (:math:`\tfrac12\lVert x - \hat x\rVert^2`, pythae's ``mse``),
``"mean"`` (averaged over D, ``F.mse_loss(x_hat, x)``); the KL summed over H (``kl="sum"``) or averaged
(``kl="mean"``, lightning-bolts' ``kl.mean()``), times ``kl_weight``. lightning-bolts' VAE
(``mse_loss`` mean + 0.1 x KL mean) has :math:`\sigma^2 = D/(20H)` and a loss of :math:`-\mathrm{ELBO}/(10H)`
up to a constant.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from lightning_entropy_vae.functional._discrete import bernoulli_cross

__all__ = ["MSE_RECONSTRUCTIONS", "MSEConvention", "bernoulli_log_likelihood", "mse_convention"]

#: Squared-error conventions and the weight :math:`w_r` of :math:`\lVert x - \hat x\rVert^2` in each (D: data dim).
MSE_RECONSTRUCTIONS = ("sum", "half_sum", "mean")
#: Names of cross-entropy losses, which train Bernoulli or categorical decoders (no decoder variance).
_CROSS_ENTROPIES = ("bce", "binary_cross_entropy", "bernoulli", "cross_entropy", "categorical")


class MSEConvention(NamedTuple):
    """The Gaussian VAE a squared-error loss trains (see :func:`mse_convention`)."""

    #: the fixed decoder variance :math:`\sigma^2`
    dec_var: float
    #: :math:`\log\sigma^2`: return it as ``dec_logvar``
    dec_logvar: float
    #: per point, loss = scale x (-ELBO - offset)
    scale: float
    #: nats per point: ELBO = -loss / scale - offset (the Gaussian's normaliser, :math:`\tfrac D2\log 2\pi\sigma^2`)
    offset: float

    def elbo(self, loss: Tensor | float) -> Tensor | float:
        """The ELBO (nats per point) of a loss per data point (a batch mean, or a batch sum divided by B)."""
        return -loss / self.scale - self.offset


def mse_convention(reconstruction: str = "sum", *, data_dim: int, latent_dim: int | None = None, kl: str = "sum",
                   kl_weight: float = 1.0) -> MSEConvention:
    r"""The fixed decoder variance and nats offset of a squared-error VAE loss: which Gaussian ELBO it trains.

    Args:
        reconstruction: ``"sum"``, ``"half_sum"`` or ``"mean"`` (over the D data dimensions) squared error.
        data_dim: D, the number of data dimensions (C x h x w for images).
        latent_dim: H; needed for ``kl="mean"``.
        kl: ``"sum"`` (over the H latents) or ``"mean"``.
        kl_weight: the weight of the KL term (beta; lightning-bolts' ``kl_coeff``).

    Returns:
        :class:`MSEConvention` ``(dec_var, dec_logvar, scale, offset)``: per point,
        ``ELBO = -loss / scale - offset``.

    Raises:
        ValueError: an unknown convention (a cross-entropy loss: a Bernoulli or categorical decoder, which has no
            decoder variance), a non-positive size or weight, ``kl="mean"`` without ``latent_dim``.

    Example:
        >>> from lightning_entropy_vae.functional import mse_convention
        >>> mse_convention("half_sum", data_dim=784)  # pythae: 0.5 * ||x - x_hat||^2 + KL
        MSEConvention(dec_var=1.0, dec_logvar=0.0, scale=1.0, offset=720.4...)
        >>> bolts = mse_convention("mean", data_dim=784, latent_dim=16, kl="mean", kl_weight=0.1)
        >>> bolts.dec_var, bolts.scale  # sigma^2 = D / (20 H), loss = -ELBO / (10 H) + const.
        (2.45, 0.00625)
    """
    if reconstruction in _CROSS_ENTROPIES:
        raise ValueError(
            f"Expected a squared-error `reconstruction` {MSE_RECONSTRUCTIONS}, but got {reconstruction!r}: the decoder"
            " variance of mse_convention() is defined for Gaussian decoders only. A cross-entropy loss trains a"
            " Bernoulli or categorical decoder: return `dec_logits` or `dec_probs` (or `dec_class_logits`) and use"
            " bernoulli_elbo() (or categorical_elbo()) for its ELBO."
        )
    if reconstruction not in MSE_RECONSTRUCTIONS:
        raise ValueError(f"Expected `reconstruction` to be one of {MSE_RECONSTRUCTIONS}, but got {reconstruction!r}.")
    if kl not in ("sum", "mean"):
        raise ValueError(f"Expected `kl` to be 'sum' or 'mean', but got {kl!r}.")
    _positive_int("data_dim", data_dim)
    if kl == "mean":
        if latent_dim is None:
            raise ValueError("Expected `latent_dim` (H) with kl='mean' (the KL averaged over H), but got None.")
        _positive_int("latent_dim", latent_dim)
    if isinstance(kl_weight, bool) or not isinstance(kl_weight, (int, float)) or not kl_weight > 0:
        raise ValueError(f"Expected `kl_weight` to be a positive number, but got {kl_weight!r}.")
    w_rec = {"sum": 1.0, "half_sum": 0.5, "mean": 1.0 / data_dim}[reconstruction]
    w_kl = float(kl_weight) / (latent_dim if kl == "mean" else 1)
    var = w_kl / (2.0 * w_rec)
    return MSEConvention(dec_var=var, dec_logvar=math.log(var), scale=w_kl,
                         offset=0.5 * data_dim * math.log(2.0 * math.pi * var))


def bernoulli_log_likelihood(*, x: Tensor, probs: Tensor, eps: float = 1e-6) -> Tensor:
    r"""Per-sample Bernoulli log-likelihood :math:`\sum_d x_d \log p_d + (1 - x_d)\log(1 - p_d)`: minus a BCE loss
    summed over the data dimensions, for ``x`` in [0, 1] and probabilities clamped to [eps, 1 - eps].

    Args:
        x: data (B, *data) in [0, 1].
        probs: decoder probabilities, the shape of ``x``.
        eps: clamp of the probabilities (``F.binary_cross_entropy`` clamps its logs at -100).

    Returns:
        Tensor (B,), in the wider of the inputs' dtype and float32.

    Example:
        >>> import torch
        >>> x, p = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.8, 0.3]])
        >>> bernoulli_log_likelihood(x=x, probs=p)
        tensor([-0.5798])
        >>> torch.distributions.Bernoulli(probs=p).log_prob(x).sum(-1)
        tensor([-0.5798])
    """
    dtype = torch.promote_types(torch.promote_types(x.dtype, probs.dtype), torch.float32)
    x, p = x.to(dtype), probs.to(dtype).clamp(eps, 1.0 - eps)
    return bernoulli_cross(x, 1.0 - x, p.log(), torch.log1p(-p)).reshape(x.shape[0], -1).sum(-1)


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Expected `{name}` to be a positive int, but got {value!r}.")
