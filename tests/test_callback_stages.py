"""EntropyMonitor across Lightning's stages and habits: ``trainer.test()``, the steps our keys share with
Lightning's own metrics in a CSV (automatic and manual optimization, accumulation), two monitors in one
Trainer (``prefix``), and one instance reused for a second ``fit``."""

import csv
import re
from pathlib import Path

import pytest
import torch
from helpers import (
    TRAIN,
    VAL,
    FixedVariance,
    ManualVAE,
    MonitorVAE,
    assert_logged_equal,
    monitor_data,
    monitor_loader,
    monitor_reference,
    monitor_trainer,
)
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_entropy_vae import EntropyConvergence, EntropyMonitor


def _rows(logger):
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _steps(rows, key):
    """(step, epoch) of the rows holding ``key``, in order."""
    return [(int(r["step"]), int(r["epoch"])) for r in rows if r.get(key)]


# ------------------------------------------------------------------------------------------- test()
class WithTestStep(MonitorVAE):
    """Its test steps return what its validation steps return (recorded in ``val_log``), and log a probe."""

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        out = self.validation_step(batch, batch_idx, dataloader_idx)
        self.log("test_probe", out["loss"].detach(), on_epoch=True)
        return out


def test_trainer_test_logs_the_held_out_estimate_per_loader(tmp_path):
    torch.manual_seed(0)
    model = WithTestStep(lr=0.05)
    logger = CSVLogger(tmp_path, name="csv", version=0)
    trainer = monitor_trainer(tmp_path, [EntropyMonitor()], max_epochs=1, logger=logger)
    trainer.fit(model, monitor_loader(TRAIN), monitor_loader(VAL))
    model.val_log.clear()
    first, second = monitor_data(8, seed=3), monitor_data(6, seed=4)
    trainer.test(model, [monitor_loader(first), monitor_loader(second, batch_size=3)])
    for idx, stage in ((0, "test"), (1, "test_1")):
        entries = [e for e in model.val_log if e["dataloader_idx"] == idx]
        assert sum(len(e["x"]) for e in entries) == (8, 6)[idx]
        assert_logged_equal(trainer.callback_metrics, f"entropy/{stage}", monitor_reference(entries))
    rows = _rows(logger)
    last = {k: float(v) for r in rows for k, v in r.items() if v}
    assert last["entropy/test/sum"] == pytest.approx(float(trainer.callback_metrics["entropy/test/sum"]), rel=1e-6)
    # on the row of Lightning's own test metrics
    assert _steps(rows, "entropy/test/sum") == _steps(rows, "test_probe/dataloader_idx_0")
    assert _steps(rows, "entropy/test_1/sum") == _steps(rows, "test_probe/dataloader_idx_1")


class TestReturnsNone(MonitorVAE):
    __test__ = False

    def test_step(self, batch, batch_idx):
        self.log("test_loss", self._outputs(batch[0])["loss"])


class TestReturnsLoss(MonitorVAE):
    __test__ = False

    def test_step(self, batch, batch_idx):
        return self._outputs(batch[0])["loss"]


@pytest.mark.parametrize("model_class", [TestReturnsNone, TestReturnsLoss])
def test_a_test_step_that_returns_no_vocabulary_is_left_alone_by_default(tmp_path, model_class):
    torch.manual_seed(0)
    trainer = monitor_trainer(tmp_path, [EntropyMonitor()], max_epochs=1)
    trainer.fit(model_class(lr=0.05), monitor_loader(TRAIN), monitor_loader(VAL))
    trainer.test(trainer.lightning_module, monitor_loader(VAL))
    assert "test_loss" in trainer.callback_metrics or model_class is TestReturnsLoss
    assert not any(k.startswith("entropy/test") for k in trainer.callback_metrics)


@pytest.mark.parametrize(("model_class", "got"), [(TestReturnsNone, "None from all 2 batches of the epoch"),
                                                   (TestReturnsLoss, "a Tensor")])
def test_a_test_stage_asked_for_by_name_must_get_the_vocabulary(tmp_path, model_class, got):
    trainer = monitor_trainer(tmp_path, [EntropyMonitor(stages=("train", "test"))], max_epochs=1)
    with pytest.raises(ValueError, match=re.escape("expected `test_step` to return a dict (or VAEOutput) with the"
                                                   " keys")) as error:
        trainer.test(model_class(), monitor_loader(VAL))
    assert got in str(error.value)
    assert "stages=('train', 'val')) to skip the test stage" in str(error.value)


# --------------------------------------------------------------------------------- rows of a CSV
class Probed(MonitorVAE):
    """Logs Lightning's own step and epoch metrics, to compare the CSV rows of our keys with."""

    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        self.log("probe", out["loss"].detach(), on_step=True, on_epoch=True)
        return out

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        out = super().validation_step(batch, batch_idx, dataloader_idx)
        self.log("val_probe", out["loss"].detach(), on_epoch=True)
        return out


class ManualProbed(ManualVAE, Probed):
    """Manual optimization with two optimizers: ``global_step`` advances by two per batch."""

    def training_step(self, batch, batch_idx):
        returned = super().training_step(batch, batch_idx)
        self.log("probe", returned["loss"].detach(), on_step=True, on_epoch=True)
        return returned


@pytest.mark.parametrize(("model_class", "kwargs"), [
    (Probed, {}), (Probed, {"accumulate_grad_batches": 2}), (ManualProbed, {})], ids=["auto", "accumulate", "manual"])
def test_our_keys_share_the_steps_of_lightnings_own_metrics(tmp_path, model_class, kwargs):
    torch.manual_seed(0)
    model = model_class(lr=0.05)
    logger = CSVLogger(tmp_path, name="csv", version=0)
    data = monitor_data(32, seed=0)  # 8 batches per epoch
    trainer = monitor_trainer(tmp_path, [EntropyMonitor()], max_epochs=2, logger=logger, log_every_n_steps=2,
                              **kwargs)
    trainer.fit(model, monitor_loader(data), monitor_loader(VAL))
    if model_class is ManualProbed:
        assert trainer.global_step == 2 * 16  # two optimizer steps per batch
    rows = _rows(logger)
    step_rows = _steps(rows, "probe_step")
    assert len(step_rows) == (2 if "accumulate_grad_batches" in kwargs else 4) * 2
    assert _steps(rows, "entropy/train_step/sum") == step_rows
    assert _steps(rows, "entropy/train/sum") == _steps(rows, "probe_epoch")
    assert _steps(rows, "entropy/val/sum") == _steps(rows, "val_probe")
    assert _steps(rows, "entropy/train/latent_entropy/0") == _steps(rows, "probe_epoch")
    assert len(_steps(rows, "entropy/val/sum")) == 2


def test_histograms_share_the_step_of_the_epoch_keys(tmp_path):
    torch.manual_seed(0)
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    trainer = monitor_trainer(tmp_path, [EntropyMonitor()], max_epochs=2, logger=logger, log_every_n_steps=2)
    trainer.fit(Probed(lr=0.05), monitor_loader(TRAIN), monitor_loader(VAL))
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    for stage in ("train", "val"):
        hist = [e.step for e in events.Histograms(f"entropy/{stage}/latent_entropy_hist")]
        assert hist == [e.step for e in events.Scalars(f"entropy/{stage}/sum")]
    assert [e.step for e in events.Scalars("entropy/train/sum")] == [e.step for e in events.Scalars("probe_epoch")]


# -------------------------------------------------------------------------------- two monitors
def _shift(out):
    shifted = {**out, "enc_logvar": out["enc_logvar"] - 1.0}
    if "elbo" in out:
        shifted["elbo"] = out["elbo"] - 1.0
    return {**out, "shifted": shifted}


class TwoHeads(MonitorVAE):
    """Returns its outputs twice: as they are, and shifted (encoder log-variances, ELBO), as a second model's."""

    def training_step(self, batch, batch_idx):
        return _shift(super().training_step(batch, batch_idx))

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        return _shift(super().validation_step(batch, batch_idx, dataloader_idx))


def _shifted(pl_module, outputs, batch):
    return outputs["shifted"]


def test_two_monitors_with_two_prefixes(tmp_path):
    torch.manual_seed(0)
    model = TwoHeads(lr=0.0, sample=False, return_elbo=False)
    logger = CSVLogger(tmp_path, name="csv", version=0)
    first, second = EntropyMonitor(), EntropyMonitor(prefix="shifted/entropy", extract=_shifted)
    assert first.state_key != second.state_key
    trainer = monitor_trainer(tmp_path, [first, second], max_epochs=1, logger=logger)
    trainer.fit(model, monitor_loader(TRAIN), monitor_loader(VAL))
    entries = model.train_epoch(0)
    shifted = [{**e, "enc_logvar": e["enc_logvar"] - 1.0} for e in entries]
    metrics = trainer.callback_metrics
    assert_logged_equal(metrics, "entropy/train", monitor_reference(entries))
    assert_logged_equal(metrics, "shifted/entropy/train", monitor_reference(shifted), keys=("encoder", "sum"))
    assert float(metrics["shifted/entropy/train/encoder"]) < float(metrics["entropy/train/encoder"]) - 0.5
    columns = set(_rows(logger)[0])
    assert {"shifted/entropy/train_step/gap_ema", "shifted/entropy/val/sum", "entropy/val/sum"} <= columns
    assert not any(c.startswith("entropy/shifted") for c in columns)



def test_two_monitors_share_a_tensorboard_run(tmp_path):
    """TensorBoard shows the last custom-scalars layout of a run: it holds both monitors' charts; and each
    monitor's lines are runs of its own (one event file per line run), which the report reads back."""
    torch.manual_seed(0)
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    first, second = EntropyMonitor(), EntropyMonitor(prefix="shifted/entropy", extract=_shifted)
    trainer = monitor_trainer(tmp_path, [first, second], max_epochs=2, logger=logger)
    trainer.fit(TwoHeads(lr=0.0, sample=False, return_elbo=False), monitor_loader(TRAIN), monitor_loader(VAL))
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"tensors": 0})
    events.Reload()
    last = events.Tensors("custom_scalars__config__")[-1].tensor_proto.string_val[0]
    from tensorboard.plugins.custom_scalar import layout_pb2

    assert {c.title for c in layout_pb2.Layout.FromString(last).category} == {"entropy", "shifted/entropy"}
    for folder in ("lines/elbo", "lines/shifted_entropy/elbo"):
        assert len(list((Path(logger.log_dir) / folder).glob("events.out.tfevents.*"))) == 1, folder
    from lightning_entropy_vae.report import load_scalars

    for prefix in ("entropy", "shifted/entropy"):
        series = load_scalars(logger.log_dir, prefix)
        assert len(series["entropy/train/sum"]) == 2 and len(series["entropy/val/latent_entropy/threshold"]) == 2
        logged = float(trainer.callback_metrics[f"{prefix}/train/sum"])
        assert series["entropy/train/sum"][-1][1] == pytest.approx(logged)


def test_entropy_convergence_reads_the_monitor_it_names(tmp_path):
    # only the named monitor's window fills (10 batches by the end of epoch 2): reading the other, the gate stays shut
    first, second = EntropyMonitor(), EntropyMonitor(prefix="other", extract=_shifted, gap_window=10)
    convergence = EntropyConvergence(monitor_prefix="other", gap_tolerance=1e6, gate_epochs=1,
                                     require_elbo_objective=False)
    logger = CSVLogger(tmp_path, name="csv", version=0)
    trainer = monitor_trainer(tmp_path, [first, second, convergence], max_epochs=5, logger=logger)
    torch.manual_seed(0)
    trainer.fit(TwoHeads(lr=0.05), monitor_loader(TRAIN), monitor_loader(VAL))
    assert convergence.monitor_key == "other/val/elbo"
    assert convergence.gate_open  # from `other/train/gap_window`
    values = [float(r["other/val/elbo"]) for r in _rows(logger) if r.get("other/val/elbo")]
    assert len(values) == 5
    assert convergence.best == pytest.approx(max(values[3:]), rel=1e-6)  # the checks after the gate opened
    others = [float(r["entropy/val/elbo"]) - 1.0 for r in _rows(logger) if r.get("entropy/val/elbo")]
    assert values == pytest.approx(others, rel=1e-5)  # the shifted model's


@pytest.mark.parametrize(("prefix", "match"), [
    (None, r"found 2 EntropyMonitors in the Trainer \(prefixes \['entropy', 'other'\]\) and cannot tell which to read."
           r" Name it: EntropyConvergence\(monitor_prefix='entropy'\)"),
    ("missing", r"monitor_prefix='missing'\) expected one EntropyMonitor with that prefix in the Trainer, but got"
                r" the prefixes \['entropy', 'other'\]"),
])
def test_entropy_convergence_with_two_monitors_must_be_told_which(tmp_path, prefix, match):
    callbacks = [EntropyMonitor(), EntropyMonitor(prefix="other"), EntropyConvergence(monitor_prefix=prefix)]
    trainer = monitor_trainer(tmp_path, callbacks, max_epochs=1)
    with pytest.raises(ValueError, match=match):
        trainer.fit(MonitorVAE(), monitor_loader(TRAIN), monitor_loader(VAL))


@pytest.mark.parametrize("prefix", ["", "/entropy", "entropy/", "a b", "a.*", 3])
def test_prefix_is_validated(prefix):
    with pytest.raises(ValueError, match=r"Expected `prefix` to be a key prefix such as 'entropy'"):
        EntropyMonitor(prefix=prefix)


def test_default_state_keys_are_unchanged():
    """Checkpoints written before the test stage and the prefixes restore into the default callbacks."""
    assert EntropyMonitor().state_key == "EntropyMonitor{'stages': ('train', 'val'), 'collapse_criterion': 'entropy'}"
    assert EntropyMonitor(prefix="b").state_key != EntropyMonitor().state_key
    assert EntropyConvergence().state_key == EntropyConvergence(monitor_prefix=None).state_key
    assert EntropyConvergence(monitor_prefix="b").state_key != EntropyConvergence().state_key


# ------------------------------------------------------------------------------- a second fit
def test_one_instance_reused_for_a_second_fit_with_other_sizes(tmp_path):
    """A notebook habit: fit (D=8, H=2), then a new model (D=12, H=3) with the same EntropyMonitor."""
    monitor = EntropyMonitor()
    models, trainers = [], []
    for version, (d, h) in enumerate(((8, 2), (12, 3))):
        torch.manual_seed(version)
        data = monitor_data(16, seed=version, data_dim=d)
        model = MonitorVAE(data_dim=d, latent_dim=h, lr=0.05)
        logger = TensorBoardLogger(tmp_path, name="tb", version=version)
        csv_logger = CSVLogger(tmp_path, name="csv", version=version)
        trainer = monitor_trainer(tmp_path, [monitor], max_epochs=2, logger=[logger, csv_logger], log_every_n_steps=2)
        trainer.fit(model, monitor_loader(data), monitor_loader(data[:8]))
        logger.experiment.flush()
        models.append(model)
        trainers.append(trainer)
    model, trainer = models[1], trainers[1]
    assert_logged_equal(trainer.callback_metrics, "entropy/train", monitor_reference(model.train_epoch(1)))
    assert_logged_equal(trainer.callback_metrics, "entropy/val", monitor_reference(model.val_epoch(1)))
    # the step window and its average start fresh: the first step log of the second fit covers its first two
    # batches only, and its average is its own gap
    rows = _rows(trainer.loggers[1])
    first = next(r for r in rows if r.get("entropy/train_step/sum"))
    assert float(first["entropy/train_step/gap_ema"]) == pytest.approx(float(first["entropy/train_step/gap"]))
    window = monitor_reference(model.train_epoch(0)[:2])
    assert float(first["entropy/train_step/sum"]) == pytest.approx(window["sum"], rel=1e-5)
    assert float(first["entropy/train_step/elbo"]) == pytest.approx(window["elbo"], rel=1e-5)
    # per-latent keys and a layout of the new model, in its own run
    assert {f"entropy/train/latent_entropy/{i}" for i in range(3)} <= set(rows[0])
    events = EventAccumulator(trainer.loggers[0].log_dir, size_guidance={"tensors": 0, "histograms": 0})
    events.Reload()
    assert len(events.Tensors("custom_scalars__config__")) == 1
    assert events.Histograms("entropy/train/latent_entropy_hist")[-1].histogram_value.num == 3


def test_a_reused_monitor_decides_the_fixed_variance_and_the_layout_per_run(tmp_path):
    """After a fixed-variance fit, a learned-variance model's validate() logs no `sum_profiled`; and a run with a
    new TensorBoard logger gets its own layout."""
    monitor = EntropyMonitor()
    torch.manual_seed(0)
    trainer = monitor_trainer(tmp_path, [monitor], max_epochs=1, logger=TensorBoardLogger(tmp_path, name="fit"))
    trainer.fit(FixedVariance(lr=0.05), monitor_loader(TRAIN), monitor_loader(VAL))
    assert "entropy/val/sum_profiled" in trainer.callback_metrics
    logger = TensorBoardLogger(tmp_path, name="validate")
    trainer = monitor_trainer(tmp_path, [monitor], logger=logger)
    trainer.validate(MonitorVAE(lr=0.05), monitor_loader(VAL))
    assert "entropy/val/sum" in trainer.callback_metrics
    assert "entropy/val/sum_profiled" not in trainer.callback_metrics
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"tensors": 0})
    events.Reload()
    assert "custom_scalars__config__" in events.Tags()["tensors"]
