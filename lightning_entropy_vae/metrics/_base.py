"""Shared machinery of the package's metrics: sum-and-count states and the non-finite policy (private)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_entropy_vae.functional._inputs import first_nonfinite

NAN_STRATEGIES = ("skip", "error")


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
    """Base class: per-data-point means kept as one vector state ``[sums..., count, skipped]``.

    Subclasses set ``_prefix`` (state names must differ between metrics, as MetricCollection merges
    states by name), call :meth:`_add_sum_states` with the number of sums, and feed each batch's sums
    to :meth:`_accumulate`. One state means one tensor to all-reduce under DDP.

    Non-finite batches: with ``nan_strategy="skip"`` (default) a batch whose sums contain NaN or Inf
    adds nothing but a 1 to the skipped count; the check is a tensor ``where``, so no host-device
    synchronisation happens per batch, and a warning is raised once, at ``compute()``. With
    ``nan_strategy="error"`` every input is checked on the host (one sync per key per batch) and
    the offending key is named. Counts are exact up to 2**24 data points per accumulation period in
    float32 states; use ``metric.set_dtype(torch.float64)`` beyond that.
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

    def _add_sum_states(self, num_sums: int) -> None:
        self._num_sums = num_sums
        self.add_state(f"{self._prefix}_totals", torch.zeros(num_sums + 2), dist_reduce_fx="sum")

    def _constants_for(self, key: tuple, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Cached ``scale``, ``offset``, zero and skip-row tensors on ``like``'s device.

        Built once per (constants, device, dtype), so the per-batch path copies nothing host-to-device.
        """
        full_key = (key, like.device, like.dtype)
        found = self._constants.get(full_key)
        if found is None:
            scales, offsets, count = key
            n = self._num_sums + 2
            scale = torch.tensor([*scales, 0.0, 0.0], dtype=like.dtype)
            offset = torch.tensor([*offsets, float(count), 0.0], dtype=like.dtype)
            skip = torch.zeros(n, dtype=like.dtype)
            skip[-1] = 1.0
            if len(self._constants) > 64:  # a few batch sizes per run; never grow without bound
                self._constants.clear()
            found = tuple(t.to(like.device) for t in (scale, offset, torch.zeros((), dtype=like.dtype), skip))
            self._constants[full_key] = found
        return found

    def _accumulate_affine(self, terms: Sequence[tuple[Tensor | None, float, float]], count: int, like: Tensor) -> None:
        """Add batch sums given as ``raw * scale + offset`` terms (see ``functional.entropy.Affine``).

        One ``stack``, one fused multiply-add, the finiteness check and one ``add_``.
        """
        key = (tuple(t[1] for t in terms), tuple(t[2] for t in terms), count)
        scale, offset, zero, skip = self._constants_for(key, like)
        raw = torch.stack([zero if t[0] is None else t[0].reshape(()) for t in terms] + [zero, zero])
        values = torch.addcmul(offset, raw, scale)
        ok = torch.isfinite(values).all()
        getattr(self, f"{self._prefix}_totals").add_(torch.where(ok, values, skip))

    def _add_totals(self, values: Tensor) -> None:
        """Add already-reduced ``[sums..., count, skipped]`` to the state: what ``update`` does for one batch.

        For callers that reduce many batches in one pass (the EntropyMonitor's flush). Marks the state
        as updated, as TorchMetrics' ``update`` wrapper does, so ``compute`` neither warns nor returns a
        cached value.
        """
        getattr(self, f"{self._prefix}_totals").add_(values)
        self._update_count += 1
        self._computed = None

    @property
    def num_skipped_batches(self) -> Tensor:
        """Number of batches skipped for non-finite values (a tensor; reading it as int syncs)."""
        return getattr(self, f"{self._prefix}_totals")[-1]

    def _check_finite(self, inputs: Mapping[str, Any]) -> None:
        key = first_nonfinite(inputs)
        if key is not None:
            raise ValueError(
                    f"{type(self).__name__}.update() got non-finite values (NaN or Inf) in `{key}`."
                    " Expected finite tensors; use nan_strategy='skip' to skip such batches instead."
                )

    def _accumulate(self, values: Tensor, count: int) -> None:
        """Add a batch's sums ``(num_sums,)`` and its point count unless any sum is non-finite."""
        ones, zeros = (1.0,) * self._num_sums, (0.0,) * self._num_sums
        _, offset, _, skip = self._constants_for((ones, zeros, count), values)
        ok = torch.isfinite(values).all()
        getattr(self, f"{self._prefix}_totals").add_(torch.where(ok, torch.cat([values, offset[-2:]]), skip))

    def synced_totals(self) -> Tensor:
        """A copy of the summed state vector ``[sums..., count, skipped]`` over all processes."""
        with self.sync_context(should_sync=True):
            return getattr(self, f"{self._prefix}_totals").clone()

    def _totals(self) -> tuple[Tensor, Tensor]:
        """Return (sums, count) and warn once if batches were skipped. Call from ``compute``."""
        totals = getattr(self, f"{self._prefix}_totals")
        skipped = int(totals[-1])
        if skipped and not self._warned_nonfinite:
            self._warned_nonfinite = True
            rank_zero_warn(
                f"{type(self).__name__} skipped {skipped} batch(es) whose inputs held NaN or Inf; the"
                " running sums exclude them. Pass nan_strategy='error' to find the offending key."
            )
        return totals[:-2], totals[-2]
