r"""The sampled ELBO from the same pieces: reconstruction log-likelihood minus KL; its gap to the sum.

.. math::

    \mathcal{F}(x) = \frac1S\sum_{s}\log\mathcal{N}\!\left(x;\,\mu(z_s),\,\operatorname{diag}\sigma^2(z_s)\right)
    - \mathrm{KL}\!\left(q(z|x)\,\|\,p(z)\right),\qquad z_s \sim q(z|x)

for a Gaussian decoder; :func:`elbo` takes any decoder the package knows (the Bernoulli and categorical ones of
:mod:`.discrete` too) and :func:`gaussian_elbo` refuses a non-Gaussian one.

Each quantity has an ``_update`` returning its per-sample values (its sufficient statistic: the mean
over points is their sum over the count) and the public function reduces them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.distributions import MultivariateNormal, kl_divergence

from lightning_entropy_vae.functional import _discrete
from lightning_entropy_vae.functional import _inputs as _in
from lightning_entropy_vae.functional._checks import (
    LOG_2PI,
    as_float_tensor,
    check_batch,
    check_keywords,
    missing_inputs_error,
)
from lightning_entropy_vae.functional.entropy import Reduction, _check_reduction, _per_point

__all__ = ["elbo", "gaussian_elbo", "gaussian_kl", "gaussian_log_likelihood", "relative_gap"]


def _log_likelihood_update(dec: _in.Decoder, d: _in.Data) -> Tensor:
    """Per-sample log-likelihood of x (B,), averaged over the S z-samples."""
    if dec.params is not None:  # Bernoulli or categorical
        x = d.x
        if dec.layout == "categorical" and d.raw.is_floating_point():  # one-hot or probability vectors
            x = d.raw.reshape(d.batch_size, -1, d.raw.shape[-1])
        return _discrete.log_likelihood(dec.layout, dec.params, dec.lead, x)
    if dec.layout == "dist":
        target = d.raw if dec.lead == 1 else d.raw.unsqueeze(0)
        ll = as_float_tensor("likelihood.log_prob(x)", dec.dist.log_prob(target))
        ll = _in.sum_to(ll, dec.lead)
        return ll.mean(0) if dec.lead == 2 else ll
    sq = (d.x - dec.mean).square()  # (B, D) or (S, B, D)
    lv, dim = dec.logvar, dec.data_dim
    if dec.layout == "scalar":
        ll = -0.5 * (dim * (LOG_2PI + lv) + sq.sum(-1) * torch.exp(-lv))
    elif dec.layout == "per_dim":
        ll = -0.5 * (dim * LOG_2PI + lv.sum() + (sq * torch.exp(-lv)).sum(-1))
    else:  # (B, D), (S, B, D), or (B, 1) / (S, B, 1): one variance shared by the D dimensions
        width = dim if lv.shape[-1] == 1 else 1
        ll = -0.5 * (dim * LOG_2PI + lv.sum(-1) * width + (sq * torch.exp(-lv)).sum(-1))
    return ll.mean(0) if ll.dim() == 2 else ll


def _kl_update(enc: _in.Encoder, p: _in.Prior) -> tuple[Tensor, Tensor]:
    r"""Per-point, per-latent sufficient statistics of the KL between the diagonal marginals of q(z|x) and p(z).

    ``(ratio, scaled_sq)``, each (B, H): :math:`\tau^2/\alpha^2` and :math:`(\nu - m)^2/\alpha^2`. With the
    log-variances, :func:`_kl_compute` gives the KL of any sum of them. ``prior_logvar`` may be ``(H,)`` or
    ``(B, H)``; ``None`` means N(0, I).
    """
    lvq, lvp = enc.logvar, p.logvar
    diff = enc.mean if p.mean is None else enc.mean - p.mean
    if lvp is None:  # N(0, I): alpha^2 = 1
        return torch.exp(lvq), diff.square()
    return torch.exp(lvq - lvp), diff.square() * torch.exp(-lvp)


def _kl_compute(count: Any, logvar: Any, prior_logvar: Any, ratio: Any, scaled_sq: Any) -> Any:
    r"""The KL from sums over ``count`` (point, latent) terms of :math:`\log\tau^2`, :math:`\log\alpha^2` and
    the two statistics of :func:`_kl_update`:

    .. math::

        \tfrac12\left(\sum \tau^2/\alpha^2 + \sum (\nu - m)^2/\alpha^2 - c - \sum\log\tau^2 + \sum\log\alpha^2\right)

    Elementwise: per point and latent (``count`` 1), summed over the latents of a point (``count`` H),
    over the points of a latent (``count`` N).
    """
    return 0.5 * (ratio + scaled_sq - count - logvar + prior_logvar)


def _kl_per_latent(enc: _in.Encoder, p: _in.Prior) -> Tensor:
    """Per-point, per-latent KL (B, H) of diagonal marginals."""
    ratio, scaled_sq = _kl_update(enc, p)
    return _kl_compute(1, enc.logvar, 0.0 if p.logvar is None else p.logvar, ratio, scaled_sq)


def _as_mvn(mean: Tensor, logvar: Tensor, dist: Any) -> MultivariateNormal:
    if dist is not None and not _in.is_diagonal(dist):
        return MultivariateNormal(dist.mean, covariance_matrix=dist.covariance_matrix)
    return MultivariateNormal(mean, covariance_matrix=torch.diag_embed(logvar.exp()))


def _kl_per_sample_update(enc: _in.Encoder, p: _in.Prior) -> Tensor:
    """Per-sample KL (B,): the sum of :func:`_kl_update` for diagonal q and p, the general Gaussian KL else."""
    if enc.full is None and (p.dist is None or _in.is_diagonal(p.dist)):
        return _kl_per_latent(enc, p).sum(-1)
    prior_mean = p.mean if p.mean is not None else torch.zeros_like(enc.logvar[0])
    prior_logvar = p.logvar if p.logvar is not None else torch.zeros_like(enc.logvar[0])
    return kl_divergence(_as_mvn(enc.mean, enc.logvar, enc.full), _as_mvn(prior_mean, prior_logvar, p.dist))


def _elbo_update(enc: _in.Encoder, p: _in.Prior, dec: _in.Decoder, d: _in.Data) -> Tensor:
    """Per-sample ELBO (B,) of any decoder: log-likelihood minus KL."""
    return _log_likelihood_update(dec, d) - _kl_per_sample_update(enc, p)


def _require_kind(owner: str, dec: _in.Decoder, kinds: tuple[str, ...]) -> None:
    """A ``ValueError`` naming the function to call when ``owner`` computes the ELBO of other decoder kinds."""
    if dec.kind in kinds:
        return
    wanted = " or ".join(_in.KIND_NAMES[k][0] for k in kinds)
    name, inputs, function = _in.KIND_NAMES[dec.kind]
    call = "elbo()" if function == "elbo" else f"{function}() for it, or elbo()"
    raise ValueError(
        f"{owner} computes the ELBO of a {wanted} decoder, but got a {name} decoder ({inputs}). Call {call}, which"
        " reads the decoder from the inputs."
    )


def _gaussian_elbo_update(enc: _in.Encoder, p: _in.Prior, dec: _in.Decoder, d: _in.Data) -> Tensor:
    """Per-sample Gaussian ELBO (B,): log-likelihood minus KL; a ``ValueError`` for another decoder."""
    _require_kind("gaussian_elbo()", dec, ("gaussian",))
    return _elbo_update(enc, p, dec, d)


def _elbo_inputs(owner: str, x: Any, enc_mean: Any, enc_logvar: Any, prior_logvar: Any, posterior: Any, prior: Any,
                 likelihood: Any, decoder: dict[str, Any], needed: str | None = None,
                 ) -> tuple[_in.Encoder, _in.Prior, _in.Decoder, _in.Data]:
    """The checked inputs of an ELBO: encoder, prior, decoder (from the ``decoder`` keywords) and data.

    ``needed``: the decoder inputs to name when none is given (else the Gaussian decoder's message)."""
    d = _in.data(x, classes=_in.is_categorical(decoder.get("dec_class_logits"), likelihood))
    if d.x is None and likelihood is None:
        raise missing_inputs_error(owner, "`x`")
    if d.x is None:
        raise missing_inputs_error(owner, "`x` (the data the `likelihood` scores)")
    enc = _in.encoder(enc_mean, enc_logvar, posterior, owner=owner)
    if enc.mean is None:
        raise missing_inputs_error(owner, "`enc_mean` and `enc_logvar` (or a `posterior`)")
    p = _in.prior(prior_logvar, prior, latent_dim=enc.logvar.shape[-1], batch=enc.logvar.shape[0])
    if needed is not None and likelihood is None and all(v is None for v in decoder.values()):
        raise missing_inputs_error(owner, needed)
    dec = _in.decoder(likelihood=likelihood, x=d, owner=owner, need_mean=True, **decoder)
    check_batch(owner, encoder=enc.logvar.shape[0], decoder=dec.batch_size, x=d.batch_size)
    return enc, p, dec, d


def _reduce(per_sample: Tensor, reduction: Reduction) -> Tensor:
    """Per-sample values (B,) as ``reduction`` asks: as they are, their sum, or their mean."""
    if reduction == "none":
        return per_sample
    return _per_point(per_sample.sum(0), per_sample.shape[0], reduction)


def gaussian_log_likelihood(
    *,
    x: Tensor | None = None,
    dec_mean: Tensor | None = None,
    dec_logvar: Tensor | None = None,
    likelihood: Any = None,
    reduction: Reduction = "mean",
    **vocabulary: Any,
) -> Tensor:
    r"""Gaussian reconstruction log-likelihood :math:`\frac1S\sum_s \log\mathcal{N}(x;\mu(z_s),\sigma^2(z_s))`.

    Args:
        x: data ``(B, D)`` (or ``(B, C, H, W)``, flattened).
        dec_mean: decoder means ``(B, D)`` or ``(S, B, D)``.
        dec_logvar: ``()``, ``(D,)``, ``(B, D)``, ``(B, 1)`` or ``(S, B, D)``.
        likelihood: instead of the two tensors, a Gaussian ``torch.distributions`` object.
        reduction: ``"mean"`` (nats per data point), ``"sum"`` or ``"none"`` (shape ``(B,)``).

    Raises:
        ValueError: a Bernoulli or categorical decoder among the inputs (use :func:`elbo` for its ELBO).

    Example:
        >>> gaussian_log_likelihood(x=torch.zeros(2, 3), dec_mean=torch.zeros(2, 3), dec_logvar=torch.tensor(0.0))
        tensor(-2.7568)
    """
    check_keywords("gaussian_log_likelihood()", vocabulary, ("x", "dec_mean", "dec_logvar", "likelihood",
                                                             "reduction"))
    _check_reduction(reduction)
    _in.require_gaussian("gaussian_log_likelihood()", "the log-density of N(dec_mean, exp(dec_logvar))",
                         {**vocabulary, "likelihood": likelihood})
    d = _in.data(x)
    if d.x is None:
        raise missing_inputs_error("gaussian_log_likelihood()", "`x`")
    dec = _in.decoder(dec_mean, dec_logvar, likelihood, d, owner="gaussian_log_likelihood()", need_mean=True)
    return _reduce(_log_likelihood_update(dec, d), reduction)


def gaussian_kl(
    *,
    enc_mean: Tensor | None = None,
    enc_logvar: Tensor | None = None,
    prior_logvar: Tensor | None = None,
    posterior: Any = None,
    prior: Any = None,
    reduction: Reduction = "mean",
    **vocabulary: Any,
) -> Tensor:
    r"""KL divergence :math:`\mathrm{KL}(q(z|x)\,\|\,p(z))` in closed form.

    .. math::

        \tfrac12\sum_h\left(\frac{\tau_h^2 + \nu_h^2}{\alpha_h^2} - 1 - \log\frac{\tau_h^2}{\alpha_h^2}\right)

    Full-covariance posteriors or priors (``MultivariateNormal``, ``LowRankMultivariateNormal``) use
    the general Gaussian KL of ``torch.distributions``.

    Example:
        >>> gaussian_kl(enc_mean=torch.zeros(4, 2), enc_logvar=torch.zeros(4, 2))  # q = p
        tensor(0.)
    """
    check_keywords("gaussian_kl()", vocabulary, ("enc_mean", "enc_logvar", "prior_logvar", "posterior", "prior",
                                                 "reduction"))
    _check_reduction(reduction)
    enc = _in.encoder(enc_mean, enc_logvar, posterior, owner="gaussian_kl()")
    if enc.mean is None:
        raise missing_inputs_error("gaussian_kl()", "`enc_mean` and `enc_logvar` (or a `posterior`)")
    p = _in.prior(prior_logvar, prior, latent_dim=enc.logvar.shape[-1], batch=enc.logvar.shape[0])
    return _reduce(_kl_per_sample_update(enc, p), reduction)


def gaussian_elbo(
    *,
    x: Tensor | None = None,
    enc_mean: Tensor | None = None,
    enc_logvar: Tensor | None = None,
    dec_mean: Tensor | None = None,
    dec_logvar: Tensor | None = None,
    prior_logvar: Tensor | None = None,
    posterior: Any = None,
    prior: Any = None,
    likelihood: Any = None,
    reduction: Reduction = "mean",
    **vocabulary: Any,
) -> Tensor:
    r"""Sampled Gaussian ELBO of a minibatch, from the pieces a VAE step computes.

    .. math::

        \mathcal{F}(x_n) = \frac1S\sum_s \log\mathcal{N}(x_n;\mu(z_{n,s}),\sigma^2(z_{n,s}))
        - \mathrm{KL}(q(z|x_n)\,\|\,p(z))

    ``dec_mean`` holds :math:`\mu(z)` for the z the step drew (S = 1 for shape ``(B, D)``).
    Use it when your module does not return its own per-sample ``elbo``.

    Raises:
        ValueError: a Bernoulli or categorical decoder (``dec_logits``, ``dec_probs``, ``dec_class_logits`` or
            such a ``likelihood``): its message names :func:`~.discrete.bernoulli_elbo`,
            :func:`~.discrete.categorical_elbo` or :func:`elbo`.

    Example:
        >>> x = torch.zeros(2, 3)
        >>> gaussian_elbo(x=x, enc_mean=torch.zeros(2, 1), enc_logvar=torch.zeros(2, 1), dec_mean=torch.zeros(2, 3),
        ...               dec_logvar=torch.tensor(0.0))
        tensor(-2.7568)
    """
    check_keywords("gaussian_elbo()", vocabulary, ("x", "enc_mean", "enc_logvar", "dec_mean", "dec_logvar",
                                                   "prior_logvar", "posterior", "prior", "likelihood", "reduction"))
    _check_reduction(reduction)
    decoder = {"dec_mean": dec_mean, "dec_logvar": dec_logvar,
               **{k: vocabulary.get(k) for k in ("dec_logits", "dec_class_logits", "dec_probs")}}
    enc, p, dec, d = _elbo_inputs("gaussian_elbo()", x, enc_mean, enc_logvar, prior_logvar, posterior, prior,
                                  likelihood, decoder)
    return _reduce(_gaussian_elbo_update(enc, p, dec, d), reduction)


def elbo(
    *,
    x: Tensor | None = None,
    enc_mean: Tensor | None = None,
    enc_logvar: Tensor | None = None,
    dec_mean: Tensor | None = None,
    dec_logvar: Tensor | None = None,
    dec_logits: Tensor | None = None,
    dec_class_logits: Tensor | None = None,
    dec_probs: Tensor | None = None,
    prior_logvar: Tensor | None = None,
    posterior: Any = None,
    prior: Any = None,
    likelihood: Any = None,
    reduction: Reduction = "mean",
    **vocabulary: Any,
) -> Tensor:
    r"""Sampled ELBO of a minibatch for the decoder the inputs give: Gaussian, Bernoulli or categorical.

    .. math::

        \mathcal{F}(x_n) = \frac1S\sum_s \log p(x_n|z_{n,s}) - \mathrm{KL}(q(z|x_n)\,\|\,p(z))

    The decoder is the one given: ``dec_mean``/``dec_logvar`` (as :func:`gaussian_elbo`), ``dec_logits`` or
    ``dec_probs`` (as :func:`~.discrete.bernoulli_elbo`), ``dec_class_logits`` (as
    :func:`~.discrete.categorical_elbo`), or a ``likelihood`` (Gaussian, ``Bernoulli``, ``Categorical``,
    ``OneHotCategorical``, ``ContinuousBernoulli``), so ``elbo(**out)`` works for the step output of any of them.

    Args:
        x: data ``(B, *data)``; class indices (integer) or one-hot vectors ``(B, *data, C)`` for a categorical decoder.
        enc_mean, enc_logvar: encoder means and log-variances ``(B, H)`` (or a Gaussian ``posterior``).
        dec_mean, dec_logvar, dec_logits, dec_class_logits, dec_probs, likelihood: one decoder.
        prior_logvar, prior: the prior (default N(0, I)).
        reduction: ``"mean"`` (nats per data point), ``"sum"`` or ``"none"`` (shape ``(B,)``).

    Raises:
        ValueError: no decoder, two decoders, or shapes that disagree.
        TypeError: an unsupported ``likelihood``.

    Example:
        >>> x, mean, logvar = torch.zeros(2, 3), torch.zeros(2, 1), torch.zeros(2, 1)
        >>> elbo(x=x, enc_mean=mean, enc_logvar=logvar, dec_mean=torch.zeros(2, 3), dec_logvar=torch.tensor(0.0))
        tensor(-2.7568)
        >>> elbo(x=x, enc_mean=mean, enc_logvar=logvar, dec_logits=torch.zeros(2, 3))  # 3 fair coins: -3 log 2
        tensor(-2.0794)
    """
    check_keywords("elbo()", vocabulary, ("x", "enc_mean", "enc_logvar", "dec_mean", "dec_logvar", "dec_logits",
                                          "dec_class_logits", "dec_probs", "prior_logvar", "posterior", "prior",
                                          "likelihood", "reduction"))
    _check_reduction(reduction)
    decoder = {"dec_mean": dec_mean, "dec_logvar": dec_logvar, "dec_logits": dec_logits,
               "dec_class_logits": dec_class_logits, "dec_probs": dec_probs}
    enc, p, dec, d = _elbo_inputs("elbo()", x, enc_mean, enc_logvar, prior_logvar, posterior, prior, likelihood,
                                  decoder, "a decoder (`dec_mean` and `dec_logvar`, `dec_logits`, `dec_probs`,"
                                  " `dec_class_logits` or a `likelihood`)")
    return _reduce(_elbo_update(enc, p, dec, d), reduction)


def relative_gap(elbo: Any, entropy_sum: Any, *, data_dim: int, floor: float = 0.1) -> Any:
    r"""The gap between the ELBO and the entropy sum, relative to the sum: the convergence signal.

    .. math::

        \frac{\mathcal{F} - S}{\max(|S|,\ \text{floor}\cdot D)}

    A plain :math:`(\mathcal{F} - S)/|S|` explodes where the ELBO crosses zero during training; the
    floor (nats per data dimension) keeps the ratio meaningful there. Works on floats and tensors
    (elementwise); a NaN sum gives NaN.

    Args:
        elbo: mean ELBO per data point. entropy_sum: the entropy sum over the same points.
        data_dim: D. floor: the denominator's floor in nats per data dimension.

    Example:
        >>> relative_gap(-10.5, -10.0, data_dim=4)
        -0.05
        >>> relative_gap(torch.tensor(0.3), torch.tensor(0.1), data_dim=4)  # floor 0.4 nats
        tensor(0.5000)
    """
    bound = floor * data_dim
    if isinstance(entropy_sum, Tensor):
        return (elbo - entropy_sum) / entropy_sum.abs().clamp_min(bound)
    return (elbo - entropy_sum) / max(abs(entropy_sum), bound)  # max(nan, bound) is nan
