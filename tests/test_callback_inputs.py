"""EntropyMonitor: bad step outputs, NaN batches, ``extract=``, constructor checks, host syncs."""

import collections
import math
import re

import pytest
import torch
from helpers import (
    TRAIN,
    VAL,
    MonitorVAE,
    assert_logged_equal,
    monitor_data,
    monitor_loader,
    monitor_reference,
    monitor_trainer,
)
from lightning.pytorch.loggers import CSVLogger

from lightning_entropy_vae import EntropyMonitor


def _fit(tmp_path, model, callback, val=True, **kwargs):
    trainer = monitor_trainer(tmp_path, [callback], max_epochs=1, **kwargs)
    trainer.fit(model, monitor_loader(TRAIN), monitor_loader(VAL) if val else None)
    return trainer


# --------------------------------------------------------------------------------- bad step outputs
class BareLossVAE(MonitorVAE):
    """training_step returns only the loss tensor; the full outputs stay in ``self.last``."""

    def training_step(self, batch, batch_idx):
        self.last = super().training_step(batch, batch_idx)
        return self.last["loss"]

    def validation_step(self, batch, batch_idx):
        self.last = super().validation_step(batch, batch_idx)
        return self.last


def test_bare_loss_raises_with_the_return_to_write(tmp_path):
    with pytest.raises(ValueError) as info:
        _fit(tmp_path, BareLossVAE(), EntropyMonitor())
    message = str(info.value)
    for piece in ("on_train_batch_end", "BareLossVAE", "`enc_logvar`", '"enc_mean"', '"dec_logvar"',
                  "return {", "but got `loss`"):
        assert piece in message, piece


def test_extract_reads_outputs_of_a_module_returning_a_bare_loss(tmp_path):
    torch.manual_seed(0)
    model = BareLossVAE(lr=0.05)
    trainer = _fit(tmp_path, model, EntropyMonitor(extract=lambda module, outputs, batch: module.last))
    assert_logged_equal(trainer.callback_metrics, "entropy/train", monitor_reference(model.train_epoch(0)))
    assert_logged_equal(trainer.callback_metrics, "entropy/val", monitor_reference(model.val_epoch(0)))


class NoneValidation(MonitorVAE):
    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)


def test_validation_step_returning_none(tmp_path):
    with pytest.raises(ValueError, match=r"(?s)on_validation_epoch_end of NoneValidation.*`validation_step`"
                                         r".*but got None from all 2 batches of the epoch"
                                         r".*EntropyMonitor\(stages=\('train',\)\)"):
        _fit(tmp_path, NoneValidation(), EntropyMonitor())
    # monitoring the training stage only is the way out
    trainer = _fit(tmp_path, NoneValidation(), EntropyMonitor(stages=("train",)))
    assert "entropy/train/sum" in trainer.callback_metrics
    assert not any(key.startswith("entropy/val") for key in trainer.callback_metrics)


class LossValidation(MonitorVAE):
    def validation_step(self, batch, batch_idx):
        return super().validation_step(batch, batch_idx)["loss"]


class NoEncoderMeanInValidation(MonitorVAE):
    def validation_step(self, batch, batch_idx):
        out = super().validation_step(batch, batch_idx)
        del out["enc_mean"]
        return out


@pytest.mark.parametrize(("model_class", "match"), [
    (LossValidation, r"(?s)on_validation_batch_end of LossValidation.*`validation_step`.*but got a Tensor"),
    (NoEncoderMeanInValidation, r"on_validation_batch_end of NoEncoderMeanInValidation\) needs `enc_mean` and"
                                r" `enc_logvar`"),
])
def test_a_wrong_validation_return_fails_in_the_sanity_check_before_training(tmp_path, model_class, match):
    model = model_class()
    with pytest.raises(ValueError, match=match):
        _fit(tmp_path, model, EntropyMonitor(), num_sanity_val_steps=2)
    assert model.train_log == []  # not one training step ran


def test_a_sanity_check_whose_steps_all_return_none_warns_and_the_first_validation_epoch_decides(tmp_path):
    """None is Lightning's skip: two sanity batches cannot tell a step that never returns the vocabulary from one that
    skips them (a DDP rank's empty share: test_callback_defects.py), so the sanity check warns; a validation epoch
    of None only is the error."""
    model = NoneValidation()
    warned = re.escape("on_validation_epoch_end of NoneValidation): `validation_step` returned None in all 2 batches"
                       " of Lightning's sanity check; the first validation epoch fails")
    with pytest.warns(UserWarning, match=warned), pytest.raises(ValueError, match="but got None from all 2 batches"
                                                                                   " of the epoch"):
        _fit(tmp_path, model, EntropyMonitor(), num_sanity_val_steps=2)
    assert model.train_log  # the training epoch ran before the validation epoch failed


def test_a_sanity_check_of_steps_that_return_none_only_sometimes_passes(tmp_path):
    class SometimesNone(MonitorVAE):
        def validation_step(self, batch, batch_idx):
            out = super().validation_step(batch, batch_idx)
            return None if self.trainer.sanity_checking and batch_idx == 0 else out

    trainer = _fit(tmp_path, SometimesNone(lr=0.05), EntropyMonitor(), num_sanity_val_steps=2)
    assert "entropy/val/elbo" in trainer.callback_metrics


class Edited(MonitorVAE):
    """Applies ``edit(out)`` to what the steps return."""

    def __init__(self, edit, **kwargs):
        super().__init__(**kwargs)
        self.edit = edit

    def _returned(self, out):
        return self.edit(super()._returned(out))


def _without(key):
    def edit(out):
        del out[key]
        return out
    return edit


def _replace(key, make):
    def edit(out):
        out[key] = make(out)
        return out
    return edit


@pytest.mark.parametrize(("edit", "match"), [
    (_without("dec_logvar"),
     r"(?s)on_train_batch_end of Edited\) needs `dec_logvar`.*but got `loss`, `x`.*return \{"),
    (_without("enc_logvar"), r"(?s)needs `enc_logvar`.*but got .*`enc_mean`"),
    (_without("enc_mean"), r"needs `enc_mean` and `enc_logvar`"),
    (lambda out: {k: out[k] for k in ("loss", "x", "enc_mean", "enc_logvar", "dec_logvar")},
     r"needs `elbo` \(B,\), or `x` and the decoder's `dec_mean` \(Gaussian\), `dec_logits`/`dec_probs` \(Bernoulli\),"
     r" `dec_class_logits` \(categorical\) or `likelihood` to compute it, but got `loss`, `x`"),
    (lambda out: {k: out[k] for k in ("loss", "enc_mean", "enc_logvar", "dec_logvar")},
     r"needs `x` or `dec_mean` to know the batch size"),
    (_replace("enc_logvar", lambda out: out["enc_logvar"].repeat(1, 2)),
     re.escape("Expected `enc_logvar` of shape (B, H) matching `enc_mean` (4, 2), but got (4, 4).")),
    (_replace("dec_logvar", lambda out: torch.zeros(3, requires_grad=True)),
     re.escape("Expected `dec_logvar` of shape () (one variance), (4,) (one per dimension), (B, 1) = (4, 1) (one"
               " per sample), (B, *data) = (4, 4) or (S, B, *data), matching `x` (4, 4), but got (3,).")),
    (_replace("elbo", lambda out: out["elbo"][:2]),
     re.escape("expected `elbo` of shape (B,) = (4,), one ELBO per sample, but got (2,)")),
    (_replace("elbo", lambda out: out["elbo"].mean()),
     r"expected `elbo` of shape \(B,\) = \(4,\).* but got \(\)"),
    (_replace("x", lambda out: out["x"][:3]), re.escape("Expected `dec_mean` of shape (B, *data) = (3, 4)")),
    (_replace("enc_logvar", lambda out: out["enc_logvar"].long()),
     r"Expected `enc_logvar` to be a floating-point"),
])
def test_missing_keys_and_wrong_shapes_raise(tmp_path, edit, match):
    with pytest.raises((ValueError, TypeError), match=match):
        _fit(tmp_path, Edited(edit), EntropyMonitor(stages=("train",)), val=False)


class DropsAfterFirstBatch(MonitorVAE):
    """The first training batch returns ``key`` (``prior_logvar`` is added for it); later ones do not."""

    def __init__(self, key, **kwargs):
        super().__init__(**kwargs)
        self.key, self.calls = key, 0

    def _returned(self, out):
        out = super()._returned(out)
        if self.key == "prior_logvar":
            out["prior_logvar"] = torch.zeros(out["enc_logvar"].shape[-1])
        self.calls += 1
        if self.calls > 1:
            del out[self.key]
        return out


@pytest.mark.parametrize("key", ["elbo", "prior_logvar", "enc_mean"])
def test_key_missing_after_the_first_batch_raises(tmp_path, key):
    message = (rf"on_train_batch_end of DropsAfterFirstBatch\) expected `{key}` in every batch's output, as in"
               r" the stage's first batch, but got the keys \['dec_logvar', ")
    with pytest.raises(ValueError, match=message):
        _fit(tmp_path, DropsAfterFirstBatch(key), EntropyMonitor(stages=("train",)), val=False)


# -------------------------------------------------------------------------------------- NaN batches
def test_nan_strategy_error_names_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"on_train_batch_end of MonitorVAE\) got non-finite values"
                                         r" \(NaN or Inf\) in `enc_logvar` in a batch since the last logging step"
                                         r" \(nan_strategy='error'\)"):
        _fit(tmp_path, MonitorVAE(nan_batch=(0, 2)), EntropyMonitor(nan_strategy="error"))


def test_nan_batch_is_skipped_and_counted(tmp_path):
    torch.manual_seed(0)
    model = MonitorVAE(lr=0.05, nan_batch=(0, 2))
    trainer = _fit(tmp_path, model, EntropyMonitor())
    metrics = trainer.callback_metrics
    assert float(metrics["entropy/train/skipped_batches"]) == 1.0
    assert float(metrics["entropy/val/skipped_batches"]) == 0.0
    kept = [e for e in model.train_epoch(0) if e["batch_idx"] != 2]
    assert len(kept) == 3 and torch.isnan(model.train_epoch(0)[2]["enc_logvar"]).any()
    assert_logged_equal(metrics, "entropy/train", monitor_reference(kept))
    assert_logged_equal(metrics, "entropy/val", monitor_reference(model.val_epoch(0)))


# ------------------------------------------------------------------------------ constructor checks
@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"stages": ()}, ValueError, r"Expected `stages` to be a non-empty subset of \('train', 'val', 'test'\), but"),
    ({"stages": ("train", "predict")}, ValueError, r"non-empty subset .* but got \('train', 'predict'\)"),
    ({"collapse_criterion": "mean"}, ValueError, r"`collapse_criterion` to be one of .* but got 'mean'"),
    ({"collapse_threshold": "high"}, TypeError, r"^Expected `collapse_threshold` to be a finite number or None, but"
                                                r" got 'high'\.$"),
    ({"collapse_threshold": True}, TypeError, r"^Expected `collapse_threshold` to be a finite number or None, but got"
                                              r" True\.$"),
    ({"collapse_threshold": math.nan}, ValueError, r"^Expected `collapse_threshold` to be a finite number or None, but"
                                                   r" got nan\.$"),
    ({"rel_gap_floor": 0.0}, ValueError, r"Expected `rel_gap_floor` to be a positive number, but got 0.0"),
    ({"rel_gap_floor": True}, TypeError, r"Expected `rel_gap_floor` to be a positive number, but got True"),
    ({"rel_gap_floor": math.inf}, ValueError, r"Expected `rel_gap_floor` to be a positive number, but got inf"),
    ({"ema_decay": 1.0}, ValueError, r"^Expected `ema_decay` to be a number in \[0, 1\), but got 1.0\.$"),
    ({"ema_decay": "0.9"}, TypeError, r"^Expected `ema_decay` to be a number in \[0, 1\), but got '0.9'\.$"),
    ({"ema_decay": math.nan}, ValueError, r"^Expected `ema_decay` to be a number in \[0, 1\), but got nan\.$"),
    ({"gap_window": 9}, ValueError, r"Expected `gap_window` to be an int >= 10 \(training batches\), but got 9"),
    ({"gap_window": True}, TypeError, r"Expected `gap_window` to be an int >= 10 \(training batches\), but got True"),
    ({"gap_window": 32.0}, TypeError, r"Expected `gap_window` to be an int >= 10 \(training batches\), but got 32.0"),
    ({"ema_decay": -0.1}, ValueError, r"Expected `ema_decay` to be a number in \[0, 1\), but got -0.1"),
    ({"max_latents_as_scalars": -1}, ValueError, r"`max_latents_as_scalars` to be a non-negative int"),
    ({"max_latents_as_scalars": 2.0}, TypeError, r"`max_latents_as_scalars` to be a .* but got 2.0"),
    ({"log_bar_chart_every_n_epochs": -2}, ValueError, r"`log_bar_chart_every_n_epochs` to be a non-neg"),
    ({"extract": 3}, TypeError, r"Expected `extract` to be callable\(pl_module, outputs, batch\), but got 3"),
    ({"nan_strategy": "zero"}, ValueError, r"Expected `nan_strategy` to be one of \('skip', 'error'\)"),
])
def test_constructor_validates_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        EntropyMonitor(**kwargs)


def test_state_key_tells_instances_apart():
    assert EntropyMonitor().state_key != EntropyMonitor(stages=("train",)).state_key
    assert EntropyMonitor().state_key != EntropyMonitor(collapse_criterion="kl").state_key
    assert EntropyMonitor().state_key == EntropyMonitor().state_key


# -------------------------------------------------------------------------------------- host syncs
SYNCS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


def test_no_host_sync_in_batch_hooks_between_logging_steps(tmp_path, monkeypatch):
    """Every device-to-host read in the batch hooks is counted; only logging steps may have any."""
    every = 3
    counts = {"quiet": collections.Counter(), "logging": collections.Counter()}
    calls = collections.Counter()
    phase = [None]
    for name in SYNCS:
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):
            if phase[0] is not None:
                counts[phase[0]][_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)

    monitor = EntropyMonitor()

    def watch(hook, is_logging_step):
        original = getattr(monitor, hook)

        def wrapped(trainer, *args, **kwargs):
            phase[0] = "logging" if is_logging_step(trainer) else "quiet"
            calls[phase[0]] += 1
            try:
                return original(trainer, *args, **kwargs)
            finally:
                phase[0] = None

        monkeypatch.setattr(monitor, hook, wrapped)

    watch("on_train_batch_start", lambda trainer: False)
    watch("on_train_batch_end", lambda trainer: trainer.global_step % every == 0)  # after the optimizer step
    watch("on_validation_batch_end", lambda trainer: False)
    torch.manual_seed(0)
    model = MonitorVAE(lr=0.05)
    trainer = monitor_trainer(tmp_path, [monitor], max_epochs=2, log_every_n_steps=every,
                              logger=CSVLogger(tmp_path))  # without a logger, no step logging
    trainer.fit(model, monitor_loader(monitor_data(28, seed=3)), monitor_loader(VAL))  # 7 batches per epoch
    assert calls["quiet"] == 2 * 7 + 2 * 7 - 4 + 2 * 2 and calls["logging"] == 4
    assert sum(counts["quiet"].values()) == 0, dict(counts["quiet"])
    assert sum(counts["logging"].values()) > 0  # the spies do see the syncs of a logging step
    assert "entropy/train/sum" in trainer.callback_metrics
