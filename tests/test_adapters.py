"""Inputs as other code bases give them: duck-typed Gaussians, (B, C, h, w) latents, a float dec_logvar,
batch-shaped priors, misnamed keys. Values are checked against torch.distributions in float64."""

import math
import warnings
from types import SimpleNamespace

import pytest
import torch
from helpers import (
    TRAIN_24,
    MonitorVAE,
    assert_logged_equal,
    monitor_loader,
    monitor_reference,
    monitor_trainer,
)
from torch.distributions import Independent, Normal

import lightning_entropy_vae.functional as F
from lightning_entropy_vae import EntropyMonitor, EntropySumELBO, GaussianELBO, PosteriorCollapse


def _stats(*shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64), 0.3 * torch.randn(*shape, generator=gen,
                                                                                       dtype=torch.float64)


# ----------------------------------------------------------------------------------- duck-typed
@pytest.mark.parametrize("spread", ["logvar", "var", "variance", "std", "stddev", "scale"])
def test_duck_typed_posterior_equals_the_distribution(spread):
    mean, logvar = _stats(6, 3)
    value = {"logvar": logvar, "var": logvar.exp(), "variance": logvar.exp()}.get(spread, (0.5 * logvar).exp())
    duck = SimpleNamespace(mean=mean, **{spread: value})
    x, dec_mean = _stats(6, 5, seed=1)
    common = {"x": x, "dec_mean": dec_mean, "dec_logvar": torch.tensor(0.2, dtype=torch.float64)}
    dist = Normal(mean, (0.5 * logvar).exp())
    torch.testing.assert_close(F.entropy_sum(posterior=duck, **common), F.entropy_sum(posterior=dist, **common))
    torch.testing.assert_close(F.gaussian_elbo(posterior=duck, **common), F.gaussian_elbo(posterior=dist, **common))
    want = dist.entropy().sum(-1).mean()
    torch.testing.assert_close(F.encoder_entropy(posterior=duck), want)


def test_duck_typed_likelihood_equals_the_distribution():
    x, mean = _stats(4, 5)
    _, logvar = _stats(4, 5, seed=2)
    duck = SimpleNamespace(mean=mean, logvar=logvar)
    dist = Independent(Normal(mean, (0.5 * logvar).exp()), 1)
    torch.testing.assert_close(F.gaussian_log_likelihood(x=x, likelihood=duck), dist.log_prob(x).mean())
    torch.testing.assert_close(F.decoder_entropy(x=x, likelihood=duck), dist.entropy().mean())
    with pytest.raises(ValueError, match="either a `likelihood` or `dec_mean`/`dec_logvar`, but got both"):
        F.decoder_entropy(x=x, likelihood=duck, dec_logvar=logvar)


# ------------------------------------------------------------------------------- N-D latents
def test_image_latents_are_flattened():
    mean, logvar = _stats(3, 4, 2, 2)
    flat = {"enc_mean": mean.reshape(3, -1), "enc_logvar": logvar.reshape(3, -1)}
    torch.testing.assert_close(F.encoder_entropy(enc_logvar=logvar), Normal(mean, (0.5 * logvar).exp()).entropy()
                               .sum((1, 2, 3)).mean())
    torch.testing.assert_close(F.gaussian_kl(enc_mean=mean, enc_logvar=logvar), F.gaussian_kl(**flat))
    torch.testing.assert_close(F.prior_entropy(enc_logvar=logvar), F.prior_entropy(enc_logvar=flat["enc_logvar"]))
    assert math.isclose(float(F.prior_entropy(enc_logvar=logvar)), 8 * math.log(2 * math.pi * math.e), rel_tol=1e-6)
    torch.testing.assert_close(F.latent_entropy(posterior=Normal(mean, (0.5 * logvar).exp())),
                               F.latent_entropy(enc_logvar=flat["enc_logvar"]))
    metric = PosteriorCollapse(16)
    metric.update(enc_mean=mean, enc_logvar=logvar)
    assert metric.compute()["latent_entropy"].shape == (16,)


# --------------------------------------------------------------------------------- float dec_logvar
@pytest.mark.parametrize("value", [0.5, 0], ids=["float", "int"])
def test_python_number_dec_logvar(value):
    x, dec_mean = _stats(4, 3)
    tensor = torch.tensor(float(value), dtype=torch.float64)
    want = Normal(torch.zeros(3, dtype=torch.float64), math.exp(0.5 * value)).entropy().sum()
    torch.testing.assert_close(F.decoder_entropy(dec_logvar=value, x=x), want)
    kw = {"x": x, "dec_mean": dec_mean, "enc_mean": x[:, :2], "enc_logvar": x[:, 1:]}
    torch.testing.assert_close(F.gaussian_elbo(dec_logvar=value, **kw), F.gaussian_elbo(dec_logvar=tensor, **kw))
    for metric_type in (EntropySumELBO, GaussianELBO):
        a, b = metric_type(), metric_type()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a.update(dec_logvar=value, **kw)
            b.update(dec_logvar=tensor, **kw)
        torch.testing.assert_close(a.compute(), b.compute())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_python_number_dec_logvar_keeps_its_precision_next_to_half_tensors(dtype):
    """A number is exact: with bf16 data it is not rounded to bf16 (log 2.45 -> 0.8945, 0.6 nats off at D = 784)."""
    x = torch.randn(4, 784).to(dtype)
    want = 0.5 * 784 * (math.log(2 * math.pi * 2.45) + 1)
    assert float(F.decoder_entropy(dec_logvar=math.log(2.45), x=x)) == pytest.approx(want, rel=1e-6)
    # the callback's reading of a step output turns the number into a tensor next to the step's own tensors
    from lightning_entropy_vae.callbacks._step_outputs import normalize

    step = normalize({"x": x, "enc_logvar": torch.zeros(4, 2, dtype=dtype), "dec_logvar": math.log(2.45)}, str)
    assert step["dec_logvar"].dtype == torch.float32
    assert float(F.decoder_entropy(dec_logvar=step["dec_logvar"], x=x)) == pytest.approx(want, rel=1e-6)


class _FloatLogvarVAE(MonitorVAE):
    """Returns the fixed decoder log-variance 0.0 as a Python float (its parameter stays at 0 with lr 0)."""

    def _returned(self, out):
        out = super()._returned(out)
        out["dec_logvar"] = 0.0
        return out


def test_python_number_dec_logvar_in_the_callback(tmp_path):
    torch.manual_seed(0)
    model = _FloatLogvarVAE(lr=0.0)
    trainer = monitor_trainer(tmp_path, [EntropyMonitor(stages=("train",))], max_epochs=1)
    with pytest.warns(UserWarning, match="decoder variance is fixed"):
        trainer.fit(model, monitor_loader(TRAIN_24))
    assert_logged_equal(trainer.callback_metrics, "entropy/train", monitor_reference(model.train_epoch(0)))
    assert "entropy/train/sum_profiled" in trainer.callback_metrics


# -------------------------------------------------------------------------------- batch-shaped priors
@pytest.mark.parametrize("kind", ["independent", "normal"])
def test_prior_repeated_over_the_batch(kind):
    """A Pyro plate's prior: Independent(Normal(zeros(B, H), ones(B, H)), 1) or Normal (B, H)."""
    mean, logvar = _stats(5, 3)
    x, dec_mean = _stats(5, 4, seed=1)
    base = Normal(torch.full((5, 3), 0.5, dtype=torch.float64), torch.full((5, 3), 2.0, dtype=torch.float64))
    prior = Independent(base, 1) if kind == "independent" else base
    one = Normal(torch.full((3,), 0.5, dtype=torch.float64), torch.full((3,), 2.0, dtype=torch.float64))
    kw = {"enc_mean": mean, "enc_logvar": logvar, "x": x, "dec_mean": dec_mean, "dec_logvar": torch.zeros(())}
    torch.testing.assert_close(F.entropy_sum(prior=prior, **kw), F.entropy_sum(prior=one, **kw))
    torch.testing.assert_close(F.gaussian_elbo(prior=prior, **kw), F.gaussian_elbo(prior=one, **kw))
    torch.testing.assert_close(F.prior_entropy(prior=prior), one.entropy().sum())
    a, b = EntropySumELBO(), EntropySumELBO()
    a.update(prior=prior, **kw)
    b.update(prior=one, **kw)
    torch.testing.assert_close(a.compute(), b.compute())
    rows_differ = Normal(torch.randn(5, 3, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match=r"whose rows are one prior p\(z\).*but its rows differ"):
        F.entropy_sum(prior=rows_differ, **kw)


# -------------------------------------------------------------------------------- callback inputs
class _Renamed(MonitorVAE):
    """Returns pythae-style names."""

    def _returned(self, out):
        out = super()._returned(out)
        return {"loss": out["loss"], "x": out["x"], "mu": out["enc_mean"], "log_var": out["enc_logvar"],
                "recon_x": out["dec_mean"], "z": out["enc_mean"]}


def test_misnamed_keys_get_a_suggestion(tmp_path):
    trainer = monitor_trainer(tmp_path, [EntropyMonitor(stages=("train",))], max_epochs=1)
    with pytest.raises(ValueError) as err:
        trainer.fit(_Renamed(), monitor_loader(TRAIN_24))
    message = str(err.value)
    assert "Received `mu`, `log_var`, `recon_x`, `z`, which are not vocabulary names: rename `mu` -> `enc_mean`," \
           " `log_var` -> `enc_logvar`, `recon_x` -> `dec_mean`; `z` is not needed." in message


class _ImageLatentVAE(MonitorVAE):
    """Returns the posterior as a diffusers-style object with (B, C, h, w) = (B, 2, 2, 1) latents, H = 4.

    Channel 1's latents have an encoder variance of 1 and a mean of 0 (collapsed); channel 0's are active.
    """

    def __init__(self):
        super().__init__(latent_dim=4, lr=0.05)

    def latents(self, mean, logvar):
        keep = torch.tensor([1.0, 1.0, 0.0, 0.0])
        return mean * keep, logvar * keep

    def _returned(self, out):
        out = super()._returned(out)
        mean, logvar = out.pop("enc_mean"), out.pop("enc_logvar")
        out["posterior"] = SimpleNamespace(mean=mean.reshape(-1, 2, 2, 1), logvar=logvar.reshape(-1, 2, 2, 1),
                                           std=torch.exp(0.5 * logvar).reshape(-1, 2, 2, 1))
        return out


def test_image_latents_with_channel_groups(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    torch.manual_seed(0)
    model = _ImageLatentVAE()
    monitor = EntropyMonitor(stages=("train",), latent_groups="channel", max_latents_as_scalars=0)
    trainer = monitor_trainer(tmp_path, [monitor], max_epochs=2, logger=CSVLogger(tmp_path, name="g"))
    logged = {}
    original = trainer.loggers[0].log_metrics
    trainer.loggers[0].log_metrics = lambda metrics, step=None: (logged.update(metrics), original(metrics, step))
    trainer.fit(model, monitor_loader(TRAIN_24))
    ref = monitor_reference(model.train_epoch(1))
    assert_logged_equal(trainer.callback_metrics, "entropy/train", ref)
    assert logged["entropy/train/channel_active/0"] == 2.0 and logged["entropy/train/channel_active/1"] == 0.0
    assert math.isclose(logged["entropy/train/channel_entropy/1"], sum(ref["latent_entropy"][2:]) / 2, rel_tol=1e-5)
    assert not any("latent_entropy/" in k for k in logged)  # no per-latent keys above max_latents_as_scalars
    assert monitor.options.latent_groups == "channel"
    with pytest.raises(ValueError, match="Expected `latent_groups` to be None or one of"):
        EntropyMonitor(latent_groups="pixel")


def test_collapse_warning_is_capped():
    from lightning_entropy_vae.callbacks import _publish

    options = EntropyMonitor().options
    with pytest.warns(UserWarning) as record:
        warned = _publish.collapse_warning(options, 3, [False] * 700, [True] * 700, frozenset(), (700,))
    assert warned == frozenset(range(700))
    message = str(record[0].message)
    assert "700 latents [0, 1, 2, 3, 4, 5, 6, 7, ...] collapsed during epoch 3" in message
    assert len(message) < 300
    from lightning_entropy_vae.callbacks._groups import named_latents

    assert named_latents([5], (4, 2, 2)) == "latent(s) [(1, 0, 1)]"
