"""Failures users met around the EntropyMonitor: each case once, with what it must do instead."""

import csv
import inspect
import logging
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from helpers import TRAIN, VAL, MonitorVAE, monitor_loader, monitor_trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lightning_entropy_vae import EntropyConvergence, EntropyMonitor

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


@pytest.mark.parametrize("empty_rank", [1, 0])
def test_a_rank_whose_held_out_steps_all_return_none_does_not_hang_ddp(tmp_path, empty_rank):
    """One rank keeps no validation or test batch (with the default monitor it never starts a test stage): the ranks
    agree on the stages and on not gathering (a rank without a layout has no states to send), the others publish
    their own values, and the empty rank says so, instead of a hang or a collective that meets no peer."""
    script = tmp_path / "fit.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(TESTS)!r})\nimport helpers\n\n"
                      f"if __name__ == '__main__':\n    helpers.ddp_fit_with_an_empty_rank({str(tmp_path)!r},"
                      f" {empty_rank})\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    try:
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=150, env=env,
                              cwd=tmp_path)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"the ddp_spawn run hung (no result after {err.timeout} s)")
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"process {empty_rank} kept no batch of the `val` epoch 0" in done.stderr
    assert f"process {empty_rank} kept no batch of the `test` epoch 0" in done.stderr
    def logged(version, key):
        path = tmp_path / "csv" / f"version_{version}" / "metrics.csv"
        if not path.exists():  # nothing logged by rank 0
            return []
        with open(path, newline="") as f:
            return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]

    values, tests = logged(0, "entropy/val/elbo"), logged(1, "entropy/test/elbo")
    if empty_rank == 1:  # rank 0 logs its own values
        assert "1 of 2 processes kept no batch of the `val` epoch 0" in done.stderr
        assert len(values) == 2 and all(math.isfinite(v) for v in values) and len(tests) == 1
        assert torch.tensor(values).std() < 1e-6  # a frozen model: rank 0's validation batches give one value
    else:  # rank 0 has nothing to log
        assert values == [] and tests == []


@pytest.mark.parametrize(("make", "message"), [
    (lambda: EntropyMonitor(collapse_treshold=0.5),
     "EntropyMonitor() got unexpected keyword argument(s) `collapse_treshold` (did you mean `collapse_threshold`?)."),
    (lambda: EntropyConvergence(gap_tol=0.02),
     "EntropyConvergence() got unexpected keyword argument(s) `gap_tol` (did you mean `gap_tolerance`?)."),
])
def test_a_misspelt_argument_of_a_callback_names_the_closest_one(make, message):
    with pytest.raises(TypeError, match="^" + re.escape(message) + " Expected "):
        make()


def test_the_signatures_stay_readable_by_lightning_cli():
    """The keyword check wraps ``__init__``; ``inspect`` (LightningCLI, jsonargparse) still sees the arguments."""
    params = inspect.signature(EntropyMonitor.__init__).parameters
    assert list(params)[:3] == ["self", "stages", "collapse_criterion"] and params["prefix"].default == "entropy"
    params = inspect.signature(EntropyConvergence.__init__).parameters
    assert list(params)[:5] == ["self", "gap_tolerance", "gap_z", "gate_epochs", "patience"]
    defaults = EntropyConvergence()  # the defaults inspect reports are the ones a call without arguments gets
    assert all(getattr(defaults, name) == params[name].default for name in ("gap_tolerance", "gap_z", "gate_epochs",
                                                                             "patience", "monitor_stage"))


class AllCollapsed(MonitorVAE):
    """Every latent's posterior is the prior N(0, 1): all collapsed from the first epoch on."""

    def latents(self, mean, logvar):
        return mean * 0.0, logvar * 0.0


class CollapsedThenNaN(AllCollapsed):
    """All collapsed in epoch 0; every batch of epoch 1 NaN (a diverged run): its flags are unknown."""

    def _returned(self, out):
        out = super()._returned(out)
        if self.current_epoch == 1:
            out["enc_logvar"] = out["enc_logvar"] + math.nan
        return out


def test_a_last_epoch_without_kept_batches_gets_no_collapse_verdict_at_the_end(tmp_path):
    trainer = monitor_trainer(tmp_path, [EntropyMonitor(stages=("train",))], max_epochs=2)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(CollapsedThenNaN(lr=0.0), monitor_loader(TRAIN))
    said = [str(w.message) for w in record]
    assert any("was kept (4 skipped: NaN/Inf values" in m for m in said), said
    assert not any("no latent is active" in m for m in said)  # epoch 0's flags say nothing of epoch 1
    assert math.isnan(float(trainer.callback_metrics["entropy/train/active_latents"]))


def test_no_active_latent_is_said_once_and_the_fit_ends_with_a_summary(tmp_path, caplog):
    trainer = monitor_trainer(tmp_path, [EntropyMonitor(stages=("train",))], max_epochs=3)
    with warnings.catch_warnings(record=True) as record, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        trainer.fit(AllCollapsed(lr=0.0), monitor_loader(TRAIN))
    said = [str(w.message) for w in record if "no latent is active" in str(w.message)]
    assert len(said) == 1 and said[0].startswith("EntropyMonitor: no latent is active at the end of training (epoch"
                                                 " 2): all 2 latents are collapsed")
    assert "KL warm-up" in said[0]
    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("EntropyMonitor: last training")]
    elbo = float(trainer.callback_metrics["entropy/train/elbo"])
    assert len(summary) == 1 and f"ELBO {elbo:.4g}" in summary[0] and summary[0].endswith("0 active latents.")
    # an active model gets no warning
    for model, epochs in ((MonitorVAE(lr=0.0), 4),):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            monitor_trainer(tmp_path, [EntropyMonitor(stages=("train",))], max_epochs=epochs).fit(
                model, monitor_loader(TRAIN))
        assert not any("no latent is active" in str(w.message) for w in record)
