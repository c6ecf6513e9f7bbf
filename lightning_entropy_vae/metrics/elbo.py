r"""TorchMetrics metrics for the sampled minibatch ELBO, averaged over data points: of any decoder, or Gaussian."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch  # noqa: F401  (doctest namespace)
from torch import Tensor

from lightning_entropy_vae.functional import _inputs as _in
from lightning_entropy_vae.functional._checks import (
    DISCRETE_DECODER_KEYS,
    as_float_tensor,
    check_batch,
    missing_inputs_error,
)
from lightning_entropy_vae.functional.elbo import _elbo_update, _gaussian_elbo_update, _require_kind
from lightning_entropy_vae.metrics._base import SumAndCountMetric, merge_inputs
from lightning_entropy_vae.metrics._entropy_inputs import decoder_inputs

__all__ = ["ELBO", "GaussianELBO"]

_INPUTS = ("elbo", "x", "enc_mean", "enc_logvar", "dec_mean", "dec_logvar", *DISCRETE_DECODER_KEYS, "prior_logvar",
           "posterior", "prior", "likelihood")


class _MeanELBO(SumAndCountMetric):
    """The mean of per-point ELBOs: a given ``elbo`` ``(B,)``, or one computed from the pieces, of any decoder or
    (``_gaussian``) of a Gaussian one. States ``{prefix}_sum``, ``{prefix}_count``, ``{prefix}_skipped``."""

    higher_is_better = True
    _inputs = _INPUTS
    _gaussian: bool

    def __init__(self, nan_strategy: str = "skip", **kwargs: Any) -> None:
        super().__init__(nan_strategy, **kwargs)
        self._add_sum_states()

    def _sum_layout(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        return (("sum", ()),)

    def update(self, outputs: Mapping[str, Any] | None = None, /, *, weight: Tensor | None = None,
               **kwargs: Any) -> None:
        owner = f"{type(self).__name__}.update()"
        kw = merge_inputs(owner, outputs, kwargs, self._inputs)
        elbo = kw.get("elbo")
        if elbo is not None:
            elbo = as_float_tensor("elbo", elbo)
            if elbo.dim() != 1:
                raise ValueError(f"Expected `elbo` of shape (B,) (one ELBO per sample), but got {tuple(elbo.shape)}.")
            if self.nan_strategy == "error":
                self._check_finite({"elbo": elbo}, weight)
        else:
            elbo = self._elbo_from_pieces(owner, kw, weight)
        self._accumulate(lambda per_sample: [elbo if per_sample else elbo.sum()], (), elbo.shape[0], elbo, weight)

    def _elbo_from_pieces(self, owner: str, kw: Mapping[str, Any], weight: Tensor | None) -> Tensor:
        likelihood, class_logits = kw.get("likelihood"), kw.get("dec_class_logits")
        # a categorical decoder's integer `x` holds class indices (is_categorical asked about a likelihood only)
        d = _in.data(kw.get("x"), classes=class_logits is not None
                     or (likelihood is not None and _in.is_categorical(None, likelihood)))
        if d.x is None:
            raise missing_inputs_error(owner, "`elbo` (B,), or `x` with the encoder and decoder statistics", kw)
        enc = _in.encoder(kw.get("enc_mean"), kw.get("enc_logvar"), kw.get("posterior"), owner=owner, given=kw)
        if enc.mean is None:
            raise missing_inputs_error(owner, "`enc_mean` and `enc_logvar` (or a `posterior`)", kw)
        batch, latent_dim = enc.logvar.shape
        p = _in.prior(kw.get("prior_logvar"), kw.get("prior"), latent_dim=latent_dim, batch=batch,
                     check_rows=False)
        mean, logvar = kw.get("dec_mean"), kw.get("dec_logvar")
        logits, probs = kw.get("dec_logits"), kw.get("dec_probs")
        if not self._gaussian and likelihood is None and logits is None and probs is None and class_logits is None \
                and mean is None and logvar is None:  # no decoder: name them all (GaussianELBO names its own)
            raise missing_inputs_error(owner, "a decoder (`dec_mean` and `dec_logvar`, `dec_logits`, `dec_probs`,"
                                              " `dec_class_logits` or a `likelihood`)", kw)
        dec = _in.decoder(mean, logvar, likelihood, d, owner=owner, need_mean=True, given=kw, dec_logits=logits,
                          dec_class_logits=class_logits, dec_probs=probs)
        if self._gaussian and dec.kind != "gaussian":
            try:
                _require_kind(owner, dec, ("gaussian",))
            except ValueError as err:
                raise ValueError(f"{err} As a metric: ELBO, which reads the decoder the same way.") from None
        check_batch(owner, encoder=batch, decoder=dec.batch_size, x=d.batch_size)
        if self.nan_strategy == "error":
            self._check_finite({"x": d.x, "enc_mean": enc.mean, "enc_logvar": enc.logvar, **decoder_inputs(kw, dec),
                                "prior_logvar": p.logvar}, weight)
        return _gaussian_elbo_update(enc, p, dec, d) if self._gaussian else _elbo_update(enc, p, dec, d)

    def compute(self) -> Tensor:
        count = self._count()
        return self._state("sum") / count


class ELBO(_MeanELBO):
    r"""Mean minibatch ELBO over data points, of whatever decoder the inputs give: the user's ``elbo`` or one
    computed from the pieces (:func:`~lightning_entropy_vae.functional.elbo`).

    .. math::

        \frac1N\sum_n \left[\frac1S\sum_s\log p(x_n|z_{n,s}) - \mathrm{KL}(q(z|x_n)\,\|\,p(z))\right]

    with :math:`\log p(x|z)` the log-density of a Gaussian decoder, the log-probability of a Bernoulli one
    (:math:`\sum_d x_d\eta_d - \operatorname{softplus}(\eta_d)` from logits :math:`\eta`) or of a categorical one
    (:math:`\sum_d \log\operatorname{softmax}(\eta_d)_{x_d}`).

    ``update`` takes the vocabulary. If ``elbo`` (shape ``(B,)``) is present it is used as is (report
    the beta = 1 ELBO there when training with beta != 1 or KL annealing); otherwise the ELBO is computed from ``x``,
    ``enc_mean`` and ``enc_logvar`` ``(B, H)`` (or a ``posterior``), ``prior_logvar`` ``(H,)`` (or a ``prior``;
    default N(0, I)) and one decoder: ``dec_mean`` ``(B, *data)`` or ``(S, B, *data)`` with ``dec_logvar``
    (Gaussian); ``dec_logits`` or ``dec_probs`` the shape of ``dec_mean`` (Bernoulli, ``x`` in [0, 1]);
    ``dec_class_logits`` ``(B, *data, C)`` or ``(S, B, *data, C)`` (categorical, ``x`` class indices ``(B, *data)``
    of an integer dtype or one-hot vectors ``(B, *data, C)``); or a ``likelihood`` (Gaussian, ``Bernoulli``,
    ``Categorical``, ``OneHotCategorical``, ``ContinuousBernoulli``). The other names of the vocabulary (and
    ``loss``) are ignored, any other key is an error. An optional ``weight`` ``(B,)`` weighs the points (0 drops a
    point, NaN-safe). States: ``elbo_sum``, ``elbo_count``, ``elbo_skipped``.

    Args:
        nan_strategy: ``"skip"`` (default) skips and counts non-finite batches and warns at ``compute()``;
            ``"ignore"`` skips them silently; ``"error"`` raises.
        kwargs: passed to :class:`torchmetrics.Metric`.

    Raises:
        TypeError: a key or keyword that is neither a name of the vocabulary nor ``loss`` (with the closest name), or
            an unsupported ``likelihood``.
        ValueError: inputs of the wrong shape, missing inputs, no decoder or two, or non-finite inputs with
            ``nan_strategy="error"``.

    Example (a plain PyTorch loop; an encoder equal to the prior, so the KL is 0):
        >>> metric = ELBO()
        >>> enc = {"enc_mean": torch.zeros(2, 1), "enc_logvar": torch.zeros(2, 1)}
        >>> metric.update(x=torch.zeros(2, 3), dec_logits=torch.zeros(2, 3), **enc)  # 3 fair coins: -3 log 2
        >>> metric.update(x=torch.tensor([[2], [0]]), dec_class_logits=torch.zeros(2, 1, 4), **enc)  # -log 4
        >>> metric.compute()  # (2 * -2.0794 + 2 * -1.3863) / 4
        tensor(-1.7329)
        >>> metric.update(elbo=torch.tensor([-1.0, -3.0]))  # a given per-point ELBO, of any decoder
        >>> metric.compute()
        tensor(-1.8219)
    """

    _prefix = "elbo"
    _gaussian = False


class GaussianELBO(_MeanELBO):
    r"""Mean minibatch ELBO over data points of a Gaussian decoder: the user's ``elbo`` or one computed from the
    pieces (:func:`~lightning_entropy_vae.functional.gaussian_elbo`); :class:`ELBO` takes any decoder.

    .. math::

        \frac1N\sum_n \left[\frac1S\sum_s\log\mathcal{N}(x_n;\mu(z_{n,s}),\sigma^2(z_{n,s}))
        - \mathrm{KL}(q(z|x_n)\,\|\,p(z))\right]

    ``update`` takes the vocabulary. If ``elbo`` (shape ``(B,)``) is present it is used as is (report
    the beta = 1 ELBO there when training with beta != 1 or KL annealing); otherwise the Gaussian
    ELBO is computed from ``x``, ``enc_mean``, ``enc_logvar``, ``dec_mean``, ``dec_logvar`` and
    ``prior_logvar`` (or ``posterior``/``prior``/``likelihood``). The other names of the vocabulary (and
    ``loss``) are ignored, any other key is an error. An optional ``weight`` ``(B,)`` weighs the points (0 drops
    a point, NaN-safe). States: ``gaussian_elbo_sum``, ``gaussian_elbo_count``, ``gaussian_elbo_skipped``.

    Args:
        nan_strategy: ``"skip"`` (default), ``"ignore"`` or ``"error"``.
        kwargs: passed to :class:`torchmetrics.Metric`.

    Raises:
        TypeError: a key or keyword that is neither a name of the vocabulary nor ``loss`` (with the closest name).
        ValueError: inputs of the wrong shape, missing inputs, a Bernoulli or categorical decoder (``dec_logits``,
            ``dec_probs``, ``dec_class_logits`` or such a ``likelihood``, without ``elbo``: the message names the
            function for it and :class:`ELBO`), or non-finite inputs with ``nan_strategy="error"``.

    Example (a plain PyTorch loop):
        >>> metric = GaussianELBO()
        >>> metric.update(elbo=torch.tensor([-1.0, -3.0]))
        >>> metric.update(x=torch.zeros(2, 3), enc_mean=torch.zeros(2, 1), enc_logvar=torch.zeros(2, 1),
        ...               dec_mean=torch.zeros(2, 3), dec_logvar=torch.tensor(0.0))
        >>> metric.compute()  # (-1 - 3 - 2 * 2.7568) / 4
        tensor(-2.3784)
    """

    _prefix = "gaussian_elbo"
    _gaussian = True
