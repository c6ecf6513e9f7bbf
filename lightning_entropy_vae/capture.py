"""Capture what a model computes in the step's own forward pass: forward hooks feeding ``EntropyMonitor(extract=...)``.

A model whose step cannot return the vocabulary (a pythae ``ModelOutput`` has no ``mu``/``log_var``, a
lightning-bolts step returns only a loss) still computes every quantity inside its forward pass. A
:class:`Capture` hooks the submodules that compute them and hands their outputs to the monitor at the end of
the same batch: no second forward pass (which would update BatchNorm statistics and draw new z), nothing
kept after the batch.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from lightning_entropy_vae._capture_messages import (
    check_sources,
    describe,
    label,
    selecting,
    selector_hint,
    x_suggestion,
)
from lightning_entropy_vae.functional._checks import STEP_KEYS

__all__ = ["Capture", "capture"]

_REPEATS = ("error", "first", "last")


def _select(selector: Any, value: Any) -> Any:
    """``value[selector]`` for an int, the entry or attribute ``selector`` for a str, ``selector(value)`` else."""
    if selector is None:
        return value
    if isinstance(selector, int):
        return value[selector]
    if isinstance(selector, str):
        return value[selector] if isinstance(value, Mapping) else getattr(value, selector)
    return selector(value)


class _Hook:
    """The forward hook of one hooked submodule: a picklable callable (a closure is not), bound to its capture.

    It records only calls of the very module it was registered on: a shallow copy of that module shares its hook
    dict, and its calls are not the step's.
    """

    def __init__(self, capture: Capture, module: nn.Module, keys: list[tuple[str, Any]]) -> None:
        self.capture, self.module, self.keys = capture, module, keys

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        if module is self.module:
            self.capture._record_output(module, self.keys, output)


class Capture:
    r"""Record a model's encoder and decoder statistics from the step's own forward pass.

    Each keyword is a vocabulary name (``enc_mean``, ``enc_logvar``, ``dec_mean``, ``dec_logvar``, ``posterior``,
    ``likelihood``, ``prior``, ``prior_logvar``, ``elbo``, ...) and says where its value comes from:

    - a submodule, ``enc_mean=model.fc_mu``: its output in the step's forward pass (a forward hook);
    - ``(submodule, selector)``: a part of that output: ``selector`` an ``int`` (``out[i]``), a ``str`` (the entry
      or attribute of that name: ``(model.encoder, "embedding")`` for a pythae ``ModelOutput``) or a callable
      (``(model.quant_conv, lambda m: m.chunk(2, 1)[0])``). Several keys may share a submodule (one hook);
    - a ``str``: the step output's entry of that name (``dec_mean="recon_x"``);
    - a tensor, parameter or Python number: passed as it is each step (a returned parameter, such as a learned
      ``dec_logvar``, is read as the forward pass saw it, before the optimizer step).

    ``x`` comes from the batch: by default the batch itself if it is a tensor, its first element if that is one,
    or a mapping's entry ``"x"``; an ``int`` or ``str`` indexes the batch, a callable gets the batch. The step
    output's own vocabulary entries (``loss``, ``elbo``, ...) are passed through; a captured key wins over a
    returned one.

    Called as ``capture(pl_module, outputs, batch)``, the :class:`~lightning_entropy_vae.EntropyMonitor`'s
    ``extract`` signature, it returns the vocabulary of the batch and forgets it. The monitor also tells it when
    a batch starts (:meth:`start_batch`): what an earlier batch left (a skipped one) is dropped, and during a
    stage the monitor does not watch (validation with ``stages=("train",)``, the sanity check) nothing is
    recorded. Hooks stay until :meth:`remove` (or the end of a ``with`` block).

    A submodule that runs more than once in a step (a second decoder call to draw images, a recomputation
    under activation checkpointing) is an error by default, since its outputs are ambiguous; pass
    ``repeat="first"`` (the step's forward pass comes first; checkpointing recomputes later, in the backward
    pass) or ``repeat="last"``.

    A capture pickles with its model (``torch.save(model)``, ``strategy="ddp_spawn"``) when its selectors do (an
    ``int``, a ``str`` or a module-level function; a lambda does not): the copy records the copied model's forward
    passes; what was recorded is not pickled. A deep copy of the model
    (``torch.optim.swa_utils.AveragedModel(model)``, an EMA copy) carries a copy of the capture bound to the
    copied submodules, which records only between a monitor's :meth:`start_batch` and its read: the copy's forward
    passes never reach the original capture.

    Args:
        x: where ``x`` comes from in the batch (``None``: the batch, or its first element).
        repeat: ``"error"`` (default), ``"first"`` or ``"last"``: which call of a submodule that runs
            several times in a step to keep.
        sources: the vocabulary keys and where each comes from.

    Raises:
        TypeError: for a key outside the vocabulary (with the vocabulary name to use for a known alias such as
            ``mu``), a source of another kind, or ``None`` where a submodule is expected (a model attribute that
            is ``None`` in this configuration, such as diffusers' ``quant_conv`` with ``use_quant_conv=False``).
        ValueError: when the batch is read (``capture(...)``), for a selector that does not fit the output
            it selects from, or an ``x`` that cannot be read from the batch: the message says what the output
            or the batch is (its type, length, keys or shape) and what to pass.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> enc, dec = nn.Linear(4, 6), nn.Linear(3, 4)
        >>> cap = Capture(enc_mean=(enc, lambda h: h[:, :3]), enc_logvar=(enc, lambda h: h[:, 3:]),
        ...               dec_mean=dec, dec_logvar=0.0)
        >>> x = torch.randn(8, 4)
        >>> h = enc(x); x_hat = dec(h[:, :3])  # the model's own forward pass
        >>> out = cap(None, {"loss": torch.tensor(1.0)}, x)
        >>> sorted(out), out["enc_mean"].shape
        (['dec_logvar', 'dec_mean', 'enc_logvar', 'enc_mean', 'loss', 'x'], torch.Size([8, 3]))
        >>> cap.remove()
    """

    def __init__(self, *, x: Any = None, repeat: str = "error", **sources: Any) -> None:
        check_sources(sources)
        if repeat not in _REPEATS:
            raise ValueError(f"Expected `repeat` to be one of {_REPEATS}, but got {repeat!r}.")
        if not (x is None or isinstance(x, (int, str)) or callable(x)):
            raise TypeError(f"Expected `x` to be None, an int or str index into the batch, or a callable(batch),"
                            f" but got {type(x).__name__}.")
        self.repeat = repeat
        self._x = x
        self._hooked: dict[str, tuple[nn.Module, Any]] = {}  # key -> (module, selector)
        self._renamed: dict[str, str] = {}  # key -> the step output's entry
        self._constants: dict[str, Any] = {}
        for key, source in sources.items():
            if isinstance(source, nn.Module):
                self._hooked[key] = (source, None)
            elif (isinstance(source, tuple) and len(source) == 2 and isinstance(source[0], nn.Module)
                  and (isinstance(source[1], (int, str)) or callable(source[1]))):
                self._hooked[key] = source
            elif isinstance(source, str):
                self._renamed[key] = source
            elif isinstance(source, Tensor) or (isinstance(source, (int, float)) and not isinstance(source, bool)):
                self._constants[key] = source
            elif source is None or (isinstance(source, tuple) and len(source) == 2 and source[0] is None):
                where = f"`{key}`" if source is None else f"the submodule of `{key}` (the first element of its pair)"
                raise TypeError(
                    f"Expected {where} to be a submodule (an nn.Module), but got None: the model attribute passed is"
                    " None in this configuration (diffusers' AutoencoderKL has `quant_conv` None with"
                    " `use_quant_conv=False`). Hook the submodule that computes the output instead, e.g."
                    " `posterior=(vae.encoder, DiagonalGaussianDistribution)`."
                )
            else:
                raise TypeError(
                    f"Expected `{key}` to be a submodule, a (submodule, selector) pair, the name of a step output's"
                    f" entry, a tensor or a number, but got {type(source).__name__}."
                )
        self._record = True  # until a monitor drives it: then only between a batch's start and its end
        self._managed = False
        self._values: dict[str, Any] = {}
        self._failed: dict[str, tuple[str, str, str]] = {}  # key -> (output described, hint, the error)
        self._calls: dict[int, int] = {}
        self._handles = []
        modules: dict[int, tuple[nn.Module, list[tuple[str, Any]]]] = {}
        for key, (module, selector) in self._hooked.items():
            modules.setdefault(id(module), (module, []))[1].append((key, selector))
        for module, keys in modules.values():
            self._handles.append(module.register_forward_hook(_Hook(self, module, keys)))

    def _record_output(self, module: nn.Module, keys: list[tuple[str, Any]], output: Any) -> None:
        """A hooked submodule ran: keep the parts of its output that ``keys`` select, if recording."""
        if not self._record:
            return
        calls = self._calls[id(module)] = self._calls.get(id(module), 0) + 1
        if calls > 1 and self.repeat != "last":
            return  # "first" keeps the first call; "error" raises when the batch is read
        for key, selector in keys:  # a selector that does not fit is reported when the batch is read
            try:
                self._values[key] = _select(selector, output)
                self._failed.pop(key, None)
            except Exception as err:  # any error of a selector
                self._values.pop(key, None)
                self._failed[key] = (describe(output), selector_hint(output), f"{type(err).__name__}: {err}")

    def __getstate__(self) -> dict[str, Any]:
        """Everything but what was recorded (outputs holding an autograd graph, counts keyed by module ids)."""
        return {**self.__dict__, "_values": {}, "_failed": {}, "_calls": {}}

    def __deepcopy__(self, memo: dict[int, Any]) -> Capture:
        """A copy bound to the deep copies of the hooked submodules (those in ``memo``: the copied model's), which
        records only between :meth:`start_batch` and its read: a copy that no monitor drives records nothing."""
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__getstate__(), memo))
        new._managed, new._record = True, False
        return new

    def start_batch(self, record: bool = True) -> None:
        """Forget what was recorded, and record the forward passes of the batch that starts only if ``record``.

        The :class:`~lightning_entropy_vae.EntropyMonitor` calls it at the start of every batch.
        ``start_batch(record=False)`` also ends a batch that will not be read (its step raised): what it recorded,
        with its autograd graph, is released, and forward passes until the next batch starts are not recorded.
        """
        self.clear()
        self._managed = True
        self._record = record

    def clear(self) -> None:
        """Forget what was recorded."""
        self._values = {}
        self._failed = {}
        self._calls = {}

    def remove(self) -> None:
        """Remove the forward hooks and forget what was recorded."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.clear()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __call__(self, pl_module: Any, outputs: Any, batch: Any) -> dict[str, Any]:
        """The batch's vocabulary: captured values, ``x`` from the batch and the step output's own entries.

        An empty mapping for a training step that returned ``None`` (Lightning's "skip this batch"). What was
        recorded is forgotten.
        """
        values, calls, failed = self._values, self._calls, self._failed
        self.clear()
        if self._managed:
            self._record = False  # nothing is recorded between batches (a prediction, the user's own evaluation)
        if isinstance(outputs, Mapping) and not outputs:
            return {}
        if failed:
            key, (output, hint, error) = next(iter(failed.items()))
            module, selector = self._hooked[key]
            raise ValueError(
                f"Capture: `{key}` {selecting(selector)} the output of {label(module, pl_module)}, but that"
                f" output is {output} ({error}).{hint}"
            )
        repeated = [k for k, (m, _) in self._hooked.items() if calls.get(id(m), 0) > 1]
        if repeated and self.repeat == "error":
            module = self._hooked[repeated[0]][0]
            raise RuntimeError(
                f"Capture: the submodule {label(module, pl_module)} of `{repeated[0]}` ran {calls[id(module)]} times"
                " in one step, so which output to read is ambiguous. Pass Capture(repeat='first') to read the first"
                " call (the step's forward pass; activation checkpointing recomputes later) or repeat='last'."
            )
        missing = [k for k in self._hooked if k not in values]
        if missing:
            module = self._hooked[missing[0]][0]
            raise RuntimeError(
                f"Capture: the submodule {label(module, pl_module)} of `{missing[0]}` did not run in this step's"
                f" forward pass (captured: {sorted(values) or 'nothing'}). Hook a submodule that the step calls (a"
                " module's `forward`, not a method such as `encode`)."
            )
        found = {k: v for k, v in outputs.items() if k in STEP_KEYS} if isinstance(outputs, Mapping) else {}
        for key, entry in self._renamed.items():
            if not isinstance(outputs, Mapping) and not hasattr(outputs, entry):
                raise KeyError(f"Capture: `{key}` is read from the step output's entry {entry!r}, but the step"
                               f" returned {type(outputs).__name__}.")
            if isinstance(outputs, Mapping) and entry not in outputs:
                raise KeyError(f"Capture: `{key}` is read from the step output's entry {entry!r}, but the step"
                               f" returned the keys {sorted(str(k) for k in outputs)}.")
            found[key] = outputs[entry] if isinstance(outputs, Mapping) else getattr(outputs, entry)
        found.update(self._constants)
        found.update(values)
        if self._x is not None or "x" not in found:
            x = self._batch_x(batch)
            if x is not None:
                found["x"] = x
            elif batch is not None and "x" not in found and "elbo" not in found:
                raise ValueError(
                    f"Capture: `x` has no default for this batch, {describe(batch)}: the default reads a tensor"
                    " batch, a tuple's or list's first element if it is a tensor, or a mapping's entry 'x'. Pass"
                    f" {x_suggestion(batch)}."
                )
        return found

    def _batch_x(self, batch: Any) -> Any:
        if self._x is None:
            if isinstance(batch, Tensor):
                return batch
            if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
                return batch[0]
            if isinstance(batch, Mapping) and isinstance(batch.get("x"), Tensor):
                return batch["x"]
            return None
        try:
            return _select(self._x, batch)
        except Exception as err:  # any error of the selector
            raise ValueError(
                f"Capture: `x` {selecting(self._x, 'batch')} the batch, but the batch is {describe(batch)}"
                f" ({type(err).__name__}: {err})." + ("" if callable(self._x) else f" Pass {x_suggestion(batch)}.")
            ) from err


def capture(*, x: Any = None, repeat: str = "error", **sources: Any) -> Capture:
    """A :class:`Capture`: ``EntropyMonitor(extract=capture(enc_mean=model.fc_mu, ...))``.

    Example:
        >>> from torch import nn
        >>> cap = capture(enc_mean=nn.Linear(2, 2))
        >>> cap.remove()
    """
    return Capture(x=x, repeat=repeat, **sources)
