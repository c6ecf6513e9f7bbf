"""Per-stage buffer of the EntropyMonitor: cheap per-batch stash, vectorised flush into the metrics (private).

The batch hooks only detach and stash small tensors (``(B, H)`` encoder statistics, ``(B,)`` ELBOs,
the decoder log-variance reduced to one value per sample); nothing is synchronised with the device.
At the logging cadence :meth:`StageBuffer.flush` concatenates the stash, drops whole batches that
hold NaN/Inf (the one host sync, at logging time only), and feeds one update to each metric.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from lightning_entropy_vae.functional import _inputs as _in
from lightning_entropy_vae.functional.elbo import gaussian_elbo
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
        self.pending: list[dict[str, Any]] = []
        common = {"nan_strategy": nan_strategy}
        self.epoch_sum = EntropySumELBO(profile_decoder_variance=profiled, warn_fixed_variance=False, **common)
        self.epoch_elbo = GaussianELBO(**common)
        self.collapse = PosteriorCollapse(spec.latent_dim, criterion=criterion, threshold=threshold, **common)
        self.metrics = (self.epoch_sum, self.epoch_elbo, self.collapse)
        for m in self.metrics:
            m.to(device)
        # step-level windows are differences of the epoch metrics' summed states since the last log
        self._window_start: tuple[Tensor, Tensor] | None = None
        self.skipped = 0  # batches dropped for NaN/Inf since the last reset (a Python int, counted at flush)
        # rank-local sums of -loss and of the ELBO over the same points: equal iff the objective is the ELBO
        self.objective_sum: Tensor | float = 0.0
        self.objective_elbo_sum: Tensor | float = 0.0
        self.loss_scale = 1.0  # Lightning divides the returned loss by accumulate_grad_batches

    # ------------------------------------------------------------------------------------ hot path
    def record(self, kw: Mapping[str, Any], loss_scale: float) -> None:
        """Stash one batch. No host-device sync; D-sized tensors are reduced here."""
        spec = self.spec
        if spec.direct:
            self._update_direct(kw)
            return
        enc_mean, enc_logvar = _detached(kw["enc_mean"]), _detached(kw["enc_logvar"])
        entry: dict[str, Any] = {"enc_mean": enc_mean, "enc_logvar": enc_logvar, "n": enc_logvar.shape[0]}
        lv = _detached(kw["dec_logvar"])
        if spec.layout == "scalar":
            entry["dec_logvar"] = lv if lv.dim() == 0 else lv.reshape(())
        elif spec.layout == "per_dim":
            entry["dec_logvar"] = lv.float().mean()
        elif spec.layout == "per_sample":
            entry["dec_logvar"] = lv.reshape(lv.shape[0], -1).float().mean(-1, keepdim=True)
        else:  # per_z: (S, B, D) or (S, B, 1) -> (B, 1)
            entry["dec_logvar"] = lv.reshape(lv.shape[0], lv.shape[1], -1).float().mean((0, 2)).unsqueeze(-1)
        prior_logvar = kw.get("prior_logvar")
        if prior_logvar is not None:
            entry["prior_logvar"] = _detached(prior_logvar)
        if spec.has_elbo:
            entry["elbo"] = _detached(kw["elbo"])
        else:
            with torch.no_grad():
                entry["elbo"] = gaussian_elbo(**{k: v for k, v in kw.items() if k != "elbo"}, reduction="none")
        if self.profiled:
            entry["dec_sq_residual"] = self._sq_residual(kw)
        loss = kw.get("loss")
        if isinstance(loss, Tensor) and loss.dim() == 0 and loss_scale:
            entry["loss"] = _detached(loss)  # Lightning hands the training loss over detached already
            self.loss_scale = loss_scale
        self.pending.append(entry)
        if len(self.pending) >= MAX_PENDING:
            self.flush()

    @staticmethod
    def _sq_residual(kw: Mapping[str, Any]) -> Tensor | None:
        x, mean = kw.get("x"), kw.get("dec_mean")
        if x is None or mean is None:
            return None
        with torch.no_grad():  # shapes were checked on the stage's first batch
            return _squared_residual(*_residual_inputs(x.detach(), mean.detach(), "EntropyMonitor"))

    def _update_direct(self, kw: Mapping[str, Any]) -> None:
        """Distribution inputs: update the metrics per batch (their own NaN handling applies)."""
        kw = {k: (v.detach() if isinstance(v, Tensor) else v) for k, v in kw.items()}
        for m in self.metrics:
            m.update(kw)

    # ------------------------------------------------------------------------------ logging cadence
    def flush(self) -> None:
        """Concatenate the stash, drop batches with NaN/Inf, and update every metric once."""
        if not self.pending:
            return
        entries, self.pending = self.pending, []
        sizes = [e["n"] for e in entries]
        first = entries[0]
        device = first["enc_logvar"].device
        counts = torch.tensor(sizes).to(device)
        cat: dict[str, Any] = {
            "enc_mean": torch.cat([e["enc_mean"] for e in entries]),
            "enc_logvar": torch.cat([e["enc_logvar"] for e in entries]),
            "elbo": torch.cat([e["elbo"] for e in entries]),
            "data_dim": self.spec.data_dim,
        }
        if first["dec_logvar"].dim() == 0:  # one value per batch: stack, then one row per sample
            cat["dec_logvar"] = torch.stack([e["dec_logvar"] for e in entries]).repeat_interleave(counts).unsqueeze(-1)
        else:
            cat["dec_logvar"] = torch.cat([e["dec_logvar"] for e in entries])
        if "prior_logvar" in first:
            cat["prior_logvar"] = torch.stack([e["prior_logvar"] for e in entries]).repeat_interleave(counts, dim=0)
        if self.profiled and all(e.get("dec_sq_residual") is not None for e in entries):
            cat["dec_sq_residual"] = torch.cat([e["dec_sq_residual"] for e in entries])
        weights = counts.float()
        cat, weights = self._drop_nonfinite_batches(cat, sizes, counts, weights)
        if all("loss" in e for e in entries):  # the objective, to tell a beta != 1 or annealed loss
            loss = torch.stack([e["loss"] for e in entries]).float().nan_to_num(0.0)
            self.objective_sum = self.objective_sum - (loss * weights).sum() * self.loss_scale
            self.objective_elbo_sum = self.objective_elbo_sum + cat["elbo"].sum()
        if cat["elbo"].shape[0] == 0:
            return
        for m in self.metrics:
            m.update(cat)

    def _drop_nonfinite_batches(
        self, cat: dict[str, Any], sizes: list[int], counts: Tensor, weights: Tensor
    ) -> tuple[dict[str, Any], Tensor]:
        """Remove every batch that holds a NaN/Inf in any stashed tensor; count it in ``skipped``.

        NaN and Inf propagate through sums, so one sum per tensor tells whether anything is wrong;
        only then are rows located.
        """
        tensors = [v for v in cat.values() if isinstance(v, Tensor)]
        if bool(torch.isfinite(torch.stack([v.sum() for v in tensors])).all()):  # the one sync, at log cadence
            return cat, weights
        finite = torch.ones_like(cat["elbo"], dtype=torch.bool)
        for v in tensors:
            finite &= torch.isfinite(v.reshape(v.shape[0], -1).sum(-1))
        batch_id = torch.arange(len(sizes), device=finite.device).repeat_interleave(counts)
        bad = torch.zeros(len(sizes), device=finite.device).index_add_(0, batch_id, (~finite).float()) > 0
        self.skipped += int(bad.sum())
        keep = ~bad[batch_id]
        return {k: (v[keep] if isinstance(v, Tensor) else v) for k, v in cat.items()}, weights * ~bad

    # ---------------------------------------------------------------------------------------- reads
    def compute_window(self) -> dict[str, Tensor]:
        """Entropy sum and ELBO over the points since the last call (synced over processes)."""
        self.flush()
        now = (self.epoch_sum.synced_totals(), self.epoch_elbo.synced_totals())
        start = self._window_start if self._window_start is not None else tuple(torch.zeros_like(t) for t in now)
        self._window_start = now
        d_sum, d_elbo = now[0] - start[0], now[1] - start[1]
        return {"sum": self.epoch_sum._from_totals(d_sum[:-2], d_sum[-2])["sum"], "elbo": d_elbo[0] / d_elbo[-2]}

    def compute_epoch(self) -> tuple[dict[str, Tensor], Tensor, dict[str, Tensor]]:
        self.flush()
        return self.epoch_sum.compute(), self.epoch_elbo.compute(), self.collapse.compute()

    def reset_epoch(self, carry_window: bool = False) -> None:
        """Start a new epoch. With ``carry_window`` the batches after the last step log stay in the next window.

        Carrying reads the synced states, a collective: call it on every rank (epoch start).
        """
        carry = None
        if carry_window and (self.pending or int(self.epoch_elbo.gaussian_elbo_totals[-2]) > 0):
            self.flush()
            now = (self.epoch_sum.synced_totals(), self.epoch_elbo.synced_totals())
            start = self._window_start or tuple(torch.zeros_like(t) for t in now)
            carry = tuple(s - n for s, n in zip(start, now))  # negative: the next window adds it back
        self.pending = []
        self._window_start = carry
        for m in self.metrics:
            m.reset()
        self.skipped = 0
        self.objective_sum = self.objective_elbo_sum = 0.0
