"""Values that alias live parameters, restored to what the batch's forward pass used (private).

A step that returns ``"dec_logvar": self.dec_logvar`` hands over the live ``nn.Parameter``; by the
time ``on_train_batch_end`` runs the optimizer has updated it in place, and the entropy sum would
use the next step's variance (off by about 0.2 % here). We snapshot such parameters at
``on_train_batch_start`` and, at batch end, rebuild any returned tensor that shares a parameter's
storage (the parameter itself, a view such as ``expand``, or a ``detach()``) from the snapshot.
On the first batch every small parameter is snapshotted; afterwards only those seen in the output.

(Snapshotting at batch end for the next batch, kept while the parameter's version counter stands
still, was measured: the clone costs the same in either hook, so the simpler batch-start copy stays.)
"""

from __future__ import annotations

from typing import Any

import torch
from lightning_utilities.core.rank_zero import rank_zero_warn
from torch import Tensor, nn

#: First-batch snapshot limit per parameter (elements): variances and priors are small.
SMALL = 1 << 16
_SKIP = ("loss", "x")


class ParameterSnapshots:
    def __init__(self) -> None:
        self._by_storage: dict[int, nn.Parameter] = {}
        self._watched: list[nn.Parameter] | None = None  # None until the first batch told us
        self._snapshots: dict[int, Tensor] = {}
        self._aliases: list[tuple[str, nn.Parameter]] = []  # (output key, parameter) seen on the first batch
        self._warned = False

    def attach(self, module: nn.Module) -> None:
        self._by_storage = {p.untyped_storage().data_ptr(): p for p in module.parameters()}
        self._watched = None
        self._aliases = []

    def aliases_trainable(self, value: Any) -> bool:
        """Whether ``value`` shares storage with a parameter that requires grad (e.g. ``param.detach()``)."""
        if not isinstance(value, Tensor):
            return False
        p = self._by_storage.get(value.untyped_storage().data_ptr())
        return p is not None and p.requires_grad

    def take(self) -> None:
        """Batch start: copy the watched parameters (on the first batch, every small one)."""
        watched = self._watched
        if not self._by_storage or watched == []:
            return
        params = watched if watched is not None else [p for p in self._by_storage.values() if p.numel() <= SMALL]
        self._snapshots = {id(p): p.detach().clone() for p in params}

    def restore(self, kw: dict[str, Any]) -> dict[str, Any]:
        """Replace returned tensors that alias a parameter by the pre-step snapshot (same view)."""
        if not self._by_storage or self._watched == []:  # nothing aliases a parameter: nothing to do
            return kw
        if self._watched is None:  # first batch: which keys alias which parameters
            self._watched, self._aliases = [], []
            for key in kw:
                p = self._param_of(key, kw.get(key))
                if p is not None:
                    self._watched.append(p)
                    self._aliases.append((key, p))
        swaps = {}
        for key, p in self._aliases:  # usually the parameter itself: one identity test
            v = kw.get(key)
            snap = self._snapshots.get(id(p)) if v is p else None
            if snap is None:
                snap = self._view_of_snapshot(key, v)
            if snap is not None:
                swaps[key] = snap
        return {**kw, **swaps} if swaps else kw

    def _param_of(self, key: str, v: Any) -> nn.Parameter | None:
        """The parameter whose storage ``v`` shares, if any."""
        if key in _SKIP or not isinstance(v, Tensor) or not (v.is_leaf or v._base is not None):
            return None  # activations never alias parameters
        return self._by_storage.get(v.untyped_storage().data_ptr())

    def _view_of_snapshot(self, key: str, v: Any) -> Tensor | None:
        """``v`` (a parameter, a view of one or its ``detach()``) rebuilt on the snapshot; None if not aliasing."""
        p = self._param_of(key, v)
        if p is None:
            return None
        snap = self._snapshots.get(id(p))
        if snap is None:
            if not self._warned:
                self._warned = True
                rank_zero_warn(f"EntropyMonitor: `{key}` aliases a large parameter that the optimizer updates in"
                               " place; its first batch is read after the update. Return a copy to avoid this.")
            return None
        return snap if v is p else torch.as_strided(snap, v.size(), v.stride(), v.storage_offset() - p.storage_offset())
