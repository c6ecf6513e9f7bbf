"""EntropyMonitor and EntropyConvergence configured from a YAML file with LightningCLI (``class_path``/``init_args``).

One epoch of a GaussianVAE on generated data (``ToyDataModule("pca_ring")``, 10-D): the callbacks are built with
the arguments of the config, the monitor logs its keys under its ``prefix`` to the configured CSVLogger, and
EntropyConvergence reads them; a misspelt ``init_args`` key is an error that names it.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.cli import LightningCLI

from lightning_entropy_vae import EntropyConvergence, EntropyMonitor
from lightning_entropy_vae.data import ToyDataModule
from lightning_entropy_vae.models import GaussianVAE

PREFIX = "vae/ent"
MONITOR_ARGS = {"stages": ["train", "val"], "collapse_criterion": "kl", "collapse_threshold": 0.05,
                "log_histograms": False, "prefix": PREFIX}
CONVERGENCE_ARGS = {"gap_tolerance": 0.05, "gate_epochs": 3, "patience": 4, "min_delta": 0.01,
                    "stopping_threshold": -1.0e6, "monitor_prefix": PREFIX}


def _config(tmp_path: Path, convergence_args: dict) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 1, "limit_train_batches": 4, "limit_val_batches": 2, "accelerator": "cpu", "devices": 1,
            "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False,
            "default_root_dir": str(tmp_path),
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(tmp_path), "name": "cli", "version": 0}},
            "callbacks": [
                {"class_path": "lightning_entropy_vae.EntropyMonitor", "init_args": MONITOR_ARGS},
                {"class_path": "lightning_entropy_vae.EntropyConvergence", "init_args": convergence_args},
            ],
        },
        "model": {"data_dim": 10, "latent_dim": 3, "kind": "vae1", "hidden_dims": [16], "lr": 0.01},
        "data": {"name": "pca_ring", "n": 600, "val_fraction": 0.2, "batch_size": 64, "seed": 0},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _cli(args: list[str]) -> LightningCLI:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
        return LightningCLI(GaussianVAE, ToyDataModule, args=args, save_config_kwargs={"overwrite": True})


def test_callbacks_from_the_yaml_config_are_built_with_its_arguments_and_log(tmp_path):
    cli = _cli(["fit", "--config", str(_config(tmp_path, CONVERGENCE_ARGS))])
    trainer = cli.trainer
    (monitor,) = [cb for cb in trainer.callbacks if isinstance(cb, EntropyMonitor)]
    (convergence,) = [cb for cb in trainer.callbacks if isinstance(cb, EntropyConvergence)]
    options = monitor.options
    assert (options.stages, options.collapse_criterion, options.collapse_threshold, options.log_histograms,
            options.prefix) == (("train", "val"), "kl", 0.05, False, PREFIX)
    assert (convergence.gap_tolerance, convergence.gate_epochs, convergence.patience, convergence.min_delta,
            convergence.stopping_threshold, convergence.monitor_prefix) == (0.05, 3, 4, 0.01, -1.0e6, PREFIX)
    assert trainer.current_epoch == 1

    # the monitor's keys under its prefix, in callback_metrics and in the configured CSVLogger's file
    keys = [f"{PREFIX}/{stage}/{key}" for stage in ("train", "val") for key in ("elbo", "sum", "rel_gap")]
    assert set(keys) <= set(trainer.callback_metrics)
    with open(tmp_path / "cli" / "version_0" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for key in keys:
        logged = [float(row[key]) for row in rows if row.get(key)]
        assert logged == [pytest.approx(float(trainer.callback_metrics[key]), rel=1e-6)], key
    # the configured criterion counts the latents: active where the logged average KL is at least 0.05 nats
    last = {key: float(value) for row in rows for key, value in row.items() if value}
    for stage in ("train", "val"):
        kl = [last[f"{PREFIX}/{stage}/latent_kl/{h}"] for h in range(3)]
        assert last[f"{PREFIX}/{stage}/active_latents"] == sum(v >= 0.05 for v in kl)
    # EntropyConvergence read the monitor's validation ELBO: it is above the stopping threshold, so it stopped
    assert convergence.monitor_key == f"{PREFIX}/val/elbo"
    assert convergence.stopped_epoch == 0
    assert f"`{PREFIX}/val/elbo`" in convergence.stop_reason and "stopping threshold" in convergence.stop_reason

    # the config LightningCLI saved next to the logs holds the same init_args
    saved = yaml.safe_load((tmp_path / "cli" / "version_0" / "config.yaml").read_text())
    callbacks = saved["trainer"]["callbacks"]
    assert [cb["class_path"] for cb in callbacks] == ["lightning_entropy_vae.EntropyMonitor",
                                                      "lightning_entropy_vae.EntropyConvergence"]
    assert {k: callbacks[1]["init_args"][k] for k in CONVERGENCE_ARGS} == CONVERGENCE_ARGS


def test_a_misspelt_init_arg_in_the_config_is_an_error_naming_it(tmp_path, capsys):
    args = {**CONVERGENCE_ARGS, "gap_tolerence": 0.05}
    del args["gap_tolerance"]
    with pytest.raises(SystemExit) as exit_info:
        _cli(["fit", "--config", str(_config(tmp_path, args))])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Option 'gap_tolerence' is not accepted" in err and "EntropyConvergence" in err, err[-3000:]
    assert not list(tmp_path.glob("cli/version_*/metrics.csv"))  # nothing trained
