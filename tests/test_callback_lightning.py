"""EntropyMonitor as users run Lightning: precisions, accumulation schedules, validation cadences,
``validate``/``test`` alone, a callback reused for a second ``fit``, a mid-epoch resume, ``torch.compile``.

Each logged value is compared with the float64 recomputation from what the steps returned.
"""

import math

import pytest
import torch
from helpers import (
    TRAIN_24,
    VAL_12,
    MonitorVAE,
    assert_logged_equal,
    monitor_data,
    monitor_loader,
    monitor_reference,
    monitor_trainer,
)
from lightning.pytorch.callbacks import GradientAccumulationScheduler, ModelCheckpoint

from lightning_entropy_vae import EntropyMonitor


def _fit(tmp_path, model, monitor, callbacks=(), **kwargs):
    trainer = monitor_trainer(tmp_path, [monitor, *callbacks], **kwargs)
    trainer.fit(model, monitor_loader(TRAIN_24), monitor_loader(VAL_12))
    return trainer


@pytest.mark.parametrize("precision", ["64-true", "bf16-true"])
def test_precisions(tmp_path, precision):
    """(bf16-mixed: tests/test_callback.py; 16-mixed runs on a GPU only: ../shared/gpu/gpu_check.py.)"""
    torch.manual_seed(0)
    model = MonitorVAE(lr=0.05)
    trainer = _fit(tmp_path, model, EntropyMonitor(), max_epochs=2, precision=precision)
    metrics = trainer.callback_metrics
    # the recorded outputs in their own dtype, recomputed in float64
    assert_logged_equal(metrics, "entropy/train", monitor_reference(model.train_epoch(1)), rel=1e-5)
    assert_logged_equal(metrics, "entropy/val", monitor_reference(model.val_epoch(1)), rel=1e-5)
    if precision == "64-true":  # float64 outputs keep float64 sums: agreement to float64 precision
        assert metrics["entropy/train/sum"].dtype == torch.float64
        ref = monitor_reference(model.train_epoch(1))
        assert float(metrics["entropy/train/sum"]) == pytest.approx(ref["sum"], rel=1e-12)
    else:
        assert model.train_log[0]["enc_logvar"].dtype == torch.bfloat16
        assert metrics["entropy/train/sum"].dtype == torch.float32


class HalfOutputs(MonitorVAE):
    """Returns float16 tensors, as a step under 16-mixed does; encoder log-variances near 11.5, where exp()
    overflows float16 (65504) but not the float32 the callback computes in."""

    def _returned(self, out):
        out = super()._returned(out)
        out["enc_logvar"] = out["enc_logvar"] * 0.0 + 11.5
        return {k: v.half() if k != "loss" else v for k, v in out.items()}

    def _record(self, out, **tags):
        entry = super()._record(out, **tags)
        entry.update({k: v for k, v in self._returned(dict(out)).items() if k in entry and k != "loss"})
        entry["dec_logvar"] = self.dec_logvar.detach().half()
        return entry


def test_float16_outputs_are_reduced_in_float32(tmp_path):
    torch.manual_seed(0)
    model = HalfOutputs(lr=0.0)
    trainer = _fit(tmp_path, model, EntropyMonitor(), max_epochs=1)
    metrics = trainer.callback_metrics
    assert float(metrics["entropy/train/skipped_batches"]) == 0.0  # exp(11.5) overflows float16 only
    assert model.train_log[0]["enc_logvar"].dtype == torch.float16
    assert_logged_equal(metrics, "entropy/train", monitor_reference(model.train_epoch(0)), rel=1e-5,
                        keys=("encoder", "prior", "decoder", "sum"))


def test_gradient_accumulation_scheduler(tmp_path):
    torch.manual_seed(0)
    model = MonitorVAE(lr=0.05, param_output="live")
    scheduler = GradientAccumulationScheduler({0: 1, 1: 3})
    trainer = _fit(tmp_path, model, EntropyMonitor(), callbacks=[scheduler], max_epochs=2)
    assert trainer.global_step == 6 + 2  # 6 steps, then 2 (3 + 3 batches)
    for epoch in (0, 1):  # the live parameter read as each batch's forward pass saw it, in both schedules
        ref = monitor_reference(model.train_epoch(epoch))
        if epoch == 1:
            assert_logged_equal(trainer.callback_metrics, "entropy/train", ref)


@pytest.mark.parametrize("kwargs", [{"val_check_interval": 0.5}, {"check_val_every_n_epoch": 2}],
                         ids=["val_check_interval", "check_val_every_n_epoch"])
def test_validation_cadences(tmp_path, kwargs):
    torch.manual_seed(0)
    model = MonitorVAE(lr=0.05)
    trainer = _fit(tmp_path, model, EntropyMonitor(), max_epochs=2, **kwargs)
    val = [e for e in model.val_log if not e["sanity"]]
    runs = len(val) // 3  # 3 validation batches per run
    assert runs == (4 if "val_check_interval" in kwargs else 1)
    assert_logged_equal(trainer.callback_metrics, "entropy/val", monitor_reference(val[-3:]))
    assert_logged_equal(trainer.callback_metrics, "entropy/train", monitor_reference(model.train_epoch(1)))


class WithTestStep(MonitorVAE):
    def test_step(self, batch, batch_idx):
        return self.validation_step(batch, batch_idx)


def test_validate_and_test_alone(tmp_path):
    torch.manual_seed(0)
    model = WithTestStep(lr=0.05)
    monitor = EntropyMonitor(stages=("train", "val"))
    trainer = monitor_trainer(tmp_path, [monitor])
    trainer.validate(model, monitor_loader(VAL_12))
    assert_logged_equal(trainer.callback_metrics, "entropy/val", monitor_reference(model.val_log))
    trainer.test(model, monitor_loader(VAL_12))  # the test stage is not monitored: nothing breaks, nothing is logged
    assert not any(k.startswith("entropy/test") for k in trainer.callback_metrics)


def test_a_callback_reused_for_a_second_fit_meets_another_model(tmp_path):
    """A notebook habit: the same instance, a new model with other D and H, fresh values."""
    monitor = EntropyMonitor()
    torch.manual_seed(0)
    _fit(tmp_path, MonitorVAE(lr=0.05), monitor, max_epochs=1)
    torch.manual_seed(1)
    data = monitor_data(24, seed=2, data_dim=6)
    model = MonitorVAE(data_dim=6, latent_dim=3, lr=0.05, param_output="live")
    trainer = monitor_trainer(tmp_path, [monitor], max_epochs=1)
    trainer.fit(model, monitor_loader(data), monitor_loader(data[:12]))
    assert_logged_equal(trainer.callback_metrics, "entropy/train", monitor_reference(model.train_epoch(0)))
    assert_logged_equal(trainer.callback_metrics, "entropy/val", monitor_reference(model.val_epoch(0)))


def test_mid_epoch_resume_logs_the_batches_after_the_resume(tmp_path):
    torch.manual_seed(0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    _fit(tmp_path, MonitorVAE(lr=0.05, sample=False), EntropyMonitor(), callbacks=[checkpoint], max_epochs=1,
         enable_checkpointing=True)
    path = tmp_path / "ckpt" / "epoch=0-step=4.ckpt"
    assert path.exists()
    torch.manual_seed(0)
    model = MonitorVAE(lr=0.05, sample=False)
    trainer = monitor_trainer(tmp_path, [EntropyMonitor()], max_epochs=2)
    trainer.fit(model, monitor_loader(TRAIN_24), monitor_loader(VAL_12), ckpt_path=path)
    resumed = model.train_epoch(0)
    assert [e["batch_idx"] for e in resumed] == [4, 5]  # the rest of epoch 0, then epoch 1
    assert_logged_equal(trainer.callback_metrics, "entropy/train", monitor_reference(model.train_epoch(1)))


def test_torch_compile(tmp_path):
    torch.manual_seed(0)
    model = MonitorVAE(lr=0.05, param_output="live")
    compiled = torch.compile(model, backend="eager")  # the callback sees what the compiled steps return
    trainer = monitor_trainer(tmp_path, [EntropyMonitor()], max_epochs=2)
    trainer.fit(compiled, monitor_loader(TRAIN_24), monitor_loader(VAL_12))
    assert_logged_equal(trainer.callback_metrics, "entropy/train", monitor_reference(model.train_epoch(1)))
    assert math.isfinite(float(trainer.callback_metrics["entropy/val/sum"]))
