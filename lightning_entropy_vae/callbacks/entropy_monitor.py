r"""EntropyMonitor: live entropy-sum ELBO, its gap to the minibatch ELBO, and posterior-collapse flags."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning_utilities.core.rank_zero import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_entropy_vae.callbacks import _loggers
from lightning_entropy_vae.callbacks._convergence import ConvergenceTracker
from lightning_entropy_vae.callbacks._params import ParameterSnapshots
from lightning_entropy_vae.callbacks._stage import Spec, StageBuffer
from lightning_entropy_vae.functional import _inputs as _in
from lightning_entropy_vae.functional.collapse import COLLAPSE_CRITERIA, _check_criterion

__all__ = ["EntropyMonitor"]

_KEYS = frozenset((*_in.VOCABULARY, "loss"))
Extract = Callable[[pl.LightningModule, Any, Any], Mapping[str, Any]]


def relative_gap(gap: Any, entropy_sum: Any, floor: float) -> Any:
    r"""``gap / max(|sum|, floor)``: the relative gap, kept meaningful where the ELBO crosses zero (tensor or float)."""
    if isinstance(entropy_sum, Tensor):
        return gap / entropy_sum.abs().clamp_min(floor)
    return gap / max(abs(entropy_sum), floor)  # a NaN sum stays NaN: max(nan, floor) is nan


class EntropyMonitor(Callback):
    r"""Log the entropy-sum ELBO, its gap to the minibatch ELBO, and per-latent collapse flags.

    For a Gaussian VAE the ELBO converges to encoder entropy - prior entropy - decoder entropy
    (Damm et al., AISTATS 2023). This callback reads the encoder and decoder statistics your
    ``training_step`` / ``validation_step`` return, and logs to every logger of the Trainer.

    Your steps return the package's vocabulary (a dict or :class:`~lightning_entropy_vae.VAEOutput`)::

        return {"loss": loss, "x": x, "enc_mean": mu, "enc_logvar": logvar,
                "dec_mean": x_hat, "dec_logvar": self.dec_logvar,
                "elbo": elbo}  # elbo: (B,) per-sample ELBO at beta = 1, optional

    Logged metrics (``{stage}`` is ``train`` and ``val``; further validation loaders are ``val_1``, ...):

    - Epoch level: ``entropy/{stage}/encoder``, ``.../prior``, ``.../decoder``, ``.../sum`` (the
      entropy-sum ELBO over the epoch's data points), ``.../elbo`` (mean minibatch ELBO over the same
      points), ``.../gap`` (elbo - sum, nats per point), ``.../rel_gap`` (gap / max(\|sum\|, floor)),
      ``.../abs_rel_gap``, ``.../active_latents``, ``.../skipped_batches``; with a fixed decoder variance
      also ``.../sum_profiled``.
    - Per latent h (epoch level, when H <= ``max_latents_as_scalars``):
      ``entropy/{stage}/latent_entropy/{h}``, ``entropy/{stage}/latent_kl/{h}``,
      ``entropy/{stage}/collapsed/{h}``, plus ``entropy/{stage}/latent_entropy/threshold`` and
      ``.../prior`` lines; a histogram ``entropy/{stage}/latent_entropy_hist`` (TensorBoard, W&B).
    - Step level, every ``log_every_n_steps`` of the Trainer, aggregated over the batches since the
      last log: ``entropy/train_step/sum``, ``.../elbo``, ``.../gap``, ``.../rel_gap``, ``.../gap_ema``.

    Every key goes straight to the Trainer's loggers (as ``LearningRateMonitor`` does); the epoch-level
    keys also go into ``trainer.callback_metrics`` for ``EarlyStopping`` and ``ModelCheckpoint``.

    The relative gap divides by ``max(|sum|, rel_gap_floor * D)`` (D the data dimension): a plain
    ``gap / |sum|`` explodes where the ELBO crosses zero during training.

    Args:
        stages: which stages to monitor, from ``"train"`` and ``"val"``.
        collapse_criterion: ``"entropy"`` (the paper's, default), ``"kl"`` or ``"active_units"``.
        collapse_threshold: the criterion's threshold (default 1.0 nat, 0.01 nats, 0.01).
        rel_gap_floor: floor of the relative gap's denominator, in nats per data dimension.
        ema_decay: decay of the step-level gap's exponential moving average.
        max_latents_as_scalars: above this H, per-latent values go to histograms and counts only.
        log_histograms: write a per-epoch histogram of the per-latent entropies (TensorBoard, W&B).
        log_bar_chart_every_n_epochs: also write the bar chart as an image every n epochs (0: never;
            drawing costs tens of milliseconds).
        stop_on_convergence: stop training once ``abs_rel_gap`` of ``monitor_stage`` stays below
            ``tolerance`` for ``patience`` consecutive checks after ``warmup_epochs``.
        tolerance, patience, warmup_epochs: see ``stop_on_convergence``.
        monitor_stage: ``"train"``, ``"val"`` or ``None`` (default: val if validated, else train). On
            small data sets the held-out gap also holds the generalisation gap (an overfitting model's
            held-out ELBO stays below its entropy sum), so it may never reach the tolerance: use ``"train"``.
        require_elbo_objective: do not count epochs whose training loss is not -ELBO (beta != 1, KL
            annealing), averaged or summed over the batch; needs ``loss`` and ``elbo`` in the step output.
        extract: ``extract(pl_module, outputs, batch) -> mapping`` for modules whose step output cannot change.
        nan_strategy: ``"skip"`` (default) drops and counts batches holding NaN/Inf; ``"error"`` raises.
        warn_on_collapse: warn when a latent collapses during training.

    Example:
        >>> import lightning as L
        >>> from lightning_entropy_vae import EntropyMonitor
        >>> trainer = L.Trainer(callbacks=[EntropyMonitor(stop_on_convergence=True, tolerance=0.01)])
    """

    def __init__(
        self,
        stages: tuple[str, ...] | list[str] = ("train", "val"),
        collapse_criterion: str = "entropy",
        collapse_threshold: float | None = None,
        rel_gap_floor: float = 0.1,
        ema_decay: float = 0.9,
        max_latents_as_scalars: int = 64,
        log_histograms: bool = True,
        log_bar_chart_every_n_epochs: int = 0,
        stop_on_convergence: bool = False,
        tolerance: float = 0.01,
        patience: int = 3,
        warmup_epochs: int = 0,
        monitor_stage: str | None = None,
        require_elbo_objective: bool = True,
        extract: Extract | None = None,
        nan_strategy: str = "skip",
        warn_on_collapse: bool = True,
    ) -> None:
        stages = tuple(stages)
        if not stages or any(s not in ("train", "val") for s in stages):
            raise ValueError(f"Expected `stages` to be a non-empty subset of ('train', 'val'), but got {stages!r}.")
        if collapse_criterion not in COLLAPSE_CRITERIA:
            raise ValueError(
                f"Expected `collapse_criterion` to be one of {COLLAPSE_CRITERIA}, but got {collapse_criterion!r}."
            )
        _check_criterion(collapse_criterion, collapse_threshold)
        _positive("rel_gap_floor", rel_gap_floor)
        if isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float)) or not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"Expected `ema_decay` in [0, 1), but got {ema_decay!r}.")
        _non_negative_int("max_latents_as_scalars", max_latents_as_scalars)
        _non_negative_int("log_bar_chart_every_n_epochs", log_bar_chart_every_n_epochs)
        if extract is not None and not callable(extract):
            raise TypeError(f"Expected `extract` to be callable(pl_module, outputs, batch), but got {extract!r}.")
        if monitor_stage not in (None, "train", "val"):
            raise ValueError(f"Expected `monitor_stage` to be 'train', 'val' or None, but got {monitor_stage!r}.")
        if monitor_stage is not None and monitor_stage not in stages:
            raise ValueError(f"Expected `monitor_stage` {monitor_stage!r} among `stages` {stages!r}.")
        if nan_strategy not in ("skip", "error"):
            raise ValueError(f"Expected `nan_strategy` to be one of ('skip', 'error'), but got {nan_strategy!r}.")
        self.stages = stages
        self.collapse_criterion = collapse_criterion
        self.collapse_threshold = collapse_threshold
        self.rel_gap_floor = float(rel_gap_floor)
        self.ema_decay = float(ema_decay)
        self.max_latents_as_scalars = max_latents_as_scalars
        self.log_histograms = bool(log_histograms)
        self.log_bar_chart_every_n_epochs = log_bar_chart_every_n_epochs
        self.extract = extract
        self.monitor_stage = monitor_stage
        self.nan_strategy = nan_strategy
        self.warn_on_collapse = bool(warn_on_collapse)
        self.convergence = ConvergenceTracker(
            enabled=stop_on_convergence, tolerance=tolerance, patience=patience, warmup_epochs=warmup_epochs,
            require_elbo_objective=require_elbo_objective,
        )
        self._buffers: dict[str, StageBuffer] = {}
        self._snapshots = ParameterSnapshots()
        self._fixed_variance: bool | None = None
        self._gap_ema: float | None = None
        self._collapsed: list[bool] | None = None
        self._warned_collapse: set[int] = set()  # each latent is reported once per run
        self._layout_written = False
        self._last_global_step = -1
        self._train = "train" in self.stages
        self._loss_scale = 1.0
        self._callback_metrics_writable: bool | None = None  # found out on the first epoch end
        self._check_objective = self.convergence.enabled and self.convergence.require_elbo_objective
        # Lightning reads state_key on every hook call: build it once
        self._state_key = self._generate_state_key(
            stages=self.stages, collapse_criterion=self.collapse_criterion, stop=self.convergence.enabled
        )

    @property
    def state_key(self) -> str:
        return self._state_key

    @property
    def stop_reason(self) -> str | None:
        """Why training was stopped by convergence, or ``None``."""
        return self.convergence.stop_reason

    # ---------------------------------------------------------------------------------------- reading
    def _read(self, hook: str, stage: str, pl_module: pl.LightningModule, values: Any) -> dict:
        """The vocabulary keys of a step's output (or of ``extract``'s result); a clear error for anything else."""
        if not isinstance(values, Mapping):
            owner = f"EntropyMonitor ({hook} of {type(pl_module).__name__})"
            got = "None" if values is None else f"a {type(values).__name__}"
            step = "training_step" if stage == "train" else "validation_step"
            raise ValueError(
                f"{owner} expected `{step}` to return a dict (or VAEOutput) with the keys `enc_mean`,"
                f" `enc_logvar`, `dec_logvar`, `dec_mean`, `x` and optionally `elbo`, `prior_logvar`, but got {got}."
                " Return them from the step, for example:\n" + _in.EXAMPLE_RETURN
                + ("\nor pass EntropyMonitor(stages=('train',)) to skip validation." if stage != "train" else "")
            )
        return {k: values[k] for k in values if k in _KEYS}

    def _buffer(self, stage: str, hook: str, pl_module: pl.LightningModule, kw: dict, raw_logvar: Any) -> StageBuffer:
        buffer = self._buffers.get(stage)
        if buffer is not None:
            return buffer
        owner = f"EntropyMonitor ({hook} of {type(pl_module).__name__})"
        spec = Spec(kw, owner)
        if stage == "train" and self._fixed_variance is None:
            lv = raw_logvar  # as returned: a snapshot would never require grad
            # a detached learnable parameter (`self.dec_logvar.detach()`) is not a fixed variance
            self._fixed_variance = (isinstance(lv, Tensor) and not lv.requires_grad and lv.dim() <= 1
                                    and not self._snapshots.aliases_trainable(lv))
            if self._fixed_variance:
                rank_zero_warn(
                    f"{owner}: `dec_logvar` does not require grad, so the decoder variance is fixed (VAE-0 / plain MSE"
                    " training). The ELBO of such a model does not converge to the entropy sum; their gap stays"
                    " 0.5*(D - R/sigma^2) per point. Also logging `sum_profiled`: the entropy sum at the optimal"
                    " variance sigma^2* = mean squared residual, which a learned variance would reach."
                )
        device = kw["enc_logvar"].device if isinstance(kw.get("enc_logvar"), Tensor) else pl_module.device
        buffer = StageBuffer(
            spec, profiled=bool(self._fixed_variance), criterion=self.collapse_criterion,
            threshold=self.collapse_threshold, nan_strategy=self.nan_strategy, device=device,
        )
        self._buffers[stage] = buffer
        return buffer

    def _check_nan_error(self, kw: Mapping[str, Any], owner: str) -> None:
        key = _in.first_nonfinite({k: kw[k] for k in kw if k in _KEYS and k != "loss"})
        if key is not None:
            raise ValueError(f"{owner} got non-finite values (NaN or Inf) in `{key}` (nan_strategy='error').")

    def _record(self, hook: str, stage: str, trainer: pl.Trainer, pl_module: pl.LightningModule,
                outputs: Any, batch: Any) -> None:
        values = self.extract(pl_module, outputs, batch) if self.extract is not None else outputs
        buffer = self._buffers.get(stage)
        # hot path: a plain dict after the stage's first batch is read as is (the buffer takes only its keys)
        kw = values if buffer is not None and type(values) is dict else self._read(hook, stage, pl_module, values)
        if stage == "train":
            raw_logvar = kw.get("dec_logvar")
            kw = self._snapshots.restore(kw)
            if buffer is None:
                buffer = self._buffer(stage, hook, pl_module, kw, raw_logvar)
        elif buffer is None:
            buffer = self._buffer(stage, hook, pl_module, kw, None)
        if self.nan_strategy == "error":
            self._check_nan_error(kw, f"EntropyMonitor ({hook} of {type(pl_module).__name__})")
        # the loss is stashed only for the objective check of convergence stopping
        try:
            buffer.record(kw, loss_scale=self._loss_scale if stage == "train" and self._check_objective else 0.0)
        except KeyError as err:  # a key of the stage's first batch is missing now
            raise ValueError(
                f"EntropyMonitor ({hook} of {type(pl_module).__name__}) expected `{err.args[0]}` in every batch's"
                f" output, as in the stage's first batch, but got the keys {sorted(str(k) for k in kw)}."
            ) from None

    # ---------------------------------------------------------------------------------------- hooks
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._snapshots.attach(pl_module)
        self._loss_scale = float(trainer.accumulate_grad_batches)
        self._layout_written = False  # once per fit: a resumed run may log to a new directory
        # a step-level log needs an optimizer step since the last batch: the first batch of an
        # accumulation window has not stepped (global_step is still the start value)
        self._last_global_step = trainer.global_step

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if "train" in self._buffers:
            self._buffers["train"].reset_epoch(carry_window=True)

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._train:
            self._snapshots.take()

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._train:
            return
        self._record("on_train_batch_end", "train", trainer, pl_module, outputs, batch)
        step = trainer.global_step
        stepped = step != self._last_global_step
        self._last_global_step = step
        every = trainer.log_every_n_steps
        if stepped and every and step % every == 0:
            self._log_step(trainer)

    def _log_step(self, trainer: pl.Trainer) -> None:
        window = self._buffers["train"].compute_window()  # host floats: one small copy per log step
        entropy_sum, elbo = window["sum"], window["elbo"]
        gap = elbo - entropy_sum
        prev = self._gap_ema
        if prev is None or not math.isfinite(prev):
            ema = gap
        elif math.isfinite(gap):
            ema = self.ema_decay * prev + (1.0 - self.ema_decay) * gap
        else:  # a window whose batches were all skipped (NaN gap) leaves the average as it was
            ema = prev
        self._gap_ema = ema
        floor = self.rel_gap_floor * self._buffers["train"].spec.data_dim
        values = {"sum": entropy_sum, "elbo": elbo, "gap": gap,
                  "rel_gap": relative_gap(gap, entropy_sum, floor),
                  "gap_ema": ema}
        # straight to the loggers, at the step Lightning uses for this batch's own step metrics
        _log_to_loggers(trainer, {f"entropy/train_step/{k}": v for k, v in values.items()}, trainer.global_step - 1)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        buffer = self._buffers.get("train")
        if buffer is None:
            return
        stats = self._log_epoch("train", trainer, pl_module, buffer)
        self._warn_on_new_collapse(trainer, stats["collapsed"])
        if self._convergence_stage() == "train":
            self.convergence.check(trainer, stats["abs_rel_gap"], buffer, stage="train")

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for stage, buffer in self._buffers.items():
            if stage.startswith("val"):
                buffer.reset_epoch()

    @override
    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if "val" not in self.stages or trainer.sanity_checking:
            return
        stage = "val" if dataloader_idx == 0 else f"val_{dataloader_idx}"
        self._record("on_validation_batch_end", stage, trainer, pl_module, outputs, batch)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        for stage in sorted(s for s in self._buffers if s.startswith("val")):
            stats = self._log_epoch(stage, trainer, pl_module, self._buffers[stage])
            if stage == "val" and self._convergence_stage() == "val":
                self.convergence.check(trainer, stats["abs_rel_gap"], self._buffers.get("train"), stage="val")

    def _convergence_stage(self) -> str:
        if self.monitor_stage is not None:
            return self.monitor_stage
        return "val" if "val" in self.stages and "val" in self._buffers else "train"

    # -------------------------------------------------------------------------------------- epochs
    def _log_epoch(self, stage: str, trainer: pl.Trainer, pl_module: pl.LightningModule,
                   buffer: StageBuffer) -> dict[str, Any]:
        sums, elbo, collapse = buffer.compute_epoch()  # collectives: every rank calls them here
        # both counts are rank-local (the metric's state is unsynced again after compute): sum over ranks
        skipped = trainer.strategy.reduce(buffer.epoch_sum.num_skipped_batches + buffer.skipped, reduce_op="sum")
        gap = elbo - sums["sum"]
        rel = relative_gap(gap, sums["sum"], self.rel_gap_floor * buffer.spec.data_dim)
        scalars = {
            "encoder": sums["encoder"], "prior": sums["prior"], "decoder": sums["decoder"], "sum": sums["sum"],
            "elbo": elbo, "gap": gap, "rel_gap": rel, "abs_rel_gap": rel.abs(),
            "active_latents": collapse["num_active"].to(elbo.dtype),
            "skipped_batches": skipped,
        }
        if "sum_profiled" in sums:
            scalars["sum_profiled"] = sums["sum_profiled"]
        per_latent = buffer.spec.latent_dim <= self.max_latents_as_scalars and bool(trainer.loggers)
        rows = {"latent_entropy": collapse["latent_entropy"], "latent_kl": collapse["latent_kl"],
                "collapsed": collapse["collapsed"]} if per_latent else {}
        stacked = torch.stack([v.detach().float() for v in scalars.values()])
        # one device-to-host copy for the scalars and the per-latent rows
        flat = torch.cat([stacked, *(r.detach().float() for r in rows.values()),
                          collapse["prior_latent_entropy"].detach().float().mean().reshape(1)]).cpu().tolist()
        keys = [f"entropy/{stage}/{name}" for name in scalars]
        self._publish(trainer, pl_module, dict(zip(keys, stacked.unbind())))
        metrics = dict(zip(keys, flat))
        if per_latent:
            metrics.update(self._per_latent_scalars(stage, flat[len(keys):]))
        _log_to_loggers(trainer, metrics, trainer.global_step)
        self._write_extras(trainer, stage, collapse, per_latent)
        return {"abs_rel_gap": metrics[f"entropy/{stage}/abs_rel_gap"], "collapsed": collapse["collapsed"].tolist()}

    def _publish(self, trainer: pl.Trainer, pl_module: pl.LightningModule, metrics: dict[str, Tensor]) -> None:
        """Put the epoch keys into ``trainer.callback_metrics``, where EarlyStopping and ModelCheckpoint read.

        Written directly: ``pl_module.log`` costs about 0.4 ms per key and epoch, and the values are
        already reduced over processes. Should a Lightning version hand out a copy of that dict, the
        keys go through ``pl_module.log`` instead (found out on the first epoch; loggers get them from us).
        """
        if self._callback_metrics_writable is not False:
            trainer.callback_metrics.update(metrics)
            if self._callback_metrics_writable is None:
                self._callback_metrics_writable = next(iter(metrics)) in trainer.callback_metrics
        if not self._callback_metrics_writable:
            for key, value in metrics.items():
                pl_module.log(key, value, on_step=False, on_epoch=True, logger=False)

    def _per_latent_scalars(self, stage: str, flat: list[float]) -> dict[str, float]:
        """Per-latent entropy, KL and flag (``flat``: the three rows, then the mean prior entropy) and the lines
        they overlay with: the threshold and the prior."""
        latent_dim = (len(flat) - 1) // 3
        width = len(str(latent_dim - 1))
        out = {}
        for i, name in enumerate(("latent_entropy", "latent_kl", "collapsed")):
            row = flat[i * latent_dim: (i + 1) * latent_dim]
            out.update({f"entropy/{stage}/{name}/{h:0{width}d}": v for h, v in enumerate(row)})
        prior = flat[-1]
        out[f"entropy/{stage}/latent_entropy/prior"] = prior
        if self.collapse_criterion == "entropy":
            margin = _in.LOG_2PI_E / 2 - _check_criterion("entropy", self.collapse_threshold)
            out[f"entropy/{stage}/latent_entropy/threshold"] = prior - margin
        return out

    def _write_extras(self, trainer: pl.Trainer, stage: str, collapse: dict[str, Tensor], per_latent: bool) -> None:
        if not trainer.is_global_zero or not trainer.loggers:
            return
        if not self._layout_written:
            stages = ["train"] * ("train" in self.stages) + ["val"] * ("val" in self.stages)
            _loggers.write_layouts(trainer.loggers, stages, per_latent)
            self._layout_written = True
        every = self.log_bar_chart_every_n_epochs
        figure = None
        if every and trainer.current_epoch % every == 0:
            import matplotlib.pyplot as plt

            figure, _ = self._buffers[stage].collapse.plot(collapse)
            plt.close(figure)
        if self.log_histograms or figure is not None:
            _loggers.write_latent_figures(trainer.loggers, stage, collapse, trainer.global_step,
                                          histogram=self.log_histograms, figure=figure)

    def _warn_on_new_collapse(self, trainer: pl.Trainer, collapsed: list[bool]) -> None:
        previous, self._collapsed = self._collapsed, collapsed
        if not self.warn_on_collapse or previous is None or len(previous) != len(collapsed):
            return
        new = [h for h, (was, now) in enumerate(zip(previous, collapsed))
               if now and not was and h not in self._warned_collapse]
        self._warned_collapse.update(new)
        if new:
            rank_zero_warn(
                f"EntropyMonitor: latent(s) {new} collapsed during epoch {trainer.current_epoch} (criterion"
                f" {self.collapse_criterion!r}): their posterior now matches the prior and they carry no information."
            )

    # -------------------------------------------------------------------------------------- resume
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "gap_ema": self._gap_ema,
            "collapsed": self._collapsed,
            "warned_collapse": sorted(self._warned_collapse),
            "fixed_variance": self._fixed_variance,
            "last_global_step": self._last_global_step,
            **self.convergence.state_dict(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ema = state_dict.get("gap_ema")
        self._gap_ema = None if ema is None else float(ema)
        self._collapsed = state_dict.get("collapsed")
        self._warned_collapse = set(state_dict.get("warned_collapse", []))
        self._fixed_variance = state_dict.get("fixed_variance")
        self._last_global_step = int(state_dict.get("last_global_step", -1))
        self.convergence.load_state_dict(state_dict)


def _log_to_loggers(trainer: pl.Trainer, metrics: dict[str, float], step: int) -> None:
    """Write floats straight to every logger (rank 0 only, as Lightning's loggers do), as LearningRateMonitor does.

    With an ``epoch`` entry, as Lightning adds to the metrics it logs itself (the CSV's epoch column).
    """
    if trainer.loggers:
        metrics = {**metrics, "epoch": trainer.current_epoch}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"Expected `{name}` to be a positive number, but got {value!r}.")


def _non_negative_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"Expected `{name}` to be a non-negative int, but got {value!r}.")
