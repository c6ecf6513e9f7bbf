"""EntropyMonitor across a checkpoint: 4 epochs straight equal 2 epochs, a checkpoint, 2 resumed epochs."""

import csv
import warnings
from pathlib import Path

import pytest
import torch
from helpers import TRAIN_24, VAL, MonitorVAE, monitor_loader, monitor_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_entropy_vae import EntropyConvergence, EntropyMonitor

EPOCH_KEYS = [f"entropy/{stage}/{key}" for stage in ("train", "val")
              for key in ("encoder", "decoder", "sum", "elbo", "gap", "rel_gap", "active_latents")]
EPOCH_KEYS += ["entropy/train/gap_window", "entropy/train/gap_window_se"]  # the window runs across the resume
STEP_KEYS = [f"entropy/train_step/{key}" for key in ("sum", "elbo", "gap", "rel_gap", "gap_ema")]


class CollapsesInEpochTwo(MonitorVAE):
    """Latent 1 collapses in the first resumed epoch: the warning needs the restored collapse flags."""

    def latents(self, mean, logvar):
        if self.current_epoch >= 2:
            keep = torch.tensor([1.0, 0.0])
            return mean * keep, logvar * keep
        return mean, logvar


def _run(tmp_path, name, max_epochs, ckpt_path=None, checkpoint=None):
    torch.manual_seed(0)
    model = CollapsesInEpochTwo(lr=0.05, sample=False)  # deterministic: no draws, fixed data order
    monitor = EntropyMonitor(gap_window=10)  # 6 batches per epoch: the window is full from epoch 1 on
    # every epoch with a full window counts towards a gate that is never opened
    monitor.convergence = EntropyConvergence(gap_tolerance=1e6, gap_z=0.0, gate_epochs=10,
                                             require_elbo_objective=False)
    logger = CSVLogger(tmp_path, name=name, version=0)
    callbacks = [monitor, monitor.convergence] + ([] if checkpoint is None else [checkpoint])
    trainer = monitor_trainer(tmp_path, callbacks, max_epochs=max_epochs, logger=logger, log_every_n_steps=2,
                              enable_checkpointing=checkpoint is not None)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(model, monitor_loader(TRAIN_24), monitor_loader(VAL), ckpt_path=ckpt_path)
    monitor.collapse_warnings = [str(w.message) for w in record if "collapsed during epoch" in str(w.message)]
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return trainer, monitor, rows


def _epoch_values(rows, epoch):
    """The epoch-level values logged for ``epoch`` (Lightning's epoch column)."""
    out = {}
    for row in rows:
        if row.get("epoch") == str(epoch):
            out.update({k: float(row[k]) for k in EPOCH_KEYS if row.get(k)})
    return out


def _step_values(rows, steps):
    return {int(r["step"]): [float(r[k]) for k in STEP_KEYS] for r in rows
            if r.get(STEP_KEYS[0]) and int(r["step"]) in steps}


@pytest.mark.parametrize("save_on_train_epoch_end", [False, True],
                         ids=["saved-after-val", "saved-at-epoch-end"])
def test_resume_reproduces_straight_run(tmp_path, save_on_train_epoch_end):
    _, straight, straight_rows = _run(tmp_path, "straight", 4)

    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0,
                                 save_on_train_epoch_end=save_on_train_epoch_end)
    _, first, _ = _run(tmp_path, "first", 2, checkpoint=checkpoint)
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    assert first.convergence.closed_epochs == 1  # epoch 1 only: epoch 0's 6 batches do not fill the window
    loaded = torch.load(ckpt, weights_only=True)  # the callbacks' state holds plain types only
    assert loaded["callbacks"][first.convergence.state_key]["closed_epochs"] == 1
    assert isinstance(loaded["callbacks"][first.state_key]["gap_ema"], float)
    assert len(loaded["callbacks"][first.state_key]["train_window"]["gaps"]) == 10  # the last 10 of 12 batches

    again = ModelCheckpoint(dirpath=tmp_path / "ckpt2", save_top_k=0)
    trainer, resumed, resumed_rows = _run(tmp_path, "resumed", 4, ckpt_path=ckpt, checkpoint=again)
    assert trainer.current_epoch == 4
    assert resumed.convergence.closed_epochs == straight.convergence.closed_epochs == 3
    assert len(straight.collapse_warnings) == len(resumed.collapse_warnings) == 1
    assert "latent(s) [1] collapsed during epoch 2" in resumed.collapse_warnings[0]
    assert resumed.state_dict()["gap_ema"] == pytest.approx(straight.state_dict()["gap_ema"], rel=1e-6)
    for epoch in (2, 3):
        want, got = _epoch_values(straight_rows, epoch), _epoch_values(resumed_rows, epoch)
        assert sorted(want) == sorted(EPOCH_KEYS) and sorted(got) == sorted(EPOCH_KEYS)
        for key in EPOCH_KEYS:
            assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-6), (epoch, key)
    steps = set(range(12, 24))  # 6 optimizer steps per epoch: epochs 3 and 4
    want, got = _step_values(straight_rows, steps), _step_values(resumed_rows, steps)
    assert sorted(got) == sorted(want) == [13, 15, 17, 19, 21, 23]
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-6, abs=1e-6), step


def test_resumed_run_writes_the_layout_to_its_new_tensorboard_directory(tmp_path):
    """The custom-scalars layout belongs to a log directory, not to the callback's checkpointed state."""
    torch.manual_seed(0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    for name, epochs, ckpt in (("first", 1, None), ("resumed", 2, tmp_path / "ckpt" / "last.ckpt")):
        logger = TensorBoardLogger(tmp_path, name=name, version=0)
        trainer = monitor_trainer(tmp_path, [EntropyMonitor(), checkpoint], max_epochs=epochs, logger=logger,
                                  enable_checkpointing=True)
        trainer.fit(MonitorVAE(lr=0.05), monitor_loader(TRAIN_24), monitor_loader(VAL), ckpt_path=ckpt)
        logger.experiment.flush()
        events = EventAccumulator(logger.log_dir, size_guidance={"tensors": 0})
        events.Reload()
        assert len(events.Tensors("custom_scalars__config__")) == 1, name
    assert "layout_written" not in torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["callbacks"][
        trainer.callbacks[0].state_key]
