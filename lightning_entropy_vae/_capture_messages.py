"""What a :class:`~lightning_entropy_vae.Capture` says when it cannot read a batch (private): the module, the output or
batch it met, what to select or pass instead."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from lightning_entropy_vae.functional._checks import ALIASES, STEP_KEYS, VOCABULARY


def _name(module: nn.Module) -> str:
    return type(module).__name__


def label(module: nn.Module, pl_module: Any) -> str:
    """``Linear `enc.fc_mu``` when the module is found in ``pl_module``, else the class name."""
    path = next((n for n, m in pl_module.named_modules() if m is module), "") if isinstance(pl_module, nn.Module) \
        else ""
    return f"{_name(module)} `{path}`" if path else _name(module)


def _article(name: str) -> str:
    return ("an " if name[:1] in "AEIOUaeiou" else "a ") + name


def _attributes(value: Any) -> list[str]:
    return [k for k in getattr(value, "__dict__", {}) if not k.startswith("_")]


def describe(value: Any) -> str:
    """What a module's output or a batch is, for an error message: its type, and its length, keys or shape."""
    if value is None:
        return "None"
    kind = _article(type(value).__name__)
    if isinstance(value, Tensor):
        return f"{kind} of shape {tuple(value.shape)}"
    if isinstance(value, Mapping):
        return f"{kind} with keys {[str(k) for k in value]}"
    if isinstance(value, (tuple, list)):
        parts = ", ".join(type(v).__name__ for v in value[:6]) + (", ..." if len(value) > 6 else "")
        return f"{kind} of {len(value)} element{'s' * (len(value) != 1)} ({parts})"
    attributes = _attributes(value)
    return kind + (f" with attributes {attributes}" if attributes else "")


def selector_hint(value: Any) -> str:
    """What selects a part of ``value`` (a sentence starting with a space), or ``""``."""
    if isinstance(value, Mapping):
        return f" Select one of its keys {[str(k) for k in value]}, or pass a callable(output)."
    if isinstance(value, (tuple, list)):
        return f" Select an int from 0 to {len(value) - 1}, or pass a callable(output)." if value else ""
    if isinstance(value, Tensor):
        return (" A tensor has no entries or attributes: hook the submodule alone (`key=module`) or pass a"
                " callable, such as `(module, lambda h: h.chunk(2, -1)[0])`.")
    attributes = _attributes(value)
    return f" Select one of its attributes {attributes}, or pass a callable(output)." if attributes else ""


def selecting(selector: Any, argument: str = "output") -> str:
    if isinstance(selector, (int, str)):
        return f"selects {selector!r} from"
    return f"reads with {getattr(selector, '__name__', type(selector).__name__)}({argument})"


def check_sources(sources: Mapping[str, Any]) -> None:
    """Reject keywords that are neither vocabulary names nor Capture's options, suggesting the name to use."""
    unknown = [k for k in sources if k not in STEP_KEYS]
    if not unknown:
        return
    names = [k for k in (*VOCABULARY, "loss") if k != "x"]
    hints = []
    for key in unknown:
        close = [ALIASES[key]] if ALIASES.get(key) else difflib.get_close_matches(key, [*names, "x", "repeat"], n=1)
        hints.append(f"`{key}`" + (f" (did you mean `{close[0]}`?)" if close else
                                   " (not needed)" if key in ALIASES else ""))
    raise TypeError(
        f"Capture() got unexpected keyword argument(s) {', '.join(hints)}. Expected vocabulary names as the"
        f" keys to record ({', '.join(names)}) or Capture's own options `x` (where x comes from in the batch)"
        " and `repeat`."
    )


def x_suggestion(batch: Any) -> str:
    """The ``Capture(x=...)`` to pass: the batch's first tensor entry, or a callable."""
    if isinstance(batch, Mapping):
        keys = [k for k, v in batch.items() if isinstance(v, Tensor) and isinstance(k, (int, str))]
    elif isinstance(batch, (tuple, list)):
        keys = [i for i, v in enumerate(batch) if isinstance(v, Tensor)]
    else:
        keys = []
    lead = f"Capture(x={keys[0]!r}) if that entry holds the model's input, or " if keys else ""
    return lead + "Capture(x=callable(batch)) returning it"
