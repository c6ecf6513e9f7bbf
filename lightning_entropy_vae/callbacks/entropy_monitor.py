r"""EntropyMonitor: live entropy-sum ELBO, its gap to the minibatch ELBO, and posterior-collapse flags.

One batch, in one direction: the batch hook reads the step's output (:mod:`._step_outputs`) and hands it to the
stage's :class:`~._stage.StageTracker`, which keeps references to its tensors; at a logging step the tracker returns
the step keys' values, at the epoch's end it reduces the kept batches into its metrics and returns their values
(:class:`~._stage.StageResult`); the publishing functions (:mod:`._publish`)
write them to the loggers and ``trainer.callback_metrics``. The monitor owns the trackers, its options
(:class:`~._options.MonitorOptions`) and what a run carries from epoch to epoch (the gap's moving average, the
collapse flags, what was warned about).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning_utilities.core.rank_zero import rank_zero_warn
from typing_extensions import override

from lightning_entropy_vae.callbacks import _logger_extras, _loggers, _publish
from lightning_entropy_vae.callbacks._live_params import LiveParameters
from lightning_entropy_vae.callbacks._options import Extract, MonitorOptions
from lightning_entropy_vae.callbacks._stage import StageTracker
from lightning_entropy_vae.callbacks._step_outputs import StageLayout, normalize, owner_of, read_output
from lightning_entropy_vae.functional._checks import strict_keywords

#: Keys of which one in a step's output makes it a monitored output (for the test stage not named in ``stages``).
ENCODER_KEYS = ("enc_mean", "enc_logvar", "posterior")

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
      variance also ``.../sum_profiled``. Training only, over windows that run across epochs:
      ``entropy/train/objective_is_elbo`` (is the loss the beta = 1 ELBO? 1/0/NaN, with ``.../objective_elbo_coef``
      and ``.../objective_kl_coef``), ``.../gap_window`` and ``.../gap_window_se`` (the points-weighted mean gap
      over the last ``gap_window`` batches and its batch-means standard error) and ``.../data_dim``.
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
        gap_window: the training batches (across epochs) whose per-batch gaps give ``{prefix}/train/gap_window`` and
            its standard error ``gap_window_se`` (batch means over 10 groups), what
            :class:`~lightning_entropy_vae.EntropyConvergence`'s gate reads; NaN until that many batches were seen
            (the default, 32, was chosen with the gate on ``benchmarks/stopping.py``).

    Example:
        >>> import lightning as L
        >>> from lightning_entropy_vae import EntropyMonitor
        >>> trainer = L.Trainer(callbacks=[EntropyMonitor()])

    To stop training on convergence, add :class:`~lightning_entropy_vae.EntropyConvergence`, which reads what
    this callback publishes.
    """

    @strict_keywords
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
        gap_window: int = 32,
    ) -> None:
        self._options = MonitorOptions.build(
            stages=stages, collapse_criterion=collapse_criterion, collapse_threshold=collapse_threshold,
            rel_gap_floor=rel_gap_floor, ema_decay=ema_decay, max_latents_as_scalars=max_latents_as_scalars,
            log_histograms=log_histograms, tensorboard_per_latent=tensorboard_per_latent,
            log_bar_chart_every_n_epochs=log_bar_chart_every_n_epochs, extract=extract, nan_strategy=nan_strategy,
            warn_on_collapse=warn_on_collapse, latent_groups=latent_groups, prefix=prefix, gap_window=gap_window)
        self._trackers: dict[str, StageTracker] = {}
        self._live = LiveParameters()
        self._lines = _logger_extras.TensorBoardLines(prefix)
        self._callback_metrics = _loggers.CallbackMetrics()
        self._reset_run()
        # Lightning reads state_key on every hook call: build it once
        self._state_key = self._generate_state_key(**self._options.state_key_fields())

    def _reset_run(self) -> None:
        """What one fit carries from epoch to epoch (restored from a checkpoint by ``load_state_dict``)."""
        self._gap_ema: float | None = None
        self._collapsed: list[bool] | None = None  # the flags of the last training epoch that kept a batch
        self._last_epoch_flagged = False  # whether that is the fit's last training epoch
        self._warned_collapse: frozenset[int] = frozenset()  # each latent is reported once per run
        self._warned: set[str] = set()  # once-per-run warnings: empty epochs, a Bernoulli loss
        self._fixed_variance: bool | None = None  # from a resumed run's checkpoint, else its first training batch
        self._objective: tuple[bool | None, str] = (None, "not checked")
        self._train_state: dict[str, Any] = {}  # a resumed run's gap window and objective rows
        self._last_global_step = -1
        self._write_layout = True
        self._sanity_outputs = [0, 0]  # the sanity check's validation batches: those that returned None, all

    # ------------------------------------------------------------------------------------ read-only
    @property
    def options(self) -> MonitorOptions:
        """The monitor's settings, as checked at construction (immutable)."""
        return self._options

    @property
    def stages(self) -> tuple[str, ...]:
        return self._options.stages

    @property
    def prefix(self) -> str:
        return self._options.prefix

    @property
    def state_key(self) -> str:
        return self._state_key

    @property
    def objective_check(self) -> tuple[bool | None, str]:
        """Is the training loss the beta = 1 ELBO (judged at each training epoch's end over the last 64 batches)?
        ``(True | False | None, why)``;
        ``None`` while nothing could tell. Also published as ``{prefix}/train/objective_is_elbo``."""
        return self._objective

    @property
    def fixed_decoder_variance(self) -> bool | None:
        """Whether this run's training steps return a fixed decoder variance (VAE-0, a plain MSE loss), whose gap to
        the entropy sum does not close; ``None`` before the first training batch."""
        train = self._trackers.get("train")
        return train.fixed_variance if train is not None else self._fixed_variance

    # ---------------------------------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        twins = [cb for cb in trainer.callbacks if isinstance(cb, EntropyMonitor) and cb is not self
                 and cb.prefix == self.prefix]
        if twins:
            raise ValueError(
                f"Expected each EntropyMonitor in the Trainer to have its own `prefix`, but got {len(twins) + 1} with"
                f" prefix={self.prefix!r}: their keys would overwrite each other. Pass another prefix to the second,"
                " e.g. EntropyMonitor(prefix='entropy_ema')."
            )
        self._trackers = {}  # each run reads its own layouts: a reused callback may meet another model
        self._fixed_variance = None  # decided by each run's training (a resumed fit restores it after set-up)
        self._write_layout = True  # each run may log to another logger
        if stage == "fit":
            self._reset_run()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._lines.close()  # TensorBoard's line runs

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._start_batch(record=False)  # a Capture drops what the failed step's forward pass left

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._live.attach(pl_module)
        if self._train_state.get("gaps") and "train" in self.stages and "train" not in self._trackers:
            self._trackers["train"] = self._new_tracker("train")  # a resumed run: its windows run on
        self._write_layout = True  # once per fit: a resumed run may log to a new directory
        # a step log needs an optimizer step since the last batch (the first batch of an accumulation window has none)
        self._last_global_step = trainer.global_step

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if "train" in self._trackers:
            self._trackers["train"].start_epoch()

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        train = "train" in self.stages
        self._start_batch(record=train)  # a Capture records this step's forward pass, or nothing
        if train:
            self._live.start_batch()

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if "train" in self.stages:
            self._live.before_optimizer_step()

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if "train" not in self.stages:
            return
        # Lightning divides the returned loss by this; a GradientAccumulationScheduler sets it per epoch
        loss_scale = trainer.accumulate_grad_batches
        self._keep("on_train_batch_end", "train", pl_module, outputs, batch, loss_scale)
        # Lightning's cadence for its own step metrics: batches that stepped (one per batch, however many optimizers
        # stepped), and under automatic optimization only a batch that ends an accumulation window
        global_step = trainer.global_step  # a property that walks the loops: read once
        stepped = global_step != self._last_global_step or not pl_module.automatic_optimization
        self._last_global_step = global_step
        every = trainer.log_every_n_steps
        train = self._trackers.get("train")
        # the step keys go to loggers only: without one, the kept batches wait for the epoch end (or a full
        # stash), unless nan_strategy="error" asks to fail within log_every_n_steps of a bad batch
        if (stepped and every and (_loggers.logger_step(trainer) + 1) % every == 0 and train is not None
                and train.layout is not None and (trainer.loggers or self._options.nan_strategy == "error")):
            self._log_step(trainer, pl_module, train, loss_scale)

    def _log_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, train: StageTracker,
                  loss_scale: float) -> None:
        """A logging step: publish the step keys of the training batches since the last one."""
        window = train.window(lambda: owner_of("on_train_batch_end", pl_module), loss_scale)
        self._gap_ema = _publish.step(self._options, trainer, self._lines, window, train.layout.data_dim,
                                      self._gap_ema)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if "train" not in self.stages or not self._agreed_stages(trainer, "train"):
            return
        collapsed = self._end_epoch("train", "on_train_epoch_end", trainer, pl_module)
        train = self._trackers.get("train")
        self._last_epoch_flagged = collapsed is not None  # an epoch that kept no batch has no flags of its own
        if collapsed is not None:
            self._warned_collapse = _publish.collapse_warning(self._options, trainer.current_epoch, self._collapsed,
                                                              collapsed, self._warned_collapse,
                                                              train.layout.latent_shape)
            self._collapsed = collapsed

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # latents usually start at the prior and leave it during training: only the end of the fit is worth a word
        if self._last_epoch_flagged and self._collapsed is not None and all(self._collapsed):
            _publish.no_active_latent_warning(self._options, trainer.current_epoch - 1, len(self._collapsed))
        _publish.fit_summary(self._options, trainer.callback_metrics)

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_held_out_epoch("val")
        self._sanity_outputs = [0, 0]

    @override
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_held_out_epoch("test")

    @override
    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        self._start_batch(record="val" in self.stages and not trainer.sanity_checking)

    @override
    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if "val" not in self.stages:
            return
        stage = f"val_{dataloader_idx}" if dataloader_idx else "val"
        if trainer.sanity_checking:
            self._check_sanity_output(stage, pl_module, outputs, batch)
        else:
            self._keep("on_validation_batch_end", stage, pl_module, outputs, batch)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._end_held_out_epoch("val", "on_validation_epoch_end", trainer, pl_module)
        elif "val" in self.stages and self._sanity_outputs[1] and self._sanity_outputs[0] == self._sanity_outputs[1]:
            # None is Lightning's "skip this batch": a few batches of one process cannot tell a step that never returns
            # the vocabulary from one that skips these (a filter, a DDP rank's empty share); the epoch's end decides
            rank_zero_warn(f"{owner_of('on_validation_epoch_end', pl_module)}: `validation_step` returned None in all"
                           f" {self._sanity_outputs[1]} batches of Lightning's sanity check; the first validation epoch"
                           " fails if it returns None in every batch. Return the step's outputs (see the README), or"
                           " pass EntropyMonitor(stages=('train',)).")

    @override
    def on_test_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                            batch_idx: int, dataloader_idx: int = 0) -> None:
        self._start_batch(record="test" in self.stages)

    @override
    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        if "test" in self.stages:
            stage = f"test_{dataloader_idx}" if dataloader_idx else "test"
            self._keep("on_test_batch_end", stage, pl_module, outputs, batch)

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end_held_out_epoch("test", "on_test_epoch_end", trainer, pl_module)

    # --------------------------------------------------------------------------------- batch to tracker
    def _start_batch(self, record: bool) -> None:
        """A batch starts: an ``extract`` that records forward passes (a :class:`~lightning_entropy_vae.Capture`)
        drops what it holds and records this batch's forward pass only if ``record`` (its stage is monitored)."""
        start = getattr(self._options.extract, "start_batch", None)
        if start is not None:
            start(record)

    def _keep(self, hook: str, stage: str, pl_module: Any, outputs: Any, batch: Any, loss_scale: float = 1.0) -> None:
        """Read a step's output and hand it to its stage's tracker (references only, no device work)."""
        extract = self._options.extract
        values = extract(pl_module, outputs, batch) if extract is not None else outputs
        tracker = self._trackers.get(stage)
        if tracker is None:
            if (stage.startswith("test") and self._options.optional_test
                    and not (isinstance(values, Mapping) and any(values.get(k) is not None for k in ENCODER_KEYS))):
                return  # the default's test stage starts only from an output holding encoder statistics
            tracker = self._trackers[stage] = self._new_tracker(stage)
        values = read_output(values, hook, stage, pl_module)
        if values is None:  # Lightning's "skip this batch"
            tracker.skip()
        else:
            tracker.keep(values, lambda: owner_of(hook, pl_module), loss_scale)

    def _check_sanity_output(self, stage: str, pl_module: Any, outputs: Any, batch: Any) -> None:
        """A validation step of Lightning's sanity check: its output is checked as a kept batch's would be (its type,
        keys and shapes; metadata only) and then dropped, so that a ``validation_step`` returning the wrong thing
        fails before the first training epoch rather than after it (None, Lightning's skip, is counted: all None is
        a warning). A :class:`~lightning_entropy_vae.Capture`
        records no forward pass of the sanity check: there is nothing to check."""
        extract = self._options.extract
        if extract is not None and hasattr(extract, "start_batch"):
            return
        values = extract(pl_module, outputs, batch) if extract is not None else outputs
        values = read_output(values, "on_validation_batch_end", stage, pl_module)
        self._sanity_outputs[1] += 1
        if values is None:
            self._sanity_outputs[0] += 1
            return
        tracker = self._trackers.get(stage)
        if tracker is None or tracker.layout is None:  # the stage's layout, as its first batch will fix it
            owner = lambda: owner_of("on_validation_batch_end", pl_module)  # noqa: E731
            StageLayout(normalize(values, owner), owner())

    def _new_tracker(self, stage: str) -> StageTracker:
        return StageTracker(stage, criterion=self._options.collapse_criterion,
                            threshold=self._options.collapse_threshold, nan_strategy=self._options.nan_strategy,
                            live=self._live if stage == "train" else None, fixed_variance=self.fixed_decoder_variance,
                            objective=stage == "train", gap_window=self._options.gap_window,
                            state=self._train_state if stage == "train" else None)

    def _agreed_stages(self, trainer: pl.Trainer, kind: str) -> list[str]:
        """The stages of ``kind`` (``train``, ``val``, ``test``) that some process has, in one order on every process.

        A process may have none of a stage's batches (an uneven split, a default test stage whose steps return
        None there): every process must still take part in the stage's collectives, so the names are gathered
        (one small collective per epoch end under DDP) and a missing tracker is made empty.
        """
        local = sorted(s for s in self._trackers if s.split("_")[0] == kind)
        if trainer.world_size <= 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return local
        gathered: list[list[str] | None] = [None] * trainer.world_size
        torch.distributed.all_gather_object(gathered, local)
        names = sorted(set().union(*(g or [] for g in gathered)))
        for name in names:
            if name not in self._trackers:
                self._trackers[name] = self._new_tracker(name)
        return names

    # ------------------------------------------------------------------------------------- epoch ends
    def _start_held_out_epoch(self, kind: str) -> None:
        """A validation (``kind="val"``) or test epoch starts: its stages (``val``, ``val_1``, ...) start empty."""
        for stage, tracker in self._trackers.items():
            if stage.split("_")[0] == kind:
                tracker.start_epoch()

    def _end_held_out_epoch(self, kind: str, hook: str, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for stage in self._agreed_stages(trainer, kind):
            self._end_epoch(stage, hook, trainer, pl_module)

    def _end_epoch(self, stage: str, hook: str, trainer: pl.Trainer, pl_module: pl.LightningModule
                   ) -> list[bool] | None:
        """Reduce the stage's kept batches, read its epoch over every process and publish it; return the collapse
        flags (``None``: nothing kept)."""
        tracker = self._trackers.get(stage)
        if tracker is None:
            return None
        if tracker.layout is not None:
            tracker.reduce(lambda: owner_of(hook, pl_module), trainer.accumulate_grad_batches)
        result = tracker.result(trainer.strategy)  # collectives: every rank calls this here
        if result.objective is not None:
            self._objective = (result.objective.is_elbo, result.objective.why)
            if result.objective.bernoulli is not None and "bernoulli" not in self._warned:
                self._warned.add("bernoulli")
                _publish.bernoulli_warning(result.objective.bernoulli)
        if result.empty_ranks == result.world_size and stage == "train" and not int(result.skipped):
            # no training batch in this fit yet: a run resumed from a checkpoint written at its epoch's end
            _publish.windows_only(self._options, trainer, pl_module, result, self._callback_metrics)
            return None
        if result.empty_ranks == result.world_size:  # on every process, every step of the epoch returned None
            if stage != "train":  # validation and test steps return nothing: an error
                read_output(0, hook, stage, pl_module, got=f"None from all {int(result.skipped)} batches of the epoch")
            if f"none/{stage}" not in self._warned:
                self._warned.add(f"none/{stage}")
                _publish.all_skipped_warning(trainer.current_epoch, int(result.skipped))
            return None
        if not result.data_dim:  # this process kept nothing; the others publish their own values
            _publish.empty_rank_warning(stage, trainer.current_epoch, trainer.global_rank)
            return None
        collapsed = _publish.epoch(self._options, trainer, pl_module, result, self._lines, self._callback_metrics,
                                   write_layout=self._write_layout)
        self._write_layout = False
        if collapsed is None and f"empty/{stage}" not in self._warned:
            self._warned.add(f"empty/{stage}")
            _publish.empty_epoch_warning(stage, trainer.current_epoch, int(result.skipped))
        return collapsed

    # -------------------------------------------------------------------------------------- resume
    @override
    def state_dict(self) -> dict[str, Any]:
        """What a resumed run continues from (plain types)."""
        train = self._trackers.get("train")
        return {"gap_ema": self._gap_ema, "collapsed": self._collapsed,
                "warned_collapse": sorted(self._warned_collapse), "fixed_variance": self.fixed_decoder_variance,
                "last_global_step": self._last_global_step,
                "train_window": train.state() if train is not None else self._train_state}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ema = state_dict.get("gap_ema")
        self._gap_ema = None if ema is None else float(ema)
        self._collapsed = state_dict.get("collapsed")
        self._warned_collapse = frozenset(state_dict.get("warned_collapse", []))
        self._fixed_variance = state_dict.get("fixed_variance")
        self._last_global_step = int(state_dict.get("last_global_step", -1))
        self._train_state = dict(state_dict.get("train_window") or {})
