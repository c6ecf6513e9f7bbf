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
holds every element of the tensor. Storage pointers alone are not unique when parameters are views of one
flat storage (FSDP's flat parameters); element ranges are. FSDP2's DTensor parameters are not indexed: its
forward pass runs on unsharded tensors of its own, which it frees after the backward pass, so a returned
tensor whose storage is freed by the batch end is an error that asks for a copy.
"""

from __future__ import annotations

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
        self._small = [p for p in params if p.numel() <= SMALL]
        self._watched: list[nn.Parameter] | None = None  # what batches returned; None until the first batch end
        self._copies: dict[int, Tensor] = {}  # id(parameter) -> its value before this batch's optimizer step
        self._batch = 0
        self._copied_batch = -1  # the batch whose optimizer step the copies precede
        self._warned = False

    def start_batch(self) -> None:
        self._batch += 1

    def before_optimizer_step(self) -> None:
        """Copy the watched parameters before the batch's first optimizer step: one op."""
        if self._copied_batch == self._batch or not self._by_id:
            return
        params = self._watched if self._watched is not None else self._small
        self._copied_batch = self._batch
        if not params:
            self._copies = {}
            return
        if len(params) == 1:  # clone keeps the strides of a dense parameter
            self._copies = {id(params[0]): params[0].detach().clone()}
        else:
            flat = torch.cat([p.detach().reshape(-1) for p in params])
            self._copies = {id(p): c.view(p.shape) for p, c in zip(params, flat.split([p.numel() for p in params]))}

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
            p_start, p_stop = _extent(p)
            if p_start <= start and stop <= p_stop:
                return p
        return None

    def restore(self, kw: dict[str, Any], owner: Callable[[], str]) -> dict[str, Any]:
        """Swap returned tensors that alias a trainable parameter for the value the forward pass used.

        Metadata only, except for a copy when no optimizer step preceded (see the module docstring).
        ``owner()`` names the hook and module in an error message.
        """
        if not self._by_id and not self._sharded:
            return _detached(kw)
        first = self._watched is None
        if first:
            self._watched = []
        swaps = {}
        for key, value in kw.items():
            if key == "loss" or not isinstance(value, Tensor):
                continue
            p = self._by_id.get(id(value))
            if p is None and (value._base is not None or value.is_leaf):  # a view or a leaf may alias one
                storage = value.untyped_storage()
                if value.numel() and storage.nbytes() == 0:
                    raise ValueError(
                        f"{owner()}: `{key}` is {'a view of ' if value._base is not None else 'in '}a storage that"
                        " was freed after the step (a sharded parameter, as FSDP reshards after the forward and"
                        " backward passes), so it cannot be read at the next logging step. Return a copy from your"
                        f" step: `\"{key}\": {key}.detach().clone()`."
                    )
                p = self._in_storage(value, storage)
            if p is None:
                if value.requires_grad:  # a detached view (no kernel): the step's autograd graph is not held
                    swaps[key] = value.detach()
                continue
            if all(w is not p for w in self._watched):
                self._watched.append(p)
            swaps[key] = self._value_before_step(key, value, p, first)
        return {**kw, **swaps} if swaps else kw

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
