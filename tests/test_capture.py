"""Capture: forward hooks feed EntropyMonitor(extract=...) from the step's own forward pass.

The modules here return only a loss (as a lightning-bolts VAE does) or nothing; what they computed is
recorded by ``MonitorVAE`` and recomputed in float64 by ``helpers.monitor_reference``.
"""

import pytest
import torch
from helpers import (
    TRAIN_24,
    VAL_12,
    MonitorVAE,
    assert_logged_equal,
    monitor_loader,
    monitor_reference,
    monitor_trainer,
)
from lightning.pytorch import Callback
from torch import nn

from lightning_entropy_vae import Capture, EntropyMonitor, capture


class LossOnlyVAE(MonitorVAE):
    """A bolts-style step: training returns the loss only, validation returns nothing (it would ``self.log``).

    ``skip``: training batch indices whose step returns None (Lightning skips them); they are not recorded.
    """

    def __init__(self, *args, skip=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.skip = set(skip)
        self.enc_calls = 0
        self.enc.register_forward_hook(lambda *_: setattr(self, "enc_calls", self.enc_calls + 1))

    def training_step(self, batch, batch_idx):
        if batch_idx in self.skip:
            self._outputs(batch[0])  # the forward pass runs (hooks fire), then the step gives up
            return None
        return super().training_step(batch, batch_idx)["loss"]

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        super().validation_step(batch, batch_idx, dataloader_idx)


def _capture(model, **kwargs):
    return Capture(enc_mean=(model.enc, lambda h: h.chunk(2, -1)[0]),
                   enc_logvar=(model.enc, lambda h: h.chunk(2, -1)[1]),
                   dec_mean=model.dec, dec_logvar=model.dec_logvar, **kwargs)


def test_loss_only_step_equals_recomputation(tmp_path):
    """The captured values are the step's own (no second forward pass), the learned dec_logvar as the forward
    pass saw it (lr > 0 moves it every step), for training and for validation."""
    torch.manual_seed(0)
    model = LossOnlyVAE(lr=0.05)
    cap = _capture(model)
    trainer = monitor_trainer(tmp_path, [EntropyMonitor(extract=cap)], num_sanity_val_steps=2)
    trainer.fit(model, monitor_loader(TRAIN_24), monitor_loader(VAL_12))
    assert_logged_equal(trainer.callback_metrics, "entropy/train", monitor_reference(model.train_epoch(1)))
    assert_logged_equal(trainer.callback_metrics, "entropy/val", monitor_reference(model.val_epoch(1)))
    # one encoder call per step: 2 epochs x (6 training + 3 validation batches) + 2 sanity batches
    assert model.enc_calls == 2 * (6 + 3) + 2
    assert cap._values == {}  # nothing kept after the batch
    model._outputs(TRAIN_24)  # the user's own evaluation after fit
    assert cap._values == {}  # between batches nothing is recorded
    hooks = len(model.enc._forward_hooks)
    cap.remove()
    assert len(model.enc._forward_hooks) == hooks - 1  # the model's own counting hook stays


class _Spy(Callback):
    """Reads what the capture holds at every validation batch end."""

    def __init__(self, cap):
        self.cap, self.seen = cap, []

    def on_validation_batch_end(self, *args, **kwargs):
        self.seen.append(dict(self.cap._values))


def test_no_recording_in_an_unmonitored_stage(tmp_path):
    torch.manual_seed(0)
    model = LossOnlyVAE(lr=0.05)
    cap = _capture(model)
    spy = _Spy(cap)
    trainer = monitor_trainer(tmp_path, [EntropyMonitor(stages=("train",), extract=cap), spy], max_epochs=1)
    trainer.fit(model, monitor_loader(TRAIN_24), monitor_loader(VAL_12))
    assert len(spy.seen) == 3 and all(seen == {} for seen in spy.seen)
    assert_logged_equal(trainer.callback_metrics, "entropy/train", monitor_reference(model.train_epoch(0)))


def test_skipped_batch_leaks_nothing(tmp_path):
    """A step that runs its forward pass and returns None: its records are dropped, the next batch reads its own."""

    torch.manual_seed(0)
    model = LossOnlyVAE(lr=0.05, skip={1, 4})
    trainer = monitor_trainer(tmp_path, [EntropyMonitor(stages=("train",), extract=_capture(model))], max_epochs=1)
    trainer.fit(model, monitor_loader(TRAIN_24))
    assert len(model.train_epoch(0)) == 4
    assert_logged_equal(trainer.callback_metrics, "entropy/train", monitor_reference(model.train_epoch(0)))
    assert float(trainer.callback_metrics["entropy/train/skipped_batches"]) == 2.0


# ------------------------------------------------------------------------------------------- units
def _modules():
    torch.manual_seed(0)
    return nn.Linear(4, 6), nn.Linear(3, 4)


def test_selectors_constants_renames_and_batch_x():
    torch.manual_seed(0)
    x, h = torch.randn(5, 4), torch.randn(5, 6)
    encoder_output = type("EncoderOutput", (), {"logvar": h[:, 3:]})()

    class Enc(nn.Module):
        def forward(self, x):
            return (h[:, :3], encoder_output)

    e = Enc()
    with Capture(enc_mean=(e, 0), enc_logvar=(e, lambda o: o[1].logvar), dec_mean="recon_x", dec_logvar=-1.0,
                 x="data") as cap:
        e(x)
        got = cap(None, {"loss": torch.tensor(1.0), "recon_x": x + 1, "z": h}, {"data": x})
    assert sorted(got) == ["dec_logvar", "dec_mean", "enc_logvar", "enc_mean", "loss", "x"]
    assert torch.equal(got["enc_mean"], h[:, :3]) and torch.equal(got["enc_logvar"], h[:, 3:])
    assert torch.equal(got["dec_mean"], x + 1) and got["x"] is x and got["dec_logvar"] == -1.0
    assert not e._forward_hooks  # removed at the end of the with block


def test_batch_x_defaults():
    cap = Capture()
    x = torch.zeros(2, 3)
    assert cap(None, None, x)["x"] is x
    assert cap(None, None, (x, torch.ones(2)))["x"] is x
    assert cap(None, None, {"x": x, "label": torch.ones(2)})["x"] is x  # a mapping's entry "x"
    assert "x" not in cap(None, {"elbo": torch.zeros(2)}, {"image": x})  # with an `elbo`, x is not needed
    assert capture(x=lambda b: b["image"])(None, None, {"image": x})["x"] is x


@pytest.mark.parametrize(("x", "batch", "message"), [
    (None, {"pixel_values": torch.zeros(2, 3), "label": [0, 1]},
     r"`x` has no default for this batch, a dict with keys \['pixel_values', 'label'\].*"
     r" Pass Capture\(x='pixel_values'\) if that entry holds the model's input, or Capture\(x=callable\(batch\)\)"),
    (0, {"pixel_values": torch.zeros(2, 3)},
     r"`x` selects 0 from the batch, but the batch is a dict with keys \['pixel_values'\] \(KeyError: 0\)\."
     r" Pass Capture\(x='pixel_values'\)"),
    ("image", (torch.zeros(2, 3), torch.ones(2)),
     r"`x` selects 'image' from the batch, but the batch is a tuple of 2 elements \(Tensor, Tensor\).*"
     r" Pass Capture\(x=0\)"),
    (None, [{"image": 1}], r"a list of 1 element \(dict\).* Pass Capture\(x=callable\(batch\)\)"),
])
def test_batch_x_errors_say_what_the_batch_is_and_what_to_pass(x, batch, message):
    with pytest.raises(ValueError, match=message):
        Capture(x=x)(None, None, batch)


class _Model(nn.Module):
    """A root module: the error names the hooked submodule by its attribute path."""

    def __init__(self, enc):
        super().__init__()
        self.enc = enc


class _TupleEnc(nn.Module):
    def forward(self, x):
        return x[:, :3], x[:, 3:]


@pytest.mark.parametrize(("selector", "output", "message"), [
    (5, "tuple", r"`enc_mean` selects 5 from the output of _TupleEnc `enc`, but that output is a tuple of 2"
                 r" elements \(Tensor, Tensor\) \(IndexError: tuple index out of range\)\. Select an int from 0 to 1"),
    ("mu", "tuple", r"`enc_mean` selects 'mu' from the output of _TupleEnc `enc`, but that output is a tuple of 2"
                    r" elements \(Tensor, Tensor\) \(AttributeError: 'tuple' object has no attribute 'mu'\)"),
    ("mu", "tensor", r"`enc_mean` selects 'mu' from the output of Linear `enc`, but that output is a Tensor of"
                     r" shape \(2, 6\).*hook the submodule alone"),
    (lambda o: o.mu, "tuple", r"`enc_mean` reads with <lambda>\(output\) the output of _TupleEnc `enc`"),
])
def test_a_selector_that_does_not_fit_names_key_module_and_output(selector, output, message):
    enc = _TupleEnc() if output == "tuple" else nn.Linear(4, 6)
    model = _Model(enc)
    cap = Capture(enc_mean=(enc, selector))
    enc(torch.randn(2, 6 if output == "tuple" else 4))  # the model's forward pass runs: the error comes at read
    with pytest.raises(ValueError, match=message):
        cap(model, {"loss": torch.tensor(1.0)}, None)
    enc(torch.randn(2, 6 if output == "tuple" else 4))
    cap.start_batch()  # a new batch forgets the failure of the last one
    assert cap._failed == {} and cap._values == {}
    cap.remove()


def test_a_selector_error_reaches_the_trainer(tmp_path):
    """In fit, the error is raised at the end of the batch, with the submodule's path in the LightningModule."""
    model = LossOnlyVAE()
    cap = Capture(enc_mean=(model.enc, "mu"), enc_logvar=(model.enc, 1), dec_mean=model.dec, dec_logvar=0.0)
    trainer = monitor_trainer(tmp_path, [EntropyMonitor(extract=cap, stages=("train",))])
    with pytest.raises(ValueError, match=r"`enc_mean` selects 'mu' from the output of \w+ `enc`, but that output is"
                                         r" a Tensor of shape \(4, \d+\)"):
        trainer.fit(model, monitor_loader(TRAIN_24))
    cap.remove()


@pytest.mark.parametrize("repeat", ["error", "first", "last"])
def test_a_submodule_called_twice(repeat):
    _, dec = _modules()
    cap = Capture(dec_mean=dec, repeat=repeat)
    z1, z2 = torch.randn(2, 3), torch.randn(2, 3)
    dec(z1)
    dec(z2)
    if repeat == "error":
        with pytest.raises(RuntimeError, match=r"Linear of `dec_mean` ran 2 times in one step.*repeat='first'"):
            cap(None, None, None)
    else:
        got = cap(None, None, None)["dec_mean"]
        assert torch.equal(got, dec(z1 if repeat == "first" else z2))
    cap.remove()


def test_a_submodule_that_did_not_run():
    enc, dec = _modules()
    cap = Capture(enc_mean=enc, dec_mean=dec)
    enc(torch.randn(2, 4))
    with pytest.raises(RuntimeError, match=r"Linear of `dec_mean` did not run in this step's forward pass"
                                           r" \(captured: \['enc_mean'\]\)"):
        cap(None, None, None)


def test_start_batch_drops_and_gates_recording():
    enc, _ = _modules()
    cap = Capture(enc_mean=enc)
    enc(torch.randn(2, 4))  # a batch that was never read (a skipped or unmonitored one)
    cap.start_batch(record=False)
    enc(torch.randn(2, 4))
    assert cap._values == {}
    cap.start_batch(record=True)
    x = torch.randn(2, 4)
    enc(x)
    assert torch.equal(cap(None, None, None)["enc_mean"], enc(x))  # one call recorded, not three
    enc(x)
    assert cap._values == {}  # read: nothing until the next batch starts


def test_skipped_training_step_output_is_empty():
    enc, _ = _modules()
    cap = Capture(enc_mean=enc)
    enc(torch.randn(2, 4))
    assert cap(None, {}, None) == {}
    assert cap._values == {}


def test_unknown_keys_and_sources():
    enc, _ = _modules()
    with pytest.raises(TypeError, match=r"`mu` \(did you mean `enc_mean`\?\)\. Expected vocabulary names as the keys"
                                        r" to record \(enc_mean, enc_logvar, dec_mean, dec_logvar, .*\) or Capture's"
                                        r" own options `x` .* and `repeat`\."):
        Capture(mu=enc)
    with pytest.raises(TypeError, match=r"`repet` \(did you mean `repeat`\?\)"):
        Capture(repet="first")
    with pytest.raises(TypeError, match="Expected `enc_mean` to be a submodule, a \\(submodule, selector\\) pair"):
        Capture(enc_mean=[enc])
    with pytest.raises(ValueError, match="Expected `repeat` to be one of"):
        Capture(repeat="all")
