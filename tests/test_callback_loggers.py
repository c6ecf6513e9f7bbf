"""EntropyMonitor with Lightning's loggers: values read back from TensorBoard, CSV, W&B (offline), MLflow."""

import csv
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers import (
    TRAIN,
    VAL,
    MonitorVAE,
    monitor_loader,
    monitor_reference,
    monitor_trainer,
)
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

from lightning_entropy_vae import EntropyMonitor

EPOCH_KEYS = [f"entropy/{stage}/{key}" for stage in ("train", "val")
              for key in ("encoder", "prior", "decoder", "sum", "elbo", "gap", "rel_gap", "abs_rel_gap",
                          "active_latents", "skipped_batches")]
STEP_KEYS = [f"entropy/train_step/{key}" for key in ("sum", "elbo", "gap", "rel_gap", "gap_ema")]
LATENT_KEYS = [f"entropy/train/{name}/{h}" for name in ("latent_entropy", "latent_kl", "collapsed")
               for h in (0, 1)]
TB_LATENT_KEYS = [key for key in LATENT_KEYS if "/latent_entropy/" in key]  # TensorBoard's default


def _fit(tmp_path, logger, monitor=None, max_epochs=2):
    torch.manual_seed(0)
    model = MonitorVAE(lr=0.05)
    trainer = monitor_trainer(tmp_path, [monitor or EntropyMonitor()], max_epochs=max_epochs, logger=logger,
                              log_every_n_steps=2)
    trainer.fit(model, monitor_loader(TRAIN), monitor_loader(VAL))
    return trainer, model


def _assert_last_values(trainer, last):
    """``last``: key -> the last value a logger holds; equal to what reached callback_metrics."""
    for key in EPOCH_KEYS:
        assert last[key] == pytest.approx(float(trainer.callback_metrics[key]), rel=1e-6, abs=1e-7), key


def _csv_last(logger):
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    last = {}
    for row in rows:
        last.update({k: float(v) for k, v in row.items() if v})
    return rows, last


# -------------------------------------------------------------------------------------- TensorBoard
def test_tensorboard_scalars_layout_histogram_and_figure(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    trainer, model = _fit(tmp_path, logger, EntropyMonitor(log_bar_chart_every_n_epochs=1))
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "histograms": 0, "images": 0,
                                                             "tensors": 0})
    events.Reload()
    tags = events.Tags()
    scalars = set(tags["scalars"])
    assert set(EPOCH_KEYS + STEP_KEYS) <= scalars
    by_state = set()  # the per-latent entropies are in the runs of the latents' states
    for run in ("active", "collapsed"):
        lines = EventAccumulator(str(Path(logger.log_dir) / "lines" / run))
        lines.Reload()
        by_state |= set(lines.Tags()["scalars"])
    assert set(TB_LATENT_KEYS) <= by_state
    _assert_last_values(trainer, {key: events.Scalars(key)[-1].value for key in EPOCH_KEYS})
    assert len(events.Scalars("entropy/train/sum")) == 2  # one per epoch

    # the custom-scalars layout, written once, overlays the ELBO with the entropy sum (test_dashboards.py)
    assert "custom_scalars__config__" in tags["tensors"]
    configs = events.Tensors("custom_scalars__config__")
    assert len(configs) == 1
    layout = layout_pb2.Layout.FromString(configs[0].tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag)
              for category in layout.category for chart in category.chart}
    assert charts["train: ELBO vs entropy sum"] == ["entropy/train/elbo_vs_sum"]
    assert charts["val: relative gap"] == ["entropy/val/rel_gap"]
    assert charts["train steps: gap (moving average)"] == ["entropy/train_step/gap_ema"]

    # per-epoch histograms of the per-latent entropies, and the bar chart images
    for stage in ("train", "val"):
        assert f"entropy/{stage}/latent_entropy_hist" in tags["histograms"]
        assert f"entropy/{stage}/latent_entropy_bars" in tags["images"]
    histograms = events.Histograms("entropy/train/latent_entropy_hist")
    assert len(histograms) == 2
    latent = monitor_reference(model.train_epoch(1))["latent_entropy"]
    last = histograms[-1].histogram_value
    assert last.num == 2
    assert last.min == pytest.approx(min(latent), abs=1e-5)
    assert last.max == pytest.approx(max(latent), abs=1e-5)
    assert len(events.Images("entropy/train/latent_entropy_bars")) == 2


def test_tensorboard_without_histograms_or_figures(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    _fit(tmp_path, logger, EntropyMonitor(log_histograms=False), max_epochs=1)
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    assert not events.Tags()["histograms"] and not events.Tags()["images"]
    assert "entropy/train/sum" in events.Tags()["scalars"]


# --------------------------------------------------------------------------------------------- CSV
def test_csv_logger_values(tmp_path):
    logger = CSVLogger(tmp_path, name="csv", version=0)
    trainer, model = _fit(tmp_path, logger)
    rows, last = _csv_last(logger)
    _assert_last_values(trainer, last)
    ref = monitor_reference(model.train_epoch(1))
    for h in (0, 1):
        assert last[f"entropy/train/latent_entropy/{h}"] == pytest.approx(ref["latent_entropy"][h], abs=1e-5)
    assert sum(1 for r in rows if r.get("entropy/train/sum")) == 2
    assert sum(1 for r in rows if r.get("entropy/train_step/sum")) == 4  # 4 batches per epoch, every 2 steps


def test_several_loggers_get_the_same_values(tmp_path):
    csv_logger = CSVLogger(tmp_path, name="csv", version=0)
    tb_logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    trainer, _ = _fit(tmp_path, [csv_logger, tb_logger])
    tb_logger.experiment.flush()
    _, last = _csv_last(csv_logger)
    _assert_last_values(trainer, last)
    events = EventAccumulator(tb_logger.log_dir)
    events.Reload()
    _assert_last_values(trainer, {key: events.Scalars(key)[-1].value for key in EPOCH_KEYS})
    for key in STEP_KEYS:
        assert events.Scalars(key)[-1].value == pytest.approx(last[key], rel=1e-6, abs=1e-7), key
    for key in TB_LATENT_KEYS:  # in the run of the latent's state at the last epoch
        run = "collapsed" if last[key.replace("/latent_entropy/", "/collapsed/")] == 1.0 else "active"
        by_state = EventAccumulator(str(Path(tb_logger.log_dir) / "lines" / run))
        by_state.Reload()
        assert by_state.Scalars(key)[-1].value == pytest.approx(last[key], rel=1e-6, abs=1e-7), key
    assert "entropy/train/latent_entropy_hist" in events.Tags()["histograms"]


def test_without_logger_values_reach_callback_metrics(tmp_path):
    trainer, model = _fit(tmp_path, False)
    assert not trainer.loggers
    assert set(EPOCH_KEYS) <= set(trainer.callback_metrics)
    assert float(trainer.callback_metrics["entropy/train/sum"]) == pytest.approx(
        monitor_reference(model.train_epoch(1))["sum"], rel=1e-5)


class CopyingCallbackMetrics(pl.Trainer):
    """A Trainer whose ``callback_metrics`` hands out a copy: writes to it do not stick."""

    @property
    def callback_metrics(self):
        return dict(super().callback_metrics)


def test_epoch_keys_fall_back_to_pl_module_log(tmp_path):
    torch.manual_seed(0)
    model = MonitorVAE(lr=0.05)
    logger = CSVLogger(tmp_path, name="csv", version=0)
    trainer = CopyingCallbackMetrics(
        callbacks=[EntropyMonitor()], max_epochs=2, accelerator="cpu", devices=1, logger=logger,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        num_sanity_val_steps=0, default_root_dir=tmp_path, log_every_n_steps=2,
    )
    trainer.fit(model, monitor_loader(TRAIN), monitor_loader(VAL))
    assert set(EPOCH_KEYS) <= set(trainer.callback_metrics)  # through pl_module.log
    assert float(trainer.callback_metrics["entropy/train/sum"]) == pytest.approx(
        monitor_reference(model.train_epoch(1))["sum"], rel=1e-5)
    rows, last = _csv_last(logger)
    _assert_last_values(trainer, last)
    assert sum(1 for r in rows if r.get("entropy/train/sum")) == 2  # once per epoch: logger=False on the fallback


def test_model_checkpoint_monitors_an_epoch_key(tmp_path):
    torch.manual_seed(0)
    model = MonitorVAE(lr=0.05)
    best = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="entropy/val/sum", mode="max", save_top_k=1)
    trainer = monitor_trainer(tmp_path, [EntropyMonitor(), best], max_epochs=3, enable_checkpointing=True)
    trainer.fit(model, monitor_loader(TRAIN), monitor_loader(VAL))
    sums = [monitor_reference(model.val_epoch(epoch))["sum"] for epoch in range(3)]
    assert float(best.best_model_score) == pytest.approx(max(sums), rel=1e-5)
    assert f"epoch={sums.index(max(sums))}" in Path(best.best_model_path).name


# --------------------------------------------------------------------------------------------- W&B
def _wandb_fit(tmp_path, monkeypatch):
    """Fit with an offline WandbLogger; return the trainer, the model, every ``Run.log`` payload and every
    ``Run.define_metric`` call."""
    import wandb
    from wandb.sdk.wandb_run import Run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logged, defined = [], []

    def spy(name, into):
        original = getattr(Run, name)

        def wrapper(self, *args, **kwargs):
            into.append((args, kwargs))
            return original(self, *args, **kwargs)

        monkeypatch.setattr(Run, name, wrapper)

    spy("log", logged)
    spy("define_metric", defined)
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="entropy-monitor-tests")
    try:
        trainer, model = _fit(tmp_path, logger)
        assert logger.experiment.offline  # never a login or a network call
    finally:
        wandb.finish()
    return trainer, model, [args[0] for args, _ in logged], defined


def test_wandb_offline(tmp_path, monkeypatch):
    import wandb

    trainer, _, payloads, defined = _wandb_fit(tmp_path, monkeypatch)
    last = {}
    for payload in payloads:
        last.update({k: v for k, v in payload.items() if isinstance(v, (int, float))})
    _assert_last_values(trainer, last)
    assert set(STEP_KEYS + LATENT_KEYS) <= set(last)
    assert all("trainer/global_step" in payload for payload in payloads)
    key = "entropy/train/latent_entropy_hist"
    hists = [payload[key] for payload in payloads if key in payload]
    assert len(hists) == 2 and all(isinstance(h, wandb.Histogram) for h in hists)
    assert (("entropy/*",), {"step_metric": "trainer/global_step"}) in defined


def test_wandb_gets_a_per_latent_table_with_each_histogram(tmp_path, monkeypatch):
    """Each epoch, W&B gets a table of the per-latent encoder entropy, KL and state, in the histogram's payload,
    with the values of a float64 torch.distributions reference."""
    import wandb

    _, model, payloads, _ = _wandb_fit(tmp_path, monkeypatch)
    for stage, entries in (("train", model.train_epoch), ("val", model.val_epoch)):
        logged = [p for p in payloads if f"entropy/{stage}/latents" in p]
        assert len(logged) == 2, stage  # one per epoch
        steps = [p["trainer/global_step"] for p in payloads if f"entropy/{stage}/latent_entropy_hist" in p]
        assert [p["trainer/global_step"] for p in logged] == steps  # the histogram's payload
        for epoch, payload in enumerate(logged):
            table = payload[f"entropy/{stage}/latents"]
            assert isinstance(table, wandb.Table)
            assert table.columns == ["latent", "encoder entropy", "KL", "state"]
            ref = monitor_reference(entries(epoch))
            assert [row[0] for row in table.data] == [0, 1]
            assert [row[1] for row in table.data] == pytest.approx(ref["latent_entropy"], abs=1e-5)
            assert [row[2] for row in table.data] == pytest.approx(ref["latent_kl"], abs=1e-5)
            assert [row[3] for row in table.data] == ["collapsed" if c else "active" for c in ref["collapsed"]]


# ------------------------------------------------------------------------------------------ MLflow
def test_mlflow_file_store(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 keeps the file store behind this switch
    uri = f"file:{tmp_path}/mlruns"
    logger = MLFlowLogger(experiment_name="entropy-monitor", tracking_uri=uri)
    trainer, model = _fit(tmp_path, logger)
    client = MlflowClient(tracking_uri=uri)
    history = client.get_metric_history(logger.run_id, "entropy/train/sum")
    assert len(history) == 2
    assert history[-1].value == pytest.approx(float(trainer.callback_metrics["entropy/train/sum"]), rel=1e-6)
    assert history[-1].value == pytest.approx(monitor_reference(model.train_epoch(1))["sum"], rel=1e-5)
    steps = client.get_metric_history(logger.run_id, "entropy/train_step/gap_ema")
    assert len(steps) == 4 and all(math.isfinite(m.value) for m in steps)
