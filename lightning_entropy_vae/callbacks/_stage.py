"""Per-stage buffer of the EntropyMonitor: cheap per-batch stash, one fused reduction into the metrics (private).

The batch hooks only detach and append a few tensors to lists (``(B, H)`` encoder statistics, the
``(B,)`` ELBOs, the decoder log-variance reduced to one value per batch or per point); nothing is
synchronised with the device. At the logging cadence :meth:`StageBuffer.flush` concatenates the
stash once, takes every column sum the three metrics need in one pass (per batch, so that batches
holding NaN/Inf are masked out without a host sync), and adds the reduced sums to the metrics' states.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from lightning_entropy_vae.functional import _inputs as _in
from lightning_entropy_vae.functional.collapse import _latent_sums_from_columns
from lightning_entropy_vae.functional.elbo import gaussian_elbo
from lightning_entropy_vae.functional.entropy import _decoder_entropy_from_sums
from lightning_entropy_vae.functional.stationary import _residual_inputs, _squared_residual
from lightning_entropy_vae.metrics import EntropySumELBO, GaussianELBO, PosteriorCollapse

#: Flush early once this many batches are pending, to bound memory between log steps.
MAX_PENDING = 256


def _detached(t: Tensor) -> Tensor:
    return t.detach() if t.requires_grad else t


class Spec:
    """What the first batch of a stage told us: sizes, input mode and decoder layout."""

    def __init__(self, kw: Mapping[str, Any], owner: str) -> None:
        d = _in.data(kw.get("x"))
        enc = _in.encoder(kw.get("enc_mean"), kw.get("enc_logvar"), kw.get("posterior"), owner=owner,
                          given=kw)
        if enc.mean is None:
            raise _in.missing_inputs_error(owner, "`enc_mean` and `enc_logvar` (or a `posterior`)", kw)
        self.batch, self.latent_dim = enc.logvar.shape
        prior = _in.prior(kw.get("prior_logvar"), kw.get("prior"), latent_dim=self.latent_dim, batch=self.batch)
        dec = _in.decoder(kw.get("dec_mean"), kw.get("dec_logvar"), kw.get("likelihood"), d, owner=owner,
                          given=kw)
        _in.check_batch(owner, encoder=self.batch, decoder=dec.batch_size, x=d.batch_size)
        self.data_dim = dec.data_dim
        self.layout = dec.layout
        #: distribution objects (or a per-sample prior) cannot be stashed as tensors: update per batch
        self.direct = any(kw.get(k) is not None for k in ("posterior", "prior", "likelihood")) or (
            prior.logvar is not None and prior.logvar.dim() != 1
        )
        self.has_prior = prior.logvar is not None
        self.has_elbo = kw.get("elbo") is not None
        if self.has_elbo:  # a mean ELBO () or a (B, 1) column would be averaged over the wrong count
            elbo_shape = tuple(_in.as_float_tensor("elbo", kw["elbo"]).shape)
            if elbo_shape != (self.batch,):
                raise ValueError(f"{owner} expected `elbo` of shape (B,) = ({self.batch},), one ELBO per sample,"
                                 f" but got {elbo_shape}.")
        if not self.has_elbo and (d.x is None or dec.mean is None):
            raise _in.missing_inputs_error(owner, "`elbo` (B,), or `x` and `dec_mean` to compute it", kw)


class StageBuffer:
    """Stash and metrics of one stage (``train``, ``val``, ``val_1``, ...)."""

    def __init__(self, spec: Spec, *, profiled: bool, criterion: str, threshold: float | None,
                 nan_strategy: str, device: torch.device) -> None:
        self.spec = spec
        self.profiled = profiled
        common = {"nan_strategy": nan_strategy}
        self.epoch_sum = EntropySumELBO(profile_decoder_variance=profiled, warn_fixed_variance=False, **common)
        self.epoch_elbo = GaussianELBO(**common)
        self.collapse = PosteriorCollapse(spec.latent_dim, criterion=criterion, threshold=threshold, **common)
        self.metrics = (self.epoch_sum, self.epoch_elbo, self.collapse)
        for m in self.metrics:
            m.to(device)
        self._clear_stash()
        self._sizes_key: tuple[tuple, tuple[Tensor, Tensor]] | None = None  # the last flush's batch sizes, on device
        # step-level windows are differences of the epoch metrics' summed states since the last log (host floats)
        self._window_start: list[float] | None = None
        self.skipped: Tensor | int = 0  # batches dropped for NaN/Inf since the last reset (a tensor after a flush)
        # rank-local sums of -loss and of the ELBO over the same points: equal iff the objective is the ELBO
        # (objective_sum reads each loss as a batch mean, objective_summed as a batch sum)
        self.objective_sum: Tensor | float = 0.0
        self.objective_summed: Tensor | float = 0.0
        self.objective_elbo_sum: Tensor | float = 0.0
        self.loss_scale = 1.0  # Lightning divides the returned loss by accumulate_grad_batches

    def _clear_stash(self) -> None:
        self._mean: list[Tensor] = []
        self._logvar: list[Tensor] = []
        self._elbo: list[Tensor] = []
        self._dec: list[Tensor] = []  # () per batch (scalar, per_dim layouts) or (B,) per point
        self._prior: list[Tensor] = []
        self._sq: list[Tensor] = []
        self._loss: list[Tensor] = []
        self._sizes: list[int] = []

    # ------------------------------------------------------------------------------------ hot path
    def record(self, kw: Mapping[str, Any], loss_scale: float) -> None:
        """Stash one batch. No host-device sync; D-sized tensors are reduced here.

        Raises ``KeyError(key)`` when a key the stage's first batch had is missing.
        """
        spec = self.spec
        if spec.direct:
            self._update_direct(kw)
            return
        logvar = kw["enc_logvar"]
        self._logvar.append(_detached(logvar))
        self._mean.append(_detached(kw["enc_mean"]))
        self._sizes.append(logvar.shape[0])
        lv = kw["dec_logvar"]
        layout = spec.layout
        if layout == "scalar":
            self._dec.append(_detached(lv) if lv.dim() == 0 else _detached(lv).reshape(()))
        elif layout == "per_dim":
            self._dec.append(_detached(lv).float().mean())
        elif layout == "per_sample":  # (B, D) or (B, 1) -> (B,)
            self._dec.append(_detached(lv).reshape(lv.shape[0], -1).float().mean(-1))
        else:  # per_z: (S, B, D) or (S, B, 1) -> (B,)
            self._dec.append(_detached(lv).reshape(lv.shape[0], lv.shape[1], -1).float().mean((0, 2)))
        if spec.has_prior:
            prior_logvar = kw.get("prior_logvar")
            if prior_logvar is None:
                raise KeyError("prior_logvar")  # the caller names the hook and the keys it got
            self._prior.append(_detached(prior_logvar))
        if spec.has_elbo:
            self._elbo.append(_detached(kw["elbo"]))
        else:
            with torch.no_grad():
                inputs = {k: kw[k] for k in _in.VOCABULARY if k != "elbo" and kw.get(k) is not None}
                self._elbo.append(gaussian_elbo(**inputs, reduction="none"))
        if self.profiled:
            with torch.no_grad():  # shapes were checked on the stage's first batch
                self._sq.append(_squared_residual(*_residual_inputs(kw.get("x"), kw.get("dec_mean"),
                                                                    "EntropyMonitor")))
        loss = kw.get("loss")
        if loss_scale and isinstance(loss, Tensor) and loss.dim() == 0:
            self._loss.append(_detached(loss))  # Lightning hands the training loss over detached already
            self.loss_scale = loss_scale
        if len(self._sizes) >= MAX_PENDING:
            self.flush()

    def _update_direct(self, kw: Mapping[str, Any]) -> None:
        """Distribution inputs: update the metrics per batch (their own NaN handling applies)."""
        kw = {k: (v.detach() if isinstance(v, Tensor) else v) for k, v in kw.items()}
        for m in self.metrics:
            m.update(kw)

    # ------------------------------------------------------------------------------ logging cadence
    def flush(self) -> None:
        """Reduce the stash into the three metrics in one pass; batches with NaN/Inf are masked out.

        Per batch k (``n_k`` points) the column sums of ``[logvar, exp(logvar), mean, mean^2, elbo,
        (decoder log-variance per point), (squared residual)]`` give every metric's sums through the
        functional helpers, one row of a table per batch; a batch is kept iff its row is finite (a NaN or
        Inf in any input propagates into it). No host-device sync: the mask stays on the device.
        """
        sizes = self._sizes
        if not sizes:
            return
        spec, k = self.spec, len(sizes)
        equal = sizes.count(sizes[0]) == k
        dtype = torch.promote_types(torch.promote_types(self._logvar[0].dtype, self._mean[0].dtype), torch.float32)
        # (K, B, ...) when the batches have one size (no copy beyond the stack), else (N, ...) and segment ids
        join = torch.stack if equal else torch.cat
        batch_id = None if equal else torch.repeat_interleave(
            torch.arange(k, device=self._logvar[0].device), torch.tensor(sizes, device=self._logvar[0].device))

        def per_batch(points: Tensor) -> Tensor:  # sum over each batch's points: (K, ...)
            if batch_id is None:
                return points.sum(1)
            return points.new_zeros(k, *points.shape[1:]).index_add_(0, batch_id, points)

        def joined(pieces: list[Tensor]) -> Tensor:
            t = join(pieces)
            return t if t.dtype == dtype else t.to(dtype)

        logvar, mean = joined(self._logvar), joined(self._mean)
        stats = torch.stack([per_batch(logvar), per_batch(logvar.exp()), per_batch(mean), per_batch(mean.square())])
        point_dec = spec.layout in ("per_sample", "per_z")
        per_point = [self._elbo] + [self._dec] * point_dec + [self._sq] * self.profiled
        # (K, 1 (+ 1) (+ 1)): elbo, (decoder log-variance per point), (squared residual)
        points = per_batch(torch.stack([joined(pieces) for pieces in per_point], dim=-1))
        counts, zeros = self._counts(sizes, stats.device, dtype)  # (K,) each
        dec_sum = points[:, 1] if point_dec else torch.stack(self._dec).to(dtype) * counts  # else one value per batch
        prior = torch.stack(self._prior).to(dtype) if spec.has_prior else None  # (K, H)
        rows = _latent_sums_from_columns(counts.unsqueeze(-1), *stats, prior)  # (K, 5, H)
        # one row per batch laid out as the three states [sums..., count, skipped], then loss * n and loss:
        # entropy-sum terms (encoder, prior, decoder, (squared residual, its element count)), the ELBO, latent rows
        decoder = _decoder_entropy_from_sums(counts, dec_sum, spec.data_dim)
        entropy_terms = [rows[:, 0].sum(-1), rows[:, 4].sum(-1), decoder]
        if self.profiled:
            entropy_terms += [points[:, -1], counts * spec.data_dim]
        objective = len(self._loss) == k  # -loss over the points, to tell a beta != 1 or annealed loss
        columns = [*entropy_terms, counts, zeros, points[:, 0], counts, zeros]
        if objective:  # -loss over the points read as a mean over the batch, and as a sum
            loss = torch.stack(self._loss).to(dtype).nan_to_num(0.0)
            columns += [loss * counts, loss]
        table = torch.cat([torch.stack(columns, dim=-1), rows.reshape(k, -1), torch.stack([counts, zeros], -1)], -1)
        # a NaN or Inf in any input reaches its batch's row (sums, exp, products with finite counts): mask it out
        finite = torch.isfinite(table).all(-1)
        totals = torch.where(finite.unsqueeze(-1), table, zeros.new_zeros(())).sum(0)
        n_sum, n_extra = len(entropy_terms) + 2, 2 * objective
        n_collapse = totals.shape[0] - n_sum - 3 - n_extra
        sum_part, elbo_part, extra, collapse_part = totals.split([n_sum, 3, n_extra, n_collapse])
        self.epoch_sum._add_totals(sum_part)
        self.epoch_elbo._add_totals(elbo_part)
        self.collapse._add_totals(collapse_part)
        self.skipped = self.skipped + (k - finite.sum())
        if objective:
            self.objective_sum = self.objective_sum - extra[0] * self.loss_scale
            self.objective_summed = self.objective_summed - extra[1] * self.loss_scale
            self.objective_elbo_sum = self.objective_elbo_sum + elbo_part[0]
        self._clear_stash()

    def _counts(self, sizes: list[int], device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """The batch sizes (and as many zeros) as tensors on ``device``; the last flush's sizes are cached."""
        key = (tuple(sizes), device, dtype)
        if self._sizes_key is None or self._sizes_key[0] != key:
            counts = torch.tensor(sizes, dtype=dtype).to(device)
            self._sizes_key = (key, (counts, torch.zeros_like(counts)))
        return self._sizes_key[1]

    # ---------------------------------------------------------------------------------------- reads
    def compute_window(self) -> dict[str, float]:
        """Entropy sum and ELBO over the points since the last call (synced over processes), as floats.

        One device-to-host copy of the two small state vectors; the differences are taken on the host.
        """
        self.flush()
        now = self._synced_totals()
        start = self._window_start if self._window_start is not None else [0.0] * len(now)
        self._window_start = now
        diff = [a - b for a, b in zip(now, start)]
        n_sum = len(self.epoch_sum.entropy_sum_totals)
        sums, elbo = diff[:n_sum], diff[n_sum:]
        entropy_sum = self.epoch_sum._from_totals(torch.tensor(sums[:-2], dtype=torch.float64),
                                                  torch.tensor(sums[-2], dtype=torch.float64))["sum"]
        elbo_count = elbo[-2]
        return {"sum": float(entropy_sum), "elbo": elbo[0] / elbo_count if elbo_count else float("nan")}

    def _synced_totals(self) -> list[float]:
        """Both step-window state vectors, summed over processes (a collective), as one host list."""
        return torch.cat([self.epoch_sum.synced_totals(), self.epoch_elbo.synced_totals()]).tolist()

    def compute_epoch(self) -> tuple[dict[str, Tensor], Tensor, dict[str, Tensor]]:
        self.flush()
        return self.epoch_sum.compute(), self.epoch_elbo.compute(), self.collapse.compute()

    def reset_epoch(self, carry_window: bool = False) -> None:
        """Start a new epoch. With ``carry_window`` the batches after the last step log stay in the next window.

        Carrying reads the synced states, a collective: call it on every rank (epoch start).
        """
        carry = None
        if carry_window and (self._sizes or int(self.epoch_elbo.gaussian_elbo_totals[-2]) > 0):
            self.flush()
            now = self._synced_totals()
            start = self._window_start or [0.0] * len(now)
            carry = [s - n for s, n in zip(start, now)]  # negative: the next window adds it back
        self._clear_stash()
        self._window_start = carry
        for m in self.metrics:
            m.reset()
        self.skipped = 0
        self.objective_sum = self.objective_summed = self.objective_elbo_sum = 0.0
