"""EntropyConvergence: the gate on the training gap, patience on the ELBO, the guard that the loss is the
beta = 1 ELBO, and the loop cases (stages, cadences, reuse, resume, fast_dev_run, callback order)."""

import math
import re
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from helpers import (
    TRAIN_24,
    VAL,
    D,
    FixedVariance,
    MonitorVAE,
    monitor_data,
    monitor_loader,
    monitor_reference,
    monitor_trainer,
)
from lightning.pytorch.callbacks import EarlyStopping, GradientAccumulationScheduler, ModelCheckpoint

from lightning_entropy_vae import EntropyConvergence, EntropyMonitor
from lightning_entropy_vae import functional as F
from lightning_entropy_vae.callbacks._objective import MIN_BATCHES, ObjectiveCheck
from lightning_entropy_vae.callbacks.entropy_convergence import UNKNOWN_EPOCHS_BEFORE_WARNING
from lightning_entropy_vae.data import TensorDataModule
from lightning_entropy_vae.models import GaussianVAE

OPEN = {"gap_tolerance": 1e6, "gap_z": 0.0, "gate_epochs": 2}  # any gap counts: the gate opens at the end of epoch 2
WINDOW = 10  # EntropyMonitor(gap_window=10): 6 batches per epoch fill it during epoch 1 (epoch 0 does not count)


def _monitor(**kwargs):
    return EntropyMonitor(gap_window=WINDOW, **kwargs)


def _fit(tmp_path, model, callbacks, val=True, max_epochs=8, **kwargs):
    trainer = monitor_trainer(tmp_path, callbacks, max_epochs=max_epochs, **kwargs)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(model, monitor_loader(TRAIN_24), monitor_loader(VAL) if val else None)
    return trainer, [str(w.message) for w in record]


# ------------------------------------------------------------------------------------------ the rule
@pytest.mark.parametrize("patience", [1, 3])
def test_gate_then_patience_on_the_validation_elbo(tmp_path, patience):
    """lr = 0: the validation ELBO never improves on its first check. The gate opens at the end of epoch 2; the
    validation of epoch 3 (Lightning validates before the training epoch ends) is the first check after it."""
    convergence = EntropyConvergence(**OPEN, patience=patience)
    trainer, _ = _fit(tmp_path, MonitorVAE(lr=0.0, sample=False), [_monitor(), convergence])
    assert convergence.gate_open and convergence.stopped_epoch == 3 + patience
    assert trainer.current_epoch == 4 + patience
    assert convergence.best == pytest.approx(float(trainer.callback_metrics["entropy/val/elbo"]))
    assert convergence.stop_reason == (
        f"EntropyConvergence: the training gap was stationary for 2 epochs, then `entropy/val/elbo` did not improve on"
        f" {convergence.best:.4g} for {patience} checks; stopping at epoch {3 + patience}.")


@pytest.mark.parametrize(("gap_tolerance", "gap_z", "opens"), [(1e-9, 0.0, False), (0.8, 0.0, False), (0.95, 0.0, True),
                                                          (0.95, 1.0, False), (0.0, 1e9, False), (1e9, 0.0, True)])
def test_the_gap_counts_when_it_plus_z_standard_errors_is_within_the_tolerance_times_d(
        tmp_path, gap_tolerance, gap_z, opens):
    """The frozen model's window: |gap| about 3.45 nats per point, its standard error about 0.86, D = 4. A
    tolerance of 0.95 per data dimension (3.8 nats per point) holds the gap alone, not the gap plus one standard
    error; 0.8 (3.2 nats per point) holds neither."""
    torch.manual_seed(0)
    convergence = EntropyConvergence(gap_tolerance=gap_tolerance, gap_z=gap_z, gate_epochs=1, patience=1)
    trainer, _ = _fit(tmp_path, MonitorVAE(lr=0.0, sample=False), [_monitor(), convergence], max_epochs=4)
    gap, se, dim = (float(trainer.callback_metrics[f"entropy/train/{key}"])
                    for key in ("gap_window", "gap_window_se", "data_dim"))
    assert dim == D and 0.8 * D < abs(gap) < 0.95 * D < abs(gap) + se
    assert convergence.gate_open is opens and convergence.closed_epochs == (1 if opens else 0)
    assert (convergence.stopped_epoch == 3) is opens  # opened at epoch 1: checks at 2 (best) and 3 (wait 1)


def test_the_gate_needs_consecutive_epochs(tmp_path):
    """Epoch 0 does not fill the window; epochs 1-3 count, one short of five."""
    convergence = EntropyConvergence(gap_tolerance=1e6, gap_z=0.0, gate_epochs=4, patience=1)
    trainer, _ = _fit(tmp_path, MonitorVAE(lr=0.0, sample=False), [_monitor(), convergence], max_epochs=4)
    assert convergence.closed_epochs == 3 and not convergence.gate_open and trainer.current_epoch == 4


class ScriptedValidation(MonitorVAE):
    """A frozen model whose validation ELBO is shifted by ``shifts[epoch]`` nats per point."""

    def __init__(self, shifts, **kwargs):
        super().__init__(**kwargs)
        self.shifts = shifts

    def validation_step(self, batch, batch_idx):
        out = super().validation_step(batch, batch_idx)
        out["elbo"] = out["elbo"] + self.shifts[self.current_epoch]
        return out


def test_improvements_reset_the_patience(tmp_path):
    """Checks after the gate (epochs 3-9): best, worse, better, worse, better, worse, better. With patience 2 each
    improvement restarts the count, so it never reaches 2 and the fit runs to the budget."""
    torch.manual_seed(0)
    shifts = [0.0, 0.0, 0.0, 0.0, -1.0, 1.0, 0.5, 2.0, 1.5, 3.0]
    convergence = EntropyConvergence(**OPEN, patience=2)
    trainer, _ = _fit(tmp_path, ScriptedValidation(shifts, lr=0.0, sample=False), [_monitor(), convergence],
                      max_epochs=10)
    assert convergence.gate_open and convergence.stop_reason is None and trainer.current_epoch == 10
    assert convergence.best == pytest.approx(float(trainer.callback_metrics["entropy/val/elbo"]))
    assert convergence.wait_count == 0


def test_monitor_stage_train_uses_the_training_elbo(tmp_path):
    """Checked at each training epoch's end, after the gate: the epoch that opens it is the first check."""
    convergence = EntropyConvergence(**OPEN, patience=2, monitor_stage="train")
    _fit(tmp_path, MonitorVAE(lr=0.0, sample=False), [_monitor(stages=("train",)), convergence], val=False)
    assert convergence.stopped_epoch == 4 and "entropy/train/elbo" in convergence.stop_reason


def test_stopping_threshold_and_check_finite(tmp_path):
    convergence = EntropyConvergence(gap_tolerance=1e-9, gap_z=0.0, stopping_threshold=-1e9)  # the first check
    _fit(tmp_path, MonitorVAE(lr=0.0, sample=False), [_monitor(), convergence])
    assert convergence.stopped_epoch == 0 and "stopping threshold" in convergence.stop_reason

    class NaNValidation(MonitorVAE):
        def validation_step(self, batch, batch_idx):
            out = super().validation_step(batch, batch_idx)
            out["elbo"] = out["elbo"] + float("inf")
            return out

    convergence = EntropyConvergence(gap_tolerance=1e-9, gap_z=0.0)
    _fit(tmp_path, NaNValidation(lr=0.0), [_monitor(), convergence])
    assert convergence.stopped_epoch == 0 and "is not finite" in convergence.stop_reason


def test_works_behind_the_monitor_with_stock_callbacks_and_says_so_when_placed_before(tmp_path):
    """It reads the epoch's published keys, so it must check after the monitor: placed before, a clear error."""
    convergence = EntropyConvergence(**OPEN, patience=1)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="entropy/val/elbo", mode="max")
    _fit(tmp_path, MonitorVAE(lr=0.0, sample=False), [_monitor(), convergence, checkpoint],
         enable_checkpointing=True)
    assert convergence.stopped_epoch == 4
    assert checkpoint.best_model_path  # the documented restore recipe
    message = ("Expected EntropyConvergence after the EntropyMonitor whose keys it reads in the Trainer's callbacks,"
               " but got it at position 0 and the monitor at 1. Pass Trainer(callbacks=[EntropyMonitor(),"
               " EntropyConvergence()]); where the monitor comes from LightningModule.configure_callbacks (Lightning"
               " appends those after the Trainer's), return EntropyConvergence from there too, after the monitor.")
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        _fit(tmp_path, MonitorVAE(lr=0.0, sample=False), [EntropyConvergence(**OPEN), _monitor()])


# ----------------------------------------------------------------------------------------- set-up
def test_needs_an_entropy_monitor(tmp_path):
    message = ("EntropyConvergence reads what EntropyMonitor publishes, but the Trainer has no EntropyMonitor."
               " Pass both: Trainer(callbacks=[EntropyMonitor(), EntropyConvergence()]).")
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        _fit(tmp_path, MonitorVAE(), [EntropyConvergence()])
    with pytest.raises(ValueError, match=r"needs EntropyMonitor to monitor \['train', 'val'\], but it monitors"
                                         r" \['train'\]"):
        _fit(tmp_path, MonitorVAE(), [EntropyMonitor(stages=("train",)), EntropyConvergence()])


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"gap_tolerance": -1}, ValueError, r"^Expected `gap_tolerance` to be a non-negative number, but got -1\.$"),
    ({"gap_tolerance": math.nan}, ValueError, r"^Expected `gap_tolerance` to be a non-negative number, but got nan\.$"),
    ({"gap_z": -0.5}, ValueError, r"^Expected `gap_z` to be a non-negative number, but got -0\.5\.$"),
    ({"gap_z": "2"}, TypeError, r"^Expected `gap_z` to be a non-negative number, but got '2'\.$"),
    ({"gate_epochs": 0}, ValueError, r"^Expected `gate_epochs` to be an int >= 1, but got 0\.$"),
    ({"patience": 1.5}, TypeError, r"^Expected `patience` to be an int >= 1, but got 1\.5\.$"),
    ({"min_delta": -1}, ValueError, r"^Expected `min_delta` to be a finite non-negative number, but got -1\.$"),
    ({"min_delta": math.nan}, ValueError, r"^Expected `min_delta` to be a finite non-negative number, but got nan\.$"),
    ({"monitor_stage": "test"}, ValueError, r"^Expected `monitor_stage` to be 'val' or 'train', but got 'test'\.$"),
    ({"stopping_threshold": "x"}, TypeError, r"^Expected `stopping_threshold` to be a number \(not NaN\) or None, but"
                                             r" got 'x'\.$"),
    ({"stopping_threshold": math.nan}, ValueError, r"^Expected `stopping_threshold` to be a number \(not NaN\) or"
                                                   r" None, but got nan\.$"),
])
def test_constructor_checks(kwargs, error, match):
    with pytest.raises(error, match=match):
        EntropyConvergence(**kwargs)


def test_zero_bounds_are_allowed():
    """gap_tolerance = 0 counts by the standard error alone, gap_z = 0 by the tolerance alone."""
    assert EntropyConvergence(gap_tolerance=0.0, gap_z=2.0).gap_tolerance == 0.0
    assert EntropyConvergence(gap_tolerance=0.1, gap_z=0).gap_z == 0.0


# ------------------------------------------------------------------------------- the objective guard
def _objective(losses, elbos, kls, sizes, eps=0.0):
    check = ObjectiveCheck()
    check.eps = eps  # the losses' dtype resolution, as the monitor sets it
    for loss, e, k, n in zip(losses, elbos, kls, sizes):
        check.add(-loss, n, e, k)
    return check.verdict()


def _batches(seed=0, k=12, n=32):
    """Per batch: the mean log-likelihood, the mean KL of two latents, and the sizes (the last batch smaller)."""
    gen = torch.Generator().manual_seed(seed)
    ll = -50 + 3 * torch.randn(k, generator=gen, dtype=torch.float64)
    kl = torch.stack([6 + torch.randn(k, generator=gen, dtype=torch.float64),
                      4 + torch.randn(k, generator=gen, dtype=torch.float64)], 1)
    return ll.tolist(), kl.tolist(), [n] * (k - 1) + [n // 2]


@pytest.mark.parametrize(("name", "loss", "expected", "convention"), [
    ("mean", lambda ll, kl, n: -(ll - kl), True, "mean"),
    ("sum, smaller last batch", lambda ll, kl, n: -(ll - kl) * n, True, "sum"),
    ("mean + constant", lambda ll, kl, n: -(ll - kl) + 37.5, True, "mean"),
    ("sum + constant per point", lambda ll, kl, n: -(ll - kl - 3.7) * n, True, "sum"),
    ("bf16 rounded", lambda ll, kl, n: float(torch.tensor(-(ll - kl)).bfloat16()), True, "mean"),
    ("beta = 0.1", lambda ll, kl, n: -(ll - 0.1 * kl), False, "mean"),
    ("beta = 0.5, summed", lambda ll, kl, n: -(ll - 0.5 * kl) * n, False, "sum"),
    ("scaled by 1/(10 H)", lambda ll, kl, n: -(ll - kl) / 20, False, "mean"),
])
def test_objective_check_of_loss_conventions(name, loss, expected, convention):
    ll, kl, sizes = _batches()
    kl_total = [sum(k) for k in kl]
    losses = [loss(a, b, n) for a, b, n in zip(ll, kl_total, sizes)]
    eps = torch.finfo(torch.bfloat16).eps if name.startswith("bf16") else torch.finfo(torch.float64).eps
    verdict = _objective(losses, [(a - b) * n for a, b, n in zip(ll, kl_total, sizes)],
                         [[h * n for h in k] for k, n in zip(kl, sizes)], sizes, eps=eps)
    assert verdict.is_elbo is expected, verdict.why
    assert verdict.convention == convention, verdict.why


def test_objective_check_needs_min_batches():
    ll, kl, sizes = _batches(k=MIN_BATCHES)
    losses = [-(a - sum(k)) for a, k in zip(ll, kl)]
    elbos = [(a - sum(k)) * n for a, k, n in zip(ll, kl, sizes)]
    kls = [[h * n for h in k] for k, n in zip(kl, sizes)]
    verdict = _objective(losses[:-1], elbos[:-1], kls[:-1], sizes[:-1])
    assert verdict.is_elbo is None
    assert verdict.why == f"{MIN_BATCHES - 1} batch(es) with a loss: too few to tell (the check needs {MIN_BATCHES})"
    assert _objective(losses, elbos, kls, sizes).is_elbo is True  # the same losses, one batch more


def _gaussian_vae_fit(tmp_path, convergence, precision="32-true", callbacks=(), max_epochs=6, **model_kwargs):
    torch.manual_seed(0)
    model = GaussianVAE(D, 2, kind="vae1", hidden_dims=(8,), lr=1e-2, **model_kwargs)
    trainer = monitor_trainer(tmp_path, [_monitor(), convergence, *callbacks], max_epochs=max_epochs,
                              precision=precision)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(model, datamodule=TensorDataModule(TRAIN_24, VAL, batch_size=4, shuffle=False))
    return trainer, [str(w.message) for w in record]


@pytest.mark.parametrize("model_kwargs", [{"beta": 0.1}, {"beta": 0.5}, {"kl_warmup_steps": 100}],
                         ids=["beta-0.1", "beta-0.5", "kl-annealing"])
def test_an_objective_other_than_the_elbo_does_not_count(tmp_path, model_kwargs):
    convergence = EntropyConvergence(**OPEN, patience=1)
    trainer, messages = _gaussian_vae_fit(tmp_path, convergence, **model_kwargs)
    assert not convergence.gate_open and convergence.stop_reason is None and trainer.current_epoch == 6
    assert sum("the training loss is not the beta = 1 ELBO" in m for m in messages) == 1  # warned once
    # the guard is the reason: without it the same run opens the gate
    convergence = EntropyConvergence(**OPEN, patience=1, require_elbo_objective=False)
    _gaussian_vae_fit(tmp_path, convergence, **model_kwargs)
    assert convergence.gate_open


@pytest.mark.parametrize(("precision", "callbacks"), [
    ("32-true", ()), ("bf16-true", ()), ("32-true", (GradientAccumulationScheduler({0: 2}),)),
    ("32-true", (GradientAccumulationScheduler({0: 1, 2: 3}),)),
], ids=["fp32", "bf16-true", "accumulation-2", "accumulation-schedule"])
def test_the_elbo_objective_counts_under_any_precision_and_accumulation(tmp_path, precision, callbacks):
    convergence = EntropyConvergence(**OPEN, patience=1)
    _trainer, messages = _gaussian_vae_fit(tmp_path, convergence, precision=precision, callbacks=callbacks)
    assert convergence.gate_open, messages
    assert not any("not the beta = 1 ELBO" in m for m in messages)


class OffsetAndSummed(MonitorVAE):
    """-ELBO summed over the batch, plus a constant (pythae's loss omits D/2 log 2 pi), as a (1,) tensor."""

    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        out["loss"] = (out["loss"] * batch[0].shape[0] + 3.7).reshape(1)
        return out


class Verdicts(pl.Callback):
    """The published objective verdict at each training epoch's end (placed after the monitor)."""

    def __init__(self):
        self.seen = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.seen.append(float(trainer.callback_metrics["entropy/train/objective_is_elbo"]))


def test_a_summed_loss_with_a_constant_offset_of_shape_one_counts(tmp_path):
    torch.manual_seed(0)
    convergence, verdicts = EntropyConvergence(**OPEN, patience=1), Verdicts()
    _trainer, messages = _fit(tmp_path, OffsetAndSummed(lr=0.01), [_monitor(), verdicts, convergence])
    assert convergence.gate_open and not any("not the beta = 1 ELBO" in m for m in messages)
    assert verdicts.seen[:3] == [1.0, 1.0, 1.0]  # judged from the first epoch's 6 batches on


class ManualNoLoss(MonitorVAE):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(out.pop("loss"))
        opt.step()
        return out


def test_without_a_training_loss_it_says_so_once_and_does_not_count(tmp_path):
    epochs = UNKNOWN_EPOCHS_BEFORE_WARNING + 1  # said after that many epochs in a row that cannot tell
    convergence = EntropyConvergence(**OPEN, patience=1)
    trainer, messages = _fit(tmp_path, ManualNoLoss(lr=0.0, sample=False), [_monitor(), convergence],
                             max_epochs=epochs)
    assert not convergence.gate_open and convergence.closed_epochs == 0 and trainer.current_epoch == epochs
    assert sum("cannot tell whether the training loss is the beta = 1 ELBO (`entropy/train/objective_is_elbo` is"
               " NaN: the training steps return no `loss`" in m for m in messages) == 1
    convergence = EntropyConvergence(**OPEN, patience=1, require_elbo_objective=False)
    _fit(tmp_path, ManualNoLoss(lr=0.0, sample=False), [_monitor(), convergence], max_epochs=6)
    assert convergence.stopped_epoch == 4


def test_a_fixed_decoder_variance_is_said_once(tmp_path):
    monitor, convergence = _monitor(), EntropyConvergence()
    _, messages = _fit(tmp_path, FixedVariance(lr=0.05), [monitor, convergence], max_epochs=3)
    assert monitor.fixed_decoder_variance is True
    assert sum("the decoder variance is fixed" in m and "EntropyConvergence's gate will not open" in m
               for m in messages) == 1
    _, messages = _fit(tmp_path, MonitorVAE(lr=0.05), [_monitor(), EntropyConvergence()], max_epochs=2)
    assert not any("decoder variance is fixed" in m for m in messages)

# ----------------------------------------------------------------------------------------- the loop
def test_validation_every_other_epoch_counts_validation_checks(tmp_path):
    """The gate counts training epochs; the patience counts validation runs (epochs 1, 3, 5, ...)."""
    convergence = EntropyConvergence(**OPEN, patience=2)
    _trainer, _ = _fit(tmp_path, MonitorVAE(lr=0.0, sample=False), [_monitor(), convergence], max_epochs=10,
                       check_val_every_n_epoch=2)
    assert convergence.stopped_epoch == 7  # gate at the end of epoch 2; checks at 3 (best), 5 (wait 1), 7 (wait 2)


def test_each_validation_within_an_epoch_is_a_check(tmp_path):
    """val_check_interval = 0.5: two checks per epoch (after batches 3 and 6), each counted when it ends. The gate
    opens at the end of epoch 2; checks 3a (best), 3b, 4a (wait 2): the fit stops halfway through epoch 4."""
    convergence = EntropyConvergence(**OPEN, patience=2)
    trainer, _ = _fit(tmp_path, MonitorVAE(lr=0.0, sample=False), [_monitor(), convergence], max_epochs=10,
                      val_check_interval=0.5)
    assert convergence.stopped_epoch == 4 and trainer.global_step == 4 * 6 + 3


def test_no_validation_after_the_gate_warns_that_it_could_not_stop(tmp_path):
    message = ("EntropyConvergence watches `entropy/val/elbo`, but no validation ran in this fit after its gate"
               " opened, so it could not stop. Add a validation loader (or validate more often), or pass"
               " EntropyConvergence(monitor_stage='train').")
    convergence = EntropyConvergence(**OPEN, patience=1)
    trainer, messages = _fit(tmp_path, MonitorVAE(lr=0.0, sample=False), [_monitor(), convergence], val=False,
                             max_epochs=4)
    assert convergence.gate_open and convergence.stop_reason is None and trainer.current_epoch == 4
    assert messages.count(message) == 1
    # validation at epochs 1, 3, ...: the gate opens at the end of epoch 2 and the fit ends before epoch 3's check
    convergence = EntropyConvergence(**OPEN, patience=1)
    _, messages = _fit(tmp_path, MonitorVAE(lr=0.0, sample=False), [_monitor(), convergence], max_epochs=3,
                       check_val_every_n_epoch=2)
    assert convergence.gate_open and messages.count(message) == 1
    # a check after the gate, or a gate that never opened: nothing to say
    for bounds, epochs in (({}, 4), ({"gap_tolerance": 0.0}, 3)):
        convergence = EntropyConvergence(**{**OPEN, **bounds}, patience=5)
        _, messages = _fit(tmp_path, MonitorVAE(lr=0.0, sample=False), [_monitor(), convergence], max_epochs=epochs,
                           check_val_every_n_epoch=2)
        assert convergence.stop_reason is None and not any("no validation ran" in m for m in messages)


def test_a_reused_instance_starts_each_fit_afresh(tmp_path):
    convergence, monitor = EntropyConvergence(**OPEN, patience=1), _monitor()
    _fit(tmp_path, MonitorVAE(lr=0.0, sample=False), [monitor, convergence])
    assert convergence.stopped_epoch == 4
    trainer, _ = _fit(tmp_path, MonitorVAE(lr=0.0, sample=False), [monitor, convergence])
    assert convergence.stopped_epoch == 4 and trainer.current_epoch == 5  # not stopped early by stale state


def test_after_validate_a_fit_without_validation_does_not_watch_a_stale_stage(tmp_path):
    convergence, monitor = EntropyConvergence(**OPEN, patience=1, monitor_stage="train"), _monitor()
    trainer = monitor_trainer(tmp_path, [monitor, convergence], max_epochs=4)
    trainer.validate(MonitorVAE(lr=0.0, sample=False), monitor_loader(VAL))
    trainer = monitor_trainer(tmp_path, [monitor, convergence], max_epochs=8)
    trainer.fit(MonitorVAE(lr=0.0, sample=False), monitor_loader(TRAIN_24))
    assert convergence.stopped_epoch == 3  # gate and first check at the end of epoch 2, no improvement at 3


def test_fast_dev_run_never_counts(tmp_path):
    convergence = EntropyConvergence(gap_tolerance=1e6, gap_z=0.0, gate_epochs=1, patience=1)
    _fit(tmp_path, MonitorVAE(lr=0.0, sample=False), [_monitor(), convergence], fast_dev_run=True)
    assert convergence.closed_epochs == 0 and convergence.stop_reason is None


class GapWindow(pl.Callback):
    """The published window gap at each training epoch's end (placed after the monitor)."""

    def __init__(self):
        self.seen = {}

    def on_train_epoch_end(self, trainer, pl_module):
        self.seen[trainer.current_epoch] = float(trainer.callback_metrics["entropy/train/gap_window"])


def test_resume_keeps_the_state_and_a_mid_epoch_resume_counts_alike(tmp_path):
    """A checkpoint halfway through epoch 1 holds the monitor's window (9 batches) and the gate's count (epoch 0
    did not fill the window): resumed, the window runs on from the restored batches and epochs 1-3 count, as in a
    straight run. (Lightning replays a plain DataLoader from its start after a mid-epoch resume: the resumed epoch 1
    ends with data batches 0-2.)"""
    torch.manual_seed(0)
    straight = EntropyConvergence(gap_tolerance=1e6, gap_z=0.0, gate_epochs=4, patience=1)
    _fit(tmp_path, MonitorVAE(lr=0.0, sample=False), [_monitor(), straight], max_epochs=4)
    assert straight.closed_epochs == 3 and not straight.gate_open
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=9, save_top_k=-1)
    first = EntropyConvergence(gap_tolerance=1e6, gap_z=0.0, gate_epochs=4, patience=1)
    torch.manual_seed(0)
    _fit(tmp_path, MonitorVAE(lr=0.0, sample=False), [_monitor(), first, checkpoint], max_epochs=2,
         enable_checkpointing=True)
    assert first.closed_epochs == 1
    path = tmp_path / "ckpt" / "epoch=1-step=9.ckpt"  # halfway through epoch 1 (6 batches per epoch)
    state = torch.load(path, weights_only=True)["callbacks"]
    assert {"closed_epochs": 0, "gate_open": False}.items() <= next(
        v for k, v in state.items() if k.startswith("EntropyConvergence")).items()
    saved = next(v for k, v in state.items() if k.startswith("EntropyMonitor"))["train_window"]["gaps"]
    resumed, gaps = EntropyConvergence(gap_tolerance=1e6, gap_z=0.0, gate_epochs=4, patience=1), GapWindow()
    trainer = monitor_trainer(tmp_path, [_monitor(), gaps, resumed], max_epochs=4)
    torch.manual_seed(0)
    model = MonitorVAE(lr=0.0, sample=False)
    trainer.fit(model, monitor_loader(TRAIN_24), monitor_loader(VAL), ckpt_path=path)
    assert resumed.closed_epochs == 3 and not resumed.gate_open
    # the frozen model's gap per data batch, float64, and the window over the batches seen, oldest first
    per_batch = [monitor_reference([entry])["gap"] for entry in model.train_epoch(2)]
    seen = per_batch + per_batch[:3] + per_batch[:3] + per_batch + per_batch
    assert [g / n for g, n in saved] == pytest.approx(seen[:9], rel=1e-5)
    assert sorted(gaps.seen) == [1, 2, 3]
    for epoch, gap in gaps.seen.items():
        end = 6 * (epoch + 1)
        assert gap == pytest.approx(sum(seen[end - WINDOW:end]) / WINDOW, rel=1e-5), epoch


def test_stock_early_stopping_still_monitors_the_published_keys(tmp_path):
    stopper = EarlyStopping(monitor="entropy/val/abs_rel_gap", mode="min", stopping_threshold=1e6)
    trainer, _ = _fit(tmp_path, MonitorVAE(lr=0.0, sample=False), [_monitor(), stopper])
    assert trainer.current_epoch == 1 and math.isfinite(float(trainer.callback_metrics["entropy/val/abs_rel_gap"]))


# ------------------------------------------------------------------- the benchmark's rule, replayed
class BatchRecord(pl.Callback):
    """What the benchmark records per training batch (``benchmarks/_stopping_train.py``), from the step's output
    with the decoder log-variance its forward pass used (the step returns the parameter, which the optimizer then
    updates in place), and per epoch the published validation ELBO and whether the gate is open (placed after
    EntropyConvergence)."""

    def __init__(self):
        self.rows = {key: [] for key in ("batch_epoch", "batch_n", "batch_neg_loss", "batch_elbo_sum",
                                         "batch_entsum_sum", "batch_kl_sums")}
        self.val_elbo, self.gate_open = [], []
        self._dec_logvar = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self._dec_logvar = pl_module.dec_logvar.detach().double().clone()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        out = {k: v.detach().double() for k, v in outputs.items()}
        kl = 0.5 * (out["enc_mean"].square() + out["enc_logvar"].exp() - 1.0 - out["enc_logvar"])
        entsum = F.entropy_sum(enc_logvar=out["enc_logvar"], dec_logvar=self._dec_logvar, x=out["x"],
                               reduction="sum")
        for key, value in (("batch_epoch", trainer.current_epoch), ("batch_n", out["x"].shape[0]),
                           ("batch_neg_loss", -float(outputs["loss"])), ("batch_elbo_sum", float(out["elbo"].sum())),
                           ("batch_entsum_sum", float(entsum)), ("batch_kl_sums", kl.sum(0).numpy())):
            self.rows[key].append(value)

    def on_train_epoch_end(self, trainer, pl_module):
        self.val_elbo.append(float(trainer.callback_metrics["entropy/val/elbo"]))
        self.gate_open.append(next(cb for cb in trainer.callbacks if isinstance(cb, EntropyConvergence)).gate_open)

    def run(self, dim):
        arrays = {key: np.asarray(value) for key, value in self.rows.items()}
        val = np.array(self.val_elbo)
        return {"name": "live", "config": {"family": "live", "D": dim}, **arrays, "val_elbo": val, "test_elbo": val}


def test_the_callback_stops_where_the_benchmark_replay_of_its_rule_stops(tmp_path):
    """benchmarks/stopping.py chose the rule by replaying it offline on recorded batches; the callback must be the
    same rule: the gate opens at the same epoch and it stops where the replay stops (patience from the first
    validation after the gate's epoch, which validated before the gate opened)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from _stopping_rules import GateConfig, Replay, as_record, gate_epoch, gate_rule, patience_stop

    cfg = GateConfig(window=16, z=2.0, tol=0.1, tol_unit="D", epochs=2, patience=1, form="ci")
    torch.manual_seed(0)
    x = monitor_data(400, seed=3)
    model = GaussianVAE(D, 2, kind="vae1", hidden_dims=(16,), lr=3e-3)
    record = BatchRecord()
    convergence = EntropyConvergence(gap_tolerance=cfg.tol, gap_z=cfg.z, gate_epochs=cfg.epochs,
                                     patience=cfg.patience)
    trainer = monitor_trainer(tmp_path, [EntropyMonitor(gap_window=cfg.window), convergence, record], max_epochs=80)
    trainer.fit(model, datamodule=TensorDataModule(x[:320], x[320:], batch_size=32, shuffle=False))
    replay = Replay(as_record(record.run(D)), (cfg,))
    opened = gate_epoch(replay, cfg)
    assert opened is not None and convergence.gate_open and convergence.stopped_epoch is not None
    assert record.gate_open.index(True) == opened
    assert convergence.stopped_epoch == gate_rule(replay, cfg)
    # the run tells the first check apart: counting the gate epoch's own validation would stop elsewhere
    assert patience_stop(np.array(record.val_elbo), opened, cfg.patience) != convergence.stopped_epoch


class _Metrics:
    """The part of a Trainer that EntropyConvergence's gate reads: the published keys."""

    def __init__(self):
        self.current_epoch, self.callback_metrics = 0, {}


def _gate(convergence, epochs):
    """Feed the gate one (window gap, its standard error, objective verdict) per training epoch, D = 4; the
    warnings said."""
    trainer = _Metrics()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for epoch, (gap, se, verdict) in enumerate(epochs):
            trainer.current_epoch = epoch
            trainer.callback_metrics = {"entropy/train/gap_window": torch.tensor(gap),
                                        "entropy/train/gap_window_se": torch.tensor(se),
                                        "entropy/train/data_dim": torch.tensor(4.0),
                                        "entropy/train/objective_is_elbo": torch.tensor(verdict),
                                        "entropy/train/objective_elbo_coef": torch.tensor(0.9),
                                        "entropy/train/objective_kl_coef": torch.tensor(0.1)}
            convergence._update_gate(trainer)
    return [str(w.message) for w in record]


@pytest.mark.parametrize(("epochs", "closed", "opens"), [
    ([(0.1, 0.0, 1.0)] * 3, 3, True),
    ([(0.1, 0.0, 1.0)] * 2 + [(5.0, 0.0, 1.0)] + [(0.1, 0.0, 1.0)] * 2, 2, False),  # a gap too large restarts
    ([(0.1, 0.0, 1.0)] * 2 + [(0.1, 0.0, 0.0)] + [(0.1, 0.0, 1.0)] * 2, 2, False),  # not the ELBO restarts
    ([(0.1, 0.0, 1.0)] * 2 + [(0.1, 0.0, math.nan)] + [(0.1, 0.0, 1.0)] * 2, 2, False),  # cannot tell restarts
    ([(0.1, 0.0, 1.0)] * 2 + [(math.nan, math.nan, 1.0)] + [(0.1, 0.0, 1.0)] * 2, 2, False),  # window not full
])
def test_the_gate_counts_epochs_in_a_row_whose_gap_is_small_and_whose_loss_is_the_elbo(epochs, closed, opens):
    convergence = EntropyConvergence(gap_tolerance=0.5, gap_z=2.0, gate_epochs=3)
    _gate(convergence, epochs)
    assert convergence.closed_epochs == closed and convergence.gate_open is opens


@pytest.mark.parametrize(("verdicts", "said"), [
    ([math.nan] * (UNKNOWN_EPOCHS_BEFORE_WARNING - 1), False),
    ([math.nan] * UNKNOWN_EPOCHS_BEFORE_WARNING, True),
    ([math.nan] * (UNKNOWN_EPOCHS_BEFORE_WARNING - 1) + [0.0, math.nan], False),  # a judged epoch restarts the count
    ([math.nan] * (UNKNOWN_EPOCHS_BEFORE_WARNING - 1) + [1.0, math.nan], False),
])
def test_cannot_tell_is_said_after_several_epochs_in_a_row_that_cannot(verdicts, said):
    messages = _gate(EntropyConvergence(gap_tolerance=0.01, gap_z=2.0), [(0.5, 0.1, v) for v in verdicts])
    assert any("cannot tell whether the training loss" in m for m in messages) is said
