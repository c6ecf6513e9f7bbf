"""Values that alias live parameters, restored to what the batch's forward pass used (private).

A step that returns ``"dec_logvar": self.dec_logvar`` hands over the live ``nn.Parameter``; by the
time ``on_train_batch_end`` runs the optimizer has updated it in place, and the entropy sum would
use the next step's variance (off by about 0.2 % here). We snapshot such parameters at
``on_train_batch_start`` and, at batch end, rebuild any returned tensor that shares a parameter's
storage (the parameter itself, a view such as ``expand``, or a ``detach()``) from the snapshot.
On the first batch every small parameter is snapshotted; afterwards only those seen in the output.
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
        self._keys: list[str] = []  # output keys seen aliasing a parameter on the first batch
        self._warned = False

    def attach(self, module: nn.Module) -> None:
        self._by_storage = {p.untyped_storage().data_ptr(): p for p in module.parameters()}
        self._watched = None
        self._keys: list[str] = []

    def aliases_trainable(self, value: Any) -> bool:
        """Whether ``value`` shares storage with a parameter that requires grad (e.g. ``param.detach()``)."""
        if not isinstance(value, Tensor):
            return False
        p = self._by_storage.get(value.untyped_storage().data_ptr())
        return p is not None and p.requires_grad

    def take(self) -> None:
        if not self._by_storage or self._watched == []:
            return
        params = self._watched if self._watched is not None else [
            p for p in self._by_storage.values() if p.numel() <= SMALL
        ]
        self._snapshots = {id(p): p.detach().clone() for p in params}

    def restore(self, kw: dict[str, Any]) -> dict[str, Any]:
        """Replace returned tensors that alias a parameter by the pre-step snapshot (same view)."""
        if not self._by_storage or self._watched == []:  # nothing aliases a parameter: nothing to do
            return kw
        first = self._watched is None
        keys = kw if first else self._keys
        seen: list[nn.Parameter] = []
        out = kw
        for key in keys:
            v = kw.get(key)
            if key in _SKIP or not isinstance(v, Tensor) or not (v.is_leaf or v._base is not None):
                continue  # activations never alias parameters
            p = self._by_storage.get(v.untyped_storage().data_ptr())
            if p is None:
                continue
            if first:
                seen.append(p)
                self._keys.append(key)
            snap = self._snapshots.get(id(p))
            if snap is None:
                if not self._warned:
                    self._warned = True
                    rank_zero_warn(f"EntropyMonitor: `{key}` aliases a large parameter that the optimizer updates in"
                                   " place; its first batch is read after the update. Return a copy to avoid this.")
                continue
            if out is kw:
                out = dict(kw)
            out[key] = snap if v is p else torch.as_strided(
                snap, v.size(), v.stride(), v.storage_offset() - p.storage_offset()
            )
        if first:
            self._watched = seen
        return out
