"""Shared machinery of the package's metrics: a per-point table summed into one state vector (private)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_entropy_vae.functional._checks import check_weight, first_nonfinite

NAN_STRATEGIES = ("skip", "ignore", "error")


def rank_zero_warn(message: str) -> None:
    """Warn on global rank 0 only; works with or without Lightning (which sets ranks of its own)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return
    warnings.warn(message, UserWarning, stacklevel=3)


def merge_inputs(owner: str, outputs: Mapping[str, Any] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Merge an optional positional mapping (a step's output) with keyword inputs."""
    if outputs is None:
        return kwargs
    if not isinstance(outputs, Mapping):
        raise TypeError(
            f"{owner} takes a mapping of the vocabulary (a dict or VAEOutput) or keyword arguments,"
            f" but got a positional {type(outputs).__name__}."
        )
    return {**outputs, **kwargs}


class SumAndCountMetric(Metric):
    """Base class: per-data-point sums kept as one vector state ``[sums..., count, skipped]``.

    A subclass sets ``_prefix`` (state names must differ between metrics: MetricCollection merges states by
    name) and hands its functional ``_update`` statistics to :meth:`_accumulate`, which sums them over the
    points (weighted and NaN-safe when ``weight`` is given) into the state. One state means one tensor to
    all-reduce under DDP.

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

    def __init__(self, nan_strategy: str = "skip", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if nan_strategy not in NAN_STRATEGIES:
            raise ValueError(f"Expected `nan_strategy` to be one of {NAN_STRATEGIES}, but got {nan_strategy!r}.")
        self.nan_strategy = nan_strategy
        self._warned_nonfinite = False
        self._constants: dict[tuple, Tensor] = {}
        # (key, 0-d constants, constant row) of the last update; its 0-d constants end with a zero
        self._last_constants: tuple = (None, (), None)

    def _add_sum_states(self, num_sums: int) -> None:
        self._num_sums = num_sums
        self.add_state(f"{self._prefix}_totals", torch.zeros(num_sums + 2), dist_reduce_fx="sum")

    @property
    def _state(self) -> Tensor:
        return getattr(self, f"{self._prefix}_totals")

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
        """Add one update to the state ``[statistics..., per-point constants..., count, skipped]``.

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
            last = self._last_constants = ((per_point, batch, like.dtype, like.device),
                                           self._constants_0d(constants, like), self._constant_row(constants, like))
        if weight is None:
            stats = statistics(False)
            if all(s.dim() == 0 for s in stats):  # one stack of 0-d tensors: the cheapest path
                values = torch.stack([*stats, *last[1]])
            else:
                values = torch.cat([*(s.reshape(-1) for s in stats), last[2]])
        else:
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
        """Add a state-shaped vector unless it holds NaN/Inf, in which case only the skipped count grows.

        The test is one dot product: NaN or Inf in any entry (or an entry beyond 1e19 in float32, which no
        sum of log-variances, squared residuals or counts reaches) makes ``v . v`` fail ``< inf``.
        """
        ok = values.dot(values) < self._constant(math.inf, values)  # a cached tensor: no scalar wrapping
        self._state.add_(torch.where(ok, values, self._skip_row(values)))

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

    def _skip_row(self, like: Tensor) -> Tensor:
        key = ("skip", like.shape[0], like.device, like.dtype)
        found = self._constants.get(key)
        if found is None:
            row = torch.zeros(like.shape[0], dtype=like.dtype)
            row[-1] = 1.0
            found = self._constants[key] = row.to(like.device)
        return found

    @property
    def num_skipped_batches(self) -> Tensor:
        """Number of updates skipped for non-finite values (a tensor; reading it as int syncs)."""
        return self._state[-1]

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

    def _totals(self) -> tuple[Tensor, Tensor]:
        """Return (sums, count) and warn once if updates were skipped. Call from ``compute``."""
        totals = self._state
        if self.nan_strategy == "ignore" or self._warned_nonfinite:
            return totals[:-2], totals[-2]
        skipped = int(totals[-1])
        if skipped:
            self._warned_nonfinite = True
            rank_zero_warn(
                f"{type(self).__name__} skipped {skipped} batch(es) whose inputs held NaN or Inf; the"
                " running sums exclude them. Pass nan_strategy='error' to find the offending key."
            )
        return totals[:-2], totals[-2]


def _kept(value: Any, keep: Tensor, batch: int) -> Any:
    """The points of ``value`` that ``keep`` keeps, along its batch dimension (0, or 1 for (S, B, ...))."""
    if not isinstance(value, Tensor) or value.dim() == 0:
        return value
    if value.shape[0] == batch:
        return value[keep]
    if value.dim() >= 2 and value.shape[1] == batch:
        return value[:, keep]
    return value
