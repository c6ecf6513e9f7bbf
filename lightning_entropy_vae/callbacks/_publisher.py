"""Publishing one monitor's values (private): the step and epoch keys, where they go, and the warnings they raise.

The keys go straight to every logger, at the step Lightning logs its own metrics of the same batch or epoch;
the epoch keys also go into ``trainer.callback_metrics`` (:mod:`._loggers`). TensorBoard also gets its
custom-scalars layout, the lines a chart compares in runs of their own, and the per-latent figures
(:mod:`._logger_extras`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning_utilities.core.rank_zero import rank_zero_warn

from lightning_entropy_vae.callbacks import _groups, _logger_extras, _loggers
from lightning_entropy_vae.callbacks._recorder import Stage
from lightning_entropy_vae.callbacks._step_outputs import read_output
from lightning_entropy_vae.functional import relative_gap


class Publisher:
    """Writes a monitor's step and epoch values and warns about collapse and empty epochs; holds the run's state
    of those (the gap's moving average, the last collapse flags, what was warned about)."""

    def __init__(self, *, prefix: str, stages: tuple[str, ...], rel_gap_floor: float, ema_decay: float,
                 max_latents_as_scalars: int, log_histograms: bool, tensorboard_per_latent: tuple[str, ...],
                 log_bar_chart_every_n_epochs: int, latent_groups: str | None, warn_on_collapse: bool,
                 collapse_criterion: str) -> None:
        self.prefix, self.stages = prefix, stages
        self.rel_gap_floor, self.ema_decay = rel_gap_floor, ema_decay
        self.max_latents_as_scalars, self.log_histograms = max_latents_as_scalars, log_histograms
        self.tensorboard_per_latent = tensorboard_per_latent
        self.log_bar_chart_every_n_epochs, self.latent_groups = log_bar_chart_every_n_epochs, latent_groups
        self.warn_on_collapse, self.collapse_criterion = warn_on_collapse, collapse_criterion
        self.lines = _logger_extras.TensorBoardLines(prefix)
        self.callback_metrics = _loggers.CallbackMetrics()
        self.reset_run()

    def reset_run(self) -> None:
        self.gap_ema: float | None = None
        self.collapsed: list[bool] | None = None
        self.warned_collapse: set[int] = set()  # each latent is reported once per run
        self.warned_empty: set[str] = set()
        self.layout_written = False

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run continues from (plain types): the gap's average and the collapse flags and warnings."""
        return {"gap_ema": self.gap_ema, "collapsed": self.collapsed, "warned_collapse": sorted(self.warned_collapse)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ema = state_dict.get("gap_ema")
        self.gap_ema = None if ema is None else float(ema)
        self.collapsed = state_dict.get("collapsed")
        self.warned_collapse = set(state_dict.get("warned_collapse", []))

    # ----------------------------------------------------------------------------------------- step
    def step(self, trainer: Any, current: Stage) -> None:
        """The training step keys of the batches reduced since the last log (after the reduction)."""
        entropy_sum, elbo = current.metrics.window_values()  # host floats: one small copy per log step
        gap = elbo - entropy_sum
        prev = self.gap_ema
        if prev is None or not math.isfinite(prev):
            ema = gap
        elif math.isfinite(gap):
            ema = self.ema_decay * prev + (1.0 - self.ema_decay) * gap
        else:  # a window whose batches were all skipped (NaN gap) leaves the average as it was
            ema = prev
        self.gap_ema = ema
        values = {"sum": entropy_sum, "elbo": elbo, "gap": gap,
                  "rel_gap": relative_gap(elbo, entropy_sum, data_dim=current.layout.data_dim,
                                          floor=self.rel_gap_floor),
                  "gap_ema": ema}
        # straight to the loggers, at the step Lightning uses for this batch's own step metrics
        step = _loggers.logger_step(trainer)
        step_keys = {f"{self.prefix}/train_step/{k}": v for k, v in values.items()}
        _loggers.log_to_loggers(trainer, step_keys, step)
        if trainer.is_global_zero:
            self.lines.write(trainer.loggers, _logger_extras.line_values("train_step", step_keys, self.prefix), step,
                             flush=False)

    # ---------------------------------------------------------------------------------------- epoch
    def epoch(self, stage: str, current: Stage, trainer: Any, pl_module: Any, skipped_none: int) -> dict[str, Any]:
        """A stage's epoch keys (after the reduction): the metrics' values, reduced over processes."""
        sums, elbo, collapse = current.metrics.epoch_values()  # collectives: every rank calls them here
        # rank-local counts of dropped (NaN/Inf) and skipped (None) batches, summed over ranks
        skipped = trainer.strategy.reduce(torch.as_tensor(current.metrics.dropped, device=elbo.device)
                                          + skipped_none, reduce_op="sum")
        layout = current.layout
        per_latent = layout.latent_dim <= self.max_latents_as_scalars and bool(trainer.loggers)
        tensors, floats = _loggers.epoch_metrics(stage, sums, elbo, collapse, skipped, data_dim=layout.data_dim,
                                                 floor=self.rel_gap_floor, per_latent=per_latent, prefix=self.prefix)
        if self.latent_groups is not None and trainer.loggers:
            floats.update(_groups.group_keys(stage, collapse, layout.latent_shape, prefix=self.prefix))
        self.callback_metrics.publish(trainer, pl_module, tensors)
        # the step of Lightning's own epoch metrics: a training epoch's sit on the row of its last batch
        step = _loggers.logger_step(trainer, train_epoch_end=stage == "train")
        skips = (_logger_extras.tensorboard_skips(stage, layout.latent_dim, self.tensorboard_per_latent, self.prefix)
                 if per_latent else set())
        _loggers.log_to_loggers(trainer, floats, step, skips)
        self._write_extras(trainer, stage, current, collapse, per_latent, floats, step)
        nothing = math.isnan(floats[f"{self.prefix}/{stage}/active_latents"])  # no point kept: flags unknown
        if nothing and stage not in self.warned_empty:
            self.warned_empty.add(stage)
            rank_zero_warn(
                f"EntropyMonitor: no batch of the `{stage}` epoch {trainer.current_epoch} was kept"
                f" ({int(floats[f'{self.prefix}/{stage}/skipped_batches'])} skipped: NaN/Inf values, or a step that"
                " returned None), so its values, active latents and collapse flags are NaN."
            )
        return {"abs_rel_gap": floats[f"{self.prefix}/{stage}/abs_rel_gap"],
                "collapsed": None if nothing else collapse["collapsed"].tolist()}

    def _write_extras(self, trainer: Any, stage: str, current: Stage, collapse: dict[str, torch.Tensor],
                      per_latent: bool, floats: dict[str, float], step: int) -> None:
        if not trainer.is_global_zero or not trainer.loggers:
            return
        if not self.layout_written:
            stages = ["train"] * ("train" in self.stages) + ["val"] * ("val" in self.stages)
            _logger_extras.write_layouts(trainer.loggers, stages, self.tensorboard_per_latent if per_latent else (),
                                         prefix=self.prefix)
            self.layout_written = True
        self.lines.write(trainer.loggers, _logger_extras.line_values(stage, floats, self.prefix), step, flush=True)
        every = self.log_bar_chart_every_n_epochs
        figure = None
        if every and trainer.current_epoch % every == 0:
            import matplotlib.pyplot as plt

            figure, _ = current.metrics.collapse.plot(collapse)
            plt.close(figure)
        if self.log_histograms or figure is not None or per_latent:
            _logger_extras.write_latent_figures(trainer.loggers, stage, collapse, step, histogram=self.log_histograms,
                                                figure=figure, table=per_latent, prefix=self.prefix)

    # ------------------------------------------------------------------------------------- warnings
    def warn_on_new_collapse(self, trainer: Any, collapsed: list[bool] | None,
                             latent_shape: tuple[int, ...] = ()) -> None:
        """Warn once per latent that collapses during training (compared with the last training epoch)."""
        if collapsed is None:  # an epoch without kept points says nothing about collapse
            return
        previous, self.collapsed = self.collapsed, collapsed
        if not self.warn_on_collapse or previous is None or len(previous) != len(collapsed):
            return
        new = [h for h, (was, now) in enumerate(zip(previous, collapsed))
               if now and not was and h not in self.warned_collapse]
        self.warned_collapse.update(new)
        if new:
            rank_zero_warn(
                f"EntropyMonitor: {_groups.named_latents(new, latent_shape)} collapsed during epoch"
                f" {trainer.current_epoch} (criterion"
                f" {self.collapse_criterion!r}): their posterior now matches the prior and they carry no information."
            )

    def no_output(self, stage: str, hook: str, trainer: Any, pl_module: Any, skipped: int) -> None:
        """An epoch whose every step returned None (``skipped`` of them): an error for validation and test (their steps
        return nothing), a warning, once per stage, for training (each None is Lightning's "skip this batch")."""
        if not skipped:
            return
        if stage != "train":
            read_output(0, hook, stage, pl_module, got=f"None from all {skipped} batches of the epoch")
        if stage not in self.warned_empty:
            self.warned_empty.add(stage)
            rank_zero_warn(f"EntropyMonitor: every `training_step` of epoch {trainer.current_epoch} returned None"
                           f" ({skipped} batches skipped); there is nothing to monitor.")
