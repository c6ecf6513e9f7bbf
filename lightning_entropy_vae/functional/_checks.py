"""Names, constants and the checks every function, metric and the callback share (private).

Nothing here synchronises with the device: checks look at types, shapes, dtypes and Python
attributes only, except :func:`first_nonfinite`, which is for ``nan_strategy="error"``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

#: ``log(2 * pi * e)``: twice the entropy of a standard normal, in nats.
LOG_2PI_E = math.log(2.0 * math.pi * math.e)
#: ``log(2 * pi)``.
LOG_2PI = math.log(2.0 * math.pi)

#: The names every function, metric and callback understands.
VOCABULARY = (
    "enc_mean",
    "enc_logvar",
    "dec_mean",
    "dec_logvar",
    "prior_logvar",
    "x",
    "elbo",
    "posterior",
    "prior",
    "likelihood",
    "data_dim",
    "dec_sq_residual",
    "dec_logits",
    "dec_class_logits",
    "dec_probs",
)
#: The decoder keys of the vocabulary besides the Gaussian ``dec_mean``/``dec_logvar``: one decoder per step.
DISCRETE_DECODER_KEYS = ("dec_logits", "dec_class_logits", "dec_probs")
#: What a step may return: the vocabulary and the loss.
STEP_KEYS = frozenset((*VOCABULARY, "loss"))

EXAMPLE_RETURN = (
    '    return {"loss": loss, "x": x, "enc_mean": mu, "enc_logvar": logvar,\n'
    '            "dec_mean": x_hat, "dec_logvar": self.dec_logvar,\n'
    '            "elbo": elbo}  # elbo: (B,) per-sample ELBO, optional'
)


#: Names other code bases give the vocabulary's quantities, and what to return instead (``None``: not needed).
#: Suggested in error messages only, never accepted silently: a ``z`` or a ``recon`` can mean several things.
ALIASES: dict[str, str | None] = {
    "mu": "enc_mean", "mean": "enc_mean", "z_mean": "enc_mean", "embedding": "enc_mean", "loc": "enc_mean",
    "log_var": "enc_logvar", "logvar": "enc_logvar", "log_sigma2": "enc_logvar", "z_log_var": "enc_logvar",
    "log_covariance": "enc_logvar",
    "recon_x": "dec_mean", "x_hat": "dec_mean", "recon": "dec_mean", "reconstruction": "dec_mean",
    "x_recon": "dec_mean", "sample": "dec_mean",
    "latent_dist": "posterior", "q_z": "posterior", "qz": "posterior", "p_z": "prior", "pz": "prior",
    "logits": "dec_logits", "x_logits": "dec_logits", "recon_logits": "dec_logits",
    "class_logits": "dec_class_logits", "probs": "dec_probs", "x_probs": "dec_probs",
    "p_x": "likelihood", "px": "likelihood", "inputs": "x", "data": "x",
    "z": None, "eps": None, "recon_loss": None, "reg_loss": None, "kld": None, "kl": None,
}


def number_argument(name: str, value: Any, expected: str, ok: Callable[[Any], bool], *, integer: bool = False,
                    optional: bool = False) -> Any:
    """A constructor's numeric argument, returned as given: ``TypeError`` if it is not a number (a bool is not; an int
    where ``integer``), ``ValueError`` if ``ok(value)`` is false, as for NaN under any comparison. ``expected`` says
    what was expected in both messages; ``optional`` lets ``None`` through."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise TypeError(f"Expected `{name}` to be {expected}, but got {value!r}.")
    if not ok(value):
        raise ValueError(f"Expected `{name}` to be {expected}, but got {value!r}.")
    return value


def alias_hints(keys: Any) -> str:
    """A sentence naming the received keys that are known aliases, with the vocabulary name to use (or ``""``).

    Example:
        >>> alias_hints(["mu", "z", "loss"])
        ' Received `mu`, `z`, which are not vocabulary names: rename `mu` -> `enc_mean`; `z` is not needed.'
    """
    found = [str(k) for k in keys if k not in STEP_KEYS and k in ALIASES]
    if not found:
        return ""
    renames = [f"`{k}` -> `{ALIASES[k]}`" for k in found if ALIASES[k] is not None]
    unneeded = [f"`{k}`" for k in found if ALIASES[k] is None]
    parts = (["rename " + ", ".join(renames)] if renames else []) + (
        [", ".join(unneeded) + (" is" if len(unneeded) == 1 else " are") + " not needed"] if unneeded else [])
    return (f" Received {', '.join(f'`{k}`' for k in found)}, which are not vocabulary names: "
            + "; ".join(parts) + ".")


def missing_inputs_error(owner: str, needed: str, given: Mapping[str, Any] | None = None) -> ValueError:
    """Build the error for missing vocabulary keys, with the ``return {...}`` a user should write.

    ``given``: the keys the caller received (a metric's mapping); ``None`` when the caller is a function
    whose missing argument was ``None``.
    """
    if given is None:
        got = "None"
    else:
        got = ", ".join(f"`{k}`" for k in given) if given else "nothing"
    return ValueError(
        f"{owner} needs {needed}, but got {got}." + alias_hints(given or ()) +
        " Return the encoder and decoder statistics from your step, for example:\n" + EXAMPLE_RETURN
    )


def check_keywords(owner: str, extra: Mapping[str, Any], accepted: tuple[str, ...]) -> None:
    """Reject keywords that are neither the function's own nor vocabulary names (misspellings).

    Vocabulary names a function does not use are accepted and ignored, so ``f(**step_output)`` works for
    a dict of vocabulary keys; anything else is a ``TypeError`` with the closest valid names.
    """
    unknown = [k for k in extra if k not in STEP_KEYS]
    if unknown:
        raise unexpected_keywords(owner, unknown, accepted, vocabulary=True)


def unexpected_keywords(owner: str, unknown: list[str], accepted: tuple[str, ...], *,
                        vocabulary: bool = False) -> TypeError:
    """The package's one error for unknown keyword arguments: each with the closest valid name (or the vocabulary
    name a known alias stands for), and the accepted names."""
    valid = sorted({*accepted, *(STEP_KEYS if vocabulary else ())})
    hints = []
    for key in unknown:
        alias = ALIASES.get(key, "") if vocabulary else ""
        close = [alias] if alias else difflib.get_close_matches(key, valid, n=1)
        hints.append(f"`{key}`" + (f" (did you mean `{close[0]}`?)" if close else
                                   " (not needed)" if vocabulary and key in ALIASES else ""))
    return TypeError(
        f"{owner} got unexpected keyword argument(s) {', '.join(hints)}. Expected {', '.join(accepted)}"
        + (" or names of the vocabulary." if vocabulary else ".")
    )


def strict_keywords(init: Any) -> Any:
    """Decorate a class's ``__init__`` so that a misspelt keyword argument is a ``TypeError`` naming the closest
    argument (``EntropyMonitor(collapse_treshold=0.5)`` -> ``collapse_threshold``), instead of Python's bare
    "unexpected keyword argument". The signature seen by ``inspect`` (LightningCLI) is unchanged."""
    import functools
    import inspect

    names = tuple(n for n, p in inspect.signature(init).parameters.items()
                  if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))

    @functools.wraps(init)
    def checked(self: Any, *args: Any, **kwargs: Any) -> None:
        unknown = [k for k in kwargs if k not in names]
        if unknown:
            raise unexpected_keywords(f"{type(self).__name__}()", unknown, names)
        init(self, *args, **kwargs)

    return checked


def as_float_tensor(name: str, value: Any) -> Tensor:
    """Check that ``value`` is a floating-point tensor and upcast it to at least float32.

    float64 stays float64; float16/bfloat16 become float32 so that sums over many dimensions
    keep their precision.
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"Expected `{name}` to be a torch.Tensor, but got {type(value).__name__}.")
    if not value.is_floating_point():
        raise TypeError(f"Expected `{name}` to be a floating-point tensor, but got dtype {value.dtype}.")
    if value.dtype in (torch.float16, torch.bfloat16):
        return value.float()
    return value


def shape_of(t: Tensor | torch.Size) -> tuple[int, ...]:
    return tuple(t.shape if isinstance(t, Tensor) else t)


def check_batch(owner: str, **sizes: int | None) -> int:
    """Check that every component agrees on the batch size; return it."""
    known = {k: v for k, v in sizes.items() if v is not None}
    values = set(known.values())
    if len(values) > 1:
        listing = ", ".join(f"`{k}`: {v}" for k, v in known.items())
        raise ValueError(f"Expected one batch size B across the inputs of {owner}, but got {listing}.")
    if not values:
        raise missing_inputs_error(owner, "tensors with a batch dimension")
    return values.pop()


def check_weight(weight: Any, batch: int) -> Tensor | None:
    """A metric's per-point ``weight``: ``None``, or a (B,) bool or floating tensor; returned as is.

    Its values are not read (that would sync with the device): a weight of 0 or below drops its point.
    """
    if weight is None:
        return None
    if not isinstance(weight, Tensor) or not (weight.is_floating_point() or weight.dtype == torch.bool):
        got = type(weight).__name__ if not isinstance(weight, Tensor) else f"dtype {weight.dtype}"
        raise TypeError(f"Expected `weight` to be a bool or floating-point tensor of shape (B,), but got {got}.")
    if tuple(weight.shape) != (batch,):
        raise ValueError(f"Expected `weight` of shape (B,) = ({batch},), one per data point, but got"
                         f" {tuple(weight.shape)}.")
    return weight


def first_nonfinite(inputs: Mapping[str, Any]) -> str | None:
    """The first key whose floating-point tensor holds NaN or Inf (a host sync per tensor), else ``None``."""
    for key, value in inputs.items():
        if isinstance(value, Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return key
    return None
