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
from lightning_entropy_vae.functional._checks import number_argument, strict_keywords

__all__ = ["EntropyConvergence"]

#: Training epochs in a row that cannot tell whether the loss is the ELBO before that is said (the objective check
#: needs a few batches, across epochs: an epoch of 1 batch is judged after several epochs).
UNKNOWN_EPOCHS_BEFORE_WARNING = 10


class EntropyConvergence(Callback):
    r"""Stop training once the ELBO has converged: a stationarity gate on the entropy-sum gap, then patience on the
    ELBO.

    1. **Gate.** At every stationary point of a Gaussian VAE the ELBO equals the entropy sum, so the expected gap
       between the sampled minibatch ELBO and the entropy sum is zero once training is stationary; a finite
       learning rate keeps it fluctuating around that. The monitor publishes the points-weighted mean gap over its last
       ``gap_window`` training batches, a window that runs across epochs (``{prefix}/train/gap_window``, nats per
       point), its batch-means standard error (``.../gap_window_se``) and the data dimension D
       (``.../data_dim``). A training epoch counts towards the gate when the window's gap is *confidently* small:

       .. math:: |\bar g| + z\,\widehat{\mathrm{se}} \;\le\; \text{gap\_tolerance} \times D

       (``gap_z`` standard errors; the tolerance is per data dimension, as the decoder-entropy term that dominates
       the gap scales with D), and the training loss is the beta = 1 ELBO (``{prefix}/train/objective_is_elbo``).
       A noisy window therefore does not count, however close to zero its mean: early in training and at learning
       rates too large for the gap to settle, the gate stays shut. It opens after ``gate_epochs`` such epochs in a
       row.
    2. **Patience.** From then on, as Lightning's ``EarlyStopping(mode="max")``: stop once the ELBO of
       ``monitor_stage`` (``entropy/val/elbo`` by default) has not improved by more than ``min_delta`` for
       ``patience`` checks (each validation run, checked when it ends, or each epoch for ``"train"``).
    3. **Fallback.** Where the gap settles near zero but too noisily for the gate, a longer patience: stop once the
       ELBO has not improved for ``fallback_patience`` checks in a row, each made while the training loss is the
       beta = 1 ELBO and the window's gap is within ``fallback_gap_factor`` times the gate's tolerance,
       :math:`|\bar g| \le \text{fallback\_gap\_factor} \times \text{gap\_tolerance} \times D` (as published
       at the latest training epoch's end). A check made otherwise restarts the count (the best value is still
       tracked). The gap condition keeps it from stopping where the gap is far from zero (early in training, or a
       model still moving), where ELBO patience alone stops too early.

    The defaults were chosen on ``benchmarks/stopping.py`` (docs/results.md: chosen on five data families, reported
    on six held out, and where the rule loses: it waits longer than ``EarlyStopping(patience=20)``, and where the
    gap never settles, as when a model overfits a small training set, it never stops; the restore still returns
    the best validation epoch). The fallback was chosen on the tuning families after the held-out results of the gate
    alone had been seen (a second look at them); on the tuning families it stops 14 of 40 runs earlier and leaves
    the summary with the restore unchanged. Restore the best epoch with a checkpoint of the same key::

        checkpoint = ModelCheckpoint(monitor="entropy/val/elbo", mode="max")
        trainer = L.Trainer(callbacks=[EntropyMonitor(), EntropyConvergence(), checkpoint])
        trainer.fit(model, datamodule)
        model = MyVAE.load_from_checkpoint(checkpoint.best_model_path)

    Epochs whose training loss is not judged the beta = 1 ELBO up to a constant and a batch reduction (beta != 1,
    KL warm-up in progress, free bits, a scaled loss, extra terms) do not count towards the gate: the entropy sum
    is the limit of the beta = 1 ELBO only. Where that cannot be judged (the training steps return no ``loss``),
    it says so and does not count, unless ``require_elbo_objective=False`` (a loss you know is the ELBO).

    Like Lightning's ``EarlyStopping`` it reads ``trainer.callback_metrics`` only: the keys an
    :class:`EntropyMonitor` that monitors ``"train"`` (and ``monitor_stage``) publishes in the same Trainer,
    where it must come after that monitor in ``callbacks``. With two monitors in the Trainer (two ``prefix``
    values), ``monitor_prefix`` names the one to read. Every rank takes the same decision
    (``reduce_boolean_decision``); the state resumes from checkpoints (plain types).

    Args:
        gap_tolerance: nats per point and data dimension: the window's gap plus ``gap_z`` standard errors must be at
            most ``gap_tolerance * D``.
        gap_z: standard errors of the window's gap added to it.
        gate_epochs: training epochs in a row that count, to open the gate.
        patience: ELBO checks without improvement, after the gate opened, before stopping.
        fallback_patience: ELBO checks without improvement, each made while the loss is the ELBO and the gap is within
            ``fallback_gap_factor * gap_tolerance * D``, before stopping; ``None`` turns the fallback off.
        fallback_gap_factor: the fallback's bound on the window's gap, in multiples of ``gap_tolerance * D``.
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
        gap_z: float = 1.0,
        gate_epochs: int = 1,
        patience: int = 5,
        fallback_patience: int | None = 20,
        fallback_gap_factor: float = 3.0,
        min_delta: float = 0.0,
        monitor_stage: str = "val",
        require_elbo_objective: bool = True,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        verbose: bool = False,
        monitor_prefix: str | None = None,
    ) -> None:
        # an infinite tolerance or gap factor is meaningful (no gap condition); a NaN is not
        for name, value in (("gap_tolerance", gap_tolerance), ("gap_z", gap_z),
                            ("fallback_gap_factor", fallback_gap_factor)):
            number_argument(name, value, "a non-negative number", lambda v: v >= 0)
        for name, value in (("gate_epochs", gate_epochs), ("patience", patience)):
            number_argument(name, value, "an int >= 1", lambda v: v >= 1, integer=True)
        number_argument("fallback_patience", fallback_patience, "an int >= 1 or None", lambda v: v >= 1, integer=True,
                        optional=True)
        number_argument("min_delta", min_delta, "a finite non-negative number", lambda v: 0 <= v < math.inf)
        if monitor_stage not in ("val", "train"):
            raise ValueError(f"Expected `monitor_stage` to be 'val' or 'train', but got {monitor_stage!r}.")
        number_argument("stopping_threshold", stopping_threshold, "a number (not NaN) or None",
                        lambda v: not math.isnan(v), optional=True)
        self.gap_tolerance = float(gap_tolerance)
        self.gap_z = float(gap_z)
        self.gate_epochs = gate_epochs
        self.patience = patience
        self.fallback_patience = fallback_patience
        self.fallback_gap_factor = float(fallback_gap_factor)
        self.min_delta = float(min_delta)
        if monitor_prefix is not None and not isinstance(monitor_prefix, str):
            raise TypeError(f"Expected `monitor_prefix` to be a str or None, but got {monitor_prefix!r}.")
        self.monitor_stage = monitor_stage
        self.monitor_prefix = monitor_prefix
        #: the keys read, under the monitor's prefix (known at set-up)
        self.monitor_key = f"{monitor_prefix or 'entropy'}/{monitor_stage}/elbo"
        self._set_keys(monitor_prefix or "entropy")
        self.require_elbo_objective = bool(require_elbo_objective)
        self.check_finite = bool(check_finite)
        self.stopping_threshold = None if stopping_threshold is None else float(stopping_threshold)
        self.verbose = bool(verbose)
        self._reset()
        key: dict[str, Any] = {"gap_tolerance": self.gap_tolerance, "gap_z": self.gap_z, "gate_epochs": gate_epochs,
                               "patience": patience, "monitor_stage": monitor_stage}
        if monitor_prefix is not None:  # the default's key as before: older checkpoints still restore
            key["monitor_prefix"] = monitor_prefix
        if (fallback_patience, self.fallback_gap_factor) != (20, 3.0):
            key.update(fallback_patience=fallback_patience, fallback_gap_factor=self.fallback_gap_factor)
        self._state_key = self._generate_state_key(**key)

    def _set_keys(self, prefix: str) -> None:
        """The keys read: the monitored ELBO, the gap window and its standard error, the objective verdict."""
        self.monitor_key = f"{prefix}/{self.monitor_stage}/elbo"
        self._gap_keys = (f"{prefix}/train/gap_window", f"{prefix}/train/gap_window_se", f"{prefix}/train/data_dim")
        self._objective_key = f"{prefix}/train/objective_is_elbo"

    def _reset(self) -> None:
        """A new fit: nothing carried over from an earlier one (a checkpoint restores its state afterwards)."""
        self.closed_epochs, self.gate_open = 0, False  # closed: training epochs in a row whose gap counts
        self.best, self.wait_count = -math.inf, 0
        #: the fallback: may the next check count (the latest training epoch's loss and gap), its best and its wait
        self.fallback_ok, self.fallback_best, self.fallback_wait = False, -math.inf, 0
        self.stopped_epoch: int | None = None
        self.stop_reason: str | None = None
        self._warned: set[str] = set()
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
        self._set_keys(monitor.prefix)
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
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A validation check is counted when it ends, as ``EarlyStopping`` does: a checkpoint written at the end of
        this validation (``val_check_interval < 1``, ``check_val_every_n_epoch > 1``) holds it."""
        if self.monitor_stage != "val" or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        if trainer.fast_dev_run or (value := trainer.callback_metrics.get(self.monitor_key)) is None:
            return
        self._decide(self._check(float(value), trainer), trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.fast_dev_run or trainer.sanity_checking:
            return
        self._update_gate(trainer)
        self.fallback_ok = self._fallback_counts(trainer)
        if self.monitor_stage == "train":
            value = trainer.callback_metrics.get(self.monitor_key)
            self._decide(None if value is None else self._check(float(value), trainer), trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.monitor_stage == "val" and self.gate_open and self.best == -math.inf and self.stopped_epoch is None:
            self._warn_once("no-val", f"EntropyConvergence watches `{self.monitor_key}`, but no validation ran in this"
                                      " fit after its gate opened, so it could not stop. Add a validation loader (or"
                                      " validate more often), or pass EntropyConvergence(monitor_stage='train').")

    def _decide(self, reason: str | None, trainer: pl.Trainer) -> None:
        """Stop on every process if one has a reason (a collective: every rank calls this at the same point)."""
        should_stop = trainer.strategy.reduce_boolean_decision(reason is not None, all=False)
        if should_stop and not trainer.should_stop:
            trainer.should_stop = True
            self.stopped_epoch = trainer.current_epoch
            self.stop_reason = reason or "EntropyConvergence: another process decided to stop."
            rank_zero_info(self.stop_reason)

    def _update_gate(self, trainer: pl.Trainer) -> None:
        """Count this training epoch towards the gate, or not (loss not the ELBO, gap not stationary, window not
        full). The window runs across epochs and resumes with the monitor, so a mid-epoch resume counts alike."""
        if self.gate_open:
            return
        metrics = trainer.callback_metrics
        if (gap := metrics.get(self._gap_keys[0])) is None:
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
                                             " const. over the latest training batches, expected 1 x ELBO + 0 x KL:"
                                             " beta != 1, KL warm-up, free bits, a scaled loss or extra terms; the"
                                             " monitor's `objective_check` says why). Such epochs do not count"
                                             " (require_elbo_objective=False counts them).")
            else:  # short epochs are judged once the check has seen enough batches: say so only if it lasts
                self._unknown_epochs += 1
            if objective != 0.0 and self._unknown_epochs >= UNKNOWN_EPOCHS_BEFORE_WARNING:
                self._warn_once("unknown", f"EntropyConvergence cannot tell whether the training loss is the beta = 1"
                                           f" ELBO (`{self._objective_key}` is NaN: the training steps return no"
                                           " `loss`, or too few batches to tell); epochs do not count. Return the"
                                           " loss from the training step, or pass require_elbo_objective=False.")
            return
        self._unknown_epochs = 0
        gap, se, dim = (float(gap), *(float(metrics.get(key, math.nan)) for key in self._gap_keys[1:]))
        bound = abs(gap) + self.gap_z * se
        counts = math.isfinite(bound) and bound <= self.gap_tolerance * dim
        self.closed_epochs = self.closed_epochs + 1 if counts else 0
        if self.closed_epochs >= self.gate_epochs:
            self.gate_open = True
            if self.verbose:
                rank_zero_info(f"EntropyConvergence: the training gap was stationary (|{gap:.3g}| + {self.gap_z:g} x"
                               f" {se:.3g} <= {self.gap_tolerance:g} x {dim:g} nats per point) for {self.gate_epochs}"
                               f" epoch(s); watching `{self.monitor_key}` from epoch {trainer.current_epoch}.")

    def _fallback_counts(self, trainer: pl.Trainer) -> bool:
        """Whether the fallback's next checks count: the loss is the ELBO and the window's gap is within
        ``fallback_gap_factor * gap_tolerance * D`` (NaN while the window fills: no)."""
        if self.fallback_patience is None:
            return False
        metrics = trainer.callback_metrics
        if self.require_elbo_objective and float(metrics.get(self._objective_key, math.nan)) != 1.0:
            return False
        gap, _, dim = (float(metrics.get(key, math.nan)) for key in self._gap_keys)
        return math.isfinite(gap) and abs(gap) <= self.fallback_gap_factor * self.gap_tolerance * dim

    def _check_fallback(self, value: float, key: str, epoch: int) -> str | None:
        """One check of the fallback's patience: the reason to stop, or None."""
        if self.fallback_patience is None:
            return None
        if not self.fallback_ok:  # a check that does not count restarts the count
            self.fallback_best, self.fallback_wait = max(self.fallback_best, value), 0
            return None
        if value > self.fallback_best + self.min_delta:
            self.fallback_best, self.fallback_wait = value, 0
            return None
        self.fallback_wait += 1
        if self.fallback_wait >= self.fallback_patience:
            return (f"EntropyConvergence: `{key}` did not improve on {self.fallback_best:.4g} for"
                    f" {self.fallback_patience} checks, each made while the loss was the ELBO and the training gap"
                    f" within {self.fallback_gap_factor:g} x {self.gap_tolerance:g} x D nats per point; stopping at"
                    f" epoch {epoch}.")
        return None

    def _check(self, value: float, trainer: pl.Trainer) -> str | None:
        """One check of the monitored ELBO (after the gate for the patience): the reason to stop, or None."""
        key, epoch = self.monitor_key, trainer.current_epoch
        if self.check_finite and not math.isfinite(value):
            return f"EntropyConvergence: `{key}` = {value} is not finite; stopping at epoch {epoch}."
        if self.stopping_threshold is not None and value >= self.stopping_threshold:
            return (f"EntropyConvergence: `{key}` = {value:.4g} reached the stopping threshold"
                    f" {self.stopping_threshold}; stopping at epoch {epoch}.")
        fallback = self._check_fallback(value, key, epoch)
        if not self.gate_open:
            return fallback
        if value > self.best + self.min_delta:
            if self.verbose:
                rank_zero_info(f"EntropyConvergence: `{key}` improved to {value:.4g}.")
            self.best, self.wait_count = value, 0
            return fallback
        self.wait_count += 1
        if self.wait_count >= self.patience:
            return (f"EntropyConvergence: the training gap was stationary for {self.gate_epochs} epochs, then `{key}`"
                    f" did not improve on {self.best:.4g} for {self.patience} checks; stopping at epoch {epoch}.")
        return fallback

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)

    # -------------------------------------------------------------------------------------- resume
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"closed_epochs": self.closed_epochs, "gate_open": self.gate_open, "best": self.best,
                "wait_count": self.wait_count, "fallback_ok": self.fallback_ok, "fallback_best": self.fallback_best,
                "fallback_wait": self.fallback_wait, "stopped_epoch": self.stopped_epoch,
                "stop_reason": self.stop_reason}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.closed_epochs = int(state_dict.get("closed_epochs", 0))
        self.gate_open = bool(state_dict.get("gate_open", False))
        self.best = float(state_dict.get("best", -math.inf))
        self.wait_count = int(state_dict.get("wait_count", 0))
        self.fallback_ok = bool(state_dict.get("fallback_ok", False))
        self.fallback_best = float(state_dict.get("fallback_best", -math.inf))
        self.fallback_wait = int(state_dict.get("fallback_wait", 0))
        self.stopped_epoch = state_dict.get("stopped_epoch")
        self.stop_reason = state_dict.get("stop_reason")
