"""Duck-typed Gaussians and Python-number log-variances, read into tensors (private; used by :mod:`._inputs`).

Other libraries hand over Gaussians that are not ``torch.distributions`` objects (diffusers'
``DiagonalGaussianDistribution`` has ``.mean``, ``.logvar``, ``.std``, ``.var``). Reading them here, once, lets
every function, metric and the callback accept them. Views and elementwise ops only; no device sync (a negative
variance or standard deviation is looked for in CPU tensors only, see :func:`_check_spread`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution

from lightning_entropy_vae.functional._checks import as_float_tensor
from lightning_entropy_vae.functional._checks import shape_of as _shape

#: Attributes of a duck-typed diagonal Gaussian, in the order they are read, and how each gives the log-variance.
_SPREADS = (("logvar", "logvar"), ("var", "var"), ("variance", "var"), ("std", "std"), ("stddev", "std"),
            ("scale", "std"))


def gaussian_moments(name: str, obj: Any) -> tuple[Tensor, Tensor] | None:
    """``(mean, logvar)`` of a duck-typed diagonal Gaussian, ``None`` for a torch distribution or a tensor.

    A duck-typed Gaussian is any object with a tensor ``.mean`` and one of ``.logvar`` (diffusers'
    ``DiagonalGaussianDistribution``), ``.var``/``.variance`` or ``.std``/``.stddev``/``.scale``, read in that
    order, so a ``.logvar`` the model computed is used as it is. Both come back with the object's own shape.

    Raises:
        TypeError: for a ``.mean`` or spread that is not a floating-point tensor.
        ValueError: for a spread whose shape does not broadcast to the mean's, or a negative variance or standard
            deviation in a CPU tensor (on an accelerator its log is NaN instead: reading it would sync).

    Example:
        >>> from types import SimpleNamespace
        >>> gaussian_moments("posterior", SimpleNamespace(mean=torch.zeros(2, 3), std=torch.ones(2, 3)))[1]
        tensor([[0., 0., 0.],
                [0., 0., 0.]])
    """
    if isinstance(obj, (Tensor, Distribution)) or not isinstance(getattr(obj, "mean", None), Tensor):
        return None
    for attr, kind in _SPREADS:
        spread = getattr(obj, attr, None)
        if isinstance(spread, Tensor):
            mean = as_float_tensor(f"{name}.mean", obj.mean)
            spread = as_float_tensor(f"{name}.{attr}", spread)
            if kind != "logvar":
                _check_spread(name, attr, obj, spread)
            logvar = spread if kind == "logvar" else spread.log() if kind == "var" else 2.0 * spread.log()
            if logvar.shape != mean.shape:
                logvar = logvar.expand_as(mean) if logvar.dim() <= mean.dim() else logvar
            if logvar.shape != mean.shape:
                raise ValueError(f"Expected `{name}.{attr}` of shape {_shape(mean)} matching `{name}.mean`, but got"
                                 f" {_shape(spread)}.")
            return mean, logvar
    return None


def _check_spread(name: str, attr: str, obj: Any, spread: Tensor) -> None:
    """Reject a negative variance or standard deviation, whose log would be NaN, where that costs no device sync.

    A CPU tensor is checked (one comparison over values already in host memory). On an accelerator, reading the
    values would stall the stream once per batch in the callback's hot path, so the check is left out there (the
    log of a negative value is NaN: ``nan_strategy`` drops and counts or raises); so it is while compiling.
    """
    compiling = getattr(torch.compiler, "is_compiling", None)  # torch >= 2.3
    if spread.device.type != "cpu" or (compiling is not None and compiling()):
        return
    negative = spread < 0
    if negative.any():
        index = tuple(int(i) for i in negative.nonzero()[0])
        what = "a variance" if attr in ("var", "variance") else "a standard deviation"
        raise ValueError(f"Expected `{name}.{attr}` of the {type(obj).__name__} `{name}` to be non-negative ({what}),"
                         f" but got {float(spread[index])} at index {index}.")


def as_logvar(name: str, value: Any, like: Tensor | None) -> Any:
    """A Python number as a 0-d log-variance on ``like``'s device, in its dtype but at least float32 (a number is
    exact: half precision would round log(2.45) to 0.8945, 0.6 nats off in the decoder entropy at D = 784)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if like is None:
            return torch.tensor(float(value))
        dtype = torch.promote_types(like.dtype, torch.float32) if like.is_floating_point() else torch.float32
        return torch.full((), float(value), dtype=dtype, device=like.device)
    return value
