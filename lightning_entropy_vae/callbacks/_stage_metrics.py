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

import lightning_entropy_vae.functional as F
from lightning_entropy_vae.callbacks._objective import ObjectiveCheck
from lightning_entropy_vae.callbacks._pending import PendingBatches
from lightning_entropy_vae.callbacks._step_outputs import StageLayout
from lightning_entropy_vae.functional._checks import VOCABULARY
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
        self.track_objective = objective  # regress the losses on the batches' ELBO and KL (rank-local)
        for m in (self.epoch_sum, self.epoch_elbo, self.collapse, *(m for p in self._windows for m in p)):
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
                columns = self._objective_columns(inputs, pending)
                finite, losses, columns = pending.finite(inputs, columns)  # one small read to the host
                if losses is not None and columns:
                    self.objective.eps = max(self.objective.eps, torch.finfo(pending.batches[0]["loss"].dtype).eps)
                    bernoulli = columns[2] if len(columns) > 2 else [None] * len(losses)
                    for ok, loss, elbo, kl, bern, n in zip(finite, losses, columns[0], columns[1], bernoulli,
                                                           pending.sizes):
                        if ok and math.isfinite(loss):
                            self.objective.add(-loss * loss_scale, elbo, kl, n,
                                               None if bern is None or not math.isfinite(bern) else bern)
                if not all(finite):
                    self.dropped += finite.count(False)
                    kept = [i for i, ok in enumerate(finite) if ok]
                    batches, sizes = [pending.batches[i] for i in kept], [pending.sizes[i] for i in kept]
                    inputs = pending.stack(batches, sizes) if batches else None
                if inputs is not None:
                    self._update(inputs)
        pending.clear()

    def _objective_columns(self, inputs: dict[str, Any], pending: PendingBatches) -> tuple[Tensor, ...]:
        """Per batch, the ELBO and the KL summed over its points: what the loss is regressed on; and where ``x`` and
        ``dec_mean`` are kept, the Bernoulli ELBO of ``dec_mean`` read as probabilities (a BCE-trained model's)."""
        if not self.track_objective or "loss" not in pending.layout.kept:
            return ()
        vocabulary = {k: v for k, v in inputs.items() if k in VOCABULARY}
        elbo = inputs.get("elbo")
        if elbo is None:
            elbo = F.gaussian_elbo(**vocabulary, reduction="none")
        kl = F.gaussian_kl(**vocabulary, reduction="none")
        x, dec_mean = inputs.get("x"), inputs.get("dec_mean")
        if not (isinstance(x, Tensor) and isinstance(dec_mean, Tensor) and x.shape == dec_mean.shape):
            return pending.per_batch(elbo), pending.per_batch(kl)
        log_lik = F.bernoulli_log_likelihood(x=x, probs=dec_mean)
        bernoulli = log_lik - kl.to(log_lik.dtype)
        return pending.per_batch(elbo), pending.per_batch(kl), pending.per_batch(bernoulli)

    def _update(self, inputs: Any) -> None:
        entropy_sum, elbo = self._windows[0] if self._windows else (self.epoch_sum, self.epoch_elbo)
        entropy_sum.update(inputs)
        elbo.update(inputs)
        self.collapse.update(inputs)

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

    def reset_epoch(self, carry_window: bool = True, carry_objective: bool = False) -> None:
        """Start a new epoch; with ``carry_window`` (training) the batches after the last step log stay in the
        next window; with ``carry_objective`` the objective check keeps its batches (epochs too short to tell)."""
        for m in (self.epoch_sum, self.epoch_elbo, self.collapse):
            m.reset()
        if not carry_window:
            self._carry = None
            for pair in self._windows:
                for m in pair:
                    m.reset()
        if not carry_objective or not hasattr(self, "objective"):
            self.objective = ObjectiveCheck()
        self.dropped = 0  # batches left out for NaN/Inf
        self.skipped_none = 0  # batches whose step returned None
