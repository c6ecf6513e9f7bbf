"""Canonical shapes for the shared vocabulary: encoder, prior, data and decoder (private).

Every public function and metric goes through these helpers, so a shape, dtype or missing-key
error reads the same wherever it is raised. Nothing here computes a formula or synchronises with
the device: the helpers look at shapes, dtypes and Python attributes, and reshape (views only).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent

from lightning_entropy_vae.functional._checks import DISCRETE_DECODER_KEYS, as_float_tensor, missing_inputs_error
from lightning_entropy_vae.functional._checks import shape_of as _shape
from lightning_entropy_vae.functional._distributions import check_gaussian, is_diagonal, likelihood_kind, sum_to
from lightning_entropy_vae.functional._distributions import full_shape as _dist_full_shape
from lightning_entropy_vae.functional._duck import as_logvar, gaussian_moments

# with the parsers below; read as ``_in.<name>``
__all__ = ["as_logvar", "check_gaussian", "gaussian_moments", "is_diagonal", "sum_to"]

# ----------------------------------------------------------------------------------------- encoder
class Encoder(NamedTuple):
    """Canonical encoder statistics: marginal means and log-variances (B, H); a full-covariance posterior."""

    mean: Tensor | None
    logvar: Tensor
    full: Distribution | None  # the posterior, only when it is not diagonal (its entropy needs the covariance)


def encoder(
    enc_mean: Any = None,
    enc_logvar: Any = None,
    posterior: Any = None,
    *,
    owner: str,
    given: Mapping[str, Any] | None = None,
) -> Encoder:
    """Resolve the encoder from tensors, a ``posterior`` distribution or a duck-typed Gaussian posterior.

    Latents of any shape ``(B, *latent)`` (an image VAE's ``(B, C, h, w)``) are flattened to ``(B, H)``.
    ``given``: the caller's inputs (a metric's merged mapping), named in a missing-key error.
    """
    if posterior is not None:
        moments = gaussian_moments("posterior", posterior)
        if moments is None:
            dist = check_gaussian("posterior", posterior, "encoder")
            full = _dist_full_shape(dist)
            diagonal = is_diagonal(dist)
            if len(full) != 2 and not (diagonal and len(full) > 2):
                raise ValueError(
                    f"Expected `posterior` with batch and event shape (B, H) (or (B, *latent) for a diagonal one),"
                    f" but got {full} (batch_shape={tuple(dist.batch_shape)}, event_shape={tuple(dist.event_shape)})."
                )
            mean = _flat(as_float_tensor("posterior.mean", dist.mean))
            logvar = _flat(as_float_tensor("posterior.variance", dist.variance).log())
            return Encoder(mean, logvar, None if diagonal else dist)
        enc_mean, enc_logvar = moments
    if enc_logvar is None:
        raise missing_inputs_error(owner, "`enc_logvar` (or a `posterior` distribution)", given)
    logvar = as_float_tensor("enc_logvar", enc_logvar)
    if logvar.dim() < 2:
        raise ValueError(f"Expected `enc_logvar` of shape (B, H) (or (B, *latent)), but got {_shape(logvar)}.")
    mean = None
    if enc_mean is not None:
        mean = as_float_tensor("enc_mean", enc_mean)
        if mean.shape != logvar.shape:
            raise ValueError(
                f"Expected `enc_logvar` of shape (B, H) matching `enc_mean` {_shape(mean)},"
                f" but got {_shape(logvar)}."
            )
        mean = _flat(mean)
    return Encoder(mean, _flat(logvar), None)


def _flat(t: Tensor) -> Tensor:
    """``(B, *latent)`` as ``(B, H)``."""
    return t if t.dim() == 2 else t.reshape(t.shape[0], -1)


# ------------------------------------------------------------------------------------------- prior
class Prior(NamedTuple):
    """Canonical prior: marginal means and log-variances; a non-diagonal or distribution prior as given."""

    mean: Tensor | None  # None: zero mean
    logvar: Tensor | None  # None: standard normal; (H,) or (B, H)
    dist: Distribution | None  # a `prior` distribution, as given


def prior(prior_logvar: Any = None, prior_dist: Any = None, *, latent_dim: int, batch: int | None = None,
          check_rows: bool = True) -> Prior:
    """Resolve the prior; the default is the standard normal N(0, I) over ``latent_dim`` latents.

    ``prior_logvar`` is ``(H,)``, or ``(B, H)`` when each sample carries the prior that was in effect
    for it (the callback concatenates batches of a learnable prior this way).

    A diagonal ``prior`` distribution over ``(H,)``, or with a batch dimension, ``(B, H)``: a Pyro model's
    prior expanded over its plate. Its rows are read per point, as a ``(B, H)`` ``prior_logvar`` is; the prior
    entropy is that of p(z), so the rows must be one prior: with ``check_rows`` (the functions) they are
    compared (a sync with the device); the metrics and the callback do not compare them.
    """
    if prior_dist is not None:
        moments = gaussian_moments("prior", prior_dist)
        dist = None if moments is not None else check_gaussian("prior", prior_dist, "prior")
        full = _shape(moments[0].shape) if dist is None else _dist_full_shape(dist)
        rows = len(full) == 2 and full[1] == latent_dim and (batch is None or full[0] == batch)
        if full != (latent_dim,) and not (rows and (dist is None or is_diagonal(dist))):
            raise ValueError(f"Expected `prior` with batch and event shape (H,) = ({latent_dim},), or (B, H) ="
                             f" ({batch or 'B'}, {latent_dim}) for a diagonal prior repeated over the batch (a Pyro"
                             f" plate), but got {full}.")
        mean, logvar = moments if dist is None else (
            as_float_tensor("prior.mean", dist.mean), as_float_tensor("prior.variance", dist.variance).log())
        if rows and check_rows and not (torch.equal(mean, mean[:1].expand_as(mean))
                                        and torch.equal(logvar, logvar[:1].expand_as(logvar))):
            raise ValueError(
                f"Expected a `prior` of shape {full} whose rows are one prior p(z) (the prior entropy is that of"
                " p(z)), but its rows differ: a prior that depends on the data point is not a prior of the"
                " three-entropies result. Pass one row, e.g. the prior of the first point."
            )
        if dist is None or rows:  # diagonal: the marginals are the whole prior
            return Prior(mean, logvar, None)
        return Prior(mean, logvar, dist)
    if prior_logvar is None:
        return Prior(None, None, None)
    logvar = as_float_tensor("prior_logvar", prior_logvar)
    if logvar.dim() not in (1, 2) or logvar.shape[-1] != latent_dim or (batch is not None and logvar.dim() == 2
                                                                          and logvar.shape[0] != batch):
        raise ValueError(
            f"Expected `prior_logvar` of shape (H,) = ({latent_dim},) matching the encoder's latents"
            f" (or (B, H), the prior in effect for each sample), but got {_shape(logvar)}."
        )
    return Prior(None, logvar, None)


# ----------------------------------------------------------------------------------------- decoder
class Data(NamedTuple):
    """Flattened data (B, D) plus the per-sample data shape used to read decoder shapes."""

    x: Tensor | None
    raw: Tensor | None
    batch_size: int | None
    data_shape: tuple[int, ...] | None


def data(x: Any, *, classes: bool = False) -> Data:
    """Flatten the data to ``(B, D)``. ``classes``: a categorical decoder's data, where an integer ``x`` holds class
    indices ``(B, *data)`` (kept as it is, ``(B,)`` too) and a floating ``x`` one-hot or probability vectors."""
    if x is None:
        return Data(None, None, None, None)
    if classes and isinstance(x, Tensor) and not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool:
        if x.dim() < 1:
            raise ValueError(f"Expected `x` of class indices of shape (B, *data), but got {_shape(x)}.")
        return Data(x.reshape(x.shape[0], -1), x, x.shape[0], tuple(x.shape[1:]))
    t = as_float_tensor("x", x)
    shape = t.shape
    if len(shape) < 2:
        raise ValueError(f"Expected `x` of shape (B, D) (or (B, C, H, W) images), but got {_shape(t)}.")
    flat = t if len(shape) == 2 else t.reshape(shape[0], -1)
    return Data(flat, t, shape[0], tuple(shape[1:]))


def flatten_decoder(name: str, t: Tensor, d: Data) -> Tensor:
    """Bring a decoder tensor to (B, D) or (S, B, D) using x's per-sample shape when known."""
    shape = _shape(t)
    if d.data_shape is not None:
        k = len(d.data_shape)
        if shape[1:] == (d.batch_size, *d.data_shape) and len(shape) == k + 2:
            return t if k == 1 else t.reshape(shape[0], shape[1], -1)
        if shape == (d.batch_size, *d.data_shape):
            return t if k == 1 else t.reshape(shape[0], -1)
        raise ValueError(
            f"Expected `{name}` of shape (B, *data) = {(d.batch_size, *d.data_shape)} or (S, B, *data)"
            f" matching `x` {(d.batch_size, *d.data_shape)}, but got {shape}."
        )
    if t.dim() not in (2, 3):
        raise ValueError(f"Expected `{name}` of shape (B, D) or (S, B, D), but got {shape}.")
    return t


class Decoder(NamedTuple):
    """Canonical decoder: flattened means and log-variances, their layout, and sizes."""

    mean: Tensor | None  # (B, D) or (S, B, D)
    logvar: Tensor | None  # (), (D,), (B, D) or (S, B, D)
    layout: str  # "scalar" | "per_dim" | "per_sample" | "per_z" | "dist"
    batch_size: int
    data_dim: int
    dist: Distribution | None
    lead: int = 1  # leading dims of the distribution's shape before the data: 1 (B) or 2 (S, B)
    # a Bernoulli or categorical decoder's parameters: logits (B, D) or (S, B, D) (layout "bernoulli"), probabilities
    # (B, D) or (S, B, D) ("bernoulli_probs"), class logits (B, D, C) or (S, B, D, C) ("categorical")
    params: Tensor | None = None
    kind: str = "gaussian"  # "gaussian" | "bernoulli" | "categorical" | "continuous_bernoulli"


#: How each decoder kind is named in messages, with the inputs that give it and the ELBO function for it.
KIND_NAMES = {
    "gaussian": ("Gaussian", "`dec_mean`/`dec_logvar` or a Gaussian `likelihood`", "gaussian_elbo"),
    "bernoulli": ("Bernoulli", "`dec_logits`, `dec_probs` or a Bernoulli `likelihood`", "bernoulli_elbo"),
    "categorical": ("categorical", "`dec_class_logits` or a Categorical `likelihood`", "categorical_elbo"),
    "continuous_bernoulli": ("continuous Bernoulli", "a ContinuousBernoulli `likelihood`", "elbo"),
}


def is_categorical(dec_class_logits: Any = None, likelihood: Any = None) -> bool:
    """Whether the inputs name a categorical decoder (so that ``x`` may hold integer class indices)."""
    if dec_class_logits is not None:
        return True
    if not isinstance(likelihood, Distribution):
        return False
    try:
        return likelihood_kind(likelihood) == "categorical"
    except TypeError:  # an unsupported likelihood: the decoder raises its error
        return False


def require_gaussian(owner: str, quantity: str, vocabulary: Mapping[str, Any]) -> None:
    """A ``ValueError`` when the step's decoder (among ``vocabulary``) is a Bernoulli, categorical or other
    non-Gaussian one, for a quantity defined for Gaussian decoders only."""
    given = [k for k in DISCRETE_DECODER_KEYS if vocabulary.get(k) is not None]
    likelihood = vocabulary.get("likelihood")
    if isinstance(likelihood, Distribution) and likelihood_kind(likelihood) != "gaussian":
        base = likelihood.base_dist if isinstance(likelihood, Independent) else likelihood
        given.append(f"a {type(base).__name__} `likelihood`")
    if given:
        raise ValueError(
            f"{owner} is defined for Gaussian decoders only ({quantity}), but got a non-Gaussian decoder: "
            + ", ".join(f"`{g}`" if g in DISCRETE_DECODER_KEYS else g for g in given) + "."
            " The entropy sum of a Bernoulli or categorical decoder needs no decoder variance: use entropy_sum()"
            " and elbo()."
        )


def decoder(
    dec_mean: Any = None,
    dec_logvar: Any = None,
    likelihood: Any = None,
    x: Data | None = None,
    *,
    owner: str,
    need_mean: bool = False,
    data_dim: int | None = None,
    given: Mapping[str, Any] | None = None,
    dec_logits: Any = None,
    dec_class_logits: Any = None,
    dec_probs: Any = None,
) -> Decoder:
    """Resolve the decoder from tensors or a ``likelihood`` distribution: Gaussian (``dec_mean``/``dec_logvar``),
    Bernoulli (``dec_logits``, ``dec_probs``), categorical (``dec_class_logits``), or a ``likelihood``.

    ``dec_logvar`` may also be ``(B, 1)`` or ``(S, B, 1)``: one variance per sample, shared by the D
    dimensions. ``data_dim`` gives D when neither ``x`` nor ``dec_mean`` is passed.
    """
    d = x if x is not None else Data(None, None, None, None)
    moments = None if likelihood is None else gaussian_moments("likelihood", likelihood)
    kind = "gaussian" if likelihood is None or moments is not None else likelihood_kind(likelihood)
    discrete = {k: v for k, v in (("dec_logits", dec_logits), ("dec_class_logits", dec_class_logits),
                                  ("dec_probs", dec_probs)) if v is not None}
    if discrete or kind != "gaussian":
        named = [k for k, v in (("dec_mean", dec_mean), ("dec_logvar", dec_logvar)) if v is not None]
        named += list(discrete) + (["likelihood"] if likelihood is not None else [])
        if len(named) > 1:
            raise ValueError(
                "Expected one decoder: `dec_mean`/`dec_logvar` (Gaussian), `dec_logits` or `dec_probs` (Bernoulli),"
                " `dec_class_logits` (categorical) or a `likelihood`, but got "
                + ", ".join(f"`{k}`" for k in named) + "."
            )
        if kind in ("bernoulli", "categorical"):
            base = likelihood.base_dist if isinstance(likelihood, Independent) else likelihood
            name, params = "likelihood.logits", base.logits
            return _discrete_decoder(kind, "bernoulli" if kind == "bernoulli" else "categorical", name, params, d,
                                     likelihood)
        if discrete:
            ((name, params),) = discrete.items()
            kind = "categorical" if name == "dec_class_logits" else "bernoulli"
            layout = {"dec_logits": "bernoulli", "dec_probs": "bernoulli_probs"}.get(name, "categorical")
            return _discrete_decoder(kind, layout, name, params, d, None)
    if moments is not None:  # a duck-typed Gaussian likelihood: its mean and log-variance, as tensors
        if dec_mean is not None or dec_logvar is not None:
            raise ValueError("Expected either a `likelihood` or `dec_mean`/`dec_logvar`, but got both.")
        (dec_mean, dec_logvar), likelihood = moments, None
    if likelihood is not None:
        dist = check_gaussian("likelihood", likelihood, "decoder") if kind == "gaussian" else likelihood
        full = _dist_full_shape(dist)
        if d.data_shape is not None:
            k = len(d.data_shape)
            per_sample = (d.batch_size, *d.data_shape)
            ok = full == per_sample or (len(full) == k + 2 and full[1:] == per_sample)
            if not ok:
                raise ValueError(
                    f"Expected `likelihood` with batch and event shape (B, *data) or (S, B, *data) matching"
                    f" `x` {(d.batch_size, *d.data_shape)}, but got {full}."
                )
            lead = len(full) - k
        else:
            if len(full) not in (2, 3):
                raise ValueError(
                    f"Expected `likelihood` with batch and event shape (B, D) or (S, B, D), but got {full}."
                )
            lead = len(full) - 1
        batch = full[lead - 1]
        data_dim = math.prod(full[lead:])
        return Decoder(None, None, "dist", batch, data_dim, dist, lead, kind=kind)

    if dec_logvar is None:
        raise missing_inputs_error(owner, "`dec_logvar` (or a `likelihood` distribution)", given)
    ref = dec_mean if isinstance(dec_mean, Tensor) else d.x
    logvar = as_float_tensor("dec_logvar", as_logvar("dec_logvar", dec_logvar, ref))
    mean = None
    if dec_mean is not None:
        mean = flatten_decoder("dec_mean", as_float_tensor("dec_mean", dec_mean), d)
        if d.batch_size is not None and mean.shape[-2] != d.batch_size:
            raise ValueError(
                f"Expected `dec_mean` with batch size {d.batch_size} matching `x`, but got {_shape(mean)}."
            )
    elif need_mean:
        raise missing_inputs_error(owner, "`dec_mean` and `x`", given)

    lshape = _shape(logvar)
    if lshape == ():
        layout = "scalar"
    elif lshape == (1,):
        layout, logvar = "scalar", logvar.reshape(())
    elif d.data_shape is not None and (lshape == d.data_shape or lshape == (d.x.shape[1],)):
        layout, logvar = "per_dim", logvar.reshape(-1)
    elif d.data_shape is None and logvar.dim() == 1:
        layout = "per_dim"
    elif logvar.dim() in (2, 3) and lshape[-1] == 1 and (d.data_shape is None or d.data_shape != (1,)):
        layout = "per_sample" if logvar.dim() == 2 else "per_z"
    else:
        try:
            logvar = flatten_decoder("dec_logvar", logvar, d)
        except ValueError:
            if d.data_shape is None:
                raise
            data = (d.batch_size, *d.data_shape)
            per_dim = f"{d.data_shape}" + (f" or ({d.x.shape[1]},)" if len(d.data_shape) > 1 else "")
            raise ValueError(
                f"Expected `dec_logvar` of shape () (one variance), {per_dim} (one per dimension), (B, 1) ="
                f" {(d.batch_size, 1)} (one per sample), (B, *data) = {data} or (S, B, *data), matching `x` {data},"
                f" but got {lshape}."
            ) from None
        layout = "per_sample" if logvar.dim() == 2 else "per_z"
        if mean is not None and logvar.shape != mean.shape and not (layout == "per_sample" and mean.dim() == 3):
            raise ValueError(
                f"Expected `dec_logvar` of shape (B, D) or (S, B, D) matching `dec_mean` {_shape(mean)},"
                f" but got {lshape}."
            )

    if mean is not None:
        batch, data_dim = mean.shape[-2], mean.shape[-1]
    elif d.x is not None:
        batch, data_dim = d.x.shape
    elif layout in ("per_sample", "per_z") and (logvar.shape[-1] != 1 or data_dim is not None):
        batch, data_dim = logvar.shape[-2], data_dim or logvar.shape[-1]
    elif layout in ("scalar", "per_dim") and data_dim is not None:
        raise missing_inputs_error(
            owner, f"`x` or `dec_mean` to know the batch size B of a {layout} `dec_logvar`", given
        )
    else:
        raise missing_inputs_error(
            owner, f"`x` or `dec_mean` to know the batch size and data dimension D of a {layout} `dec_logvar`",
            given,
        )
    if layout == "per_dim" and logvar.shape[0] != data_dim:
        raise ValueError(f"Expected `dec_logvar` of shape (D,) = ({data_dim},) matching the data, but got {lshape}.")
    if layout in ("per_sample", "per_z") and tuple(logvar.shape[-2:]) not in ((batch, data_dim), (batch, 1)):
        raise ValueError(
            f"Expected `dec_logvar` of shape (B, D) = {(batch, data_dim)}, (B, 1) or (S, B, D), but got {lshape}."
        )
    return Decoder(mean, logvar, layout, batch, data_dim, None)


def _discrete_decoder(kind: str, layout: str, name: str, params: Any, d: Data, dist: Distribution | None) -> Decoder:
    """A Bernoulli decoder's logits or probabilities ``(B, *data)`` or ``(S, B, *data)`` flattened to ``(B, D)`` or
    ``(S, B, D)``; a categorical decoder's class logits ``(B, *data, C)`` or ``(S, B, *data, C)`` to ``(B, D, C)`` or
    ``(S, B, D, C)``. Without ``x`` the leading dimension is B (z-samples S need ``x`` to be told apart)."""
    t = as_float_tensor(name, params)
    shape = _shape(t)
    if kind == "bernoulli":
        if d.data_shape is not None:
            flat = flatten_decoder(name, t, d)
        elif t.dim() < 2:
            raise ValueError(f"Expected `{name}` of shape (B, *data), one per data dimension, but got {shape}.")
        else:
            flat = t.reshape(shape[0], -1)
        return Decoder(None, None, layout, flat.shape[-2], flat.shape[-1], dist, flat.dim() - 1, flat, kind)
    if t.dim() < 2:
        raise ValueError(f"Expected `{name}` of shape (B, *data, C), class logits over the last dimension, but got"
                         f" {shape}.")
    classes = shape[-1]
    if d.raw is None:
        lead = 1
    else:
        index = not d.raw.is_floating_point()
        per_sample = _shape(d.raw) if index else _shape(d.raw)[:-1]
        k = len(per_sample)
        if shape[:-1] == per_sample and (index or d.raw.shape[-1] == classes):
            lead = 1
        elif len(shape) == k + 2 and shape[1:-1] == per_sample and (index or d.raw.shape[-1] == classes):
            lead = 2
        else:
            expected = "(" + ", ".join(map(str, per_sample)) + ", C)" if index else str(_shape(d.raw))
            one_hot = (" An integer `x` of the logits' shape looks one-hot: one-hot `x` must be floating point"
                       " (`x.float()`), or pass the class indices (`x.argmax(-1)`)."
                       if index and _shape(d.raw) in (shape, shape[1:]) else "")
            raise ValueError(
                f"Expected `{name}` of shape (B, *data, C) = {expected} or"
                f" (S, B, *data, C) matching `x` {_shape(d.raw)} (class indices (B, *data) of an integer dtype, or"
                f" one-hot or probability vectors (B, *data, C)), but got {shape}.{one_hot}"
            )
    flat = t.reshape(*shape[:lead], -1, classes)
    return Decoder(None, None, "categorical", flat.shape[-3], flat.shape[-2], dist, lead, flat, kind)
