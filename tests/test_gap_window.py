"""The monitor's gap window (`{prefix}/train/gap_window`, `gap_window_se`): the per-batch gaps of the last
`gap_window` training batches across epochs, against a float64 reference from the recorded step outputs."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from lightning_entropy_vae import EntropyMonitor
from tests.helpers import MonitorVAE, monitor_data, monitor_loader, monitor_reference, monitor_trainer


class EpochKeys(pl.Callback):
    """The gap window's keys at each training epoch's end (after the monitor)."""

    def __init__(self, prefix: str = "entropy") -> None:
        self.prefix, self.values = prefix, []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        m = trainer.callback_metrics
        self.values.append((float(m[f"{self.prefix}/train/gap_window"]),
                            float(m[f"{self.prefix}/train/gap_window_se"])))


def _reference(entries: list[dict], window: int, groups: int = 10) -> tuple[float, float]:
    """Per batch its gap (ELBO - entropy sum, float64 via torch.distributions) and its points; the last `window`
    batches in `groups` consecutive groups; the points-weighted mean and the ratio estimator's error (numpy)."""
    last = entries[-window:]
    gaps = np.array([monitor_reference([e])["gap"] for e in last])
    points = np.array([float(e["x"].shape[0]) for e in last])
    parts = np.array_split(np.arange(len(last)), groups)
    w = np.array([points[p].sum() for p in parts])
    m = np.array([(points[p] * gaps[p]).sum() / points[p].sum() for p in parts])
    mean = (w * m).sum() / w.sum()
    se = math.sqrt(groups / (groups - 1) * ((w * (m - mean)) ** 2).sum() / w.sum() ** 2)
    return mean, se


def test_the_gap_window_runs_across_epochs_and_matches_a_float64_reference(tmp_path):
    torch.manual_seed(0)
    model = MonitorVAE(lr=0.05)
    keys = EpochKeys()
    train = monitor_data(26, seed=3)  # 6 batches of 4 and one of 2: uneven points per batch
    trainer = monitor_trainer(tmp_path, [EntropyMonitor(stages=("train",), gap_window=12), keys], max_epochs=4)
    trainer.fit(model, monitor_loader(train))
    # 7 batches per epoch: the window of 12 is full from the second epoch on and then spans two epochs
    assert all(math.isnan(v) for v in keys.values[0])
    for epoch in (1, 2, 3):
        seen = [e for e in model.train_log if e["epoch"] <= epoch]
        mean, se = _reference(seen, window=12)
        assert keys.values[epoch][0] == pytest.approx(mean, rel=1e-5, abs=1e-5), epoch
        assert keys.values[epoch][1] == pytest.approx(se, rel=1e-4, abs=1e-6), epoch
        assert se > 0


def test_one_batch_per_epoch_fills_the_window_after_enough_epochs(tmp_path):
    torch.manual_seed(0)
    model = MonitorVAE(lr=0.05)
    keys = EpochKeys()
    train = monitor_data(8, seed=4)
    trainer = monitor_trainer(tmp_path, [EntropyMonitor(stages=("train",), gap_window=10), keys], max_epochs=12)
    trainer.fit(model, monitor_loader(train, batch_size=8))  # full-batch training
    assert all(math.isnan(mean) for mean, _ in keys.values[:9])
    for epoch in (9, 10, 11):
        mean, se = _reference(model.train_log[:epoch + 1], window=10)
        assert keys.values[epoch][0] == pytest.approx(mean, rel=1e-5, abs=1e-5)
        assert keys.values[epoch][1] == pytest.approx(se, rel=1e-4, abs=1e-6)


def test_the_gap_window_resumes_from_a_checkpoint(tmp_path):
    """A run resumed from an epoch-end checkpoint publishes the same window as the straight run: the window's
    batches before the checkpoint come back with the monitor's state."""
    train = monitor_data(16, seed=5)

    def fit(max_epochs: int, ckpt: str | None = None) -> tuple[EpochKeys, pl.Trainer]:
        torch.manual_seed(0)
        keys = EpochKeys()
        trainer = monitor_trainer(tmp_path, [EntropyMonitor(stages=("train",), gap_window=10), keys],
                                  max_epochs=max_epochs)
        trainer.fit(MonitorVAE(lr=0.05, sample=False), monitor_loader(train), ckpt_path=ckpt)
        return keys, trainer

    straight, _ = fit(4)
    _, first = fit(2)
    path = str(tmp_path / "two.ckpt")
    first.save_checkpoint(path)
    resumed, _ = fit(4, path)
    assert np.array(resumed.values) == pytest.approx(np.array(straight.values[2:]), rel=1e-5)
    assert all(math.isfinite(v) for v in np.array(straight.values[2:]).ravel())
    state = next(cb for cb in first.callbacks if isinstance(cb, EntropyMonitor)).state_dict()
    assert len(state["train_window"]["gaps"]) == 8
    torch.load(path, weights_only=True)  # plain types: loads with weights_only
