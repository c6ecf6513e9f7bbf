"""From a stage's result to logged keys and warnings: functions of (values, options, trainer) (private).

The keys go straight to every logger, at the step Lightning logs its own metrics of the same batch or epoch
(:mod:`._loggers`); the epoch keys also go into ``trainer.callback_metrics``, where ``EarlyStopping``,
``ModelCheckpoint`` and :class:`~lightning_entropy_vae.EntropyConvergence` read them. TensorBoard and W&B also get
what only they can show (:mod:`._logger_extras`). Each function returns what the monitor keeps for later
(the gap's moving average, the collapse flags, the latents warned about); none keeps state of its own.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from lightning_utilities.core.rank_zero import rank_zero_info, rank_zero_warn

from lightning_entropy_vae.callbacks import _groups, _logger_extras, _loggers
from lightning_entropy_vae.callbacks._options import MonitorOptions
from lightning_entropy_vae.callbacks._stage import StageResult
from lightning_entropy_vae.functional import relative_gap

#: Keys of the objective check (training): 1/0/NaN for yes/no/cannot tell, and the fit's two coefficients.
OBJECTIVE_KEYS = ("objective_is_elbo", "objective_elbo_coef", "objective_kl_coef")
#: Keys of the gap window (training): the points-weighted mean gap over the last ``gap_window`` batches and its standard
#: error, nats per point, and the data dimension D (what EntropyConvergence's tolerance scales with).
GAP_WINDOW_KEYS = ("gap_window", "gap_window_se", "data_dim")


def step(options: MonitorOptions, trainer: Any, lines: _logger_extras.TensorBoardLines, window: tuple[float, float],
         data_dim: int, gap_ema: float | None) -> float | None:
    """Write the training step keys of the window since the last step log; return the gap's new moving average."""
    entropy_sum, elbo = window
    gap = elbo - entropy_sum
    if gap_ema is None or not math.isfinite(gap_ema):
        ema = gap
    elif math.isfinite(gap):
        ema = options.ema_decay * gap_ema + (1.0 - options.ema_decay) * gap
    else:  # a window whose batches were all skipped (NaN gap) leaves the average as it was
        ema = gap_ema
    values = {"sum": entropy_sum, "elbo": elbo, "gap": gap,
              "rel_gap": relative_gap(elbo, entropy_sum, data_dim=data_dim, floor=options.rel_gap_floor),
              "gap_ema": ema}
    at = _loggers.logger_step(trainer)  # the step Lightning uses for this batch's own step metrics
    keys = {options.key("train_step", k): v for k, v in values.items()}
    _loggers.log_to_loggers(trainer, keys, at)
    if trainer.is_global_zero:
        lines.write(trainer.loggers, _logger_extras.line_values("train_step", keys, options.prefix), at, flush=False)
    return ema


def epoch(options: MonitorOptions, trainer: Any, pl_module: Any, result: StageResult,
          lines: _logger_extras.TensorBoardLines, callback_metrics: _loggers.CallbackMetrics,
          write_layout: bool) -> list[bool] | None:
    """Write a stage's epoch keys; return its collapse flags (``None`` where no point was kept: unknown).

    ``write_layout``: also write TensorBoard's custom-scalars layout (once per fit and logger).
    """
    stage, prefix = result.stage, options.prefix
    per_latent = bool(trainer.loggers) and bool(result.collapse) and \
        result.collapse["latent_entropy"].shape[0] <= options.max_latents_as_scalars
    tensors, floats = _loggers.epoch_metrics(stage, result.sums, result.elbo, result.collapse, result.skipped,
                                             data_dim=result.data_dim, floor=options.rel_gap_floor,
                                             per_latent=per_latent, prefix=prefix)
    windows = _window_keys(options, result)
    floats.update(windows)
    tensors.update(_as_tensors(windows))
    if options.latent_groups is not None and trainer.loggers and result.collapse:
        floats.update(_groups.group_keys(stage, result.collapse, result.latent_shape, prefix=prefix))
    callback_metrics.publish(trainer, pl_module, tensors)
    # the step of Lightning's own epoch metrics: a training epoch's sit on the row of its last batch
    at = _loggers.logger_step(trainer, train_epoch_end=stage == "train")
    skips = (_logger_extras.tensorboard_skips(stage, result.collapse["latent_entropy"].shape[0],
                                              options.tensorboard_per_latent, prefix) if per_latent else set())
    _loggers.log_to_loggers(trainer, floats, at, skips)
    nothing = math.isnan(floats[options.key(stage, "active_latents")])  # no point kept: flags unknown
    if trainer.is_global_zero and trainer.loggers:
        _write_extras(options, trainer, result, lines, per_latent, floats, at, write_layout, nothing)
    if result.empty_ranks:
        empty_ranks_warning(stage, trainer.current_epoch, result.empty_ranks, result.world_size)
    return None if nothing else result.collapse["collapsed"].tolist()


def _window_keys(options: MonitorOptions, result: StageResult) -> dict[str, float]:
    """The training keys that run across epochs: the objective verdict and the gap window."""
    keys = {}
    if result.objective is not None:
        verdict = result.objective
        flag = math.nan if verdict.is_elbo is None else float(verdict.is_elbo)
        keys.update({options.key(result.stage, name): value
                     for name, value in zip(OBJECTIVE_KEYS, (flag, verdict.elbo_coef, verdict.kl_coef))})
    if result.gap_window is not None:
        keys.update({options.key(result.stage, name): float(value)
                     for name, value in zip(GAP_WINDOW_KEYS, result.gap_window)})
    return keys


def windows_only(options: MonitorOptions, trainer: Any, pl_module: Any, result: StageResult,
                 callback_metrics: _loggers.CallbackMetrics) -> None:
    """A training epoch end without a batch in this fit (a run resumed from a checkpoint written at its epoch's
    end): the keys that run across epochs, restored with the monitor's state, for whoever reads them."""
    callback_metrics.publish(trainer, pl_module, _as_tensors(_window_keys(options, result)))


def _as_tensors(floats: dict[str, float]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in floats.items()}


def _write_extras(options: MonitorOptions, trainer: Any, result: StageResult, lines: _logger_extras.TensorBoardLines,
                  per_latent: bool, floats: dict[str, float], at: int, write_layout: bool, nothing: bool) -> None:
    if write_layout:
        stages = ["train"] * ("train" in options.stages) + ["val"] * ("val" in options.stages)
        _logger_extras.write_layouts(trainer.loggers, stages, options.tensorboard_per_latent if per_latent else (),
                                     prefix=options.prefix)
    latents = per_latent and "latent_entropy" in options.tensorboard_per_latent
    lines.write(trainer.loggers, _logger_extras.line_values(result.stage, floats, options.prefix, latents=latents),
                at, flush=True)
    if nothing:  # no per-latent values to draw: a histogram of NaN fails in TensorBoard and W&B
        return
    every = options.log_bar_chart_every_n_epochs
    figure = None
    if every and trainer.current_epoch % every == 0:
        import matplotlib.pyplot as plt  # checked at construction (MonitorOptions.build)

        from lightning_entropy_vae.metrics import PosteriorCollapse

        figure, _ = PosteriorCollapse(result.collapse["latent_entropy"].shape[0]).plot(result.collapse)
        plt.close(figure)
    if options.log_histograms or figure is not None or per_latent:
        _logger_extras.write_latent_figures(trainer.loggers, result.stage, result.collapse, at,
                                            histogram=options.log_histograms, figure=figure, table=per_latent,
                                            prefix=options.prefix)


def collapse_warning(options: MonitorOptions, epoch_index: int, previous: list[bool] | None,
                     collapsed: list[bool] | None, warned: frozenset[int],
                     latent_shape: tuple[int, ...] = ()) -> frozenset[int]:
    """Warn once per latent that collapses during training (compared with the last training epoch); return the
    latents warned about so far."""
    if not options.warn_on_collapse or previous is None or collapsed is None or len(previous) != len(collapsed):
        return warned
    new = [h for h, (was, now) in enumerate(zip(previous, collapsed)) if now and not was and h not in warned]
    if new:
        rank_zero_warn(
            f"EntropyMonitor: {_groups.named_latents(new, latent_shape)} collapsed during epoch {epoch_index}"
            f" (criterion {options.collapse_criterion!r}): their posterior now matches the prior and they carry no"
            " information."
        )
    return warned | frozenset(new)


def no_active_latent_warning(options: MonitorOptions, epoch_index: int, latent_dim: int) -> None:
    """Every latent is collapsed at the end of the fit's last training epoch (with what to try)."""
    rank_zero_warn(
        f"EntropyMonitor: no latent is active at the end of training (epoch {epoch_index}): all {latent_dim} latents"
        f" are collapsed (criterion {options.collapse_criterion!r}), their posteriors match the prior and the"
        " decoder ignores z. Things to try: a KL warm-up (anneal beta from 0 to 1), a smaller learning rate, free"
        " bits, a less expressive decoder, or fewer latents; and check that the encoder's log-variance is returned"
        " as `enc_logvar` (not the standard deviation)."
    )


def fit_summary(options: MonitorOptions, metrics: Any) -> None:
    """One line at the end of fit: the last training epoch's ELBO, entropy sum, gap and active latents."""
    values = {k: metrics.get(options.key("train", k)) for k in ("elbo", "sum", "rel_gap", "active_latents")}
    if any(v is None for v in values.values()):
        return
    elbo, entropy_sum, rel_gap, active = (float(v) for v in values.values())
    latents = f"{active:.0f}" if math.isfinite(active) else "unknown"
    rank_zero_info(
        f"EntropyMonitor: last training epoch: ELBO {elbo:.4g}, entropy sum {entropy_sum:.4g} nats per point (relative"
        f" gap {100 * rel_gap:.2f} %), {latents} active latents."
    )


def empty_epoch_warning(stage: str, epoch_index: int, skipped: int) -> None:
    """No batch of the epoch was kept: its values and flags are NaN."""
    rank_zero_warn(
        f"EntropyMonitor: no batch of the `{stage}` epoch {epoch_index} was kept ({skipped} skipped: NaN/Inf"
        " values, or a step that returned None), so its values, active latents and collapse flags are NaN."
    )


def empty_ranks_warning(stage: str, epoch_index: int, empty: int, world_size: int) -> None:
    """Some processes, not all, kept no batch of the epoch: the values are not reduced over processes."""
    rank_zero_warn(
        f"EntropyMonitor: {empty} of {world_size} processes kept no batch of the `{stage}` epoch {epoch_index}"
        " (every step returned None), so the epoch's values are each process's own, not reduced over processes;"
        " the loggers get rank 0's."
    )


def empty_rank_warning(stage: str, epoch_index: int, rank: int) -> None:
    """This process kept no batch of the epoch while others did: it publishes no keys for it (said by this process,
    whatever its rank)."""
    warnings.warn(
        f"EntropyMonitor: process {rank} kept no batch of the `{stage}` epoch {epoch_index} (every step returned None)"
        f" while other processes did: it publishes no `{stage}` keys for this epoch (a stock callback that monitors"
        " one of them on this process finds it missing); the processes that kept batches publish their own values.",
        UserWarning, stacklevel=2,
    )


def all_skipped_warning(epoch_index: int, skipped: int) -> None:
    """Every training step of the epoch returned None (Lightning's "skip this batch")."""
    rank_zero_warn(f"EntropyMonitor: every `training_step` of epoch {epoch_index} returned None ({skipped} batches"
                   " skipped); there is nothing to monitor.")


def bernoulli_warning(why: str) -> None:
    """The training loss fits a Bernoulli (BCE) ELBO of ``dec_mean``, not the Gaussian one the monitor computes."""
    rank_zero_warn(
        "EntropyMonitor: the training loss is a Bernoulli (BCE) ELBO of the returned `dec_mean`, not a Gaussian one"
        f" ({why}). The logged ELBO, entropy sum and gap are those of a Gaussian decoder N(dec_mean,"
        " exp(dec_logvar)), which this model does not have: they say nothing about its convergence. Return the"
        " decoder's logits as `dec_logits` (or its probabilities as `dec_probs`) instead of `dec_mean`/`dec_logvar`:"
        " the monitor then computes the Bernoulli decoder's entropy sum."
    )
