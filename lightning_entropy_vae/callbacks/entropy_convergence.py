r"""EntropyConvergence: stop training once the ELBO has converged, from what EntropyMonitor publishes."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning_utilities.core.rank_zero import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_entropy_vae.callbacks.entropy_monitor import EntropyMonitor
from lightning_entropy_vae.functional._checks import strict_keywords

__all__ = ["EntropyConvergence"]

#: Training epochs in a row that cannot tell whether the loss is the ELBO before that is said (the objective check
#: needs 5 batches: an epoch of 1 batch is judged from the fifth epoch on).
UNKNOWN_EPOCHS_BEFORE_WARNING = 5


class EntropyConvergence(Callback):
    r"""Stop training once the ELBO has converged: a gate on the entropy-sum gap, then patience on the ELBO.

    The rule, chosen on ``benchmarks/stopping.py`` (50 VAE-1 runs: 5 data sets, 2 learning rates, 5 seeds;
    ``docs/results.md``):

    1. **Gate.** The training gap :math:`|\mathcal{F} - S| / \max(|S|, 0.1 D)` (``entropy/train/rel_gap``)
       stays below ``gap_tolerance`` for ``gate_epochs`` training epochs in a row. The gap closes when the
       variances (the decoder's :math:`\sigma^2`, a learnable prior) sit at their stationary values for the
       current weights: the model is near a stationary point, not still on its first descent.
    2. **Patience.** From then on, as Lightning's ``EarlyStopping(mode="max")``: stop once the ELBO of
       ``monitor_stage`` (``entropy/val/elbo`` by default) has not improved by more than ``min_delta`` for
       ``patience`` checks (each validation run, or each epoch for ``"train"``).

    Restore the best epoch with a checkpoint of the same key (the benchmark's best variant; it halves the
    shortfall)::

        checkpoint = ModelCheckpoint(monitor="entropy/val/elbo", mode="max")
        trainer = L.Trainer(callbacks=[EntropyMonitor(), EntropyConvergence(), checkpoint])
        trainer.fit(model, datamodule)
        model = MyVAE.load_from_checkpoint(checkpoint.best_model_path)

    If the gap never stays closed (a learning rate too large for the variances to settle, or so small that
    the run ends first), it never stops: the run trains to its budget, and the checkpoint still returns the
    best validation epoch. Epochs whose training loss is not the beta = 1 ELBO up to a constant (beta != 1,
    KL annealing, extra terms) do not count towards the gate: the entropy sum is the limit of the beta = 1
    ELBO only (the monitor's ``entropy/train/objective_is_elbo``). Where that cannot be judged (the training
    steps return no ``loss``), it says so once and does not count, unless ``require_elbo_objective=False``.

    Like Lightning's ``EarlyStopping`` it reads ``trainer.callback_metrics`` only: the keys an
    :class:`EntropyMonitor` that monitors ``"train"`` (and ``monitor_stage``) publishes in the same Trainer,
    where it must come after that monitor in ``callbacks``. With two monitors in the Trainer (two ``prefix``
    values), ``monitor_prefix`` names the one to read. Every rank takes the same decision
    (``reduce_boolean_decision``); the state resumes from checkpoints (plain types).

    Args:
        gap_tolerance: the training gap below which an epoch counts towards the gate (default 1 %).
        gate_epochs: training epochs in a row below ``gap_tolerance`` that open the gate (default 10).
        patience: ELBO checks without improvement, after the gate opened, before stopping (default 10).
        min_delta: an improvement of at most this (nats per point) does not count as one.
        monitor_stage: ``"val"`` (default: the held-out ELBO, which also sees overfitting) or ``"train"``.
        require_elbo_objective: count only epochs whose training loss is judged -ELBO up to a constant.
        check_finite: stop when the monitored ELBO becomes NaN or infinite.
        stopping_threshold: stop as soon as the monitored ELBO reaches this value (nats per point).
        verbose: report the gate and each improvement.
        monitor_prefix: the ``prefix`` of the :class:`EntropyMonitor` to read; ``None`` (default) reads the
            Trainer's only monitor.

    Example:
        >>> import lightning as L
        >>> from lightning_entropy_vae import EntropyConvergence, EntropyMonitor
        >>> trainer = L.Trainer(callbacks=[EntropyMonitor(), EntropyConvergence()])
    """

    @strict_keywords
    def __init__(
        self,
        gap_tolerance: float = 0.01,
        gate_epochs: int = 10,
        patience: int = 10,
        min_delta: float = 0.0,
        monitor_stage: str = "val",
        require_elbo_objective: bool = True,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        verbose: bool = False,
        monitor_prefix: str | None = None,
    ) -> None:
        if isinstance(gap_tolerance, bool) or not isinstance(gap_tolerance, (int, float)) or not gap_tolerance > 0:
            raise ValueError(f"Expected `gap_tolerance` to be a positive number, but got {gap_tolerance!r}.")
        for name, value in (("gate_epochs", gate_epochs), ("patience", patience)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Expected `{name}` to be an int >= 1, but got {value!r}.")
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or min_delta < 0:
            raise ValueError(f"Expected `min_delta` to be a non-negative number, but got {min_delta!r}.")
        if monitor_stage not in ("val", "train"):
            raise ValueError(f"Expected `monitor_stage` to be 'val' or 'train', but got {monitor_stage!r}.")
        if stopping_threshold is not None and (isinstance(stopping_threshold, bool)
                                               or not isinstance(stopping_threshold, (int, float))):
            raise TypeError(f"Expected `stopping_threshold` to be a number or None, but got {stopping_threshold!r}.")
        self.gap_tolerance = float(gap_tolerance)
        self.gate_epochs = gate_epochs
        self.patience = patience
        self.min_delta = float(min_delta)
        if monitor_prefix is not None and not isinstance(monitor_prefix, str):
            raise TypeError(f"Expected `monitor_prefix` to be a str or None, but got {monitor_prefix!r}.")
        self.monitor_stage = monitor_stage
        self.monitor_prefix = monitor_prefix
        #: the keys read, under the monitor's prefix (known at set-up)
        self.monitor_key = f"{monitor_prefix or 'entropy'}/{monitor_stage}/elbo"
        self._gap_key = f"{monitor_prefix or 'entropy'}/train/rel_gap"
        self._objective_key = f"{monitor_prefix or 'entropy'}/train/objective_is_elbo"
        self.require_elbo_objective = bool(require_elbo_objective)
        self.check_finite = bool(check_finite)
        self.stopping_threshold = None if stopping_threshold is None else float(stopping_threshold)
        self.verbose = bool(verbose)
        self._reset()
        key: dict[str, Any] = {"gap_tolerance": self.gap_tolerance, "gate_epochs": gate_epochs, "patience": patience,
                               "monitor_stage": monitor_stage}
        if monitor_prefix is not None:  # the default's key as before: older checkpoints still restore
            key["monitor_prefix"] = monitor_prefix
        self._state_key = self._generate_state_key(**key)

    def _reset(self) -> None:
        """A new fit: nothing carried over from an earlier one (a checkpoint restores its state afterwards)."""
        self.closed_epochs, self.gate_open = 0, False  # closed: training epochs in a row with the gap below tolerance
        self.best, self.wait_count = -math.inf, 0
        self.stopped_epoch: int | None = None
        self.stop_reason: str | None = None
        self._warned: set[str] = set()
        self._pending: list[float] = []  # validation ELBOs of the current epoch, in order
        self._epoch_batches = self._checks_seen = 0  # this epoch's batches; monitored values seen in this fit
        self._unknown_epochs = 0  # training epochs in a row whose objective verdict is NaN

    @property
    def state_key(self) -> str:
        return self._state_key

    # ------------------------------------------------------------------------------------- set-up
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        monitor = self._find_monitor(trainer)
        needed = {"train", self.monitor_stage}
        if not needed <= set(monitor.stages):
            raise ValueError(
                f"EntropyConvergence(monitor_stage={self.monitor_stage!r}) needs EntropyMonitor to monitor"
                f" {sorted(needed)}, but it monitors {list(monitor.stages)}."
            )
        callbacks = list(trainer.callbacks)
        if callbacks.index(self) < callbacks.index(monitor):  # its epoch keys must be published when this checks
            raise ValueError(
                "Expected EntropyConvergence after the EntropyMonitor whose keys it reads in the Trainer's callbacks,"
                f" but got it at position {callbacks.index(self)} and the monitor at {callbacks.index(monitor)}."
                " Pass Trainer(callbacks=[EntropyMonitor(), EntropyConvergence()]); where the monitor comes from"
                " LightningModule.configure_callbacks (Lightning appends those after the Trainer's), return"
                " EntropyConvergence from there too, after the monitor."
            )
        self.monitor_key = f"{monitor.prefix}/{self.monitor_stage}/elbo"
        self._gap_key = f"{monitor.prefix}/train/rel_gap"
        self._objective_key = f"{monitor.prefix}/train/objective_is_elbo"
        self._reset()

    def _find_monitor(self, trainer: pl.Trainer) -> EntropyMonitor:
        """The Trainer's EntropyMonitor with ``monitor_prefix``, or its only one: its prefix and stages are checked at
        set-up; its values are read from ``trainer.callback_metrics`` only."""
        monitors = [cb for cb in trainer.callbacks if isinstance(cb, EntropyMonitor)]
        if not monitors:
            raise ValueError(
                "EntropyConvergence reads what EntropyMonitor publishes, but the Trainer has no EntropyMonitor."
                " Pass both: Trainer(callbacks=[EntropyMonitor(), EntropyConvergence()])."
            )
        prefixes = [m.prefix for m in monitors]
        if self.monitor_prefix is not None:
            found = [m for m in monitors if m.prefix == self.monitor_prefix]
            if len(found) != 1:
                raise ValueError(f"EntropyConvergence(monitor_prefix={self.monitor_prefix!r}) expected one"
                                 f" EntropyMonitor with that prefix in the Trainer, but got the prefixes {prefixes}.")
            return found[0]
        if len(monitors) > 1:
            raise ValueError(f"EntropyConvergence found {len(monitors)} EntropyMonitors in the Trainer (prefixes"
                             f" {prefixes}) and cannot tell which to read. Name it: EntropyConvergence("
                             f"monitor_prefix={prefixes[0]!r}).")
        return monitors[0]

    # ------------------------------------------------------------------------------------- epochs
    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_batches = 0
        self._pending = []

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._epoch_batches += 1

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.monitor_stage != "val" or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        if (value := trainer.callback_metrics.get(self.monitor_key)) is not None:
            self._pending.append(float(value))

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.fast_dev_run or trainer.sanity_checking:
            return
        self._update_gate(trainer)
        if self.monitor_stage == "train":
            value = trainer.callback_metrics.get(self.monitor_key)
            checks = [] if value is None else [float(value)]
        else:
            checks, self._pending = self._pending, []
        self._checks_seen += len(checks)
        reason = None
        for value in checks:
            reason = reason or self._check(value, trainer)
        if self.monitor_stage == "val" and not self._checks_seen and self.gate_open:
            self._warn_once("no-val", f"EntropyConvergence watches `{self.monitor_key}`, but no validation has run in"
                                      " this fit, so it cannot stop. Add a validation loader or pass"
                                      " EntropyConvergence(monitor_stage='train').")
        should_stop = trainer.strategy.reduce_boolean_decision(reason is not None, all=False)
        if should_stop and not trainer.should_stop:
            trainer.should_stop = True
            self.stopped_epoch = trainer.current_epoch
            self.stop_reason = reason or "EntropyConvergence: another process decided to stop."
            rank_zero_info(self.stop_reason)

    def _update_gate(self, trainer: pl.Trainer) -> None:
        """Count this training epoch towards the gate, or not (partial epoch, loss not the ELBO, NaN gap)."""
        if self.gate_open:
            return
        total = trainer.num_training_batches
        if isinstance(total, int) and self._epoch_batches < total:  # a mid-epoch resume: not a whole epoch
            return
        metrics = trainer.callback_metrics
        if (gap := metrics.get(self._gap_key)) is None:
            return
        objective = metrics.get(self._objective_key)
        objective = float(objective) if objective is not None else math.nan
        if self.require_elbo_objective and objective != 1.0:
            self.closed_epochs = 0
            if objective == 0.0:
                self._unknown_epochs = 0  # judged: not the ELBO
                base = self._objective_key[: -len("is_elbo")]
                a, b = (float(metrics.get(base + name, math.nan)) for name in ("elbo_coef", "kl_coef"))
                self._warn_once("objective", f"EntropyConvergence: the training loss is not the beta = 1 ELBO"
                                             f" (`{self._objective_key}` = 0: -loss = {a:.4g} x ELBO + {b:.3g} x KL +"
                                             " const. over the epoch's batches, expected 1 x ELBO + 0 x KL: beta != 1,"
                                             " KL annealing, a scaled loss or extra terms). Such epochs do not count"
                                             " (require_elbo_objective=False counts them).")
            else:  # epochs of fewer than 5 batches are judged once 5 have been seen: say so only if it lasts
                self._unknown_epochs += 1
            if objective != 0.0 and self._unknown_epochs >= UNKNOWN_EPOCHS_BEFORE_WARNING:
                self._warn_once("unknown", f"EntropyConvergence cannot tell whether the training loss is the beta = 1"
                                           f" ELBO (`{self._objective_key}` is NaN: the training steps return no"
                                           " `loss`, or too few batches to tell); epochs do not count. Return the"
                                           " loss from the training step, or pass require_elbo_objective=False.")
            return
        self._unknown_epochs = 0
        gap = float(gap)
        self.closed_epochs = self.closed_epochs + 1 if math.isfinite(gap) and abs(gap) < self.gap_tolerance else 0
        if self.closed_epochs >= self.gate_epochs:
            self.gate_open = True
            if self.verbose:
                rank_zero_info(f"EntropyConvergence: the training gap stayed below {self.gap_tolerance} for"
                               f" {self.gate_epochs} epochs; watching `{self.monitor_key}` from epoch"
                               f" {trainer.current_epoch}.")

    def _check(self, value: float, trainer: pl.Trainer) -> str | None:
        """One check of the monitored ELBO (after the gate for the patience): the reason to stop, or None."""
        key, epoch = self.monitor_key, trainer.current_epoch
        if self.check_finite and not math.isfinite(value):
            return f"EntropyConvergence: `{key}` = {value} is not finite; stopping at epoch {epoch}."
        if self.stopping_threshold is not None and value >= self.stopping_threshold:
            return (f"EntropyConvergence: `{key}` = {value:.4g} reached the stopping threshold"
                    f" {self.stopping_threshold}; stopping at epoch {epoch}.")
        if not self.gate_open:
            return None
        if value > self.best + self.min_delta:
            if self.verbose:
                rank_zero_info(f"EntropyConvergence: `{key}` improved to {value:.4g}.")
            self.best, self.wait_count = value, 0
            return None
        self.wait_count += 1
        if self.wait_count >= self.patience:
            return (f"EntropyConvergence: the training gap stayed below {self.gap_tolerance} for {self.gate_epochs}"
                    f" epochs, then `{key}` did not improve on {self.best:.4g} for {self.patience} checks;"
                    f" stopping at epoch {epoch}.")
        return None

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)

    # -------------------------------------------------------------------------------------- resume
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"closed_epochs": self.closed_epochs, "gate_open": self.gate_open, "best": self.best,
                "wait_count": self.wait_count, "stopped_epoch": self.stopped_epoch, "stop_reason": self.stop_reason}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.closed_epochs = int(state_dict.get("closed_epochs", 0))
        self.gate_open = bool(state_dict.get("gate_open", False))
        self.best = float(state_dict.get("best", -math.inf))
        self.wait_count = int(state_dict.get("wait_count", 0))
        self.stopped_epoch = state_dict.get("stopped_epoch")
        self.stop_reason = state_dict.get("stop_reason")
