"""Capture across a model's life: pickled with it, deep-copied (an EMA copy), after a step that raised; and a
duck-typed likelihood with a negative variance, rejected where it is read.

Captured values are compared with the hooked layers recomputed in float64 from their own parameters.
"""

import copy
import io
import pickle
from types import SimpleNamespace

import pytest
import torch
from helpers import MonitorVAE, monitor_data, monitor_loader, monitor_trainer
from torch import nn
from torch.distributions import Normal
from torch.optim.swa_utils import AveragedModel

import lightning_entropy_vae.functional as F
from lightning_entropy_vae import Capture, EntropyMonitor


def latent_mean(h):
    """The first half of an encoder output (a module-level selector pickles; a lambda does not)."""
    return h.chunk(2, -1)[0]


def latent_logvar(h):
    return h.chunk(2, -1)[1]


class _VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc, self.dec = nn.Linear(4, 6), nn.Linear(3, 4)

    def forward(self, x):
        return self.dec(latent_mean(self.enc(x)))


def _model_and_capture(**kwargs):
    torch.manual_seed(0)
    model = _VAE()
    return model, Capture(enc_mean=(model.enc, latent_mean), dec_mean=model.dec, **kwargs)


def _reference(model, x):
    """The hooked layers in float64 from the model's own parameters: (enc_mean, dec_mean)."""
    w1, b1, w2, b2 = (p.detach().double() for p in (model.enc.weight, model.enc.bias, model.dec.weight,
                                                    model.dec.bias))
    h = (x.double() @ w1.T + b1)[:, :3]
    return h, h @ w2.T + b2


def _assert_captured(got, model, x):
    enc_mean, dec_mean = _reference(model, x)
    torch.testing.assert_close(got["enc_mean"].double(), enc_mean)
    torch.testing.assert_close(got["dec_mean"].double(), dec_mean)


# ------------------------------------------------------------------------------------------------ pickling
def test_pickled_with_its_model_the_capture_records_the_copy():
    """As ``strategy="ddp_spawn"`` pickles the trainer (its monitor's capture) and the model together."""
    model, cap = _model_and_capture()
    x = torch.randn(5, 4)
    model(x)  # recorded (with its autograd graph), and not pickled
    model2, cap2 = pickle.loads(pickle.dumps((model, cap)))
    assert cap2._hooked["enc_mean"][0] is model2.enc and cap2._values == {}
    with torch.no_grad():
        model2.enc.weight.add_(1.0)  # the copy's numbers differ from the original's
    y = torch.randn(3, 4)
    model2(y)
    _assert_captured(cap2(None, {"loss": torch.tensor(0.0)}, y), model2, y)
    _assert_captured(cap(None, None, x), model, x)  # the original still holds its own call
    model(x)
    assert cap2._values == {}  # the original's calls do not reach the copy


def test_torch_save_and_load_of_a_model_with_a_capture():
    model, cap = _model_and_capture()
    model(torch.randn(5, 4))
    buffer = io.BytesIO()
    torch.save({"model": model, "capture": cap}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    model2, cap2 = loaded["model"], loaded["capture"]
    y = torch.randn(2, 4)
    model2(y)
    _assert_captured(cap2(None, None, y), model2, y)
    buffer = io.BytesIO()
    torch.save(model, buffer)  # the model alone: its hooks carry the capture along
    buffer.seek(0)
    assert torch.equal(torch.load(buffer, weights_only=False)(y), model(y))


# ----------------------------------------------------------------------------------------------- deep copies
@pytest.mark.parametrize("repeat", ["error", "first", "last"])
def test_an_ema_copy_does_not_record_into_the_original_capture(repeat):
    """``AveragedModel`` deep-copies the model, hooks included; the copy runs before and after the original."""
    model, cap = _model_and_capture(repeat=repeat)
    ema = AveragedModel(model)
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(0.5)  # an average that has moved away from the model
    x = torch.randn(5, 4)
    ema(torch.randn(5, 4))
    model(x)
    ema(torch.randn(5, 4))
    _assert_captured(cap(None, {"loss": torch.tensor(0.0)}, x), model, x)


def test_a_deep_copy_is_bound_to_the_copied_modules_and_records_when_driven():
    model, cap = _model_and_capture()
    model2, cap2 = copy.deepcopy((model, cap))
    assert cap2._hooked["dec_mean"][0] is model2.dec
    y = torch.randn(3, 4)
    model2(y)
    assert cap2._values == {}  # no monitor drives the copy: nothing recorded
    cap2.start_batch(record=True)
    model(torch.randn(3, 4))
    model2(y)
    _assert_captured(cap2(None, None, y), model2, y)
    cap2.remove()
    assert not model2.enc._forward_hooks and len(model.enc._forward_hooks) == 1  # the original keeps its hook


def test_a_shallow_copy_of_a_hooked_module_is_not_recorded():
    """``copy.copy`` of a module shares its hook dict; only the module the hook was registered on records."""
    model, cap = _model_and_capture()
    shallow = copy.copy(model.dec)
    x = torch.randn(5, 4)
    model(x)
    shallow(torch.randn(2, 3))
    _assert_captured(cap(None, None, x), model, x)


# ----------------------------------------------------------------------------------------- a step that raises
class _FailingVAE(MonitorVAE):
    """Returns the loss only; the step of ``fail_at`` runs its forward pass, then raises."""

    def __init__(self, fail_at, **kwargs):
        super().__init__(**kwargs)
        self.fail_at = fail_at

    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        if batch_idx == self.fail_at:
            raise RuntimeError("step failed")
        return out["loss"]


def test_after_a_step_raises_nothing_is_held_or_counted(tmp_path):
    """The monitor ends the failed batch (``start_batch(record=False)``): its outputs are released, later forward
    passes outside a step are not recorded."""
    torch.manual_seed(0)
    model = _FailingVAE(fail_at=1, lr=0.05)
    cap = Capture(enc_mean=(model.enc, latent_mean), enc_logvar=(model.enc, latent_logvar), dec_mean=model.dec,
                  dec_logvar=model.dec_logvar)
    trainer = monitor_trainer(tmp_path, [EntropyMonitor(stages=("train",), extract=cap)], max_epochs=1)
    with pytest.raises(RuntimeError, match="step failed"):
        trainer.fit(model, monitor_loader(monitor_data(12, seed=0)))
    assert cap._values == {}  # the failed batch's outputs, and their autograd graph, are released
    model._outputs(monitor_data(4, seed=1))  # the user's own evaluation after the failure
    assert cap._values == {} and cap._calls == {}
    cap.remove()


# ------------------------------------------------------------------------------- duck-typed negative spreads
@pytest.mark.parametrize("spread", ["var", "variance", "std", "scale"])
def test_a_negative_spread_of_a_duck_typed_gaussian_is_rejected(spread):
    torch.manual_seed(0)
    x, mean, value = torch.randn(3, 4), torch.randn(3, 4), torch.rand(3, 4) + 0.5
    value[1, 2] = -0.25
    what = "a variance" if spread in ("var", "variance") else "a standard deviation"
    message = (rf"Expected `likelihood\.{spread}` of the SimpleNamespace `likelihood` to be non-negative"
               rf" \({what}\), but got -0\.25 at index \(1, 2\)\.")
    with pytest.raises(ValueError, match=message):
        F.decoder_entropy(x=x, likelihood=SimpleNamespace(mean=mean, **{spread: value}))
    value[1, 2] = 0.25
    var = value if spread in ("var", "variance") else value ** 2
    want = Normal(mean.double(), var.double().sqrt()).entropy().sum(-1).mean()
    got = F.decoder_entropy(x=x, likelihood=SimpleNamespace(mean=mean, **{spread: value}))
    torch.testing.assert_close(got.double().mean(), want, rtol=1e-6, atol=1e-6)


class _DuckLikelihoodVAE(MonitorVAE):
    """Returns the decoder as a duck-typed likelihood (``.mean``, ``.var``), whose variance turns negative in the
    training step of ``negative_at``."""

    def __init__(self, negative_at, **kwargs):
        super().__init__(**kwargs)
        self.negative_at = negative_at

    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        var = out.pop("dec_logvar").exp().expand_as(out["dec_mean"]).clone()
        if batch_idx == self.negative_at:
            with torch.no_grad():
                var[0, 1] = -1.5
        out["likelihood"] = SimpleNamespace(mean=out.pop("dec_mean"), var=var)
        return out


def test_a_negative_likelihood_variance_stops_the_fit(tmp_path):
    """In the callback the step's ``likelihood`` is read once per batch: the error names it and the value."""
    torch.manual_seed(0)
    model = _DuckLikelihoodVAE(negative_at=2, lr=0.05)
    trainer = monitor_trainer(tmp_path, [EntropyMonitor(stages=("train",))], max_epochs=1)
    with pytest.raises(ValueError, match=r"`likelihood\.var` of the SimpleNamespace `likelihood` to be non-negative"
                                         r" \(a variance\), but got -1\.5 at index \(0, 1\)\."):
        trainer.fit(model, monitor_loader(monitor_data(16, seed=0)))
    assert len(model.train_log) == 3  # batches 0 and 1 were read, batch 2 stopped it
