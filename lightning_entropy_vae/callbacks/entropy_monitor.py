r"""EntropyMonitor: live entropy-sum ELBO, its gap to the minibatch ELBO, and posterior-collapse flags.

The story of a batch: read the step's output (:mod:`._step_outputs`), keep references to its tensors
(:mod:`._pending`; returned parameters as the forward pass saw them, :mod:`._live_params`), and at the
logging cadence reduce the kept batches into the stage's metrics in one call each (:mod:`._stage_metrics`),
log (:mod:`._loggers`) and warn.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning_utilities.core.rank_zero import rank_zero_warn
from typing_extensions import override

from lightning_entropy_vae.callbacks import _loggers
from lightning_entropy_vae.callbacks._options import check_monitor_options
from lightning_entropy_vae.callbacks._publisher import Publisher
from lightning_entropy_vae.callbacks._recorder import Stage, StageRecorder
from lightning_entropy_vae.callbacks._step_outputs import read_output

__all__ = ["EntropyMonitor"]


Extract = Callable[[pl.LightningModule, Any, Any], Mapping[str, Any]]


class EntropyMonitor(Callback):
    r"""Log the entropy-sum ELBO, its gap to the minibatch ELBO, and per-latent collapse flags.

    For a Gaussian VAE the ELBO converges to encoder entropy - prior entropy - decoder entropy
    (Damm et al., AISTATS 2023). This callback reads the encoder and decoder statistics your
    ``training_step`` / ``validation_step`` return, and logs to every logger of the Trainer.

    Your steps return the package's vocabulary (a dict or :class:`~lightning_entropy_vae.VAEOutput`)::

        return {"loss": loss, "x": x, "enc_mean": mu, "enc_logvar": logvar,
                "dec_mean": x_hat, "dec_logvar": self.dec_logvar,
                "elbo": elbo}  # elbo: (B,) per-sample ELBO at beta = 1, optional

    Logged metrics (``{stage}`` is ``train``, ``val`` and ``test``; further validation and test loaders are
    ``val_1``, ``test_1``, ...; ``entropy`` is the ``prefix``):

    - Epoch level: ``entropy/{stage}/encoder``, ``.../prior``, ``.../decoder``, ``.../sum`` (the
      entropy-sum ELBO over the epoch's data points), ``.../elbo`` (mean minibatch ELBO over the same
      points), ``.../gap`` (elbo - sum, nats per point), ``.../rel_gap`` (gap / max(\|sum\|, floor)),
      ``.../abs_rel_gap``, ``.../active_latents``, ``.../skipped_batches``; with a fixed decoder variance
      also ``.../sum_profiled``.
    - Per latent h (epoch level, when H <= ``max_latents_as_scalars``):
      ``entropy/{stage}/latent_entropy/{h}``, ``entropy/{stage}/latent_kl/{h}``,
      ``entropy/{stage}/collapsed/{h}``, plus ``entropy/{stage}/latent_entropy/threshold`` and
      ``.../prior`` lines; a histogram ``entropy/{stage}/latent_entropy_hist`` (TensorBoard, W&B).
      TensorBoard gets only the rows in ``tensorboard_per_latent`` as scalars, the flags as a text table
      ``entropy/{stage}/latents``, and the lines a chart compares (``elbo_vs_sum``, ``latent_entropy_lines``)
      in runs of their own, ``{log_dir}/lines/{name}``, so each is drawn in its own colour.
    - Step level, every ``log_every_n_steps`` of the Trainer, aggregated over the batches since the
      last log: ``entropy/train_step/sum``, ``.../elbo``, ``.../gap``, ``.../rel_gap``, ``.../gap_ema``.

    Every key goes straight to the Trainer's loggers (as ``LearningRateMonitor`` does), at the step Lightning
    logs its own metrics of the same batch or epoch (the same ``step`` in a CSV); the epoch-level keys also go into
    ``trainer.callback_metrics`` for ``EarlyStopping`` and ``ModelCheckpoint``. ``trainer.test()`` logs
    ``entropy/test/*``: the held-out estimate on the test set.

    The relative gap divides by ``max(|sum|, rel_gap_floor * D)`` (D the data dimension): a plain
    ``gap / |sum|`` explodes where the ELBO crosses zero during training.

    Args:
        stages: which stages to monitor, from ``"train"``, ``"val"`` and ``"test"``. By default all three, where
            the test stage is monitored only if the test steps return the vocabulary (a ``test_step`` that
            returns nothing or only a loss is left alone); named explicitly, it must.
        collapse_criterion: ``"entropy"`` (the paper's, default), ``"kl"`` or ``"active_units"``.
        collapse_threshold: the criterion's threshold (default 1.0 nat, 0.01 nats, 0.01).
        rel_gap_floor: floor of the relative gap's denominator, in nats per data dimension.
        ema_decay: decay of the step-level gap's exponential moving average.
        max_latents_as_scalars: above this H, per-latent values go to histograms and counts only.
        log_histograms: write a per-epoch histogram of the per-latent entropies (TensorBoard, W&B).
        tensorboard_per_latent: the per-latent rows TensorBoard gets as scalars, from ``"latent_entropy"``,
            ``"latent_kl"``, ``"collapsed"`` (default: the entropies only; the other loggers get all three).
        log_bar_chart_every_n_epochs: also write the bar chart as an image every n epochs (0: never;
            drawing costs tens of milliseconds).
        extract: ``extract(pl_module, outputs, batch) -> mapping`` for modules whose step output cannot change.
        nan_strategy: ``"skip"`` (default) drops and counts batches holding NaN/Inf; ``"error"`` raises.
        warn_on_collapse: warn when a latent collapses during training.
        latent_groups: ``"channel"``: for latents of shape ``(B, C, h, w)`` (flattened to H = C*h*w) also log
            ``entropy/{stage}/channel_active/{c}`` and ``.../channel_entropy/{c}`` per channel, a readable summary
            where H is above ``max_latents_as_scalars``; ``None`` (default): no groups.
        prefix: the first part of every key (``"entropy"``): two monitors in one Trainer need two prefixes.

    Example:
        >>> import lightning as L
        >>> from lightning_entropy_vae import EntropyMonitor
        >>> trainer = L.Trainer(callbacks=[EntropyMonitor()])

    To stop training on convergence, add :class:`~lightning_entropy_vae.EntropyConvergence`, which reads what
    this callback publishes.
    """

    def __init__(
        self,
        stages: tuple[str, ...] | list[str] | None = None,
        collapse_criterion: str = "entropy",
        collapse_threshold: float | None = None,
        rel_gap_floor: float = 0.1,
        ema_decay: float = 0.9,
        max_latents_as_scalars: int = 64,
        log_histograms: bool = True,
        tensorboard_per_latent: tuple[str, ...] | list[str] = ("latent_entropy",),
        log_bar_chart_every_n_epochs: int = 0,
        extract: Extract | None = None,
        nan_strategy: str = "skip",
        warn_on_collapse: bool = True,
        latent_groups: str | None = None,
        prefix: str = "entropy",
    ) -> None:
        #: the test stage monitored only where the test steps return the vocabulary (not asked for by name)
        self._optional_test = stages is None
        stages, tensorboard_per_latent = check_monitor_options(
            stages=stages, prefix=prefix, collapse_criterion=collapse_criterion,
            collapse_threshold=collapse_threshold, rel_gap_floor=rel_gap_floor, ema_decay=ema_decay,
            max_latents_as_scalars=max_latents_as_scalars, log_bar_chart_every_n_epochs=log_bar_chart_every_n_epochs,
            tensorboard_per_latent=tensorboard_per_latent, extract=extract, nan_strategy=nan_strategy,
            latent_groups=latent_groups)
        self.latent_groups = latent_groups
        self.stages = stages
        self.collapse_criterion = collapse_criterion
        self.collapse_threshold = collapse_threshold
        self.rel_gap_floor = float(rel_gap_floor)
        self.ema_decay = float(ema_decay)
        self.max_latents_as_scalars = max_latents_as_scalars
        self.log_histograms = bool(log_histograms)
        self.log_bar_chart_every_n_epochs = log_bar_chart_every_n_epochs
        self.tensorboard_per_latent = tensorboard_per_latent
        self.extract = extract
        self.nan_strategy = nan_strategy
        self.warn_on_collapse = bool(warn_on_collapse)
        self.prefix = prefix
        self._publisher = Publisher(
            prefix=prefix, stages=stages, rel_gap_floor=self.rel_gap_floor, ema_decay=self.ema_decay,
            max_latents_as_scalars=max_latents_as_scalars, log_histograms=self.log_histograms,
            tensorboard_per_latent=tensorboard_per_latent, log_bar_chart_every_n_epochs=log_bar_chart_every_n_epochs,
            latent_groups=latent_groups, warn_on_collapse=self.warn_on_collapse, collapse_criterion=collapse_criterion)
        self._recorder = StageRecorder(extract=extract, nan_strategy=nan_strategy, criterion=collapse_criterion,
                                       threshold=collapse_threshold, objective=True)
        self._stages = self._recorder.stages  # the monitored stages, filled by their first batches
        self._train = "train" in self.stages
        self._objective_every_epoch = False  # watch_objective()
        self._reset_run()
        # Lightning reads state_key on every hook call: build it once
        # the default's key as before the test stage and the prefix: older checkpoints still restore
        keyed = tuple(s for s in self.stages if s != "test" or not self._optional_test)
        key: dict[str, Any] = {"stages": keyed, "collapse_criterion": self.collapse_criterion}
        if prefix != "entropy":
            key["prefix"] = prefix
        self._state_key = self._generate_state_key(**key)

    def _reset_run(self) -> None:
        """State of one fit (restored from a checkpoint by ``load_state_dict``, after ``setup``)."""
        self._recorder.fixed_variance = None
        self._publisher.reset_run()
        self._warned_bernoulli = False
        self._last_global_step = -1
        #: the answer to "is the loss the beta = 1 ELBO?" of the first training epoch (of the last one after
        #: :meth:`watch_objective`): ``(True | False | None, why)``; ``None`` while nothing could tell (fewer
        #: than 5 batches with a ``loss`` in the epoch)
        self.objective_check: tuple[bool | None, str] = (None, "not checked")

    @property
    def state_key(self) -> str:
        return self._state_key

    @property
    def fixed_decoder_variance(self) -> bool | None:
        """Whether this run's training steps return a fixed decoder variance (VAE-0, a plain MSE loss), whose gap to
        the entropy sum does not close; ``None`` before the first training batch."""
        return self._recorder.fixed_variance

    def watch_objective(self) -> None:
        """Check every training epoch whether the training loss is the beta = 1 ELBO up to a constant
        (:attr:`objective_check`; :class:`EntropyConvergence` calls this). Without it the monitor checks the first
        training epoch of each fit only: enough to warn once about a Bernoulli (BCE) loss, at no cost later."""
        self._objective_every_epoch = True

    # ---------------------------------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._recorder.clear()  # each run reads its own layouts: a reused callback may meet another model
        self._recorder.fixed_variance = None  # decided by each run's training (a resumed fit restores it)
        self._publisher.layout_written = False  # each run may log to another logger
        if stage == "fit":
            self._objective_every_epoch = False  # EntropyConvergence asks again when the fit starts
            self._reset_run()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._publisher.lines.close()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._recorder.live.attach(pl_module)
        self._publisher.layout_written = False  # once per fit: a resumed run may log to a new directory
        # a step-level log needs an optimizer step since the last batch: the first batch of an
        # accumulation window has not stepped (global_step is still the start value)
        self._last_global_step = trainer.global_step

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._recorder.skipped_none["train"] = 0
        if "train" in self._stages:
            # epochs too short for the objective check (the loss-convention check) pool their batches: each
            # batch's loss, ELBO and KL relate the same way whatever the weights, unless the loss changes (beta
            # annealing), which EntropyConvergence's per-epoch check must see
            pool = not self._objective_every_epoch and self.objective_check[0] is None
            self._stages["train"].metrics.reset_epoch(carry_window=True, carry_objective=pool)

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._recorder.start_batch(record=self._train)  # a Capture records this step's forward pass, or nothing
        if self._train:
            self._recorder.live.start_batch()
            # Lightning divides the returned loss by this; a GradientAccumulationScheduler sets it per epoch
            self._recorder.loss_scale = trainer.accumulate_grad_batches

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if self._train:
            self._recorder.live.before_optimizer_step()

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._train:
            return
        self._recorder.keep("on_train_batch_end", "train", pl_module, outputs, batch)
        # Lightning's cadence for its own step metrics: batches that stepped (one per batch, however many optimizers
        # stepped), and under automatic optimization only a batch that ends an accumulation window
        stepped = trainer.global_step != self._last_global_step or not pl_module.automatic_optimization
        self._last_global_step = trainer.global_step
        every = trainer.log_every_n_steps
        # the step keys go to loggers only: without one, the kept batches wait for the epoch end (or a full
        # stash), unless nan_strategy="error" asks to fail within log_every_n_steps of a bad batch
        if (stepped and every and (_loggers.logger_step(trainer) + 1) % every == 0
                and (trainer.loggers or self.nan_strategy == "error") and "train" in self._stages):
            self._log_step(trainer, pl_module, self._stages["train"])

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        current = self._stages.get("train")
        if current is None:
            self._no_output("train", "on_train_epoch_end", trainer, pl_module)
            return
        stats = self._log_epoch("train", current, trainer, pl_module)
        self._publisher.warn_on_new_collapse(trainer, stats["collapsed"], current.layout.latent_shape)
        if self._recorder.objective and current.metrics.track_objective:
            objective = current.metrics.objective
            self.objective_check = (objective.verdict() if "loss" in current.layout.kept
                                    else (None, "the training steps return no `loss`"))
            why = objective.bernoulli() if "loss" in current.layout.kept else None
            # after the first epoch that could tell, only if asked: the regression's per-batch KL (and Bernoulli
            # ELBO) cost a logging step about half as much again
            current.metrics.track_objective = self._objective_every_epoch or self.objective_check[0] is None
            if why is not None and not self._warned_bernoulli:
                self._warned_bernoulli = True
                rank_zero_warn(
                    "EntropyMonitor: the training loss is a Bernoulli (BCE) ELBO of the returned `dec_mean`, not a"
                    f" Gaussian one ({why}). The logged ELBO, entropy sum and gap are those of a Gaussian decoder"
                    " N(dec_mean, exp(dec_logvar)), which this model does not have: they say nothing about its"
                    " convergence. The entropy-sum result holds for Gaussian decoders only."
                )

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_held_out_epoch("val")

    @override
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_held_out_epoch("test")

    def _start_held_out_epoch(self, kind: str) -> None:
        for stage, current in self._stages.items():
            if stage.startswith(kind):
                current.pending.clear()
                current.metrics.reset_epoch(carry_window=False)
                self._recorder.skipped_none[stage] = 0

    @override
    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        self._recorder.start_batch(record="val" in self.stages and not trainer.sanity_checking)

    @override
    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if "val" not in self.stages or trainer.sanity_checking:
            return
        stage = "val" if dataloader_idx == 0 else f"val_{dataloader_idx}"
        self._recorder.keep("on_validation_batch_end", stage, pl_module, outputs, batch)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._end_held_out_epoch("val", "on_validation_epoch_end", trainer, pl_module)

    @override
    def on_test_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                            batch_idx: int, dataloader_idx: int = 0) -> None:
        self._recorder.start_batch(record="test" in self.stages)

    @override
    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        if "test" not in self.stages:
            return
        stage = "test" if dataloader_idx == 0 else f"test_{dataloader_idx}"
        self._recorder.keep("on_test_batch_end", stage, pl_module, outputs, batch, optional=self._optional_test)

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end_held_out_epoch("test", "on_test_epoch_end", trainer, pl_module)

    def _end_held_out_epoch(self, kind: str, hook: str, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if kind in self.stages and kind not in self._stages:
            self._no_output(kind, hook, trainer, pl_module)
        for stage in sorted(s for s in self._stages if s.split("_")[0] == kind):
            self._log_epoch(stage, self._stages[stage], trainer, pl_module)

    def _no_output(self, stage: str, hook: str, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """An epoch whose every step returned None: an error for validation and test (their steps return
        nothing), a warning for training (each None is Lightning's "skip this batch")."""
        skipped = self._recorder.skipped_none.get(stage, 0)
        if not skipped:
            return
        if stage != "train":
            read_output(0, hook, stage, pl_module, got=f"None from all {skipped} batches of the epoch")
        self._publisher.warn_all_skipped(stage, trainer.current_epoch, skipped)

    # ---------------------------------------------------------------------------------------- logs
    def _log_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, current: Stage) -> None:
        self._recorder.reduce(current, "on_train_batch_end", pl_module)
        self._publisher.step(trainer, current)

    def _log_epoch(self, stage: str, current: Stage, trainer: pl.Trainer,
                   pl_module: pl.LightningModule) -> dict[str, Any]:
        hook = {"train": "on_train_epoch_end", "test": "on_test_epoch_end"}.get(stage.split("_")[0],
                                                                             "on_validation_epoch_end")
        self._recorder.reduce(current, hook, pl_module)
        return self._publisher.epoch(stage, current, trainer, pl_module, self._recorder.skipped_none.get(stage, 0))

    # -------------------------------------------------------------------------------------- resume
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "gap_ema": self._publisher.gap_ema,
            "collapsed": self._publisher.collapsed,
            "warned_collapse": sorted(self._publisher.warned_collapse),
            "fixed_variance": self._recorder.fixed_variance,
            "last_global_step": self._last_global_step,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ema = state_dict.get("gap_ema")
        self._publisher.gap_ema = None if ema is None else float(ema)
        self._publisher.collapsed = state_dict.get("collapsed")
        self._publisher.warned_collapse = set(state_dict.get("warned_collapse", []))
        self._recorder.fixed_variance = state_dict.get("fixed_variance")
        self._last_global_step = int(state_dict.get("last_global_step", -1))

