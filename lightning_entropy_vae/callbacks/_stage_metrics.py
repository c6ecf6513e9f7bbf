"""The metrics of one stage, fed through their public ``update``, and what the callback reads from them (private).

Per stage: an :class:`~lightning_entropy_vae.EntropySumELBO`, a :class:`~lightning_entropy_vae.GaussianELBO`
and a :class:`~lightning_entropy_vae.PosteriorCollapse` over the epoch. The training stage also keeps a
window pair of the first two (rank-local, as Lightning's own step metrics are) for the step-level keys:
each reduction updates the window; a step log computes it, merges it into the epoch pair
(``Metric.merge_state``) and resets it. Batches after an epoch's last step log are merged into that epoch
and carried, already counted, into the next step log's window.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor

from lightning_entropy_vae.callbacks._pending import PendingBatches
from lightning_entropy_vae.callbacks._step_outputs import StageLayout
from lightning_entropy_vae.metrics import EntropySumELBO, GaussianELBO, PosteriorCollapse


def _compute(metric: Any) -> Any:
    """``metric.compute()`` (a collective under DDP); without TorchMetrics' warning when nothing was kept."""
    if metric.update_count:
        return metric.compute()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*compute.*called before.*update.*")
        return metric.compute()


class StageMetrics:
    """Epoch (and, for training, window) metrics of a stage, and the counts that go with them."""

    def __init__(self, layout: StageLayout, *, profiled: bool, criterion: str, threshold: float | None,
                 device: torch.device, windowed: bool, objective: bool = False,
                 dtype: torch.dtype = torch.float32) -> None:
        self.layout = layout
        self.profiled = profiled

        # the callback drops and counts NaN/Inf batches itself; an overflow the metrics meet is skipped silently
        nan_strategy = "ignore"

        def pair(**sync: Any) -> tuple[EntropySumELBO, GaussianELBO]:
            return (EntropySumELBO(profile_decoder_variance=profiled, warn_fixed_variance=False,
                                   nan_strategy=nan_strategy, **sync), GaussianELBO(nan_strategy=nan_strategy, **sync))

        self.epoch_sum, self.epoch_elbo = pair()
        self.collapse = PosteriorCollapse(layout.latent_dim, criterion=criterion, threshold=threshold,
                                          nan_strategy=nan_strategy)
        self._windows = [pair(sync_on_compute=False) for _ in range(2)] if windowed else []
        # the loss as -ELBO: a rank-local ELBO over the batches whose loss was recorded, and -loss sums
        self._objective = GaussianELBO(nan_strategy=nan_strategy, sync_on_compute=False) if objective else None
        for m in (self.epoch_sum, self.epoch_elbo, self.collapse, *(m for p in self._windows for m in p),
                  *([self._objective] if objective else [])):
            m.to(device)
            if dtype == torch.float64:  # float64 steps (precision="64-true") keep float64 sums
                m.set_dtype(torch.float64)
        self._carry: tuple[EntropySumELBO, GaussianELBO] | None = None
        self.reset_epoch()

    # ------------------------------------------------------------------------------------ reduction
    def reduce(self, pending: PendingBatches, loss_scale: float = 1.0) -> None:
        """Update the metrics with the pending batches in one call each, leaving out those holding NaN/Inf."""
        if not len(pending):
            return
        with torch.no_grad():
            if self.layout.distributions:  # distribution objects: batch by batch, each metric skips NaN itself
                for kw in pending.batches:
                    self._update(kw)
            else:
                inputs = pending.stack()
                finite, losses = pending.finite(inputs)  # one small read to the host
                batches, sizes = pending.batches, pending.sizes
                if not all(finite):
                    self.dropped += finite.count(False)
                    kept = [i for i, ok in enumerate(finite) if ok]
                    batches, sizes = [batches[i] for i in kept], [sizes[i] for i in kept]
                    losses = None if losses is None else [losses[i] for i in kept]
                    inputs = pending.stack(batches, sizes) if batches else None
                if inputs is not None:
                    self._update(inputs)
                    if self._objective is not None and losses is not None:
                        self._add_objective(pending, inputs, batches, sizes, losses, loss_scale)
        pending.clear()

    def _update(self, inputs: Any) -> None:
        entropy_sum, elbo = self._windows[0] if self._windows else (self.epoch_sum, self.epoch_elbo)
        entropy_sum.update(inputs)
        elbo.update(inputs)
        self.collapse.update(inputs)

    def _add_objective(self, pending: PendingBatches, inputs: Any, batches: list, sizes: list[int],
                       losses: list[float], scale: float) -> None:
        """-loss over the batches with a finite loss, read as a batch mean and as a batch sum, and the ELBO of
        the same points (Lightning divides the returned loss by the accumulation: ``scale`` undoes it)."""
        if not all(math.isfinite(v) for v in losses):
            kept = [i for i, v in enumerate(losses) if math.isfinite(v)]
            if not kept:
                return
            batches, sizes, losses = [batches[i] for i in kept], [sizes[i] for i in kept], [losses[i] for i in kept]
            inputs = pending.stack(batches, sizes)
        self._objective.update(inputs)
        self.objective_sums[0] -= sum(v * n for v, n in zip(losses, sizes)) * scale
        self.objective_sums[1] -= sum(losses) * scale
        self.objective_sums[2] += sum(sizes)

    # ---------------------------------------------------------------------------------------- reads
    def window_values(self) -> tuple[float, float]:
        """Entropy sum and ELBO over the batches since the last step log (rank-local), as floats; restarts it."""
        self._merge_window()
        entropy_sum, elbo = self._windows[0]
        if self._carry is not None:
            entropy_sum.merge_state(self._carry[0])
            elbo.merge_state(self._carry[1])
            self._carry = None
        values = torch.stack([_compute(entropy_sum)["sum"], _compute(elbo)]).tolist()
        entropy_sum.reset()
        elbo.reset()
        return values[0], values[1]

    def epoch_values(self) -> tuple[dict[str, Tensor], Tensor, dict[str, Tensor]]:
        """Entropy terms, ELBO and per-latent statistics over the epoch's kept points (collectives under DDP)."""
        if self._windows:
            self._merge_window()
            # the window's batches stay in the next step log's window, already counted in this epoch
            window, spare = self._windows
            if self._carry is not None:
                window[0].merge_state(self._carry[0])
                window[1].merge_state(self._carry[1])
            self._carry = window
            for m in spare:
                m.reset()
            self._windows = [spare, window]
        return _compute(self.epoch_sum), _compute(self.epoch_elbo), _compute(self.collapse)

    def _merge_window(self) -> None:
        entropy_sum, elbo = self._windows[0]
        self.epoch_sum.merge_state(entropy_sum)
        self.epoch_elbo.merge_state(elbo)

    def objective(self) -> tuple[float, float, float] | None:
        """Rank-local mean -loss per point (the loss read as a batch mean, then as a batch sum) and mean ELBO."""
        if self._objective is None or not self._objective.update_count:
            return None
        neg_loss_mean, neg_loss_sum, kept = self.objective_sums
        return neg_loss_mean / kept, neg_loss_sum / kept, float(_compute(self._objective))

    def reset_epoch(self, carry_window: bool = True) -> None:
        """Start a new epoch; with ``carry_window`` (training) the batches after the last step log stay in the
        next window."""
        for m in (self.epoch_sum, self.epoch_elbo, self.collapse):
            m.reset()
        if not carry_window:
            self._carry = None
            for pair in self._windows:
                for m in pair:
                    m.reset()
        if self._objective is not None:
            self._objective.reset()
        self.dropped = 0  # batches left out for NaN/Inf
        self.skipped_none = 0  # batches whose step returned None
        self.objective_sums = [0.0, 0.0, 0]  # -loss read as a batch mean, as a batch sum; the points
