"""Failures users met around the EntropyMonitor: each case once, with what it must do instead."""

import csv
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from helpers import TRAIN, VAL, MonitorVAE, monitor_loader, monitor_trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lightning_entropy_vae import EntropyMonitor

TESTS = Path(__file__).resolve().parent


class AllNaN(MonitorVAE):
    """Every training batch returns a NaN in ``enc_logvar`` (the loss stays finite): every batch is skipped."""

    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        out["enc_logvar"] = out["enc_logvar"] * math.nan
        return out


def test_an_epoch_of_skipped_batches_logs_nan_to_tensorboard_and_csv(tmp_path):
    """A histogram of NaN entropies fails in TensorBoard ("The histogram is empty"): such an epoch is drawn as
    NaN scalars, with the warning, and the fit goes on."""
    loggers = [TensorBoardLogger(tmp_path, name="tb"), CSVLogger(tmp_path, name="csv")]
    trainer = monitor_trainer(tmp_path, [EntropyMonitor(stages=("train",), log_histograms=True)], max_epochs=2,
                              logger=loggers)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(AllNaN(lr=0.0), monitor_loader(TRAIN))
    assert trainer.current_epoch == 2
    assert math.isnan(float(trainer.callback_metrics["entropy/train/sum"]))
    assert float(trainer.callback_metrics["entropy/train/skipped_batches"]) == len(TRAIN) // 4
    assert sum("no batch of the `train` epoch 0 was kept" in str(w.message) for w in record) == 1
    with open(Path(loggers[1].log_dir) / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("entropy/train/active_latents")]
    assert len(rows) == 2 and all(r["entropy/train/active_latents"] == "nan" for r in rows)


def test_two_monitors_with_one_prefix_is_an_error_at_setup(tmp_path):
    trainer = monitor_trainer(tmp_path, [EntropyMonitor(), EntropyMonitor(stages=("train",))], max_epochs=1)
    message = (r"Expected each EntropyMonitor in the Trainer to have its own `prefix`, but got 2 with prefix='entropy':"
               r" their keys would overwrite each other. Pass another prefix to the second, e.g."
               r" EntropyMonitor\(prefix='entropy_ema'\).")
    with pytest.raises(ValueError, match="^" + message + "$"):
        trainer.fit(MonitorVAE(), monitor_loader(TRAIN), monitor_loader(VAL))
    # two prefixes are fine
    trainer = monitor_trainer(tmp_path, [EntropyMonitor(), EntropyMonitor(prefix="other")], max_epochs=1)
    trainer.fit(MonitorVAE(), monitor_loader(TRAIN), monitor_loader(VAL))
    assert {"entropy/val/sum", "other/val/sum"} <= set(trainer.callback_metrics)


def test_a_rank_whose_validation_steps_all_return_none_does_not_hang_ddp(tmp_path):
    """Rank 1 keeps no validation batch: the ranks agree not to gather the metrics (a rank without a layout has no
    states to send) and rank 0 logs its own values, with a warning, instead of a hang."""
    script = tmp_path / "fit.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(TESTS)!r})\nimport helpers\n\n"
                      f"if __name__ == '__main__':\n    helpers.ddp_fit_rank1_without_validation({str(tmp_path)!r})\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    try:
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=150, env=env,
                              cwd=tmp_path)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"the ddp_spawn run hung (no result after {err.timeout} s)")
    assert done.returncode == 0, done.stderr[-4000:]
    assert "1 of 2 processes kept no batch of the `val` epoch 0" in done.stderr
    with open(tmp_path / "csv" / "version_0" / "metrics.csv", newline="") as f:
        values = [float(r["entropy/val/elbo"]) for r in csv.DictReader(f) if r.get("entropy/val/elbo")]
    assert len(values) == 2 and all(math.isfinite(v) for v in values)
    assert torch.tensor(values).std() < 1e-6  # a frozen model: rank 0's validation batches give one value
