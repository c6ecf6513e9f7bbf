"""Returned tensors that alias trainable parameters, kept as the value the step's forward pass used (private).

A step that returns ``"dec_logvar": self.dec_logvar`` hands over the live parameter. The optimizer updates
it in place, before ``on_train_batch_end`` and again before the callback reduces its pending batches at the
next logging step; read then, the entropy sum would mix the next steps' variance into this batch's
values (0.2 % off in the tests). So:

- ``on_before_optimizer_step`` (the optimizer has not stepped yet; once per batch, also under manual
  optimization with several optimizers) copies the parameters earlier batches returned: one ``clone``
  (one ``cat`` for several). Before the first batch end nothing is known, so every small trainable
  parameter is copied once.
- At batch end each returned tensor that aliases a parameter is swapped for the same view of that copy,
  or, when no optimizer step happened during the batch (gradient accumulation), for a copy made there.

A returned tensor is matched to a parameter by identity, else by its memory: the parameter whose storage
holds every element of the tensor (one bisection of the parameters' storage ranges finds whether it lies in one;
a parameter whose ``.data`` was replaced since is matched only in its new memory). Storage pointers alone are not
unique when parameters are views of one flat storage (FSDP's flat parameters); element ranges are. FSDP2's
DTensor parameters are not indexed: its forward pass runs on unsharded tensors of its own, which it frees after the
backward pass, so a returned tensor whose storage is freed by the batch end is an error that asks for a copy.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from typing import Any

import torch
from lightning_utilities.core.rank_zero import rank_zero_warn
from torch import Tensor, nn

#: First-batch copy limit per parameter (elements): variances and priors are small.
SMALL = 1 << 16


def _has_storage(p: Tensor) -> bool:
    """Whether a parameter's memory can be indexed: not a DTensor (FSDP2 shards them; its forward pass uses unsharded
    tensors of its own, which the optimizer does not update in place)."""
    try:
        p.untyped_storage().data_ptr()
    except RuntimeError:  # "Attempted to access the data pointer on an invalid python storage"
        return False
    return True


def _extent(t: Tensor) -> tuple[int, int]:
    """The element range ``[start, stop)`` of ``t`` in its storage."""
    start = t.storage_offset()
    if t.numel() == 0:
        return start, start
    return start, start + 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()) if size > 1)


class LiveParameters:
    def __init__(self) -> None:
        self.attach(None)

    def attach(self, module: nn.Module | None) -> None:
        """Index the module's trainable parameters (at the start of each fit)."""
        trainable = [p for p in module.parameters() if p.requires_grad] if module is not None else []
        params = [p for p in trainable if _has_storage(p)]
        #: sharded parameters (FSDP2's DTensors): the forward pass used unsharded tensors that FSDP frees after the
        #: backward pass, so :meth:`restore` checks every returned tensor's storage even with nothing to match
        self._sharded = len(params) < len(trainable)
        self._by_id = {id(p): p for p in params}
        self._by_storage: dict[int, list[nn.Parameter]] = {}
        for p in params:
            self._by_storage.setdefault(p.untyped_storage().data_ptr(), []).append(p)
        # the parameters' storages as sorted byte ranges [start, stop): a tensor whose first element lies in none of
        # them holds memory of its own (live allocations do not overlap), found with one bisection
        spans = sorted({(p.untyped_storage().data_ptr(), p.untyped_storage().data_ptr() + p.untyped_storage().nbytes())
                        for p in params})
        self._span_starts = [start for start, _ in spans]
        self._span_stops = [stop for _, stop in spans]
        self._small = [p for p in params if p.numel() <= SMALL]
        self._watched: list[nn.Parameter] | None = None  # what batches returned; None until the first batch end
        self._watched_ids: set[int] = set()
        self._plan(self._small)
        self._copies: dict[int, Tensor] = {}  # id(parameter) -> its value before this batch's optimizer step
        self._batch = 0
        self._copied_batch = -1  # the batch whose optimizer step the copies precede
        self._warned = False

    def _plan(self, params: list[nn.Parameter]) -> None:
        """What :meth:`before_optimizer_step` copies: one parameter (``_one``, with its id), or several at once."""
        self._one = params[0] if len(params) == 1 else None
        self._one_id = id(self._one)
        self._many = params if len(params) > 1 else None
        if self._many is not None:
            self._many_ids = [id(p) for p in params]
            self._many_sizes = [p.numel() for p in params]

    def start_batch(self) -> None:
        self._batch += 1

    def before_optimizer_step(self) -> None:
        """Copy the watched parameters before the batch's first optimizer step: one op."""
        if self._copied_batch == self._batch or not self._by_id:
            return
        self._copied_batch = self._batch
        one = self._one
        if one is not None:  # clone keeps the strides of a dense parameter
            self._copies = {self._one_id: one.detach().clone()}
        elif self._many is None:
            self._copies = {}
        else:
            params = self._many
            flat = torch.cat([p.detach().reshape(-1) for p in params])
            self._copies = {i: c.view(p.shape) for i, p, c in zip(self._many_ids, params, flat.split(self._many_sizes))}

    def parameter_of(self, value: Any) -> nn.Parameter | None:
        """The trainable parameter whose memory holds every element of ``value``, if any (metadata only)."""
        if not isinstance(value, Tensor):
            return None
        found = self._by_id.get(id(value))
        if found is not None or not self._by_id or (value._base is None and not value.is_leaf):
            return found  # a non-view result of an op never aliases a parameter
        return self._in_storage(value, value.untyped_storage())

    def _in_storage(self, value: Tensor, storage: Any) -> nn.Parameter | None:
        candidates = self._by_storage.get(storage.data_ptr())
        if candidates is None:
            return None
        start, stop = _extent(value)
        for p in candidates:
            if p.untyped_storage().data_ptr() != storage.data_ptr():  # its `.data` was replaced: it lives elsewhere
                continue
            p_start, p_stop = _extent(p)
            if p_start <= start and stop <= p_stop:
                return p
        return None

    def restore(self, kw: dict[str, Any], owner: Callable[[], str]) -> dict[str, Any]:
        """Swap returned tensors that alias a trainable parameter for the value the forward pass used.

        Metadata only, except for a copy when no optimizer step preceded (see the module docstring).
        ``owner()`` names the hook and module in an error message. Per tensor: a parameter is found by its id; any
        other tensor by its memory: one bisection of the parameters' storages by its first element's address says
        whether it lies in one (a view of a parameter, a detached parameter, a custom Function's output sharing its
        memory), and only then which parameter holds all of it. A tensor in memory of its own is detached.
        """
        by_id = self._by_id
        if not by_id and not self._sharded:
            return _detached(kw)
        first = self._watched is None
        if first:  # from now on the copies are of what batches returned
            self._watched = []
            self._plan(self._watched)
        out = {}
        starts, stops = self._span_starts, self._span_stops
        for key, value in kw.items():
            if key == "loss" or not isinstance(value, Tensor):
                out[key] = value
                continue
            p = by_id.get(id(value))
            if p is None:
                ptr = value.data_ptr()  # the storage's address plus the offset: the offset alone if it was freed
                if (ptr == value.storage_offset() * value.element_size() and value.numel()
                        and value.untyped_storage().nbytes() == 0):  # a gathered copy freed after the step (FSDP)
                    raise self._freed(key, value, owner)
                i = bisect_right(starts, ptr) - 1
                if i >= 0 and ptr < stops[i] and value.numel():  # in a parameter's storage: which parameter?
                    p = self._in_storage(value, value.untyped_storage())
                if p is None:  # memory of its own, or a detached view (no kernel): the autograd graph is not held
                    out[key] = value.detach() if value.requires_grad else value
                    continue
            if id(p) not in self._watched_ids:
                self._watched_ids.add(id(p))
                self._watched.append(p)
                self._plan(self._watched)
            if value is p and self._copied_batch == self._batch and id(p) in self._copies:
                out[key] = self._copies[id(p)]  # the parameter itself, copied before this batch's optimizer step
            else:
                out[key] = self._value_before_step(key, value, p, first)
        return out

    @staticmethod
    def _freed(key: str, value: Tensor, owner: Callable[[], str]) -> ValueError:
        return ValueError(
            f"{owner()}: `{key}` is {'a view of ' if value._base is not None else 'in '}a storage that"
            " was freed after the step (a sharded parameter, as FSDP reshards after the forward and"
            " backward passes), so it cannot be read at the next logging step. Return a copy from your"
            f" step: `\"{key}\": {key}.detach().clone()`."
        )

    def _value_before_step(self, key: str, value: Tensor, p: nn.Parameter, first: bool) -> Tensor:
        if self._copied_batch != self._batch:  # no optimizer step during this batch yet: the value is current
            return value.detach().clone()
        copy = self._copies.get(id(p))
        if copy is None:
            if not self._warned:
                self._warned = True
                why = "is larger than the first batch's copy limit" if first else "was not returned by earlier batches"
                rank_zero_warn(f"EntropyMonitor: `{key}` aliases a parameter that the optimizer updates in place and"
                               f" {why}; this batch reads it after the update. Later batches read it before.")
            return value.detach()
        if value is p:
            return copy
        return copy.as_strided(value.shape, value.stride(), copy.storage_offset() + value.storage_offset()
                               - p.storage_offset())


def _detached(kw: dict[str, Any]) -> dict[str, Any]:
    """Tensors that require grad as detached views (no kernel), so kept references do not hold autograd graphs."""
    return {k: v.detach() if isinstance(v, Tensor) and v.requires_grad else v for k, v in kw.items()}
