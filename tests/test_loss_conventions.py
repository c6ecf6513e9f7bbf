"""Loss conventions: the Gaussian ELBO behind squared-error VAE losses (pythae, lightning-bolts, textbook, beta-VAE)
against float64 closed forms, and the monitor's warning when the training loss is a Bernoulli (BCE) ELBO."""

import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import monitor_trainer
from lightning.pytorch import Callback, LightningModule
from torch import nn
from torch.distributions import Bernoulli, Normal, kl_divergence
from torch.utils.data import DataLoader, TensorDataset

from lightning_entropy_vae import EntropyMonitor
from lightning_entropy_vae.callbacks._objective import MIN_BATCHES, WINDOW
from lightning_entropy_vae.functional import bernoulli_log_likelihood, gaussian_elbo, mse_convention

B, D, H = 32, 6, 3


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    x, x_hat = torch.randn(B, D, generator=gen, dtype=torch.float64), torch.randn(B, D, generator=gen,
                                                                                   dtype=torch.float64)
    mean, logvar = torch.randn(B, H, generator=gen, dtype=torch.float64), torch.randn(B, H, generator=gen,
                                                                                      dtype=torch.float64)
    kl = kl_divergence(Normal(mean, torch.exp(0.5 * logvar)), Normal(0.0, 1.0))  # (B, H)
    return x, x_hat, mean, logvar, kl


def _reference_elbo(x, x_hat, kl, var):
    """Mean ELBO over the batch of a Gaussian decoder N(x_hat, var I), from torch.distributions."""
    return float((Normal(x_hat, math.sqrt(var)).log_prob(x).sum(-1) - kl.sum(-1)).mean())


@pytest.mark.parametrize(("name", "loss_fn", "convention", "var"), [
    ("textbook: mse sum + KL, batch sum",
     lambda x, xh, kl: (F.mse_loss(xh, x, reduction="sum") + kl.sum()) / B,
     {"reconstruction": "sum"}, 0.5),
    ("pythae: 0.5 ||x - x_hat||^2 + KL, batch mean",
     lambda x, xh, kl: (0.5 * ((x - xh) ** 2).sum(-1) + kl.sum(-1)).mean(),
     {"reconstruction": "half_sum"}, 1.0),
    ("lightning-bolts: mse mean + 0.1 x KL mean",
     lambda x, xh, kl: F.mse_loss(xh, x) + 0.1 * kl.mean(),
     {"reconstruction": "mean", "kl": "mean", "latent_dim": H, "kl_weight": 0.1}, D / (20 * H)),
    ("beta-VAE: mse sum + 4 x KL",
     lambda x, xh, kl: (((x - xh) ** 2).sum(-1) + 4.0 * kl.sum(-1)).mean(),
     {"reconstruction": "sum", "kl_weight": 4.0}, 2.0),
])
def test_mse_conventions_against_the_gaussian_elbo(batch, name, loss_fn, convention, var):
    x, x_hat, mean, logvar, kl = batch
    c = mse_convention(data_dim=D, **convention)
    assert c.dec_var == pytest.approx(var, rel=1e-12)
    assert c.dec_logvar == pytest.approx(math.log(var), rel=1e-12)
    loss = loss_fn(x, x_hat, kl)
    assert float(c.elbo(loss)) == pytest.approx(_reference_elbo(x, x_hat, kl, var), rel=1e-12)
    # the package's own ELBO with the convention's dec_logvar is the same number
    ours = gaussian_elbo(x=x, enc_mean=mean, enc_logvar=logvar, dec_mean=x_hat,
                         dec_logvar=torch.tensor(c.dec_logvar, dtype=torch.float64))
    assert float(ours) == pytest.approx(float(c.elbo(loss)), rel=1e-10)
    # another batch, another loss: the same affine map (scale and offset do not depend on the data)
    x2, x_hat2 = x.flip(0) * 2.0, x_hat * 0.5
    assert float(c.elbo(loss_fn(x2, x_hat2, kl))) == pytest.approx(_reference_elbo(x2, x_hat2, kl, var), rel=1e-12)


def test_bolts_scale_is_one_over_ten_h():
    c = mse_convention("mean", data_dim=784, latent_dim=16, kl="mean", kl_weight=0.1)
    assert c.scale == pytest.approx(1 / (10 * 16)) and c.dec_var == pytest.approx(784 / (20 * 16))
    assert c.offset == pytest.approx(0.5 * 784 * math.log(2 * math.pi * 784 / 320))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"reconstruction": "l1", "data_dim": 4}, r"Expected `reconstruction` to be one of \('sum', 'half_sum', 'mean'\)"),
    ({"data_dim": 0}, r"Expected `data_dim` to be a positive int, but got 0"),
    ({"data_dim": 4, "kl": "mean"}, r"Expected `latent_dim` \(H\) with kl='mean'"),
    ({"data_dim": 4, "kl": "avg"}, r"Expected `kl` to be 'sum' or 'mean', but got 'avg'"),
    ({"data_dim": 4, "kl_weight": 0}, r"Expected `kl_weight` to be a positive number, but got 0"),
])
def test_mse_convention_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mse_convention(**kwargs)


def test_bernoulli_log_likelihood_against_torch_distributions():
    gen = torch.Generator().manual_seed(1)
    x = torch.bernoulli(torch.full((5, 7), 0.4, dtype=torch.float64), generator=gen)
    p = torch.rand(5, 7, generator=gen, dtype=torch.float64) * 0.98 + 0.01
    expected = Bernoulli(probs=p).log_prob(x).sum(-1)
    torch.testing.assert_close(bernoulli_log_likelihood(x=x, probs=p), expected, rtol=1e-12, atol=0)
    bce = F.binary_cross_entropy(p, x, reduction="none").sum(-1)
    ours = bernoulli_log_likelihood(x=x.float(), probs=p.float())
    torch.testing.assert_close(ours, -bce.float(), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------- the monitor's BCE warning
def _binary_data(n=256):
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(n, 2, generator=gen)
    return torch.bernoulli(torch.sigmoid(z @ (2 * torch.randn(2, 16, generator=gen))), generator=gen)


class TinyVAE(LightningModule):
    """A tiny VAE on binary data whose steps return the package's vocabulary, with a fixed dec_logvar.

    ``likelihood``: ``"bce"`` (the loss is a Bernoulli ELBO of the returned ``dec_mean`` probabilities),
    ``"gaussian"`` (a Gaussian ELBO with unit variance); ``beta`` weighs the KL of the loss; ``mc_kl`` uses a
    one-sample Monte Carlo KL estimate in the loss.
    """

    def __init__(self, likelihood, beta=1.0, mc_kl=False):
        super().__init__()
        self.likelihood, self.beta, self.mc_kl = likelihood, beta, mc_kl
        self.enc = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4))
        self.dec = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 16))

    def training_step(self, batch, batch_idx):
        x = batch[0]
        mean, logvar = self.enc(x).chunk(2, dim=-1)
        q = Normal(mean, torch.exp(0.5 * logvar))
        z = q.rsample()
        logits = self.dec(z)
        kl = (q.log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(-1) if self.mc_kl else \
            kl_divergence(q, Normal(0.0, 1.0)).sum(-1)
        if self.likelihood == "bce":
            dec_mean = torch.sigmoid(logits)
            recon = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        else:
            dec_mean = logits
            recon = Normal(logits, 1.0).log_prob(x).sum(-1)
        loss = -(recon - self.beta * kl).mean()
        return {"loss": loss, "x": x, "enc_mean": mean, "enc_logvar": logvar, "dec_mean": dec_mean,
                "dec_logvar": torch.zeros(())}

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def _fit(tmp_path, model, epochs=3):
    torch.manual_seed(0)
    monitor = EntropyMonitor(stages=("train",))
    trainer = monitor_trainer(tmp_path, [monitor], max_epochs=epochs)
    loader = DataLoader(TensorDataset(_binary_data()), batch_size=16, shuffle=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, loader)
    return monitor, [str(w.message) for w in caught if "Bernoulli" in str(w.message)]


def test_a_bce_trained_vae_gets_one_warning(tmp_path):
    monitor, messages = _fit(tmp_path, TinyVAE("bce"))
    assert monitor.objective_check[0] is False
    assert len(messages) == 1  # once per fit, though every epoch shows it
    assert re.search(r"EntropyMonitor: the training loss is a Bernoulli \(BCE\) ELBO of the returned `dec_mean`, not"
                     r" a Gaussian one", messages[0])
    assert "The logged ELBO, entropy sum and gap are those of a Gaussian decoder" in messages[0]


def test_a_bce_model_is_not_called_a_plain_mse_model(tmp_path):
    """Its fixed `dec_logvar` is said to be fixed, with the Bernoulli vocabulary to return instead; not "plain MSE"."""
    torch.manual_seed(0)
    trainer = monitor_trainer(tmp_path, [EntropyMonitor(stages=("train",))], max_epochs=1)
    loader = DataLoader(TensorDataset(_binary_data()), batch_size=16, shuffle=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyVAE("bce"), loader)
    fixed = [str(w.message) for w in caught if "decoder variance is fixed" in str(w.message)]
    assert len(fixed) == 1 and "plain MSE" not in fixed[0]
    assert "a BCE-trained model should return `dec_logits` or `dec_probs`" in fixed[0]


class WarmUp(TinyVAE):
    """A Gaussian VAE whose KL weight is 0.5 in the first epoch and 1 after it (a one-step KL warm-up)."""

    def on_train_epoch_start(self):
        self.beta = 0.5 if self.current_epoch == 0 else 1.0


def test_the_objective_is_judged_over_a_rolling_window_and_published(tmp_path):
    """The verdict follows the loss over the check's window of batches across epochs (here a warm-up ending after
    epoch 0 of 16 batches): "not the ELBO" at once, the ELBO only once the window holds no warm-up batch."""
    torch.manual_seed(0)
    monitor = EntropyMonitor(stages=("train",))
    verdicts = []

    class Spy(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            metrics = trainer.callback_metrics
            verdicts.append((float(metrics["entropy/train/objective_is_elbo"]),
                             float(metrics["entropy/train/objective_kl_coef"])))

    trainer = monitor_trainer(tmp_path, [monitor, Spy()], max_epochs=-(-WINDOW // 16) + 1)
    loader = DataLoader(TensorDataset(_binary_data()), batch_size=16, shuffle=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(WarmUp("gaussian"), loader)
    assert verdicts[0][0] == 0.0 and verdicts[0][1] == pytest.approx(0.5, abs=0.02)  # -loss = ELBO + (1 - beta) KL
    assert all(v != 1.0 for v, _ in verdicts[:-1])  # the window still holds batches of epoch 0
    assert verdicts[-1][0] == 1.0 and verdicts[-1][1] == pytest.approx(0.0, abs=0.02)
    assert monitor.objective_check[0] is True


def test_epochs_too_short_to_tell_pool_their_batches_for_the_bce_check(tmp_path):
    """Three batches per epoch: no single epoch can tell (MIN_BATCHES are needed), the first two together can."""
    loader = DataLoader(TensorDataset(_binary_data()), batch_size=16, shuffle=True)
    for epochs in (1, 3):
        torch.manual_seed(0)
        monitor = EntropyMonitor(stages=("train",))
        trainer = monitor_trainer(tmp_path, [monitor], max_epochs=epochs, limit_train_batches=3)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(TinyVAE("bce"), loader)
        said = sum("Bernoulli" in str(w.message) for w in caught)
        if epochs == 1:
            assert said == 0 and monitor.objective_check == (None, "3 batch(es) with a loss: too few to tell (the"
                                                                   f" check needs {MIN_BATCHES})")
        else:  # the Gaussian ELBO cannot tell a BCE loss; the Bernoulli diagnosis is said, once
            assert said == 1 and monitor.objective_check[0] is None


@pytest.mark.parametrize("model", [TinyVAE("gaussian"), TinyVAE("gaussian", beta=4.0),
                                   TinyVAE("gaussian", mc_kl=True)], ids=["gaussian", "beta=4", "mc-kl"])
def test_gaussian_losses_get_no_bce_warning(tmp_path, model):
    _, messages = _fit(tmp_path, model)
    assert messages == []
