"""The batches since the last reduction: references on the hot path, one stacked batch at the cadence (private).

A batch hook only appends the step's (checked) tensors to a list: no device work. At the logging
cadence :meth:`PendingBatches.stack` concatenates them into one batch of N points (one ``cat`` per key;
values shared by a batch's points, such as a scalar ``dec_logvar`` or a ``(H,)`` ``prior_logvar``, become
one row per point), and :meth:`PendingBatches.finite` finds the batches holding NaN/Inf with one small
read to the host (with the returned losses). The metrics then take the stacked batch, of the finite
batches only, through their public ``update``: one call each.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_entropy_vae.callbacks._step_outputs import StageLayout

#: Reduce early once this many batches are pending, or this many bytes of their tensors: a bound on the
#: memory that references to D-sized tensors (``x``, ``dec_mean``, a per-point ``dec_logvar``) hold.
MAX_PENDING = 256
MAX_PENDING_BYTES = 64 << 20
#: Log-variances the formulas exponentiate (sign of the exponent): a batch whose exp overflows is dropped
#: like one holding NaN/Inf, so the metrics never see a finite input with a non-finite result.
EXPONENTIATED = {"enc_logvar": 1.0, "dec_logvar": -1.0, "prior_logvar": -1.0}


def _runs(sizes: list[int]) -> list[tuple[int, int]]:
    """``sizes`` as runs ``(batches, size)`` of equal batch sizes: usually one, or two with a short last batch."""
    runs: list[list[int]] = []
    for size in sizes:
        if runs and runs[-1][1] == size:
            runs[-1][0] += 1
        else:
            runs.append([1, size])
    return [(count, size) for count, size in runs]


class PendingBatches:
    """References to a stage's batches since the last reduction."""

    def __init__(self, layout: StageLayout) -> None:
        self.layout = layout
        self.clear()

    def clear(self) -> None:
        self.batches: list[dict[str, Any]] = []
        self.sizes: list[int] = []
        self._bytes = 0

    def __len__(self) -> int:
        return len(self.batches)

    def add(self, kw: dict[str, Any], batch: int) -> bool:
        """Keep one batch; return whether the stash is full (reduce it now)."""
        self.batches.append(kw)
        self.sizes.append(batch)
        self._bytes += batch * self.layout.bytes_per_point
        return len(self.batches) >= MAX_PENDING or self._bytes >= MAX_PENDING_BYTES

    def stack(self, batches: list[dict[str, Any]] | None = None,
              sizes: list[int] | None = None) -> dict[str, Any]:
        """The pending batches (or the given ones) as one batch of N points; call under no_grad."""
        layout = self.layout
        batches, sizes = (self.batches, self.sizes) if batches is None else (batches, sizes)
        stacked: dict[str, Any] = {}
        for key in layout.tensor_keys:
            axis = layout.batch_axis(key)
            values = [b[key] for b in batches]
            if axis is not None:
                stacked[key] = values[0] if len(values) == 1 else torch.cat(values, dim=axis)
                continue
            rows = torch.stack(values).reshape(len(values), -1)  # one value per batch: (K, k)
            if key == "dec_logvar" and layout.decoder_layout == "per_dim" and layout.has_elbo:
                # for the entropy a (D,) log-variance is its mean over the D dimensions: (K, 1), not (N, D)
                rows = rows.mean(-1, keepdim=True)
            stacked[key] = _per_point(rows, sizes)
        stacked["data_dim"] = layout.data_dim  # D, when neither x nor dec_mean is kept
        return stacked

    def finite(self, stacked: dict[str, Any],
               columns: tuple[Tensor, ...] = ()) -> tuple[list[bool], list[float] | None, list[list[float]]]:
        """Which pending batches hold only finite inputs, their losses if kept, and per-batch ``columns`` (each
        (K,)): one read to the host."""
        probe = self._probe(stacked)
        parts = [probe]
        has_loss = "loss" in self.layout.kept
        if has_loss:
            parts.append(torch.stack([b["loss"].reshape(()) for b in self.batches]).to(probe.dtype))
        parts += [c.to(probe.dtype) for c in columns]
        values = torch.cat(parts).tolist() if len(parts) > 1 else probe.tolist()
        k = len(self.batches)
        rows = [values[i * k:(i + 1) * k] for i in range(len(parts))]
        finite = [v - v == 0.0 for v in rows[0]]  # NaN and +-Inf give NaN
        return finite, (rows[1] if has_loss else None), rows[1 + has_loss:]

    def per_batch(self, per_point: Tensor) -> Tensor:
        """Sum a per-point vector (N,) of the pending batches within each batch: (K,)."""
        return _per_batch(per_point, self.sizes)

    def _probe(self, stacked: dict[str, Tensor]) -> Tensor:
        """Per batch (K,): a sum that is NaN/Inf iff some input of the batch is (or overflows in exp).

        Each key adds its sum over the batch's points, and an exponentiated log-variance also the exp of its
        maximum (of its minimum for ``exp(-t)``): exp is monotone, so it overflows iff some element's exp
        does, and only K values are exponentiated. NaN propagates through sums, maxima and exp alike.
        """
        total = None
        for key, t in stacked.items():
            if not isinstance(t, Tensor):  # data_dim
                continue
            if t.dtype in (torch.float16, torch.bfloat16):  # exp and sums as the metrics take them: in float32
                t = t.float()
            axis = self.layout.batch_axis(key) or 0
            points = (t.movedim(axis, 0) if axis else t).reshape(t.shape[axis], -1)  # (N, everything else)
            sign = EXPONENTIATED.get(key)
            columns = []
            for rows in _batch_rows(points, self.sizes):  # (batches, size * everything else) per run
                column = rows.sum(-1)
                if sign is not None:
                    column = column + (rows.amax(-1).exp() if sign > 0 else torch.exp(-rows.amin(-1)))
                columns.append(column)
            column = columns[0] if len(columns) == 1 else torch.cat(columns)
            total = column if total is None else total + column
        return total

def _batch_rows(points: Tensor, sizes: list[int]) -> list[Tensor]:
    """A per-point table (N, m) as one (batches, size * m) view per run of equal batch sizes."""
    out, start = [], 0
    for count, size in _runs(sizes):
        out.append(points[start:start + count * size].reshape(count, -1))
        start += count * size
    return out


def _per_batch(per_point: Tensor, sizes: list[int]) -> Tensor:
    """Sum a per-point vector (N,) within each batch: (K,)."""
    out = [rows.sum(-1) for rows in _batch_rows(per_point, sizes)]
    return out[0] if len(out) == 1 else torch.cat(out)


def _per_point(per_batch: Tensor, sizes: list[int]) -> Tensor:
    """Repeat each batch's row of ``per_batch`` (K, ...) for each of the batch's points: (N, ...)."""
    out, start = [], 0
    for count, size in _runs(sizes):
        out.append(per_batch[start:start + count].repeat_interleave(size, dim=0))
        start += count
    return out[0] if len(out) == 1 else torch.cat(out)
