"""The EntropyMonitor with Bernoulli and categorical decoders: the same keys, values against torch.distributions."""

import math

import lightning.pytorch as pl
import pytest
import torch
from helpers import monitor_trainer
from torch import nn
from torch.distributions import Bernoulli, Categorical, Independent, Normal, kl_divergence
from torch.utils.data import DataLoader, TensorDataset

from lightning_entropy_vae import EntropyMonitor

L_POS, C, H = 5, 4, 2  # token positions, classes, latents


class DiscreteVAE(pl.LightningModule):
    """A VAE over token sequences (categorical) or binary vectors (Bernoulli); records what its steps computed.

    ``returns``: ``"class_logits"`` (categorical, ``x`` as class indices), ``"one_hot"`` (categorical, ``x`` one-hot),
    ``"logits"`` (Bernoulli), ``"likelihood"`` (a Bernoulli ``torch.distributions`` likelihood).
    """

    def __init__(self, returns):
        super().__init__()
        self.returns = returns
        categorical = returns in ("class_logits", "one_hot")
        d_in = L_POS * C if categorical else L_POS
        self.enc = nn.Linear(d_in, 2 * H)
        self.dec = nn.Linear(H, L_POS * C if categorical else L_POS)
        self.seen = []  # (per-point log-likelihood, KL, decoder entropy), float64

    def training_step(self, batch, batch_idx):
        x = batch[0]
        categorical = self.returns in ("class_logits", "one_hot")
        inputs = nn.functional.one_hot(x, C).float().flatten(1) if categorical else x
        mean, logvar = self.enc(inputs).chunk(2, -1)
        q = Normal(mean, (0.5 * logvar).exp())
        z = q.rsample()
        if categorical:
            logits = self.dec(z).view(-1, L_POS, C)
            lik = Independent(Categorical(logits=logits), 1)
            log_lik = lik.log_prob(x)
        else:
            logits = self.dec(z)
            lik = Independent(Bernoulli(logits=logits), 1)
            log_lik = lik.log_prob(x)
        kl = kl_divergence(q, Normal(0.0, 1.0)).sum(-1)
        self.seen.append(torch.stack([log_lik, kl, lik.entropy()], -1).detach().double())
        out = {"loss": -(log_lik - kl).mean(), "enc_mean": mean, "enc_logvar": logvar}
        if self.returns == "class_logits":
            out.update(x=x, dec_class_logits=logits)
        elif self.returns == "one_hot":
            out.update(x=nn.functional.one_hot(x, C).float(), dec_class_logits=logits)
        elif self.returns == "logits":
            out.update(x=x, dec_logits=logits)
        else:
            out.update(x=x, likelihood=lik)
        return out

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _data(returns, n=30):
    gen = torch.Generator().manual_seed(0)
    if returns in ("class_logits", "one_hot"):
        return torch.randint(0, C, (n, L_POS), generator=gen)
    return (torch.rand(n, L_POS, generator=gen) < 0.3).float()


@pytest.mark.parametrize("returns", ["class_logits", "one_hot", "logits", "likelihood"])
def test_the_monitor_logs_a_discrete_decoders_entropy_sum_and_elbo(tmp_path, returns):
    torch.manual_seed(0)
    model = DiscreteVAE(returns)
    trainer = monitor_trainer(tmp_path, [EntropyMonitor(stages=("train",))], max_epochs=1)
    trainer.fit(model, DataLoader(TensorDataset(_data(returns, n=50)), batch_size=5))  # 10 batches
    seen = torch.cat(model.seen)
    metrics = trainer.callback_metrics
    assert float(metrics["entropy/train/elbo"]) == pytest.approx(float((seen[:, 0] - seen[:, 1]).mean()), rel=1e-5)
    assert float(metrics["entropy/train/decoder"]) == pytest.approx(float(seen[:, 2].mean()), rel=1e-5)
    encoder, prior = float(metrics["entropy/train/encoder"]), float(metrics["entropy/train/prior"])
    assert prior == pytest.approx(H / 2 * math.log(2 * math.pi * math.e), rel=1e-6)
    assert float(metrics["entropy/train/sum"]) == pytest.approx(encoder - prior - float(seen[:, 2].mean()), rel=1e-5)
    assert float(metrics["entropy/train/objective_is_elbo"]) == 1.0


def test_two_decoders_in_one_output_is_an_error(tmp_path):
    class Both(DiscreteVAE):
        def training_step(self, batch, batch_idx):
            out = super().training_step(batch, batch_idx)
            out["dec_mean"] = torch.sigmoid(out["dec_logits"])
            return out

    trainer = monitor_trainer(tmp_path, [EntropyMonitor(stages=("train",))], max_epochs=1)
    with pytest.raises(ValueError, match=r"Expected one decoder: `dec_mean`/`dec_logvar` \(Gaussian\), `dec_logits` or"
                                         r" `dec_probs` \(Bernoulli\), `dec_class_logits` \(categorical\) or a"
                                         r" `likelihood`, but got `dec_mean`, `dec_logits`."):
        trainer.fit(Both("logits"), DataLoader(TensorDataset(_data("logits")), batch_size=5))


class GaussianDistributions(pl.LightningModule):
    """A Gaussian VAE whose step returns ``torch.distributions`` objects and no ``elbo``: the monitor computes the ELBO
    from the likelihood's ``log_prob(x)``."""

    def __init__(self):
        super().__init__()
        self.enc, self.dec = nn.Linear(L_POS, 2 * H), nn.Linear(H, L_POS)
        self.seen = []

    def training_step(self, batch, batch_idx):
        x = batch[0]
        mean, logvar = self.enc(x).chunk(2, -1)
        q = Independent(Normal(mean, (0.5 * logvar).exp()), 1)
        prior = Independent(Normal(torch.zeros_like(mean), torch.ones_like(mean)), 1)
        lik = Independent(Normal(self.dec(q.rsample()), 0.8), 1)
        elbo = lik.log_prob(x) - kl_divergence(q, prior)
        self.seen.append(torch.stack([elbo, lik.entropy()], -1).detach().double())
        return {"loss": -elbo.mean(), "x": x, "posterior": q, "prior": prior, "likelihood": lik}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_distributions_without_an_elbo_get_the_likelihoods_elbo(tmp_path):
    torch.manual_seed(0)
    model = GaussianDistributions()
    trainer = monitor_trainer(tmp_path, [EntropyMonitor(stages=("train",))], max_epochs=1)
    trainer.fit(model, DataLoader(TensorDataset(torch.randn(30, L_POS)), batch_size=5))
    seen = torch.cat(model.seen)
    metrics = trainer.callback_metrics
    assert float(metrics["entropy/train/elbo"]) == pytest.approx(float(seen[:, 0].mean()), rel=1e-5)
    assert float(metrics["entropy/train/decoder"]) == pytest.approx(float(seen[:, 1].mean()), rel=1e-5)
    assert float(metrics["entropy/train/objective_is_elbo"]) == 1.0
