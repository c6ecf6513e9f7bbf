"""EntropyConvergence in Lightning's loop: validation checks counted when they end (checkpoints written there hold
them, so a resumed run stops where the straight run stops), and no warning before the first scheduled validation."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_entropy_vae import EntropyConvergence, EntropyMonitor
from tests.helpers import TRAIN_24, VAL_12, MonitorVAE, monitor_loader, monitor_trainer


def _callbacks(tmp_path: Path) -> list:
    """A gate that opens once the window of 10 batches is full (epoch 1 at 6 batches per epoch), patience 2 on the
    validation ELBO of a frozen, deterministic model (it never improves after the first check), a checkpoint after
    every validation."""
    return [EntropyMonitor(gap_window=10),
            EntropyConvergence(gap_tolerance=1e6, gate_epochs=1, patience=2, require_elbo_objective=False),
            ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="entropy/val/elbo", mode="max", save_top_k=-1,
                            filename="{epoch}-{step}")]


def _fit(tmp_path: Path, ckpt: str | None = None, **trainer_kwargs) -> tuple[int | None, list[str]]:
    torch.manual_seed(0)
    callbacks = _callbacks(tmp_path)
    trainer = monitor_trainer(tmp_path, callbacks, max_epochs=30, enable_checkpointing=True, **trainer_kwargs)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(MonitorVAE(lr=0.0, sample=False), monitor_loader(TRAIN_24), monitor_loader(VAL_12),
                    ckpt_path=ckpt)
    said = [str(w.message) for w in record if "EntropyConvergence" in str(w.message)]
    return callbacks[1].stopped_epoch, said


@pytest.mark.parametrize("schedule", [{"check_val_every_n_epoch": 2}, {"val_check_interval": 0.5}],
                         ids=["every-2-epochs", "twice-per-epoch"])
def test_a_run_resumed_from_any_validation_checkpoint_stops_where_the_straight_run_stops(tmp_path, schedule):
    straight, _ = _fit(tmp_path / "straight", **schedule)
    assert straight is not None
    saved = sorted((tmp_path / "straight" / "ckpt").glob("*.ckpt"), key=lambda p: torch.load(p)["global_step"])
    assert len(saved) >= 3
    for path in saved[:-1]:  # every checkpoint before the one written at the stopping check
        resumed, _ = _fit(tmp_path / path.stem, ckpt=str(path), **schedule)
        assert resumed == straight, path.name
    # resumed from the checkpoint of the stopping check itself (as EarlyStopping): its patience is spent, the run
    # stops at its first check
    resumed, _ = _fit(tmp_path / "last", ckpt=str(saved[-1]), **schedule)
    first_check = straight + (2 if "check_val_every_n_epoch" in schedule else 1) - ("val_check_interval" in schedule)
    assert resumed == first_check


def test_no_warning_before_the_first_scheduled_validation(tmp_path):
    """The gate opens at epoch 1, validation runs every third epoch: nothing to say; the run stops normally."""
    stopped, said = _fit(tmp_path, check_val_every_n_epoch=3)
    assert stopped is not None
    assert not [s for s in said if "no validation" in s]


def test_a_fit_whose_validation_never_runs_after_the_gate_opened_says_so_at_its_end(tmp_path):
    torch.manual_seed(0)
    callbacks = _callbacks(tmp_path)
    trainer = monitor_trainer(tmp_path, callbacks, max_epochs=4, check_val_every_n_epoch=10, enable_checkpointing=True)
    with pytest.warns(UserWarning, match="no validation ran in this fit after its gate opened"):
        trainer.fit(MonitorVAE(lr=0.0, sample=False), monitor_loader(TRAIN_24), monitor_loader(VAL_12))
    assert callbacks[1].gate_open and callbacks[1].stopped_epoch is None
