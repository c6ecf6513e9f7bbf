"""Logger-specific extras of the EntropyMonitor: chart layouts, histograms, bar images (private).

Scalars go to every logger's ``log_metrics``. What only some loggers can show is
written here, on global rank 0 only: a TensorBoard custom-scalars layout (once per run) that overlays
the ELBO with the entropy sum and the per-latent entropies with the threshold and prior lines, W&B
``define_metric`` groupings, and per-epoch histograms / bar images of the per-latent entropies.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from torch import Tensor


def tensorboard_layout(stages: list[str], per_latent: bool) -> dict[str, dict[str, list]]:
    """The custom-scalars layout: one category, Multiline charts per stage."""
    charts: dict[str, list] = {}
    for stage in stages:
        charts[f"{stage}: ELBO vs entropy sum"] = ["Multiline", [f"entropy/{stage}/elbo", f"entropy/{stage}/sum"]]
        charts[f"{stage}: relative gap"] = ["Multiline", [f"entropy/{stage}/rel_gap", f"entropy/{stage}/abs_rel_gap"]]
        if per_latent:
            charts[f"{stage}: per-latent encoder entropy"] = ["Multiline", [rf"entropy/{stage}/latent_entropy/.*"]]
            charts[f"{stage}: per-latent KL"] = ["Multiline", [rf"entropy/{stage}/latent_kl/.*"]]
        charts[f"{stage}: active latents"] = ["Multiline", [f"entropy/{stage}/active_latents"]]
    charts["train steps: ELBO vs entropy sum"] = [
        "Multiline", ["entropy/train_step/elbo", "entropy/train_step/sum"]
    ]
    charts["train steps: gap"] = ["Multiline", ["entropy/train_step/gap", "entropy/train_step/gap_ema"]]
    return {"entropy": charts}


def write_layouts(loggers: list[Any], stages: list[str], per_latent: bool) -> None:
    """Write the TensorBoard layout and the W&B metric groupings (call once, on rank 0)."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_custom_scalars(tensorboard_layout(stages, per_latent))
        elif isinstance(logger, WandbLogger):
            run = logger.experiment
            if hasattr(run, "define_metric"):
                run.define_metric("trainer/global_step")
                run.define_metric("entropy/*", step_metric="trainer/global_step")


def write_latent_figures(
    loggers: list[Any], stage: str, stats: dict[str, Tensor], step: int, *, histogram: bool, figure: Any | None
) -> None:
    """Per-epoch histogram of the per-latent entropies, and optionally a bar-chart figure (rank 0)."""
    values = stats["latent_entropy"].detach().float().cpu()
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            if histogram:
                logger.experiment.add_histogram(f"entropy/{stage}/latent_entropy_hist", values, step)
            if figure is not None:
                logger.experiment.add_figure(f"entropy/{stage}/latent_entropy_bars", figure, step, close=False)
        elif isinstance(logger, WandbLogger):
            import wandb

            payload: dict[str, Any] = {"trainer/global_step": step}
            if histogram:
                payload[f"entropy/{stage}/latent_entropy_hist"] = wandb.Histogram(values.numpy())
            if figure is not None:
                payload[f"entropy/{stage}/latent_entropy_bars"] = wandb.Image(figure)
            logger.experiment.log(payload)
