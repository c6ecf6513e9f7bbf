"""``import pytorch_lightning as pl`` users: the standalone namespace's Trainer, loggers and callback type checks."""

import csv
from pathlib import Path

import pytest
import torch
from helpers import (
    TRAIN,
    VAL,
    assert_logged_equal,
    monitor_reference,
)
from torch import nn
from torch.distributions import Normal, kl_divergence
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("pytorch_lightning")
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.custom_scalar import layout_pb2  # noqa: E402

import lightning_entropy_vae  # noqa: E402
from lightning_entropy_vae import pytorch_lightning as for_pl  # noqa: E402


class PLVAE(pl.LightningModule):
    """A linear VAE-1 of the ``pytorch_lightning`` namespace; records what its steps return."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.lr = lr
        self.enc, self.dec = nn.Linear(4, 4), nn.Linear(2, 4)
        with torch.no_grad():
            self.enc.bias[2:] = -2.0
        self.dec_logvar = nn.Parameter(torch.zeros(()))
        self.train_log, self.val_log = [], []

    def _step(self, batch, log):
        x = batch[0]
        mean, logvar = self.enc(x).chunk(2, dim=-1)
        std = torch.exp(0.5 * logvar)
        dec_mean = self.dec(mean + std * torch.randn_like(std))
        recon = Normal(dec_mean, torch.exp(0.5 * self.dec_logvar)).log_prob(x).sum(-1)
        kl = kl_divergence(Normal(mean, std), Normal(0.0, 1.0)).sum(-1)
        out = {"x": x, "enc_mean": mean, "enc_logvar": logvar, "dec_mean": dec_mean, "elbo": recon - kl,
               "loss": -(recon - kl).mean()}
        log.append({**{k: v.detach().clone() for k, v in out.items()}, "dec_logvar": self.dec_logvar.detach().clone(),
                    "epoch": self.current_epoch, "sanity": self.trainer.sanity_checking})
        return {**out, "dec_logvar": self.dec_logvar.clone()}

    def training_step(self, batch, batch_idx):
        return self._step(batch, self.train_log)

    def validation_step(self, batch, batch_idx):
        return self._step(batch, self.val_log)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def _fit(tmp_path, callbacks, logger, max_epochs=2, **kwargs):
    torch.manual_seed(0)
    model = PLVAE()
    trainer = pl.Trainer(callbacks=callbacks, logger=logger, max_epochs=max_epochs, accelerator="cpu", devices=1,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         num_sanity_val_steps=0, default_root_dir=tmp_path, log_every_n_steps=2, **kwargs)
    loader = DataLoader(TensorDataset(TRAIN), batch_size=4)
    trainer.fit(model, loader, DataLoader(TensorDataset(VAL), batch_size=4))
    return trainer, model


@pytest.mark.parametrize("monitor_class", [lightning_entropy_vae.EntropyMonitor, for_pl.EntropyMonitor],
                         ids=["lightning.pytorch class", "pytorch_lightning class"])
def test_pytorch_lightning_trainer_and_loggers_get_layout_and_histograms(tmp_path, monitor_class):
    tb = TensorBoardLogger(tmp_path, name="tb", version=0)
    csv_logger = CSVLogger(tmp_path, name="csv", version=0)
    trainer, model = _fit(tmp_path, [monitor_class()], [tb, csv_logger])
    last_train = [e for e in model.train_log if e["epoch"] == 1]
    assert_logged_equal(trainer.callback_metrics, "entropy/train", monitor_reference(last_train))
    tb.experiment.flush()
    events = EventAccumulator(tb.log_dir, size_guidance={"tensors": 0, "histograms": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    layout = layout_pb2.Layout.FromString(events.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for category in layout.category for chart in category.chart}
    assert charts["train: ELBO vs entropy sum"] == ["entropy/train/elbo_vs_sum"]
    lines = EventAccumulator(str(Path(tb.log_dir) / "lines" / "elbo"), size_guidance={"scalars": 0})
    lines.Reload()  # the ELBO line, a run of its own so that TensorBoard colours it apart from the entropy sum
    assert len(lines.Scalars("entropy/train/elbo_vs_sum")) == 2
    assert {"entropy/train/latent_entropy_hist", "entropy/val/latent_entropy_hist"} <= set(tags["histograms"])
    assert len(events.Scalars("entropy/train/sum")) == 2
    with open(Path(csv_logger.log_dir) / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sum(1 for r in rows if r.get("entropy/val/sum")) == 2


def test_pytorch_lightning_wandb_logger_gets_the_metric_groups_and_histograms(tmp_path, monkeypatch):
    import wandb
    from wandb.sdk.wandb_run import Run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logged, defined = [], []
    for name, into in (("log", logged), ("define_metric", defined)):
        original = getattr(Run, name)

        def wrapper(self, *args, _original=original, _into=into, **kwargs):
            _into.append((args, kwargs))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Run, name, wrapper)
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="entropy-monitor-tests")
    try:
        _fit(tmp_path, [lightning_entropy_vae.EntropyMonitor()], logger, max_epochs=1)
    finally:
        wandb.finish()
    assert (("entropy/*",), {"step_metric": "trainer/global_step"}) in defined
    histograms = [p for (p, *_), _ in logged if "entropy/train/latent_entropy_hist" in p]
    assert len(histograms) == 1 and isinstance(histograms[0]["entropy/train/latent_entropy_hist"], wandb.Histogram)


def test_callbacks_for_the_pytorch_lightning_namespace(tmp_path):
    monitor = for_pl.EntropyMonitor()
    convergence = for_pl.EntropyConvergence(gap_tolerance=1e6, gap_z=0.0, gate_epochs=1, patience=1,
                                            monitor_stage="train", require_elbo_objective=False)
    assert isinstance(monitor, pl.Callback) and isinstance(monitor, lightning_entropy_vae.EntropyMonitor)
    assert monitor.state_key == lightning_entropy_vae.EntropyMonitor().state_key  # checkpoints are interchangeable
    # a single callback, not in a list: pytorch_lightning's Trainer checks its type
    trainer = pl.Trainer(callbacks=monitor, logger=False, max_epochs=1, enable_progress_bar=False)
    assert monitor in trainer.callbacks
    with pytest.raises(TypeError):  # what a lightning.pytorch callback meets there
        pl.Trainer(callbacks=lightning_entropy_vae.EntropyMonitor(), logger=False, enable_progress_bar=False)
    # EntropyConvergence under a pytorch_lightning Trainer: the gate opens once the 10-batch gap window is full (4
    # batches per epoch: epoch 2), then it stops on the training ELBO
    trainer, _ = _fit(tmp_path, [for_pl.EntropyMonitor(gap_window=10), convergence], False, max_epochs=20)
    assert convergence.gate_open
    assert convergence.stopped_epoch is not None and 2 < convergence.stopped_epoch == trainer.current_epoch - 1 < 19
    assert convergence.stop_reason.startswith("EntropyConvergence: the training gap was stationary for 1 epochs, then"
                                              " `entropy/train/elbo` did not improve on")
