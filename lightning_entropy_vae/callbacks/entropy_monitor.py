r"""EntropyMonitor: live entropy-sum ELBO, its gap to the minibatch ELBO, and posterior-collapse flags.

The story of a batch: read the step's output, keep references to its tensors (returned parameters as the forward
pass saw them) (:mod:`._recorder`), at the logging cadence reduce the kept batches into the stage's metrics in one
call each (:mod:`._stage_metrics`), log and warn (:mod:`._publisher`).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lightning_entropy_vae.callbacks import _loggers
from lightning_entropy_vae.callbacks._objective import ObjectiveWatch
from lightning_entropy_vae.callbacks._options import Extract, check_monitor_options, state_key_fields
from lightning_entropy_vae.callbacks._publisher import Publisher
from lightning_entropy_vae.callbacks._recorder import Stage, StageRecorder

__all__ = ["EntropyMonitor"]


class EntropyMonitor(Callback):
    r"""Log the entropy-sum ELBO, its gap to the minibatch ELBO, and per-latent collapse flags.

    For a Gaussian VAE the ELBO converges to encoder entropy - prior entropy - decoder entropy
    (Damm et al., AISTATS 2023). This callback reads the encoder and decoder statistics your
    ``training_step`` / ``validation_step`` return, and logs to every logger of the Trainer.

    Your steps return the package's vocabulary (a dict or :class:`~lightning_entropy_vae.VAEOutput`)::

        return {"loss": loss, "x": x, "enc_mean": mu, "enc_logvar": logvar,
                "dec_mean": x_hat, "dec_logvar": self.dec_logvar,
                "elbo": elbo}  # elbo: (B,) per-sample ELBO at beta = 1, optional

    Logged keys (``{stage}``: ``train``, ``val``, ``test``, further loaders ``val_1``, ...; ``entropy``: the ``prefix``;
    the README has the full table):

    - Epoch level: ``entropy/{stage}/encoder``, ``.../prior``, ``.../decoder``, ``.../sum`` (the entropy-sum ELBO
      over the epoch's points), ``.../elbo`` (mean minibatch ELBO over the same points), ``.../gap`` (elbo - sum),
      ``.../rel_gap``, ``.../abs_rel_gap``, ``.../active_latents``, ``.../skipped_batches``; with a fixed decoder
      variance also ``.../sum_profiled``.
    - Per latent h (H <= ``max_latents_as_scalars``): ``entropy/{stage}/latent_entropy/{h}``, ``.../latent_kl/{h}``,
      ``.../collapsed/{h}``, the ``latent_entropy/threshold`` and ``.../prior`` lines, a histogram. TensorBoard
      gets the ``tensorboard_per_latent`` rows, a text table, and each compared line in a run of its own.
    - Step level, every ``log_every_n_steps``, over the batches since the last log:
      ``entropy/train_step/sum``, ``.../elbo``, ``.../gap``, ``.../rel_gap``, ``.../gap_ema``.

    The keys go straight to the loggers (as ``LearningRateMonitor``'s do), at Lightning's step for the same batch or
    epoch; the epoch keys also go into ``trainer.callback_metrics`` (``EarlyStopping``, ``ModelCheckpoint``).

    Args:
        stages: which stages to monitor, from ``"train"``, ``"val"`` and ``"test"``. By default all three, where
            the test stage is monitored only if the test steps return the vocabulary (a ``test_step`` that
            returns nothing or only a loss is left alone); named explicitly, it must.
        collapse_criterion: ``"entropy"`` (the paper's, default), ``"kl"`` or ``"active_units"``.
        collapse_threshold: the criterion's threshold (default 1.0 nat, 0.01 nats, 0.01).
        rel_gap_floor: the relative gap is ``gap / max(|sum|, rel_gap_floor * D)`` (D the data dimension): a plain
            ``gap / |sum|`` explodes where the ELBO crosses zero during training.
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
        self.stages, self.prefix, self.extract, self.nan_strategy = stages, prefix, extract, nan_strategy
        self.collapse_criterion, self.collapse_threshold = collapse_criterion, collapse_threshold
        self.rel_gap_floor, self.ema_decay = float(rel_gap_floor), float(ema_decay)
        self.max_latents_as_scalars, self.latent_groups = max_latents_as_scalars, latent_groups
        self.log_histograms, self.log_bar_chart_every_n_epochs = bool(log_histograms), log_bar_chart_every_n_epochs
        self.tensorboard_per_latent, self.warn_on_collapse = tensorboard_per_latent, bool(warn_on_collapse)
        self._publisher = Publisher(
            prefix=prefix, stages=stages, rel_gap_floor=self.rel_gap_floor, ema_decay=self.ema_decay,
            max_latents_as_scalars=max_latents_as_scalars, log_histograms=self.log_histograms,
            tensorboard_per_latent=tensorboard_per_latent, log_bar_chart_every_n_epochs=log_bar_chart_every_n_epochs,
            latent_groups=latent_groups, warn_on_collapse=self.warn_on_collapse, collapse_criterion=collapse_criterion)
        self._recorder = StageRecorder(extract=extract, nan_strategy=nan_strategy, criterion=collapse_criterion,
                                       threshold=collapse_threshold, objective=True)
        self._stages, self._train = self._recorder.stages, "train" in self.stages  # _stages: filled by first batches
        self._objective = ObjectiveWatch()  # is the training loss the beta = 1 ELBO?
        self._reset_run()
        # Lightning reads state_key on every hook call: build it once
        self._state_key = self._generate_state_key(**state_key_fields(stages, self._optional_test, collapse_criterion,
                                                                      prefix))

    def _reset_run(self) -> None:
        """State of one fit (restored from a checkpoint by ``load_state_dict``, after ``setup``)."""
        self._recorder.fixed_variance = None
        self._publisher.reset_run()
        self._last_global_step = -1
        self._objective.reset_run()

    @property
    def state_key(self) -> str:
        return self._state_key

    @property
    def objective_check(self) -> tuple[bool | None, str]:
        """Is the training loss the beta = 1 ELBO? From the first training epoch (the last after
        :meth:`watch_objective`): ``(True | False | None, why)``; ``None`` while nothing could tell."""
        return self._objective.check

    @property
    def fixed_decoder_variance(self) -> bool | None:
        """Whether this run's training steps return a fixed decoder variance (VAE-0, a plain MSE loss), whose gap to
        the entropy sum does not close; ``None`` before the first training batch."""
        return self._recorder.fixed_variance

    def watch_objective(self) -> None:
        """Check every training epoch whether the training loss is the beta = 1 ELBO up to a constant
        (:attr:`objective_check`; :class:`EntropyConvergence` calls this). Without it the monitor checks the first
        training epoch of each fit only: enough to warn once about a Bernoulli (BCE) loss, at no cost later."""
        self._objective.every_epoch = True

    # ---------------------------------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._recorder.clear()  # each run reads its own layouts: a reused callback may meet another model
        self._recorder.fixed_variance = None  # decided by each run's training (a resumed fit restores it)
        self._publisher.layout_written = False  # each run may log to another logger
        if stage == "fit":
            self._objective.every_epoch = False  # EntropyConvergence asks again when the fit starts
            self._reset_run()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._publisher.lines.close()  # TensorBoard's line runs

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._recorder.live.attach(pl_module)
        self._publisher.layout_written = False  # once per fit: a resumed run may log to a new directory
        # a step log needs an optimizer step since the last batch (the first batch of an accumulation window has none)
        self._last_global_step = trainer.global_step

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._recorder.skipped_none["train"] = 0
        if "train" in self._stages:
            self._stages["train"].metrics.reset_epoch(carry_window=True, carry_objective=self._objective.pool())

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
        stats = self._log_epoch("train", "on_train_epoch_end", current, trainer, pl_module)
        self._publisher.warn_on_new_collapse(trainer, stats["collapsed"], current.layout.latent_shape)
        if self._recorder.objective and current.metrics.track_objective:
            self._objective.epoch_end(current.metrics, current.layout.kept)

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._recorder.start_held_out_epoch("val")

    @override
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._recorder.start_held_out_epoch("test")

    @override
    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        self._recorder.start_batch(record="val" in self.stages and not trainer.sanity_checking)

    @override
    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if "val" in self.stages and not trainer.sanity_checking:
            stage = f"val_{dataloader_idx}" if dataloader_idx else "val"
            self._recorder.keep("on_validation_batch_end", stage, pl_module, outputs, batch)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._end_held_out_epoch("val", "on_validation_epoch_end", trainer, pl_module)

    @override
    def on_test_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                            batch_idx: int, dataloader_idx: int = 0) -> None:
        self._recorder.start_batch(record="test" in self.stages)

    @override
    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        if "test" in self.stages:
            stage = f"test_{dataloader_idx}" if dataloader_idx else "test"
            self._recorder.keep("on_test_batch_end", stage, pl_module, outputs, batch, optional=self._optional_test)

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end_held_out_epoch("test", "on_test_epoch_end", trainer, pl_module)

    def _end_held_out_epoch(self, kind: str, hook: str, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if kind in self.stages and kind not in self._stages:
            self._no_output(kind, hook, trainer, pl_module)
        for stage in sorted(s for s in self._stages if s.split("_")[0] == kind):
            self._log_epoch(stage, hook, self._stages[stage], trainer, pl_module)

    def _no_output(self, stage: str, hook: str, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._publisher.no_output(stage, hook, trainer, pl_module, self._recorder.skipped_none.get(stage, 0))

    # ---------------------------------------------------------------------------------------- logs
    def _log_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, current: Stage) -> None:
        self._recorder.reduce(current, "on_train_batch_end", pl_module)
        self._publisher.step(trainer, current)

    def _log_epoch(self, stage: str, hook: str, current: Stage, trainer: pl.Trainer,
                   pl_module: pl.LightningModule) -> dict[str, Any]:
        self._recorder.reduce(current, hook, pl_module)
        return self._publisher.epoch(stage, current, trainer, pl_module, self._recorder.skipped_none.get(stage, 0))

    # -------------------------------------------------------------------------------------- resume
    @override
    def state_dict(self) -> dict[str, Any]:
        return {**self._publisher.state_dict(), "fixed_variance": self._recorder.fixed_variance,
                "last_global_step": self._last_global_step}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._publisher.load_state_dict(state_dict)
        self._recorder.fixed_variance = state_dict.get("fixed_variance")
        self._last_global_step = int(state_dict.get("last_global_step", -1))
