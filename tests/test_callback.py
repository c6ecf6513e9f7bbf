"""EntropyMonitor in tiny Trainers: logged values against a float64 torch.distributions recomputation.

Every module here records (detached clones of) what its steps returned; ``helpers.monitor_reference``
recomputes the encoder, prior and decoder entropies, the ELBO, the gaps and the collapse counts from
those records, independently of the package's functional and metric code.
"""

import csv
import itertools
import math
import warnings
from pathlib import Path

import pytest
import torch
from helpers import (
    TRAIN_24,
    VAL_12,
    D,
    MonitorVAE,
    assert_logged_equal,
    monitor_data,
    monitor_loader,
    monitor_reference,
    monitor_trainer,
)
from lightning.pytorch.loggers import CSVLogger
from torch.distributions import Normal

from lightning_entropy_vae import EntropyConvergence, EntropyMonitor
from lightning_entropy_vae.models import GaussianVAE


def _fit(tmp_path, model, callback, val=VAL_12, **trainer_kwargs):
    trainer = monitor_trainer(tmp_path, [callback], **trainer_kwargs)
    val_loaders = None if val is None else monitor_loader(val)
    trainer.fit(model, monitor_loader(TRAIN_24), val_loaders)
    return trainer


def _csv_rows(logger):
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _monitor_warnings(record, text):
    return [w for w in record if text in str(w.message)]


# ------------------------------------------------------------------------------------------ values
@pytest.mark.parametrize("return_elbo", [True, False], ids=["elbo-returned", "elbo-from-pieces"])
def test_epoch_values_equal_recomputation(tmp_path, return_elbo):
    torch.manual_seed(0)
    model = MonitorVAE(lr=0.05, return_elbo=return_elbo)
    trainer = _fit(tmp_path, model, EntropyMonitor())
    metrics = trainer.callback_metrics
    train_ref = monitor_reference(model.train_epoch(1))
    val_ref = monitor_reference(model.val_epoch(1))
    assert train_ref["n"] == 24 and val_ref["n"] == 12
    assert_logged_equal(metrics, "entropy/train", train_ref)
    assert_logged_equal(metrics, "entropy/val", val_ref)
    assert float(metrics["entropy/train/skipped_batches"]) == 0.0
    # the held-out value is not the training value, and the last epoch is not the first
    assert not math.isclose(float(metrics["entropy/val/elbo"]), train_ref["elbo"], rel_tol=1e-3)
    assert not math.isclose(monitor_reference(model.train_epoch(0))["sum"], train_ref["sum"], rel_tol=1e-4)


def test_rel_gap_floor_bounds_relative_gap_near_zero_sum(tmp_path):
    """enc_logvar = 0 cancels encoder and prior; the decoder variance is chosen so that sum = +0.01."""

    class NearZeroSum(MonitorVAE):
        def latents(self, mean, logvar):
            return mean * 0.0, logvar * 0.0

    sum_target = 0.01
    logvar = -2 * sum_target / D - math.log(2 * math.pi * math.e)
    model = NearZeroSum(lr=0.0, sample=False, init_logvar=logvar)
    trainer = monitor_trainer(tmp_path, [EntropyMonitor(stages=("train",))], max_epochs=1)
    trainer.fit(model, monitor_loader(0.1 * TRAIN_24))
    metrics = trainer.callback_metrics
    ref = monitor_reference(model.train_epoch(0))
    assert ref["sum"] == pytest.approx(sum_target, abs=1e-5)  # float32 parameter
    assert_logged_equal(metrics, "entropy/train", ref)
    gap, rel_gap = float(metrics["entropy/train/gap"]), float(metrics["entropy/train/rel_gap"])
    assert abs(gap) > 0.5  # a visible gap, which a plain gap / |sum| would blow up a hundredfold
    assert abs(rel_gap) <= abs(gap) / (0.1 * D) * (1 + 1e-6)
    assert rel_gap == pytest.approx(gap / (0.1 * D), rel=1e-5)

    # a custom floor moves the denominator
    model = NearZeroSum(lr=0.0, sample=False, init_logvar=logvar)
    trainer = monitor_trainer(tmp_path, [EntropyMonitor(stages=("train",), rel_gap_floor=0.5)], max_epochs=1)
    trainer.fit(model, monitor_loader(0.1 * TRAIN_24))
    metrics = trainer.callback_metrics
    gap = float(metrics["entropy/train/gap"])
    assert float(metrics["entropy/train/rel_gap"]) == pytest.approx(gap / (0.5 * D), rel=1e-5)


# -------------------------------------------------------------------------------- parameter pitfall
@pytest.mark.parametrize("param_output", ["live", "view", "detach"])
def test_returned_parameter_uses_pre_step_value(tmp_path, param_output):
    torch.manual_seed(0)
    model = MonitorVAE(lr=0.5, param_output=param_output)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer = _fit(tmp_path, model, EntropyMonitor(stages=("train",)), val=None, max_epochs=1)
    entries = model.train_epoch(0)
    moved = [float(e["dec_logvar_post"] - e["dec_logvar"]) for e in entries]
    assert min(abs(m) for m in moved) > 0.1  # the optimizer moved the variance at every step
    pre = monitor_reference(entries)
    post = monitor_reference(entries, dec_key="dec_logvar_post")
    logged = float(trainer.callback_metrics["entropy/train/sum"])
    assert logged == pytest.approx(pre["sum"], rel=1e-5)
    assert abs(logged - post["sum"]) > 0.1
    assert_logged_equal(trainer.callback_metrics, "entropy/train", pre)
    # a learnable variance, however returned, is not mistaken for a fixed one
    assert not _monitor_warnings(record, "decoder variance is fixed")
    assert "entropy/train/sum_profiled" not in trainer.callback_metrics


class ShiftsVarianceAfterEachBatch(MonitorVAE):
    """Changes the returned parameter in place between batches (after the optimizer step), as a projection would."""

    def on_train_batch_end(self, outputs, batch, batch_idx):
        super().on_train_batch_end(outputs, batch, batch_idx)  # records the post-step value
        with torch.no_grad():
            self.dec_logvar.add_(0.3)


@pytest.mark.parametrize("param_output", ["live", "view"])
def test_parameter_changed_between_batches_is_snapshotted_again(tmp_path, param_output):
    """A change between batches (here after the optimizer step) is in the next batch's snapshot."""
    torch.manual_seed(0)
    model = ShiftsVarianceAfterEachBatch(lr=0.5, param_output=param_output)
    trainer = _fit(tmp_path, model, EntropyMonitor(stages=("train",)), val=None, max_epochs=2)
    entries = model.train_epoch(1)
    shifted = [float(b["dec_logvar"] - a["dec_logvar_post"]) for a, b in itertools.pairwise(entries)]
    assert shifted == pytest.approx([0.3] * len(shifted), abs=1e-6)  # the shift lands after the post-step read
    assert_logged_equal(trainer.callback_metrics, "entropy/train", monitor_reference(entries))


def test_large_returned_parameter_warns_once_and_is_snapshotted_from_the_second_batch(tmp_path, monkeypatch):
    """A parameter above the first-batch size limit is only known after batch 1: warned, then snapshotted."""
    from lightning_entropy_vae.callbacks import _live_params

    monkeypatch.setattr(_live_params, "SMALL", 0)  # every parameter counts as large
    torch.manual_seed(0)
    model = MonitorVAE(lr=0.5, param_output="live")
    with pytest.warns(UserWarning, match="larger than the first batch's copy limit") as record:
        trainer = _fit(tmp_path, model, EntropyMonitor(stages=("train",)), val=None, max_epochs=2)
    assert len(_monitor_warnings(record, "aliases a parameter")) == 1
    assert_logged_equal(trainer.callback_metrics, "entropy/train", monitor_reference(model.train_epoch(1)))


# ----------------------------------------------------------------------------- accumulation, bf16
def test_gradient_accumulation(tmp_path):
    torch.manual_seed(0)
    model = MonitorVAE(lr=0.05)
    logger = CSVLogger(tmp_path, name="acc", version=0)
    monitor = EntropyMonitor(stages=("train",), gap_window=10)
    convergence = EntropyConvergence(gap_tolerance=1e9, gate_epochs=1, patience=5, monitor_stage="train")
    train = monitor_data(28, seed=2)  # 7 batches of 4: optimizer steps after batches 2, 4, 6 and 7
    trainer = monitor_trainer(tmp_path, [monitor, convergence], max_epochs=3, accumulate_grad_batches=2,
                              logger=logger)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(model, monitor_loader(train))
    # values: the recorded outputs of the last epoch
    assert_logged_equal(trainer.callback_metrics, "entropy/train", monitor_reference(model.train_epoch(2)))
    # the objective check scales Lightning's divided loss back: -loss is the ELBO, the epochs count
    assert not _monitor_warnings(record, "not the beta = 1 ELBO")
    assert monitor.objective_check[0] is True and convergence.gate_open
    assert trainer.global_step == 12
    # step-level logs: once per optimizer step, at Lightning's step index, over that step's batches
    rows = [r for r in _csv_rows(logger) if r.get("entropy/train_step/sum")]
    assert [int(r["step"]) for r in rows] == list(range(12))
    for row in rows:
        window = [e for e in model.train_log if e["step"] == int(row["step"])]
        assert len(window) in (1, 2)
        ref = monitor_reference(window)
        for key in ("sum", "elbo", "gap", "rel_gap"):
            assert float(row[f"entropy/train_step/{key}"]) == pytest.approx(ref[key], rel=1e-5, abs=1e-5), key


def test_bf16_mixed_precision_logs_finite_floats(tmp_path):
    torch.manual_seed(0)
    model = MonitorVAE(lr=0.05)
    trainer = _fit(tmp_path, model, EntropyMonitor(), max_epochs=1, precision="bf16-mixed")
    assert model.train_log[0]["enc_mean"].dtype == torch.bfloat16  # autocast really ran the encoder in bf16
    for stage in ("train", "val"):
        for key in ("sum", "encoder", "decoder", "elbo", "gap", "rel_gap", "abs_rel_gap"):
            value = trainer.callback_metrics[f"entropy/{stage}/{key}"]
            assert value.dtype == torch.float32 and math.isfinite(float(value)), (stage, key)
    # the bf16 outputs, upcast, give the same numbers as their float64 recomputation
    ref = monitor_reference(model.train_epoch(0))
    assert_logged_equal(trainer.callback_metrics, "entropy/train", ref, rel=1e-4)


# ------------------------------------------------------------------------ sanity check, val loaders
def test_sanity_check_batches_are_ignored(tmp_path):
    torch.manual_seed(0)
    model = MonitorVAE(lr=0.0, sanity_shift=3.0)  # the sanity-check outputs differ from the real ones
    logger = CSVLogger(tmp_path, name="sanity", version=0)
    monitor = EntropyMonitor(gap_window=10)
    convergence = EntropyConvergence(gap_tolerance=1e6, gate_epochs=1, patience=2)
    trainer = monitor_trainer(tmp_path, [monitor, convergence], max_epochs=3, num_sanity_val_steps=2,
                              logger=logger)
    trainer.fit(model, monitor_loader(TRAIN_24), monitor_loader(VAL_12))
    sanity = [e for e in model.val_log if e["sanity"]]
    assert len(sanity) == 2
    real = model.val_epoch(2)
    assert_logged_equal(trainer.callback_metrics, "entropy/val", monitor_reference(real))
    with_sanity = monitor_reference(real + sanity)
    assert abs(float(trainer.callback_metrics["entropy/val/encoder"]) - with_sanity["encoder"]) > 0.1
    # nothing is logged for the sanity check, and it is no convergence check
    rows = _csv_rows(logger)
    assert sum(1 for r in rows if r.get("entropy/val/sum")) == 3
    assert sum(1 for r in rows if r.get("entropy/val/latent_entropy/0")) == 3
    # the gate opens at the end of epoch 1 (12 batches fill the window of 10): epoch 2's check is its first
    assert convergence.gate_open and convergence.wait_count == 0
    assert convergence.best == pytest.approx(float(trainer.callback_metrics["entropy/val/elbo"]))


def test_two_validation_loaders_log_val_and_val_1(tmp_path):
    torch.manual_seed(0)
    model = MonitorVAE(lr=0.05)
    trainer = monitor_trainer(tmp_path, [EntropyMonitor()], max_epochs=2)
    second = monitor_data(8, seed=5) * 2.0
    trainer.fit(model, monitor_loader(TRAIN_24), [monitor_loader(VAL_12), monitor_loader(second)])
    metrics = trainer.callback_metrics
    assert_logged_equal(metrics, "entropy/val", monitor_reference(model.val_epoch(1, 0)))
    assert_logged_equal(metrics, "entropy/val_1", monitor_reference(model.val_epoch(1, 1)))
    assert not any("dataloader_idx" in key for key in metrics)


# --------------------------------------------------------------------------------- step-level logs
def test_step_level_logs_follow_log_every_n_steps(tmp_path):
    torch.manual_seed(0)
    model = MonitorVAE(lr=0.05, log_probe=True)
    logger = CSVLogger(tmp_path, name="steps", version=0)
    decay = 0.8
    trainer = monitor_trainer(tmp_path, [EntropyMonitor(stages=("train",), ema_decay=decay)], max_epochs=2,
                              logger=logger, log_every_n_steps=3)
    trainer.fit(model, monitor_loader(TRAIN_24))  # 6 batches per epoch, 12 optimizer steps
    rows = _csv_rows(logger)
    probe_steps = [int(r["step"]) for r in rows if r.get("probe")]
    step_rows = [r for r in rows if r.get("entropy/train_step/sum")]
    assert probe_steps == [2, 5, 8, 11]
    assert [int(r["step"]) for r in step_rows] == probe_steps  # the steps Lightning logs at
    keys = ("sum", "elbo", "gap", "rel_gap", "gap_ema")
    assert all(r.get(f"entropy/train_step/{k}") for r in step_rows for k in keys)
    ema = None
    for row in step_rows:
        step = int(row["step"])
        window = [e for e in model.train_log if step - 3 < e["step"] <= step]  # batches since the last log
        assert len(window) == 3
        ref = monitor_reference(window)
        for key in ("sum", "elbo", "gap", "rel_gap"):
            assert float(row[f"entropy/train_step/{key}"]) == pytest.approx(ref[key], rel=1e-5, abs=1e-5), key
        ema = ref["gap"] if ema is None else decay * ema + (1 - decay) * ref["gap"]
        assert float(row["entropy/train_step/gap_ema"]) == pytest.approx(ema, rel=1e-5, abs=1e-5)


def test_step_window_carries_over_the_epoch_boundary(tmp_path):
    """6 batches per epoch, a log every 4 steps: the window logged at step 7 holds epoch 0's last two batches."""
    torch.manual_seed(0)
    model = MonitorVAE(lr=0.05)
    logger = CSVLogger(tmp_path, name="carry", version=0)
    trainer = monitor_trainer(tmp_path, [EntropyMonitor(stages=("train",))], max_epochs=2, logger=logger,
                              log_every_n_steps=4)
    trainer.fit(model, monitor_loader(TRAIN_24))
    step_rows = {int(r["step"]): r for r in _csv_rows(logger) if r.get("entropy/train_step/sum")}
    assert sorted(step_rows) == [3, 7, 11]
    for step, first in ((3, 0), (7, 4), (11, 8)):
        window = [e for e in model.train_log if first <= e["step"] <= step]
        assert len(window) == 4
        ref = monitor_reference(window)
        for key in ("sum", "elbo", "gap"):
            assert float(step_rows[step][f"entropy/train_step/{key}"]) == pytest.approx(ref[key], rel=1e-5), key


def test_skipped_batch_window_leaves_the_gap_ema(tmp_path):
    torch.manual_seed(0)
    model = MonitorVAE(lr=0.05, nan_batch=(0, 2))
    logger = CSVLogger(tmp_path, name="nan", version=0)
    trainer = monitor_trainer(tmp_path, [EntropyMonitor(stages=("train",), ema_decay=0.5)], max_epochs=1,
                              logger=logger, log_every_n_steps=1)
    trainer.fit(model, monitor_loader(TRAIN_24))
    rows = {int(r["step"]): r for r in _csv_rows(logger) if r.get("entropy/train_step/sum")}
    assert sorted(rows) == list(range(6))
    assert math.isnan(float(rows[2]["entropy/train_step/sum"]))  # the window's only batch was skipped
    ema = None
    for step in range(6):
        if step != 2:
            gap = monitor_reference([e for e in model.train_log if e["step"] == step])["gap"]
            ema = gap if ema is None else 0.5 * ema + 0.5 * gap
        assert float(rows[step]["entropy/train_step/gap_ema"]) == pytest.approx(ema, rel=1e-5, abs=1e-5), step
    assert float(trainer.callback_metrics["entropy/train/skipped_batches"]) == 1.0


# --------------------------------------------------------------------------------------- collapse
class CollapsedLatents(MonitorVAE):
    """H = 4: latent 0 active; 1 fully collapsed (mean 0, logvar 0); 2 varying mean with prior variance;
    3 constant mean 2 with prior variance.

    Active by entropy: {0}; by KL: {0, 2, 3}; by active units: {0, 2}.
    """

    def latents(self, mean, logvar):
        keep = torch.tensor([1.0, 0.0, 1.0, 0.0])
        mean = mean * keep + torch.tensor([0.0, 0.0, 0.0, 2.0])
        logvar = logvar * torch.tensor([1.0, 0.0, 0.0, 0.0])
        return mean, logvar


@pytest.mark.parametrize(("criterion", "active"), [("entropy", 1), ("kl", 3), ("active_units", 2)])
def test_collapse_per_latent_keys_and_active_count(tmp_path, criterion, active):
    torch.manual_seed(0)
    model = CollapsedLatents(latent_dim=4, lr=0.0)
    logger = CSVLogger(tmp_path, name="collapse", version=0)
    monitor = EntropyMonitor(stages=("train",), collapse_criterion=criterion)
    trainer = monitor_trainer(tmp_path, [monitor], max_epochs=1, logger=logger)
    trainer.fit(model, monitor_loader(TRAIN_24))
    ref = monitor_reference(model.train_epoch(0), criterion=criterion)
    assert ref["active_latents"] == active
    assert_logged_equal(trainer.callback_metrics, "entropy/train", ref)
    row = next(r for r in _csv_rows(logger) if r.get("entropy/train/latent_entropy/0"))
    for h in range(4):
        entropy = float(row[f"entropy/train/latent_entropy/{h}"])
        assert entropy == pytest.approx(ref["latent_entropy"][h], abs=1e-5)
        assert float(row[f"entropy/train/latent_kl/{h}"]) == pytest.approx(ref["latent_kl"][h], abs=1e-5)
        assert float(row[f"entropy/train/collapsed/{h}"]) == float(ref["collapsed"][h])
    prior_entropy = float(Normal(0.0, 1.0).entropy())
    assert float(row["entropy/train/latent_entropy/prior"]) == pytest.approx(prior_entropy, abs=1e-5)
    assert bool(row.get("entropy/train/latent_entropy/threshold")) == (criterion == "entropy")
    if criterion == "entropy":
        assert float(row["entropy/train/latent_entropy/threshold"]) == pytest.approx(1.0, abs=1e-5)


class CollapsesInEpochOne(MonitorVAE):
    def latents(self, mean, logvar):
        if self.current_epoch >= 1:
            keep = torch.tensor([1.0, 0.0])
            return mean * keep, logvar * keep
        return mean, logvar


def test_warns_when_a_latent_collapses_during_training(tmp_path):
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match=r"latent\(s\) \[1\] collapsed during epoch 1") as record:
        trainer = _fit(tmp_path, CollapsesInEpochOne(lr=0.0), EntropyMonitor(stages=("train",)), val=None)
    assert len(_monitor_warnings(record, "collapsed during epoch")) == 1
    assert float(trainer.callback_metrics["entropy/train/active_latents"]) == 1.0

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _fit(tmp_path, CollapsesInEpochOne(lr=0.0), EntropyMonitor(stages=("train",), warn_on_collapse=False),
             val=None)
    assert not _monitor_warnings(record, "collapsed during epoch")


class CollapsesOnOddEpochs(MonitorVAE):
    def latents(self, mean, logvar):
        if self.current_epoch % 2 == 1:
            keep = torch.tensor([1.0, 0.0])
            return mean * keep, logvar * keep
        return mean, logvar


def test_a_flickering_latent_is_reported_once(tmp_path):
    """Latent 1 collapses in epochs 1 and 3 and revives in 2: one warning, not one per collapse."""
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _fit(tmp_path, CollapsesOnOddEpochs(lr=0.0), EntropyMonitor(stages=("train",)), val=None, max_epochs=4)
    messages = [str(w.message) for w in record if "collapsed during epoch" in str(w.message)]
    assert len(messages) == 1 and "[1] collapsed during epoch 1" in messages[0]


# --------------------------------------------------------------------------------- fixed variance
class RecordingGaussianVAE(GaussianVAE):
    """The package's reference model, recording what its training steps returned."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.records = []

    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        self.records.append({"epoch": self.current_epoch, **{k: v.detach().clone() for k, v in out.items()}})
        return out


def test_fixed_variance_warns_once_and_logs_profiled_sum(tmp_path):
    torch.manual_seed(0)
    model = RecordingGaussianVAE(D, 2, kind="vae0", hidden_dims=(8,), lr=1e-2, fixed_logvar=0.5)
    with pytest.warns(UserWarning, match="decoder variance is fixed") as record:
        trainer = _fit(tmp_path, model, EntropyMonitor(stages=("train",)), val=None)
    assert len(_monitor_warnings(record, "decoder variance is fixed")) == 1
    last = [r for r in model.records if r["epoch"] == 1]
    x = torch.cat([r["x"] for r in last]).double()
    dec_mean = torch.cat([r["dec_mean"] for r in last]).double()
    sigma2 = (x - dec_mean).square().sum() / x.numel()
    enc = Normal(torch.cat([r["enc_mean"] for r in last]).double(),
                 torch.cat([r["enc_logvar"] for r in last]).double().mul(0.5).exp()).entropy().sum(-1).mean()
    prior = 2 * Normal(0.0, 1.0).entropy().double()
    decoder_profiled = D * Normal(0.0, sigma2.sqrt()).entropy()
    decoder_fixed = D * Normal(torch.tensor(0.0, dtype=torch.float64), math.exp(0.25)).entropy()
    metrics = trainer.callback_metrics
    profiled = float(enc - prior - decoder_profiled)
    assert float(metrics["entropy/train/sum_profiled"]) == pytest.approx(profiled, rel=1e-5)
    assert float(metrics["entropy/train/sum"]) == pytest.approx(float(enc - prior - decoder_fixed), rel=1e-5)


def test_learned_variance_does_not_warn(tmp_path):
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model = GaussianVAE(D, 2, kind="vae1", hidden_dims=(8,))
        trainer = _fit(tmp_path, model, EntropyMonitor(stages=("train",)), val=None, max_epochs=1)
    assert not _monitor_warnings(record, "decoder variance is fixed")
    assert "entropy/train/sum_profiled" not in trainer.callback_metrics
    assert "entropy/train/sum" in trainer.callback_metrics
