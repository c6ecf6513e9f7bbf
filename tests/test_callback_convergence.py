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
from helpers import TRAIN_24, VAL, D, FixedVariance, MonitorVAE, monitor_data, monitor_loader, monitor_trainer
from lightning.pytorch.callbacks import EarlyStopping, GradientAccumulationScheduler, ModelCheckpoint

from lightning_entropy_vae import EntropyConvergence, EntropyMonitor
from lightning_entropy_vae.callbacks._objective import ObjectiveCheck
from lightning_entropy_vae.data import TensorDataModule
from lightning_entropy_vae.models import GaussianVAE

OPEN = {"gap_tolerance": 1e6, "gate_epochs": 2}  # a gate that opens after two epochs


def _fit(tmp_path, model, callbacks, val=True, max_epochs=8, **kwargs):
    trainer = monitor_trainer(tmp_path, callbacks, max_epochs=max_epochs, **kwargs)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(model, monitor_loader(TRAIN_24), monitor_loader(VAL) if val else None)
    return trainer, [str(w.message) for w in record]


# ------------------------------------------------------------------------------------------ the rule
@pytest.mark.parametrize("patience", [1, 3])
def test_gate_then_patience_on_the_validation_elbo(tmp_path, patience):
    """lr = 0: the validation ELBO never improves after its first check; the gate opens at epoch 1."""
    convergence = EntropyConvergence(**OPEN, patience=patience)
    trainer, _ = _fit(tmp_path, MonitorVAE(lr=0.0, sample=False), [EntropyMonitor(), convergence])
    assert convergence.gate_open and convergence.stopped_epoch == 1 + patience
    assert trainer.current_epoch == 2 + patience
    assert "did not improve" in convergence.stop_reason and f"for {patience} checks" in convergence.stop_reason


def test_a_gap_above_the_tolerance_never_opens_the_gate(tmp_path):
    convergence = EntropyConvergence(gap_tolerance=1e-9, gate_epochs=1, patience=1)
    trainer, _ = _fit(tmp_path, MonitorVAE(lr=0.0, sample=False), [EntropyMonitor(), convergence], max_epochs=4)
    assert not convergence.gate_open and convergence.stop_reason is None and trainer.current_epoch == 4


def test_the_gate_needs_consecutive_epochs(tmp_path):
    convergence = EntropyConvergence(gap_tolerance=1e6, gate_epochs=5, patience=1)
    trainer, _ = _fit(tmp_path, MonitorVAE(lr=0.0, sample=False), [EntropyMonitor(), convergence], max_epochs=4)
    assert convergence.closed_epochs == 4 and not convergence.gate_open and trainer.current_epoch == 4


def test_improvements_reset_the_patience(tmp_path):
    """A model that keeps learning keeps improving: with patience 2 it runs to the budget."""
    torch.manual_seed(0)
    convergence = EntropyConvergence(**OPEN, patience=2)
    trainer, _ = _fit(tmp_path, MonitorVAE(lr=0.02, sample=False), [EntropyMonitor(), convergence], max_epochs=6)
    assert convergence.gate_open and convergence.stop_reason is None and trainer.current_epoch == 6
    assert convergence.best == pytest.approx(float(trainer.callback_metrics["entropy/val/elbo"]))


def test_monitor_stage_train_uses_the_training_elbo(tmp_path):
    convergence = EntropyConvergence(**OPEN, patience=2, monitor_stage="train")
    _fit(tmp_path, MonitorVAE(lr=0.0, sample=False), [EntropyMonitor(stages=("train",)), convergence], val=False)
    assert convergence.stopped_epoch == 3 and "entropy/train/elbo" in convergence.stop_reason


def test_stopping_threshold_and_check_finite(tmp_path):
    convergence = EntropyConvergence(gap_tolerance=1e-9, stopping_threshold=-1e9)  # reached at the first check
    _fit(tmp_path, MonitorVAE(lr=0.0, sample=False), [EntropyMonitor(), convergence])
    assert convergence.stopped_epoch == 0 and "stopping threshold" in convergence.stop_reason

    class NaNValidation(MonitorVAE):
        def validation_step(self, batch, batch_idx):
            out = super().validation_step(batch, batch_idx)
            out["elbo"] = out["elbo"] + float("inf")
            return out

    convergence = EntropyConvergence(gap_tolerance=1e-9)
    _fit(tmp_path, NaNValidation(lr=0.0), [EntropyMonitor(), convergence])
    assert convergence.stopped_epoch == 0 and "is not finite" in convergence.stop_reason


def test_works_behind_the_monitor_with_stock_callbacks_and_says_so_when_placed_before(tmp_path):
    """It reads the epoch's published keys, so it must check after the monitor: placed before, a clear error."""
    convergence = EntropyConvergence(**OPEN, patience=1)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="entropy/val/elbo", mode="max")
    _fit(tmp_path, MonitorVAE(lr=0.0, sample=False), [EntropyMonitor(), convergence, checkpoint],
         enable_checkpointing=True)
    assert convergence.stopped_epoch == 2
    assert checkpoint.best_model_path  # the documented restore recipe
    message = ("Expected EntropyConvergence after the EntropyMonitor whose keys it reads in the Trainer's callbacks,"
               " but got it at position 0 and the monitor at 1. Pass Trainer(callbacks=[EntropyMonitor(),"
               " EntropyConvergence()]); where the monitor comes from LightningModule.configure_callbacks (Lightning"
               " appends those after the Trainer's), return EntropyConvergence from there too, after the monitor.")
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        _fit(tmp_path, MonitorVAE(lr=0.0, sample=False), [EntropyConvergence(**OPEN), EntropyMonitor()])


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
    ({"gap_tolerance": 0}, ValueError, r"Expected `gap_tolerance` to be a positive number, but got 0"),
    ({"gate_epochs": 0}, ValueError, r"Expected `gate_epochs` to be an int >= 1, but got 0"),
    ({"patience": 1.5}, ValueError, r"Expected `patience` to be an int >= 1, but got 1.5"),
    ({"min_delta": -1}, ValueError, r"Expected `min_delta` to be a non-negative number, but got -1"),
    ({"monitor_stage": "test"}, ValueError, r"Expected `monitor_stage` to be 'val' or 'train', but got 'test'"),
    ({"stopping_threshold": "x"}, TypeError, r"Expected `stopping_threshold` to be a number or None, but got 'x'"),
])
def test_constructor_checks(kwargs, error, match):
    with pytest.raises(error, match=match):
        EntropyConvergence(**kwargs)


# ------------------------------------------------------------------------------- the objective guard
def _objective(losses, elbos, kls, sizes):
    check = ObjectiveCheck()
    for loss, e, k, n in zip(losses, elbos, kls, sizes):
        check.add(-loss, e, k, n)
    verdict = check.verdict()
    return verdict.is_elbo, verdict.why


def _batches(seed=0, k=12, n=32):
    gen = torch.Generator().manual_seed(seed)
    ll = -50 + 3 * torch.randn(k, generator=gen, dtype=torch.float64)
    kl = 10 + 1.5 * torch.randn(k, generator=gen, dtype=torch.float64)
    return ll.tolist(), kl.tolist(), [n] * (k - 1) + [n // 2]


@pytest.mark.parametrize(("name", "loss", "expected"), [
    ("mean", lambda ll, kl, n: -(ll - kl), True),
    ("sum", lambda ll, kl, n: -(ll - kl) * n, True),
    ("mean + constant", lambda ll, kl, n: -(ll - kl) + 37.5, True),
    ("bf16 rounded", lambda ll, kl, n: float(torch.tensor(-(ll - kl)).bfloat16()), True),
    ("beta = 0.1", lambda ll, kl, n: -(ll - 0.1 * kl), False),
    ("beta = 0.5, summed", lambda ll, kl, n: -(ll - 0.5 * kl) * n, False),
    ("scaled by 1/(10 H)", lambda ll, kl, n: -(ll - kl) / 160, False),
])
def test_objective_check_of_loss_conventions(name, loss, expected):
    ll, kl, sizes = _batches()
    losses = [loss(a, b, n) for a, b, n in zip(ll, kl, sizes)]
    verdict, why = _objective(losses, [(a - b) * n for a, b, n in zip(ll, kl, sizes)],
                              [b * n for b, n in zip(kl, sizes)], sizes)
    assert verdict is expected, why


def test_objective_check_needs_five_batches():
    verdict, why = _objective([1.0] * 4, [-1.0] * 4, [1.0] * 4, [4] * 4)
    assert verdict is None and why == "4 batch(es) with a loss: too few to tell"


def _gaussian_vae_fit(tmp_path, convergence, precision="32-true", callbacks=(), **model_kwargs):
    torch.manual_seed(0)
    model = GaussianVAE(D, 2, kind="vae1", hidden_dims=(8,), lr=1e-2, **model_kwargs)
    trainer = monitor_trainer(tmp_path, [EntropyMonitor(), convergence, *callbacks], max_epochs=6,
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
    # the guard is the reason: without it the same run stops
    convergence = EntropyConvergence(**OPEN, patience=1, require_elbo_objective=False)
    trainer, messages = _gaussian_vae_fit(tmp_path, convergence, **model_kwargs)
    assert convergence.stopped_epoch is not None


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


def test_a_summed_loss_with_a_constant_offset_of_shape_one_counts(tmp_path):
    torch.manual_seed(0)
    convergence = EntropyConvergence(**OPEN, patience=1)
    _trainer, messages = _fit(tmp_path, OffsetAndSummed(lr=0.01), [EntropyMonitor(), convergence])
    assert convergence.gate_open and not any("not the beta = 1 ELBO" in m for m in messages)


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
    convergence = EntropyConvergence(**OPEN, patience=1)
    trainer, messages = _fit(tmp_path, ManualNoLoss(lr=0.0, sample=False), [EntropyMonitor(), convergence],
                             max_epochs=6)  # said after 5 epochs that cannot tell (short epochs pool 5 batches)
    assert not convergence.gate_open and trainer.current_epoch == 6
    assert sum("cannot tell whether the training loss is the beta = 1 ELBO (`entropy/train/objective_is_elbo` is"
               " NaN: the training steps return no `loss`" in m for m in messages) == 1
    convergence = EntropyConvergence(**OPEN, patience=1, require_elbo_objective=False)
    _fit(tmp_path, ManualNoLoss(lr=0.0, sample=False), [EntropyMonitor(), convergence], max_epochs=4)
    assert convergence.stopped_epoch == 2


def test_a_fixed_decoder_variance_is_said_once(tmp_path):
    monitor, convergence = EntropyMonitor(), EntropyConvergence()
    _, messages = _fit(tmp_path, FixedVariance(lr=0.05), [monitor, convergence], max_epochs=3)
    assert monitor.fixed_decoder_variance is True
    assert sum("the decoder variance is fixed" in m and "EntropyConvergence's gate will not open" in m
               for m in messages) == 1
    _, messages = _fit(tmp_path, MonitorVAE(lr=0.05), [EntropyMonitor(), EntropyConvergence()], max_epochs=2)
    assert not any("decoder variance is fixed" in m for m in messages)

# ----------------------------------------------------------------------------------------- the loop
def test_validation_every_other_epoch_counts_validation_checks(tmp_path):
    """The gate counts training epochs; the patience counts validation runs (epochs 1, 3, 5, ...)."""
    convergence = EntropyConvergence(**OPEN, patience=2)
    _trainer, _ = _fit(tmp_path, MonitorVAE(lr=0.0, sample=False), [EntropyMonitor(), convergence], max_epochs=10,
                      check_val_every_n_epoch=2)
    assert convergence.stopped_epoch == 5  # checks at epochs 1 (best), 3 (wait 1), 5 (wait 2)


def test_no_validation_warns_that_it_cannot_stop(tmp_path):
    convergence = EntropyConvergence(**OPEN, patience=1)
    trainer, messages = _fit(tmp_path, MonitorVAE(lr=0.0, sample=False), [EntropyMonitor(), convergence], val=False,
                             max_epochs=4)
    assert convergence.stop_reason is None and trainer.current_epoch == 4
    assert sum("no validation has run in this fit, so it cannot stop" in m for m in messages) == 1


def test_a_reused_instance_starts_each_fit_afresh(tmp_path):
    convergence, monitor = EntropyConvergence(**OPEN, patience=1), EntropyMonitor()
    _fit(tmp_path, MonitorVAE(lr=0.0, sample=False), [monitor, convergence])
    assert convergence.stopped_epoch == 2
    trainer, _ = _fit(tmp_path, MonitorVAE(lr=0.0, sample=False), [monitor, convergence])
    assert convergence.stopped_epoch == 2 and trainer.current_epoch == 3  # not stopped at once by stale state


def test_after_validate_a_fit_without_validation_does_not_watch_a_stale_stage(tmp_path):
    convergence, monitor = EntropyConvergence(**OPEN, patience=1, monitor_stage="train"), EntropyMonitor()
    trainer = monitor_trainer(tmp_path, [monitor, convergence], max_epochs=4)
    trainer.validate(MonitorVAE(lr=0.0, sample=False), monitor_loader(VAL))
    trainer = monitor_trainer(tmp_path, [monitor, convergence], max_epochs=8)
    trainer.fit(MonitorVAE(lr=0.0, sample=False), monitor_loader(TRAIN_24))
    assert convergence.stopped_epoch == 2


def test_fast_dev_run_never_counts(tmp_path):
    convergence = EntropyConvergence(gap_tolerance=1e6, gate_epochs=1, patience=1)
    _fit(tmp_path, MonitorVAE(lr=0.0, sample=False), [EntropyMonitor(), convergence], fast_dev_run=True)
    assert convergence.closed_epochs == 0 and convergence.stop_reason is None


def test_resume_keeps_the_state_and_a_mid_epoch_resume_does_not_count_its_partial_epoch(tmp_path):
    torch.manual_seed(0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=9, save_top_k=-1)
    first = EntropyConvergence(gap_tolerance=1e6, gate_epochs=4, patience=1)
    _fit(tmp_path, MonitorVAE(lr=0.0, sample=False), [EntropyMonitor(), first, checkpoint], max_epochs=2,
         enable_checkpointing=True)
    assert first.closed_epochs == 2
    path = tmp_path / "ckpt" / "epoch=1-step=9.ckpt"  # halfway through epoch 1 (6 batches per epoch)
    state = torch.load(path, weights_only=True)["callbacks"]
    assert {"closed_epochs": 1, "gate_open": False} .items() <= next(
        v for k, v in state.items() if k.startswith("EntropyConvergence")).items()
    resumed = EntropyConvergence(gap_tolerance=1e6, gate_epochs=4, patience=1)
    trainer = monitor_trainer(tmp_path, [EntropyMonitor(), resumed], max_epochs=4)
    trainer.fit(MonitorVAE(lr=0.0, sample=False), monitor_loader(TRAIN_24), monitor_loader(VAL), ckpt_path=path)
    # epoch 1 resumed at batch 3: not a whole epoch, so only epochs 2 and 3 count after the restored 1
    assert resumed.closed_epochs == 3 and not resumed.gate_open


def test_stock_early_stopping_still_monitors_the_published_keys(tmp_path):
    stopper = EarlyStopping(monitor="entropy/val/abs_rel_gap", mode="min", stopping_threshold=1e6)
    trainer, _ = _fit(tmp_path, MonitorVAE(lr=0.0, sample=False), [EntropyMonitor(), stopper])
    assert trainer.current_epoch == 1 and math.isfinite(float(trainer.callback_metrics["entropy/val/abs_rel_gap"]))


# ------------------------------------------------------------------- the benchmark's rule, replayed
class Published(pl.Callback):
    """The per-epoch values the rule reads, as published (placed after the monitor)."""

    def __init__(self):
        self.rel_gap, self.val_elbo = [], []

    def on_train_epoch_end(self, trainer, pl_module):
        metrics = trainer.callback_metrics
        self.rel_gap.append(float(metrics["entropy/train/rel_gap"]))
        self.val_elbo.append(float(metrics["entropy/val/elbo"]))


def test_the_callback_stops_where_the_benchmark_replay_of_its_rule_stops(tmp_path):
    """benchmarks/stopping.py chose the rule by replaying it offline; the callback must be the same rule."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from _stopping_rules import early_stopping

    torch.manual_seed(0)
    x = monitor_data(400, seed=3)
    model = GaussianVAE(D, 2, kind="vae1", hidden_dims=(16,), lr=3e-3)
    published = Published()
    convergence = EntropyConvergence(gap_tolerance=0.05, gate_epochs=3, patience=3)
    trainer = monitor_trainer(tmp_path, [EntropyMonitor(), published, convergence], max_epochs=80)
    trainer.fit(model, datamodule=TensorDataModule(x[:320], x[320:], batch_size=32, shuffle=False))
    history = {"train_rel_gap": np.array(published.rel_gap), "val_elbo": np.array(published.val_elbo)}
    replayed = early_stopping(history, "val_elbo", patience=3, gate=0.05, mode="arm", consecutive=3)
    assert convergence.gate_open and replayed is not None
    assert convergence.stopped_epoch == replayed


class _Metrics:
    """The part of a Trainer that EntropyConvergence's gate reads: whole epochs and the published keys."""

    def __init__(self):
        self.num_training_batches, self.current_epoch, self.callback_metrics = 1, 0, {}


@pytest.mark.parametrize(("verdicts", "said"), [
    ([math.nan] * 4, False),
    ([math.nan] * 5, True),
    ([math.nan] * 4 + [0.0, math.nan], False),  # a judged epoch (not the ELBO) restarts the count
    ([math.nan] * 4 + [1.0, math.nan], False),
])
def test_cannot_tell_is_said_after_five_epochs_in_a_row_that_cannot(verdicts, said):
    convergence = EntropyConvergence()
    trainer = _Metrics()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for epoch, verdict in enumerate(verdicts):
            trainer.current_epoch = epoch
            trainer.callback_metrics = {"entropy/train/rel_gap": torch.tensor(0.5),
                                        "entropy/train/objective_is_elbo": torch.tensor(verdict),
                                        "entropy/train/objective_elbo_coef": torch.tensor(0.9),
                                        "entropy/train/objective_kl_coef": torch.tensor(0.1)}
            convergence._epoch_batches = 1
            convergence._update_gate(trainer)
    assert any("cannot tell whether the training loss" in str(w.message) for w in record) is said
