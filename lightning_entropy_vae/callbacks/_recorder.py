"""Reading, keeping and reducing the step outputs of every monitored stage (private).

The EntropyMonitor's batch hooks call :meth:`StageRecorder.keep`: the output is read
(:func:`._step_outputs.read_output`), checked against the stage's layout from metadata only, returned
parameters are swapped for their pre-step values (:mod:`._live_params`), and references to its tensors
are kept (:mod:`._pending`). :meth:`StageRecorder.reduce` hands the kept batches to the stage's
metrics (:mod:`._stage_metrics`) at the logging cadence, or earlier when the stash is full.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from lightning_utilities.core.rank_zero import rank_zero_warn

from lightning_entropy_vae.callbacks._live_params import LiveParameters
from lightning_entropy_vae.callbacks._pending import PendingBatches
from lightning_entropy_vae.callbacks._stage_metrics import StageMetrics
from lightning_entropy_vae.callbacks._step_outputs import StageLayout, normalize, owner_of, read_output
from lightning_entropy_vae.functional import fixed_decoder_variance
from lightning_entropy_vae.functional._checks import first_nonfinite

#: Keys of which one in a step's output makes it a monitored output.
ENCODER_KEYS = ("enc_mean", "enc_logvar", "posterior")


class Stage:
    """One monitored stage (``train``, ``val``, ``val_1``, ...): its layout, pending batches and metrics."""

    def __init__(self, layout: StageLayout, metrics: StageMetrics) -> None:
        self.layout = layout
        self.pending = PendingBatches(layout)
        self.metrics = metrics


class StageRecorder:
    """The stages of one run, keyed by name, and what their first batches established."""

    def __init__(self, *, extract: Callable[..., Mapping[str, Any]] | None, nan_strategy: str, criterion: str,
                 threshold: float | None, objective: bool) -> None:
        self.extract = extract
        self.nan_strategy = nan_strategy
        self.criterion, self.threshold = criterion, threshold
        self.objective = objective  # keep the training loss, to check it is -ELBO
        self.live = LiveParameters()
        self.loss_scale = 1.0  # Lightning divides the returned loss by the accumulation
        self.stages: dict[str, Stage] = {}
        self.skipped_none: dict[str, int] = {}  # batches whose step returned None, per stage and epoch
        self.fixed_variance: bool | None = None  # from the first training batch; resumes with the run

    def clear(self) -> None:
        """A new run: each reads its own layouts (a reused callback may meet another model)."""
        self.stages.clear()
        self.skipped_none.clear()

    def start_held_out_epoch(self, kind: str) -> None:
        """A validation (``kind="val"``) or test epoch starts: its stages (``val``, ``val_1``, ...) start empty."""
        for stage, current in self.stages.items():
            if stage.startswith(kind):
                current.pending.clear()
                current.metrics.reset_epoch(carry_window=False)
                self.skipped_none[stage] = 0

    def start_batch(self, record: bool) -> None:
        """A batch starts: an ``extract`` that records forward passes (a :class:`~lightning_entropy_vae.Capture`)
        drops what it holds and records this batch's forward pass only if ``record`` (its stage is monitored)."""
        start = getattr(self.extract, "start_batch", None)
        if start is not None:
            start(record)

    def keep(self, hook: str, stage: str, pl_module: Any, outputs: Any, batch: Any, *, optional: bool = False) -> None:
        """Keep references to a step's tensors (no device work), reducing them when the stash is full.

        ``optional``: a stage not asked for by name (the default's test stage) starts only from an output that
        holds encoder statistics; anything else (None, a loss) leaves it alone.
        """
        values = self.extract(pl_module, outputs, batch) if self.extract is not None else outputs
        if optional and stage not in self.stages and not (
                isinstance(values, Mapping) and any(values.get(k) is not None for k in ENCODER_KEYS)):
            return
        values = read_output(values, hook, stage, pl_module)
        if values is None:  # Lightning's "skip this batch"
            self.skipped_none[stage] = self.skipped_none.get(stage, 0) + 1
            return
        owner = lambda: owner_of(hook, pl_module)  # noqa: E731  (built only for an error message)
        values = normalize(values, owner)  # duck-typed Gaussians as tensors, a Python-number dec_logvar as one
        current = self.stages.get(stage)
        if current is None:
            current = self.stages[stage] = self._start(stage, hook, pl_module, values)
        kw, size = current.layout.check(values, owner)
        if stage == "train":  # also detaches (views, no kernel): kept tensors do not hold the autograd graph
            kw = self.live.restore(kw, owner)
        if current.pending.add(kw, size):
            self.reduce(current, hook, pl_module)

    def _start(self, stage: str, hook: str, pl_module: Any, values: Mapping[str, Any]) -> Stage:
        """The stage's first batch fixes its layout (every rule of the vocabulary checked) and its metrics."""
        owner = owner_of(hook, pl_module)
        need_loss = stage == "train" and self.objective
        found_fixed = False
        if stage == "train" and self.fixed_variance is None:
            lv = values.get("dec_logvar")  # a detached learnable parameter (`.detach()`) is not a fixed variance
            self.fixed_variance = found_fixed = fixed_decoder_variance(lv) and self.live.parameter_of(lv) is None
        layout = StageLayout(values, owner, need_loss=need_loss, need_residual=bool(self.fixed_variance))
        if found_fixed:
            rank_zero_warn(
                f"{owner}: `dec_logvar` does not require grad, so the decoder variance is fixed (VAE-0 / plain MSE"
                " training). The ELBO of such a model does not converge to the entropy sum; their gap stays"
                " 0.5*(D - R/sigma^2) per point. Also logging `sum_profiled`: the entropy sum at the optimal"
                " variance sigma^2* = mean squared residual, which a learned variance would reach."
            )
        first = values.get("enc_logvar", values.get("posterior"))
        device, dtype = ((first.device, first.dtype) if isinstance(first, torch.Tensor)
                         else (pl_module.device, torch.float32))
        metrics = StageMetrics(layout, profiled=bool(self.fixed_variance), criterion=self.criterion,
                               threshold=self.threshold, device=device, windowed=stage == "train",
                               objective=need_loss, dtype=dtype)
        return Stage(layout, metrics)

    def reduce(self, current: Stage, hook: str, pl_module: Any) -> None:
        """The pending batches into the stage's metrics, in one update call each."""
        if self.nan_strategy == "error":
            for kw in current.pending.batches:  # a host sync per key: only at the cadence, and asked for
                key = first_nonfinite({k: v for k, v in kw.items() if k != "loss"})
                if key is not None:
                    raise ValueError(f"{owner_of(hook, pl_module)} got non-finite values (NaN or Inf) in `{key}` in a"
                                     " batch since the last logging step (nan_strategy='error').")
        current.metrics.reduce(current.pending, self.loss_scale)
