"""Writing the EntropyMonitor's keys to Lightning's loggers (private): which step, which keys, as floats.

Scalars go straight to every logger's ``log_metrics`` (rank 0 only, as Lightning's loggers write), at the step
Lightning logs its own metrics of the same batch or epoch; epoch keys also go into ``trainer.callback_metrics``.
What only TensorBoard and W&B can show (layouts, line runs, histograms, figures, text tables) is in
:mod:`._logger_extras`.
"""

from __future__ import annotations

import sys
from typing import Any

import lightning.pytorch.loggers  # noqa: F401  (in sys.modules for is_logger)
import torch
from torch import Tensor

from lightning_entropy_vae.functional import relative_gap

#: the per-latent rows that can be logged as scalars ``entropy/{stage}/{row}/{h}``
PER_LATENT_ROWS = ("latent_entropy", "latent_kl", "collapsed")


def is_logger(logger: Any, name: str) -> bool:
    """Whether ``logger`` is Lightning's logger class ``name`` (``"TensorBoardLogger"``, ``"WandbLogger"``) of either
    namespace: ``lightning.pytorch.loggers`` or ``pytorch_lightning.loggers``, two copies of the same classes (the
    second is checked when it was imported, as it must have been for one of its loggers to exist).
    """
    for namespace in ("lightning.pytorch.loggers", "pytorch_lightning.loggers"):
        module = sys.modules.get(namespace)
        cls = getattr(module, name, None) if module is not None else None
        if isinstance(cls, type) and isinstance(logger, cls):
            return True
    return False


def logger_step(trainer: Any, *, train_epoch_end: bool = False) -> int:
    """The step at which Lightning logs its own metrics now, so that ours get the same step (a CSV's ``step``).

    Lightning's count of batches that stepped (``fit_loop.epoch_loop._batches_that_stepped``, which its own
    ``LearningRateMonitor`` and ``DeviceStatsMonitor`` read): one per batch even where ``global_step`` counts two
    optimizer steps (manual optimization with two optimizers). It moves on after a batch's hooks, and Lightning
    logs a training epoch's metrics one step back (``train_epoch_end``), on the row of the epoch's last batch.
    """
    # no public name for it; should a Lightning version rename it, fall back to the optimizer steps
    step = getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", None)
    if not isinstance(step, int):
        step = trainer.global_step
    return step - 1 if train_epoch_end else step


def log_to_loggers(trainer: Any, metrics: dict[str, float], step: int,
                   not_for_tensorboard: frozenset[str] | set[str] = frozenset()) -> None:
    """Write floats straight to every logger (rank 0 only, as Lightning's loggers do), as LearningRateMonitor does.

    With an ``epoch`` entry, as Lightning adds to the metrics it logs itself (the CSV's epoch column). Keys in
    ``not_for_tensorboard`` go to the other loggers only (TensorBoard shows them as lines or tables instead).
    """
    if trainer.loggers:
        metrics = {**metrics, "epoch": trainer.current_epoch}
        fewer = {k: v for k, v in metrics.items() if k not in not_for_tensorboard} if not_for_tensorboard else metrics
        for logger in trainer.loggers:
            logger.log_metrics(fewer if is_logger(logger, "TensorBoardLogger") else metrics, step=step)


class CallbackMetrics:
    """Puts epoch keys into ``trainer.callback_metrics``, where EarlyStopping and ModelCheckpoint read them.

    Written directly: ``pl_module.log`` costs about 0.4 ms per key and epoch, and the values are already
    reduced over processes. Should a Lightning version hand out a copy of that dict, the keys go through
    ``pl_module.log(logger=False)`` instead (found out on the first epoch; the loggers get them from us).
    """

    def __init__(self) -> None:
        self.writable: bool | None = None

    def publish(self, trainer: Any, pl_module: Any, metrics: dict[str, Tensor]) -> None:
        if self.writable is not False:
            trainer.callback_metrics.update(metrics)
            if self.writable is None:
                self.writable = next(iter(metrics)) in trainer.callback_metrics
        if not self.writable:
            for key, value in metrics.items():
                pl_module.log(key, value, on_step=False, on_epoch=True, logger=False)


def per_latent_keys(stage: str, rows: dict[str, list[float]], prior: float,
                    threshold: float | None, prefix: str = "entropy") -> dict[str, float]:
    """Per-latent keys ``{prefix}/{stage}/{row}/{h}`` (h zero-padded), and the lines they overlay with."""
    out = {}
    for name, row in rows.items():
        width = len(str(len(row) - 1))
        out.update({f"{prefix}/{stage}/{name}/{h:0{width}d}": v for h, v in enumerate(row)})
    out[f"{prefix}/{stage}/latent_entropy/prior"] = prior
    if threshold is not None:
        out[f"{prefix}/{stage}/latent_entropy/threshold"] = threshold
    return out


def epoch_metrics(stage: str, sums: dict[str, Tensor], elbo: Tensor, collapse: dict[str, Tensor], skipped: Tensor, *,
                  data_dim: int, floor: float, per_latent: bool,
                  prefix: str = "entropy") -> tuple[dict[str, Tensor], dict[str, float]]:
    """An epoch's keys: the scalars as tensors (for ``callback_metrics``), and after one device-to-host copy
    the scalars and the per-latent keys as floats (for the loggers).

    With no point kept (``num_active`` NaN), the collapse flags are NaN too: unknown, not "active".
    """
    rel = relative_gap(elbo, sums["sum"], data_dim=data_dim, floor=floor)
    scalars = {
        "encoder": sums["encoder"], "prior": sums["prior"], "decoder": sums["decoder"], "sum": sums["sum"],
        "elbo": elbo, "gap": elbo - sums["sum"], "rel_gap": rel, "abs_rel_gap": rel.abs(),
        "active_latents": collapse["num_active"], "skipped_batches": skipped,
    }
    if "sum_profiled" in sums:
        scalars["sum_profiled"] = sums["sum_profiled"]
    dtype = elbo.dtype
    stacked = torch.stack([v.detach().to(dtype) for v in scalars.values()])
    pieces = [stacked]
    if per_latent:
        flags = torch.where(collapse["num_active"].isnan(), float("nan"), collapse["collapsed"].to(dtype))
        threshold = collapse.get("entropy_threshold")
        lines = [collapse["prior_latent_entropy"].mean(), *([threshold.mean()] if threshold is not None else [])]
        pieces += [collapse["latent_entropy"].to(dtype), collapse["latent_kl"].to(dtype), flags,
                   torch.stack(lines).to(dtype)]
    flat = torch.cat(pieces).cpu().tolist()  # the one copy to the host
    keys = [f"{prefix}/{stage}/{name}" for name in scalars]
    floats = dict(zip(keys, flat))
    if per_latent:
        latent_dim = collapse["latent_entropy"].shape[0]
        rest = flat[len(keys):]
        rows = {name: rest[i * latent_dim:(i + 1) * latent_dim]
                for i, name in enumerate(("latent_entropy", "latent_kl", "collapsed"))}
        lines = rest[3 * latent_dim:]
        floats.update(per_latent_keys(stage, rows, lines[0], lines[1] if len(lines) > 1 else None, prefix))
    return dict(zip(keys, stacked.unbind())), floats
