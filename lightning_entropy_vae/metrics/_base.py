"""Shared machinery of the package's metrics: named sum states, the strict input check, plotting (private)."""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_entropy_vae.functional._checks import STEP_KEYS, check_keywords, check_weight, first_nonfinite

NAN_STRATEGIES = ("skip", "ignore", "error")
#: attributes TorchMetrics sets on every update (see SumAndCountMetric.__setattr__)
_PLAIN_ATTRIBUTES = frozenset(("_computed", "_update_count"))
_DTYPE = operator.attrgetter("dtype")
INSTALL_PLOT = "pip install 'lightning-entropy-vae[examples]'"


def rank_zero_warn(message: str) -> None:
    """Warn on global rank 0 only; works with or without Lightning (which sets ranks of its own)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return
    warnings.warn(message, UserWarning, stacklevel=3)


def merge_inputs(owner: str, outputs: Mapping[str, Any] | None, kwargs: dict[str, Any],
                 accepted: tuple[str, ...]) -> dict[str, Any]:
    """Merge an optional positional mapping (a step's output) with keyword inputs; reject unknown keys.

    Names of the vocabulary and ``loss`` (``STEP_KEYS`` of :mod:`~lightning_entropy_vae.functional._checks`) are
    accepted, and ignored where the metric does not use them; any other key is a ``TypeError`` naming the closest
    valid name, as the functional API raises. ``accepted``: the names the metric reads, for that message.
    """
    if outputs is None:
        merged = kwargs
    elif type(outputs) is dict and not kwargs:  # a step's output as it is: read, never written
        merged = outputs
    elif isinstance(outputs, Mapping):
        merged = {**outputs, **kwargs}
    else:
        raise TypeError(
            f"{owner} takes a mapping of the vocabulary (a dict or VAEOutput) or keyword arguments,"
            f" but got a positional {type(outputs).__name__}."
        )
    if STEP_KEYS.issuperset(merged):  # every key a name of the vocabulary (or `loss`): one set operation
        return merged
    try:
        check_keywords(owner, merged, (*accepted, "weight"))
    except TypeError:
        if outputs is not None and not all(isinstance(key, str) for key in outputs):
            raise TypeError(f"{owner} takes a mapping with str keys (names of the vocabulary), but got the keys"
                            f" {list(outputs)!r}.") from None
        if outputs is not None and "weight" in outputs:
            raise TypeError(f"{owner} takes `weight` as a keyword argument, update(outputs, weight=...), but got it"
                            " as a key of the mapping.") from None
        raise
    return merged


def require_matplotlib(owner: str) -> Any:
    """``matplotlib.pyplot``, or a ``ModuleNotFoundError`` naming the extra that installs it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ModuleNotFoundError(f"{owner} needs matplotlib, which is not installed: {INSTALL_PLOT}.") from err
    return plt


class SumAndCountMetric(Metric):
    """Base class: per-data-point sums kept as named states, each summed across processes.

    A subclass lists its sums in :meth:`_sum_layout` (name and shape; every state name starts with the class's
    ``_prefix``, so that no two of the package's metrics share one: MetricCollection merges states by name); the
    base adds ``{prefix}_count`` (points seen) and ``{prefix}_skipped`` (updates skipped) and sums the functional
    ``_update`` statistics into them in :meth:`_accumulate` (weighted and NaN-safe when ``weight`` is given).
    Every state is a sum with ``dist_reduce_fx="sum"``.

    ``weight``: every ``update`` takes an optional per-point weight ``(B,)``, bool or float. A point of
    weight 0 or below (or ``False``) adds nothing, even when its values are NaN or Inf, also under
    ``nan_strategy="error"``; the means become weighted means. The EntropyMonitor uses it to reduce many
    batches in one call and drop those holding NaN/Inf.

    Non-finite values: with ``nan_strategy="skip"`` (default) an update whose sums are not finite adds
    nothing but a 1 to the skipped count; the check is a tensor ``where``, so no host-device
    synchronisation happens per update, and a warning is raised once, at ``compute()`` (which reads the
    count: one sync). ``"ignore"`` skips the same way without the warning, so ``compute()`` never reads a
    value to the host. With ``nan_strategy="error"`` every input is checked on the host (one sync per key
    per update) and the offending key is named. Counts are exact up to 2**24 in float32 states; use
    ``metric.set_dtype(torch.float64)`` beyond that.
    """

    full_state_update = False
    is_differentiable = False
    _prefix: str = ""
    #: the vocabulary names ``update`` reads (named in the message for an unknown key)
    _inputs: tuple[str, ...] = ()

    def __init__(self, nan_strategy: str = "skip", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if nan_strategy not in NAN_STRATEGIES:
            raise ValueError(f"Expected `nan_strategy` to be one of {NAN_STRATEGIES}, but got {nan_strategy!r}.")
        self.nan_strategy = nan_strategy
        self._warned_nonfinite = False
        self._constants: dict[tuple, Tensor] = {}
        # the last update's key (per-point constants, batch size, dtype, device) and what _accumulate caches for
        # it: the constants as 0-d tensors (ending with a zero) and as a row, infinity, the skip row, the increment
        # vector, its head and the head's dtypes
        self._last_constants: tuple = (None, (), None, None, None, None, None, None)

    def __setattr__(self, name: str, value: Any) -> None:
        """Set an attribute; the two that TorchMetrics' ``update`` wrapper sets on every call directly.

        ``_computed`` and ``_update_count`` are never parameters, buffers or submodules, for which
        ``nn.Module.__setattr__`` looks first; for them it ends in ``object.__setattr__``, as here.
        """
        if name in _PLAIN_ATTRIBUTES:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def _sum_layout(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """The sums a subclass keeps, in the order :meth:`_accumulate` adds them: ``(name, shape)`` pairs."""
        raise NotImplementedError

    def _layout(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """Every state: the subclass's sums, then the count and the skipped count, with their full names."""
        sums = ((f"{self._prefix}_{name}", shape) for name, shape in self._sum_layout())
        return (*sums, (f"{self._prefix}_count", ()), (f"{self._prefix}_skipped", ()))

    def _add_sum_states(self) -> None:
        """Declare the states of :meth:`_layout`; call once the constructor has set what the layout depends on."""
        layout = self._layout()
        for name, shape in layout:
            self.add_state(name, torch.zeros(shape), dist_reduce_fx="sum")
        self._state_names = tuple(name for name, _ in layout)
        self._state_shapes = tuple(shape for _, shape in layout)
        self._state_sizes = tuple(math.prod(shape) for shape in self._state_shapes)
        self._views: tuple[Tensor, ...] = ()  # the states as views of one vector, once an update built it

    def _state(self, name: str) -> Tensor:
        """The state ``{prefix}_{name}``."""
        return getattr(self, f"{self._prefix}_{name}")

    def _constant(self, value: float, like: Tensor) -> Tensor:
        """A cached 0-d tensor on ``like``'s device and dtype, so the per-update path copies nothing host-to-device."""
        key = (value, like.device, like.dtype)
        found = self._constants.get(key)
        if found is None:
            if len(self._constants) > 64:  # a few devices and dtypes per run; never grow without bound
                self._constants.clear()
            found = self._constants[key] = torch.tensor(value, dtype=like.dtype).to(like.device)
        return found

    def _accumulate(self, statistics: Callable[[bool], list[Tensor]], per_point: tuple[float, ...], batch: int,
                    like: Tensor, weight: Tensor | None) -> None:
        """Add one update to the states: the statistics' sums, the per-point constants' sums, count, skipped.

        ``statistics(per_sample)`` returns the functional ``_update`` statistics: their batch sums (each
        ``()`` or ``(k,)``) when ``per_sample`` is false, else their per-point values (``(B,)``, ``(B, ...)``,
        or ``()`` for a value every point shares). ``per_point``: constants every point adds (the latent or
        data dimensions it spans). Without ``weight`` the batch sums are taken as they are; with it the
        per-point table is weighted and summed, points of weight 0 dropped first (NaN-safe). A non-finite
        total skips the update.
        """
        last = self._last_constants  # the same batch size, dtype and device as the last update: no lookup
        if last[0] != (per_point, batch, like.dtype, like.device):
            constants = (*(c * batch for c in per_point), float(batch), 0.0)
            row = self._constant_row(constants, like)
            size = sum(self._state_sizes)
            # a vector of every state's increment whose tail holds the constants: 0-d statistics are stacked into
            # its head in place (the vector is read by torch.where below before the next update writes it again)
            vector = torch.cat([row.new_zeros(size - len(constants)), row])
            last = self._last_constants = ((per_point, batch, like.dtype, like.device),
                                           self._constants_0d(constants, like), row,
                                           self._constant(math.inf, row), self._skip_row(row, size),
                                           vector, vector[:size - len(constants)],
                                           [like.dtype] * (size - len(constants)))
        if weight is None:
            stats = statistics(False)
            if not any(map(Tensor.dim, stats)):  # one stack of 0-d tensors: the cheapest path
                values = None
                # into the head of the cached vector when the statistics have its dtype (stack(out=) would round
                # another dtype to it) and need no graph; otherwise (or on another device) a new vector
                if list(map(_DTYPE, stats)) == last[7] and not torch.is_grad_enabled():
                    try:
                        torch.stack(stats, out=last[6])
                        values = last[5]
                    except RuntimeError:
                        pass
                if values is None:
                    values = torch.stack([*stats, *last[1]])
            else:
                values = torch.cat([*(s.reshape(-1) for s in stats), last[2]])
            if values.requires_grad:  # the states hold numbers, never a graph (the metrics are not differentiable)
                values = values.detach()
            # the cached infinity and skip row of the last update's dtype and device; see _add_values
            ok = values.dot(values) < last[3]
            self._flat_states().add_(torch.where(ok, values, last[4]))
            return
        weight = check_weight(weight, batch)
        keep = weight if weight.dtype == torch.bool else weight > 0
        # points of weight 0 go before any product (NaN-safe), then the kept ones are summed with their weights
        w = None if weight.dtype == torch.bool else weight.where(keep, 0.0).unsqueeze(-1)
        count = keep.sum() if w is None else w.sum()
        parts = []
        for stat in statistics(True):
            if stat.dim() == 0:  # one value for every point: times their weight (nothing when none is kept)
                parts.append((stat.where(count > 0, 0.0) * count).reshape(1))
                continue
            table = stat.reshape(batch, -1).where(keep.unsqueeze(-1), self._constant(0.0, stat))
            parts.append((table if w is None else table * w.to(table.dtype)).sum(0))
        count = count.to(like.dtype).reshape(1)
        values = torch.cat([*parts, self._constant_row(per_point, like) * count, count,
                            self._constant_row((0.0,), like)])
        self._add_values(values)

    def _add_values(self, values: Tensor) -> None:
        """Add a vector of every state's increment (in :meth:`_layout`'s order) unless it holds NaN/Inf, in which
        case only the skipped count grows.

        The test is one dot product: NaN or Inf in any entry (or an entry beyond 1e19 in float32, which no
        sum of log-variances, squared residuals or counts reaches) makes ``v . v`` fail ``< inf``.
        """
        values = values.detach()  # the states hold numbers, never a graph (the metrics are not differentiable)
        ok = values.dot(values) < self._constant(math.inf, values)  # a cached tensor: no scalar wrapping
        self._flat_states().add_(torch.where(ok, values, self._skip_row(values)))

    def _flat_states(self) -> Tensor:
        """One vector of which the states are views, so that an update adds to all of them in one op.

        TorchMetrics replaces the state tensors in ``reset``, ``merge_state``, a DDP sync, ``to`` and ``set_dtype``;
        the next update then finds another tensor under a state's name and builds the vector again from the
        states' current values.
        """
        views = self._views
        if views and all(map(operator.is_, map(self.__dict__.get, self._state_names), views)):
            return self._flat  # every state is still the view this method made of the vector
        flat = torch.cat([getattr(self, name).reshape(-1) for name in self._state_names])
        views = tuple(part.view(shape) for part, shape in zip(flat.split(self._state_sizes), self._state_shapes,
                                                               strict=True))
        for name, view in zip(self._state_names, views, strict=True):
            setattr(self, name, view)
        self._flat, self._views = flat, views
        return flat

    def _constants_0d(self, values: tuple[float, ...], like: Tensor) -> tuple[Tensor, ...]:
        """Cached 0-d tensors of ``values`` on ``like``'s device and dtype."""
        key = ("0d", values, like.device, like.dtype)
        found = self._constants.get(key)
        if found is None:
            row = self._constant_row(values, like)
            found = self._constants[key] = tuple(row.unbind())
        return found

    def _constant_row(self, values: tuple[float, ...], like: Tensor) -> Tensor:
        """A cached 1-d tensor of ``values`` on ``like``'s device and dtype."""
        key = (values, like.device, like.dtype)
        found = self._constants.get(key)
        if found is None:
            if len(self._constants) > 64:  # a few batch sizes, devices and dtypes per run; never grow unbounded
                self._constants.clear()
            found = self._constants[key] = torch.tensor(values, dtype=like.dtype).to(like.device)
        return found

    def _skip_row(self, like: Tensor, size: int | None = None) -> Tensor:
        """A cached vector of ``size`` (default: ``like``'s length) zeros but a final one, the skipped count's."""
        size = like.shape[0] if size is None else size
        key = ("skip", size, like.device, like.dtype)
        found = self._constants.get(key)
        if found is None:
            row = torch.zeros(size, dtype=like.dtype)
            row[-1] = 1.0
            found = self._constants[key] = row.to(like.device)
        return found

    @property
    def num_skipped_batches(self) -> Tensor:
        """Number of updates skipped for non-finite values (a tensor; reading it as int syncs)."""
        return self._state("skipped")

    def _check_finite(self, inputs: Mapping[str, Any], weight: Tensor | None = None) -> None:
        """``nan_strategy="error"``: name the first input holding NaN/Inf in a point of positive weight (syncs)."""
        if weight is not None:
            keep = weight if weight.dtype == torch.bool else weight > 0
            batch = keep.shape[0]
            inputs = {k: _kept(v, keep, batch) for k, v in inputs.items()}
        key = first_nonfinite({k: v for k, v in inputs.items() if v is not None})
        if key is not None:
            raise ValueError(
                f"{type(self).__name__}.update() got non-finite values (NaN or Inf) in `{key}`."
                " Expected finite tensors; use nan_strategy='skip' to skip such batches instead."
            )

    def _count(self) -> Tensor:
        """The points counted so far; warns once if updates were skipped. Call from ``compute``."""
        if self.nan_strategy != "ignore" and not self._warned_nonfinite:
            skipped = int(self._state("skipped"))
            if skipped:
                self._warned_nonfinite = True
                rank_zero_warn(
                    f"{type(self).__name__} skipped {skipped} batch(es) whose inputs held NaN or Inf; the"
                    " running sums exclude them. Pass nan_strategy='error' to find the offending key."
                )
        return self._state("count")

    def plot(self, val: Any = None, ax: Any = None) -> Any:
        """Plot a value of ``compute()`` (or a list of them, one per step) with TorchMetrics' plotting helper.

        Args:
            val: the value(s) to plot; ``None`` plots ``compute()``.
            ax: a matplotlib axis to draw on; ``None`` makes a new figure.

        Returns:
            ``(fig, ax)``.

        Raises:
            ModuleNotFoundError: matplotlib is not installed (``pip install 'lightning-entropy-vae[examples]'``).

        Example (one point per step; a metric whose ``compute`` returns a dict draws one line per key):
            >>> import matplotlib.pyplot as plt
            >>> from lightning_entropy_vae.metrics import EncoderEntropy
            >>> metric = EncoderEntropy()
            >>> values = [metric(enc_logvar=torch.full((4, 2), v)) for v in (-1.0, 0.0, 1.0)]
            >>> fig, ax = metric.plot(values)
            >>> [round(float(y), 4) for y in ax.lines[0].get_ydata()]
            [1.8379, 2.8379, 3.8379]
            >>> plt.close(fig)
        """
        require_matplotlib(f"{type(self).__name__}.plot()")
        return self._plot(val, ax)

    def __getstate__(self) -> dict[str, Any]:
        """The pickled state: the states as tensors of their own (the next update makes them views again)."""
        state = super().__getstate__()
        state.pop("_flat", None)
        state["_views"] = ()
        state["_last_constants"] = (None, (), None, None, None, None, None, None)  # its head must stay its view
        for name in self.__dict__.get("_state_names", ()):
            state[name] = state[name].clone()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore a pickled metric, also one pickled with all sums in one vector ``{prefix}_totals``."""
        vector = state.pop(f"{self._prefix}_totals", None)
        super().__setstate__(state)
        if vector is not None:
            self._from_vector(vector)

    def _from_vector(self, vector: Tensor) -> None:
        """Replace the one-vector state of older pickles (the layout's states, in order) by the named states."""
        old = f"{self._prefix}_totals"
        for table in (self._defaults, self._reductions, self._persistent):
            table.pop(old, None)
        self._add_sum_states()
        sizes = self._state_sizes
        if vector.numel() != sum(sizes):
            raise ValueError(f"Expected a pickled `{old}` of {sum(sizes)} values for {type(self).__name__}, but got"
                             f" {vector.numel()}.")
        for name, part, shape in zip(self._state_names, vector.split(sizes), self._state_shapes, strict=True):
            setattr(self, name, part.reshape(shape).clone())
            self._defaults[name] = self._defaults[name].to(vector)


def _kept(value: Any, keep: Tensor, batch: int) -> Any:
    """The points of ``value`` that ``keep`` keeps, along its batch dimension (0, or 1 for (S, B, ...))."""
    if not isinstance(value, Tensor) or value.dim() == 0:
        return value
    if value.shape[0] == batch:
        return value[keep]
    if value.dim() >= 2 and value.shape[1] == batch:
        return value[:, keep]
    return value
