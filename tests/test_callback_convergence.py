"""EntropyMonitor(stop_on_convergence=True): patience, warm-up, the ELBO-objective guard, EarlyStopping."""

import warnings

import pytest
import torch
from helpers import D, MonitorVAE, monitor_data, monitor_loader, monitor_trainer
from lightning.pytorch.callbacks import EarlyStopping

from lightning_entropy_vae import EntropyMonitor
from lightning_entropy_vae.data import TensorDataModule
from lightning_entropy_vae.models import GaussianVAE

TRAIN, VAL = monitor_data(16, seed=0), monitor_data(8, seed=1)


def _fit(tmp_path, model, callbacks, val=True, max_epochs=5):
    trainer = monitor_trainer(tmp_path, callbacks, max_epochs=max_epochs)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(model, monitor_loader(TRAIN), monitor_loader(VAL) if val else None)
    return trainer, [str(w.message) for w in record]


@pytest.mark.parametrize(("val", "stage"), [(True, "val"), (False, "train")])
@pytest.mark.parametrize("patience", [1, 3])
def test_stops_after_patience_checks(tmp_path, val, stage, patience):
    monitor = EntropyMonitor(stop_on_convergence=True, tolerance=1e6, patience=patience)
    trainer, _ = _fit(tmp_path, MonitorVAE(lr=0.01), [monitor], val=val)
    assert monitor.convergence.stopped_epoch == patience - 1
    assert trainer.current_epoch == patience  # the stopping epoch completed
    assert trainer.should_stop
    assert "stayed below" in monitor.stop_reason and f"`{stage}`" in monitor.stop_reason
    assert f"for {patience} consecutive" in monitor.stop_reason


def test_warmup_epochs_delay_the_count(tmp_path):
    monitor = EntropyMonitor(stop_on_convergence=True, tolerance=1e6, patience=2, warmup_epochs=2)
    trainer, _ = _fit(tmp_path, MonitorVAE(lr=0.01), [monitor], max_epochs=6)
    assert monitor.convergence.stopped_epoch == 3 and trainer.current_epoch == 4


def test_does_not_stop_while_the_gap_is_above_tolerance(tmp_path):
    monitor = EntropyMonitor(stop_on_convergence=True, tolerance=1e-9, patience=1)
    trainer, _ = _fit(tmp_path, MonitorVAE(lr=0.01), [monitor], max_epochs=3)
    assert monitor.stop_reason is None and monitor.convergence.wait_count == 0
    assert trainer.current_epoch == 3 and float(trainer.callback_metrics["entropy/val/abs_rel_gap"]) > 1e-9


def test_stop_on_convergence_off_by_default(tmp_path):
    monitor = EntropyMonitor(tolerance=1e6, patience=1)
    trainer, _ = _fit(tmp_path, MonitorVAE(lr=0.01), [monitor], max_epochs=3)
    assert monitor.stop_reason is None and trainer.current_epoch == 3


def _gaussian_vae_fit(tmp_path, monitor, **model_kwargs):
    torch.manual_seed(0)
    model = GaussianVAE(D, 2, kind="vae1", hidden_dims=(8,), lr=1e-2, **model_kwargs)
    trainer = monitor_trainer(tmp_path, [monitor], max_epochs=4)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(model, datamodule=TensorDataModule(TRAIN, VAL, batch_size=4, shuffle=False))
    return trainer, [str(w.message) for w in record]


@pytest.mark.parametrize("model_kwargs", [{"beta": 0.5}, {"kl_warmup_steps": 100}],
                         ids=["beta", "kl-annealing"])
def test_objective_other_than_elbo_does_not_stop(tmp_path, model_kwargs):
    monitor = EntropyMonitor(stop_on_convergence=True, tolerance=1e6, patience=1)
    trainer, messages = _gaussian_vae_fit(tmp_path, monitor, **model_kwargs)
    assert monitor.stop_reason is None and trainer.current_epoch == 4
    assert sum("not -ELBO" in m for m in messages) == 1  # warned once
    # the guard is the reason: without it the same run stops at once
    monitor = EntropyMonitor(stop_on_convergence=True, tolerance=1e6, patience=1,
                             require_elbo_objective=False)
    trainer, messages = _gaussian_vae_fit(tmp_path, monitor, **model_kwargs)
    assert monitor.convergence.stopped_epoch == 0 and not any("not -ELBO" in m for m in messages)


def test_elbo_objective_stops(tmp_path):
    monitor = EntropyMonitor(stop_on_convergence=True, tolerance=1e6, patience=2)
    trainer, messages = _gaussian_vae_fit(tmp_path, monitor)
    assert trainer.current_epoch == 2
    assert monitor.convergence.stopped_epoch == 1 and not any("not -ELBO" in m for m in messages)


class SumReducedLoss(MonitorVAE):
    """The negative ELBO summed over the batch instead of averaged (or, with ``beta``, not the ELBO)."""

    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        out["loss"] = out["loss"] * batch[0].shape[0]
        return out


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_sum_reduced_elbo_loss_counts_as_the_elbo(tmp_path, beta):
    monitor = EntropyMonitor(stop_on_convergence=True, tolerance=1e6, patience=2)
    trainer, messages = _fit(tmp_path, SumReducedLoss(lr=0.001, beta=beta), [monitor], max_epochs=4)
    if beta == 1.0:
        assert monitor.convergence.stopped_epoch == 1 and not any("not -ELBO" in m for m in messages)
        assert trainer.current_epoch == 2
    else:  # a summed beta-VAE loss is still not the ELBO
        assert monitor.stop_reason is None and sum("not -ELBO" in m for m in messages) == 1
        assert trainer.current_epoch == 4


@pytest.mark.parametrize(("threshold", "stopped_epoch"), [(1e6, 0), (1e-9, None)])
def test_stock_early_stopping_monitors_the_relative_gap(tmp_path, threshold, stopped_epoch):
    stopper = EarlyStopping(monitor="entropy/val/abs_rel_gap", mode="min", stopping_threshold=threshold,
                            patience=100)
    trainer, _ = _fit(tmp_path, MonitorVAE(lr=0.01), [EntropyMonitor(), stopper], max_epochs=3)
    logged = float(trainer.callback_metrics["entropy/val/abs_rel_gap"])
    if stopped_epoch is None:  # EarlyStopping read the value every epoch
        assert trainer.current_epoch == 3 and stopper.stopped_epoch == 0
        assert 0.0 < float(stopper.best_score) <= logged
    else:
        assert stopper.stopped_epoch == stopped_epoch and trainer.current_epoch == stopped_epoch + 1


def test_validate_alone_logs_but_does_not_count(tmp_path):
    monitor = EntropyMonitor(stop_on_convergence=True, tolerance=1e6, patience=1)
    trainer = monitor_trainer(tmp_path, [monitor])
    trainer.validate(MonitorVAE(), monitor_loader(VAL), verbose=False)
    assert "entropy/val/sum" in trainer.callback_metrics
    assert monitor.stop_reason is None and monitor.convergence.wait_count == 0
    # the same callback then counts from zero during fit
    trainer, _ = _fit(tmp_path, MonitorVAE(lr=0.01), [monitor])
    assert monitor.convergence.stopped_epoch == 0 and trainer.current_epoch == 1


def test_monitor_stage_train_counts_the_training_gap_with_validation_present(tmp_path):
    """With validation, the default watches `val`; monitor_stage='train' watches the training gap instead."""
    monitor = EntropyMonitor(stop_on_convergence=True, tolerance=1e6, patience=2, monitor_stage="train")
    trainer, _ = _fit(tmp_path, MonitorVAE(lr=0.01), [monitor], val=True)
    assert monitor.convergence.stopped_epoch == 1 and trainer.current_epoch == 2
    assert "`train`" in monitor.stop_reason


def test_monitor_stage_validated():
    with pytest.raises(ValueError, match=r"Expected `monitor_stage` to be 'train', 'val' or None, but got 'test'"):
        EntropyMonitor(monitor_stage="test")
    with pytest.raises(ValueError, match=r"Expected `monitor_stage` 'val' among `stages` \('train',\)"):
        EntropyMonitor(stages=("train",), monitor_stage="val")
