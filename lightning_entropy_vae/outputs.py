"""The typed step output: a dataclass that is also a mutable mapping of the vocabulary."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, fields, replace
from typing import Any

from torch import Tensor
from torch.distributions import Distribution

__all__ = ["VAEOutput"]


@dataclass
class VAEOutput(MutableMapping):
    """What a VAE step returns, typed. Also a :class:`~collections.abc.MutableMapping` of its non-``None`` fields.

    Because it is a mapping, Lightning accepts it as a ``training_step`` return value (it needs
    ``"loss"``), and every metric and function takes it as ``metric.update(**out)`` or ``metric(out)``.
    A plain ``dict`` with the same keys works everywhere too. Like a ``dict`` it has :meth:`copy`, and its
    fields can be set and deleted by key (Lightning's manual optimization copies the output and detaches
    its ``"loss"``); a key that is not a field is a ``KeyError``.

    Attributes:
        loss: the scalar the optimizer minimises (Lightning's ``training_step`` needs it).
        x: the batch's data, ``(B, D)`` or ``(B, C, H, W)``.
        enc_mean: encoder means ``(B, H)``.
        enc_logvar: encoder log-variances ``(B, H)``.
        dec_mean: decoder means for the z drawn in the step, ``(B, D)`` or ``(S, B, D)``.
        dec_logvar: decoder log-variance ``()``, ``(D,)``, ``(B, D)`` or ``(S, B, D)``.
        dec_logits: a Bernoulli decoder's logits, the shape of ``x`` (or ``(S, *x.shape)``), instead of
            ``dec_mean``/``dec_logvar``.
        dec_probs: a Bernoulli decoder's probabilities (sigmoid outputs), instead of ``dec_logits``.
        dec_class_logits: a categorical decoder's class logits ``(B, *data, C)``; ``x`` holds class indices.
        prior_logvar: learnable prior log-variances ``(H,)`` (VAE-2); ``None`` means N(0, I).
        elbo: the per-sample ELBO ``(B,)`` at beta = 1; computed from the pieces if ``None``.
        posterior, prior, likelihood: ``torch.distributions`` objects, instead of tensors (a Gaussian posterior and
            prior; a Gaussian, Bernoulli or categorical likelihood).

    Example:
        >>> import torch
        >>> out = VAEOutput(loss=torch.tensor(1.0), enc_logvar=torch.zeros(2, 3))
        >>> sorted(out)
        ['enc_logvar', 'loss']
        >>> out["loss"]
        tensor(1.)
        >>> copy = out.copy()
        >>> copy["loss"] = torch.tensor(2.0)
        >>> out["loss"], copy["loss"]
        (tensor(1.), tensor(2.))
    """

    loss: Tensor | None = None
    x: Tensor | None = None
    enc_mean: Tensor | None = None
    enc_logvar: Tensor | None = None
    dec_mean: Tensor | None = None
    dec_logvar: Tensor | None = None
    dec_logits: Tensor | None = None
    dec_probs: Tensor | None = None
    dec_class_logits: Tensor | None = None
    prior_logvar: Tensor | None = None
    elbo: Tensor | None = None
    posterior: Distribution | None = None
    prior: Distribution | None = None
    likelihood: Distribution | None = None

    def __getitem__(self, key: str) -> Any:
        value = getattr(self, key, None) if key in self._names() else None
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in self._names():
            raise KeyError(f"VAEOutput has no field {key!r}; its fields are {', '.join(self._names())}.")
        setattr(self, key, value)

    def __delitem__(self, key: str) -> None:
        self[key]  # a KeyError for a field that is not set
        setattr(self, key, None)

    def copy(self) -> VAEOutput:
        """A shallow copy, as ``dict.copy`` makes (the tensors are shared)."""
        return replace(self)

    def __iter__(self) -> Iterator[str]:
        return (name for name in self._names() if getattr(self, name) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))
