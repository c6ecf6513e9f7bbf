"""Convergence stopping for the EntropyMonitor: patience on the |relative gap| (private)."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.trainer.states import TrainerFn
from lightning_utilities.core.rank_zero import rank_zero_info, rank_zero_warn

#: Relative difference between -loss and the ELBO above which the objective is "not the ELBO".
OBJECTIVE_RTOL = 1e-4


class ConvergenceTracker:
    """Count consecutive checks with ``abs_rel_gap < tolerance``; stop after ``patience`` of them.

    A check does not count (and resets the count) during ``warmup_epochs``, when the gap is not
    finite, and, with ``require_elbo_objective``, when the epoch's training loss differs from -ELBO
    (beta != 1, KL annealing): the entropy sum is the limit of the beta = 1 ELBO only. The loss may be
    the negative ELBO averaged over the batch (the usual) or summed over it.
    """

    def __init__(self, *, enabled: bool, tolerance: float, patience: int, warmup_epochs: int,
                 require_elbo_objective: bool) -> None:
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance > 0:
            raise ValueError(f"Expected `tolerance` to be a positive number, but got {tolerance!r}.")
        for name, value, low in (("patience", patience, 1), ("warmup_epochs", warmup_epochs, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"Expected `{name}` to be an int >= {low}, but got {value!r}.")
        self.enabled = bool(enabled)
        self.tolerance = float(tolerance)
        self.patience = patience
        self.warmup_epochs = warmup_epochs
        self.require_elbo_objective = bool(require_elbo_objective)
        self.reset()

    def reset(self) -> None:
        """A new fit: no patience carried over from an earlier one (a checkpoint restores it afterwards)."""
        self.wait_count = 0
        self.stopped_epoch = None
        self.stop_reason = None
        self._warned_objective = False

    def _objective_is_elbo(self, objective: tuple[float, float, float] | None) -> bool:
        """``objective``: mean -loss per point, read as a batch mean and as a batch sum, and the mean ELBO."""
        if not self.require_elbo_objective or objective is None:  # no loss recorded: nothing to compare
            return True
        *readings, elbo = objective
        if any(abs(neg_loss - elbo) <= OBJECTIVE_RTOL * max(abs(elbo), 1.0) for neg_loss in readings):
            return True
        if not self._warned_objective:
            self._warned_objective = True
            rank_zero_warn(
                "EntropyMonitor: the training loss is not -ELBO this epoch (beta != 1, KL annealing or extra terms);"
                " convergence checks do not count until it is. Pass require_elbo_objective=False to count anyway."
            )
        return False

    def check(self, trainer: pl.Trainer, abs_rel_gap: float, objective: tuple[float, float, float] | None,
              stage: str) -> None:
        """Update the count on every rank and stop (collectively) once it reaches ``patience``."""
        if not self.enabled or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return  # trainer.validate() alone trains nothing: no check counts and nothing stops
        counts = (
            trainer.current_epoch >= self.warmup_epochs
            and math.isfinite(abs_rel_gap)
            and self._objective_is_elbo(objective)
        )
        self.wait_count = self.wait_count + 1 if counts and abs_rel_gap < self.tolerance else 0
        should_stop = trainer.strategy.reduce_boolean_decision(self.wait_count >= self.patience, all=False)
        if should_stop and not trainer.should_stop:
            trainer.should_stop = True
            self.stopped_epoch = trainer.current_epoch
            self.stop_reason = (
                f"EntropyMonitor: |relative gap| of `{stage}` stayed below {self.tolerance} for {self.patience}"
                f" consecutive check(s) (last {abs_rel_gap:.3g}); stopping at epoch {trainer.current_epoch}."
            )
            rank_zero_info(self.stop_reason)

    def state_dict(self) -> dict[str, Any]:
        return {"wait_count": self.wait_count, "stopped_epoch": self.stopped_epoch, "stop_reason": self.stop_reason,
                "warned_objective": self._warned_objective}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.wait_count = int(state.get("wait_count", 0))
        self.stopped_epoch = state.get("stopped_epoch")
        self.stop_reason = state.get("stop_reason")
        self._warned_objective = bool(state.get("warned_objective", False))
