"""The recipes of docs/recipes.md, run: pythae and Pyro for real (where they install), diffusers' AutoencoderKL
and a lightning-bolts VAE as faithful stand-ins of their forward passes.

Each recipe's glue (the lines a user writes) is between ``# glue`` and ``# /glue`` markers, as in the docs.
"""

import math
import warnings

import lightning.pytorch as pl
import pytest
import torch
from helpers import monitor_trainer
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.distributions import Independent, Normal, kl_divergence
from torch.utils.data import DataLoader, TensorDataset

import lightning_entropy_vae.functional as F
from lightning_entropy_vae import Capture, EntropyMonitor

LOG_2PI = math.log(2 * math.pi)


def _images(n=16, seed=0):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ pythae
class PythaeModule(pl.LightningModule):
    """A user's Lightning wrapper of a pythae model: the step returns pythae's own ModelOutput."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.losses = []

    def training_step(self, batch, batch_idx):
        out = self.model({"data": batch[0]})  # ModelOutput(loss, recon_loss, reg_loss, recon_x, z)
        self.losses.append((self.current_epoch, float(out.loss)))
        return out

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_pythae_vae(tmp_path):
    pytest.importorskip("pythae")
    from pythae.models import VAE, VAEConfig

    torch.manual_seed(0)
    vae = VAE(VAEConfig(input_dim=(1, 8, 8), latent_dim=3, reconstruction_loss="mse"))
    # glue
    capture = Capture(enc_mean=(vae.encoder, "embedding"), enc_logvar=(vae.encoder, "log_covariance"),
                      dec_mean="recon_x", dec_logvar=0.0)  # pythae's mse is 0.5*||x - x_hat||^2: sigma^2 = 1
    monitor = EntropyMonitor(stages=("train",), extract=capture)
    # /glue
    module = PythaeModule(vae)
    trainer = monitor_trainer(tmp_path, [monitor], max_epochs=1)
    with pytest.warns(UserWarning, match="decoder variance is fixed"):
        trainer.fit(module, DataLoader(TensorDataset(_images()), batch_size=4))
    # pythae's loss is -ELBO up to the Gaussian's constant D/2 log(2 pi), for the same z: the logged ELBO is it
    pythae_loss = sum(loss for _, loss in module.losses) / len(module.losses)
    logged = float(trainer.callback_metrics["entropy/train/elbo"])
    assert math.isclose(logged, -pythae_loss - 0.5 * 64 * LOG_2PI, rel_tol=1e-5)


# -------------------------------------------------------------------------------------------- Pyro
def test_pyro_guide_and_plate_prior():
    pyro = pytest.importorskip("pyro")
    import pyro.distributions as dist
    from pyro import poutine

    torch.manual_seed(0)
    encoder, decoder, data_dim, latent_dim = nn.Linear(5, 4), nn.Linear(2, 5), 5, 2

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], latent_dim),
                                             x.new_ones(x.shape[0], latent_dim)).to_event(1))
            pyro.sample("x", dist.Normal(decoder(z), 0.5).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            mu, logvar = encoder(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(mu, torch.exp(0.5 * logvar)).to_event(1))

    x = torch.randn(6, data_dim)
    # glue
    guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    stats = {"x": x, "posterior": guide_trace.nodes["z"]["fn"], "prior": model_trace.nodes["z"]["fn"],
             "likelihood": model_trace.nodes["x"]["fn"]}
    # /glue
    assert tuple(stats["prior"].batch_shape) == (6,)  # the plate's prior, repeated over the batch
    q, p, lik = (stats[k] for k in ("posterior", "prior", "likelihood"))
    with torch.no_grad():
        want_elbo = (lik.log_prob(x) - kl_divergence(q, p)).mean()
        want_sum = q.entropy().mean() - p.entropy()[0] - lik.entropy().mean()
        torch.testing.assert_close(F.gaussian_elbo(**stats), want_elbo)
        torch.testing.assert_close(F.entropy_sum(**stats), want_sum)


# ----------------------------------------------------------------------------- diffusers stand-in
class DiagonalGaussianDistribution:
    """diffusers.models.autoencoders.vae.DiagonalGaussianDistribution (0.42), its attributes and sample()."""

    def __init__(self, parameters, deterministic=False):
        self.parameters = parameters
        self.mean, self.logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(self.logvar, -30.0, 20.0)
        self.deterministic = deterministic
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator=None):
        return self.mean + self.std * torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype)

    def kl(self):
        return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=[1, 2, 3])


class TinyAutoencoderKL(nn.Module):
    """The structure of diffusers' AutoencoderKL: encoder -> quant_conv -> latent_dist; post_quant_conv -> decoder."""

    def __init__(self, latent_channels=4):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.SiLU(),
                                     nn.Conv2d(8, 2 * latent_channels, 3, stride=2, padding=1))
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1)
        self.decoder = nn.Sequential(nn.Upsample(scale_factor=4), nn.Conv2d(latent_channels, 1, 3, padding=1))

    def encode(self, x):
        return DiagonalGaussianDistribution(self.quant_conv(self.encoder(x)))  # diffusers: .latent_dist of it

    def decode(self, z):
        return self.decoder(self.post_quant_conv(z))  # diffusers: .sample of it

    def forward(self, x):
        posterior = self.encode(x)
        return self.decode(posterior.sample()), posterior


class DiffusersModule(pl.LightningModule):
    """A fine-tuning step as diffusers' examples write it: MSE reconstruction plus a small KL weight."""

    def __init__(self):
        super().__init__()
        self.vae = TinyAutoencoderKL()
        self.seen = []

    def training_step(self, batch, batch_idx):
        x = batch[0]
        recon, posterior = self.vae(x)
        self.seen.append((posterior.mean.detach(), posterior.logvar.detach()))
        return nn.functional.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_diffusers_autoencoder_kl(tmp_path):
    torch.manual_seed(0)
    module = DiffusersModule()
    vae = module.vae
    # glue
    capture = Capture(posterior=(vae.quant_conv, DiagonalGaussianDistribution), dec_mean=vae.decoder,
                      dec_logvar=0.0)
    monitor = EntropyMonitor(stages=("train",), extract=capture, latent_groups="channel")
    # /glue
    trainer = monitor_trainer(tmp_path, [monitor], max_epochs=1, logger=CSVLogger(tmp_path, name="kl"))
    with pytest.warns(UserWarning, match="decoder variance is fixed"):
        trainer.fit(module, DataLoader(TensorDataset(_images()), batch_size=4))
    mean = torch.cat([m for m, _ in module.seen]).double()
    logvar = torch.cat([v for _, v in module.seen]).double()
    assert mean.shape == (16, 4, 2, 2)  # H = 16 latents in 4 channels
    q = Normal(mean, torch.exp(0.5 * logvar))
    want = q.entropy().sum((1, 2, 3)).mean()
    assert math.isclose(float(trainer.callback_metrics["entropy/train/encoder"]), float(want), rel_tol=1e-5)
    assert math.isclose(float(trainer.callback_metrics["entropy/train/prior"]), 8 * math.log(2 * math.pi * math.e),
                        rel_tol=1e-6)
    header = (tmp_path / "kl" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {f"entropy/train/channel_active/{c}" for c in range(4)} <= set(header)


# ------------------------------------------------------------------------------- bolts stand-in
class BoltsVAE(pl.LightningModule):
    """pl_bolts.models.autoencoders.VAE (0.7.0): fc_mu / fc_var heads, a step that returns only the loss."""

    def __init__(self, input_dim=6, enc_out_dim=8, latent_dim=3, kl_coeff=0.1):
        super().__init__()
        self.kl_coeff = kl_coeff
        self.encoder = nn.Sequential(nn.Linear(input_dim, enc_out_dim), nn.ReLU())
        self.fc_mu = nn.Linear(enc_out_dim, latent_dim)
        self.fc_var = nn.Linear(enc_out_dim, latent_dim)
        self.decoder = nn.Linear(latent_dim, input_dim)
        self.seen = []

    def _run_step(self, x):
        x = self.encoder(x)
        mu = self.fc_mu(x)
        log_var = self.fc_var(x)
        p, q, z = self.sample(mu, log_var)
        return z, self.decoder(z), p, q

    def sample(self, mu, log_var):
        std = torch.exp(log_var / 2)
        p = Normal(torch.zeros_like(mu), torch.ones_like(std))
        q = Normal(mu, std)
        return p, q, q.rsample()

    def step(self, batch, batch_idx):
        x, _ = batch
        z, x_hat, p, q = self._run_step(x)
        recon_loss = nn.functional.mse_loss(x_hat, x, reduction="mean")
        kl = (q.log_prob(z) - p.log_prob(z)).mean() * self.kl_coeff
        self.seen.append((x, x_hat.detach(), q.loc.detach(), q.scale.detach()))
        return kl + recon_loss

    def training_step(self, batch, batch_idx):
        loss = self.step(batch, batch_idx)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def test_bolts_vae_returns_only_a_loss(tmp_path):
    """The bolts recipe states the variance bolts' loss trains (sigma^2 = D/(20H)): the logged ELBO is the Gaussian
    ELBO at that variance, and, per point, -loss/scale - offset of bolts' loss with its KL in closed form."""
    torch.manual_seed(0)
    module = BoltsVAE()
    # glue
    c = F.mse_convention("mean", data_dim=6, latent_dim=3, kl="mean", kl_weight=module.kl_coeff)  # bolts' loss
    capture = Capture(enc_mean=module.fc_mu, enc_logvar=module.fc_var, dec_mean=module.decoder,
                      dec_logvar=c.dec_logvar)
    monitor = EntropyMonitor(stages=("train",), extract=capture)
    # /glue
    assert math.isclose(c.dec_var, 6 / (20 * 3))
    data = TensorDataset(torch.randn(12, 6), torch.zeros(12))
    trainer = monitor_trainer(tmp_path, [monitor], max_epochs=1)
    with pytest.warns(UserWarning, match="decoder variance is fixed"):
        trainer.fit(module, DataLoader(data, batch_size=4))
    logged = float(trainer.callback_metrics["entropy/train/elbo"])
    x, x_hat, mu, std = (torch.cat(t).double() for t in zip(*module.seen))
    q, prior = Independent(Normal(mu, std), 1), Independent(Normal(torch.zeros_like(mu), 1.0), 1)
    lik = Independent(Normal(x_hat, math.sqrt(c.dec_var) * torch.ones_like(x_hat)), 1)
    kl = kl_divergence(q, prior)
    want = (lik.log_prob(x) - kl).mean()
    assert math.isclose(logged, float(want), rel_tol=1e-5)
    # bolts' loss (F.mse_loss mean over D, 0.1 x the KL averaged over H; here the KL in closed form, not bolts'
    # one-sample estimate): the logged ELBO is c.elbo of it
    loss = nn.functional.mse_loss(x_hat, x, reduction="none").mean(-1) + module.kl_coeff * kl / 3
    assert math.isclose(logged, float(c.elbo(loss.mean())), rel_tol=1e-5)
    # the stale recipe, dec_logvar=0.0 (sigma^2 = 1), logs another model's ELBO
    assert abs(float(want) - float((Independent(Normal(x_hat, 1.0), 1).log_prob(x) - kl).mean())) > 1.0


# ------------------------------------------------------------------------------- pytorch/examples VAE
class TextbookVAE(nn.Module):
    """pytorch/examples' ``vae/main.py`` model (784-400-20 there; smaller here): a sigmoid decoder, BCE loss."""

    def __init__(self, data_dim=64, hidden=32, latent_dim=4):
        super().__init__()
        self.data_dim = data_dim
        self.fc1 = nn.Linear(data_dim, hidden)
        self.fc21 = nn.Linear(hidden, latent_dim)
        self.fc22 = nn.Linear(hidden, latent_dim)
        self.fc3 = nn.Linear(latent_dim, hidden)
        self.fc4 = nn.Linear(hidden, data_dim)

    def encode(self, x):
        h1 = torch.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        return mu + torch.randn_like(std) * std

    def decode(self, z):
        return torch.sigmoid(self.fc4(torch.relu(self.fc3(z))))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, self.data_dim))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def textbook_loss(recon_x, x, mu, logvar):
    """pytorch/examples' ``loss_function``: BCE summed over pixels and the batch, plus the closed-form KL."""
    bce = nn.functional.binary_cross_entropy(recon_x, x.view(-1, recon_x.shape[-1]), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


class TextbookModule(pl.LightningModule):
    """The textbook VAE in a Lightning module; ``returns``: what its step returns (``"probs"``: the recipe's one
    line; ``"loss"``: only the loss, for the Capture recipe)."""

    def __init__(self, returns="probs", lr=1e-3):
        super().__init__()
        self.model, self.returns, self.lr = TextbookVAE(), returns, lr
        self.losses = []  # (batch size, loss) of every batch

    def training_step(self, batch, batch_idx):
        x = batch[0]
        recon_x, mu, logvar = self.model(x)
        loss = textbook_loss(recon_x, x, mu, logvar)
        self.losses.append((x.shape[0], float(loss)))
        if self.returns == "loss":
            return loss
        # glue
        return {"loss": loss, "x": x, "enc_mean": mu, "enc_logvar": logvar, "dec_probs": recon_x}
        # /glue

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def _binarized(n=44, d=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, d, generator=gen) < torch.linspace(0.1, 0.9, d)).float()


@pytest.mark.parametrize("returns", ["probs", "loss"])
def test_textbook_vae_logs_the_bernoulli_elbo_of_its_own_loss(tmp_path, returns):
    """The logged ELBO is minus the model's own BCE + KL loss per point (44 points: five batches of 8 and one of 4),
    the summed loss is judged the beta = 1 ELBO, and the entropy sum is the Bernoulli decoder's, from its
    probabilities or (Capture) its logits."""
    torch.manual_seed(0)
    module = TextbookModule(returns=returns, lr=0.0)
    model = module.model
    # glue
    capture = Capture(enc_mean=model.fc21, enc_logvar=model.fc22, dec_logits=model.fc4)  # the sigmoid's input
    monitor = EntropyMonitor(stages=("train",), extract=capture if returns == "loss" else None)
    # /glue
    seen = []
    model.fc4.register_forward_hook(lambda module, inputs, output: seen.append(output.detach()))
    trainer = monitor_trainer(tmp_path, [monitor], max_epochs=1)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(module, DataLoader(TensorDataset(_binarized()), batch_size=8))
    assert not [str(w.message) for w in record if "EntropyMonitor" in str(w.message)]  # a supported model
    metrics = trainer.callback_metrics
    total_loss = sum(loss for _, loss in module.losses)
    assert float(metrics["entropy/train/elbo"]) == pytest.approx(-total_loss / 44, rel=1e-5)
    assert float(metrics["entropy/train/objective_is_elbo"]) == 1.0  # BCE summed over the batch: the ELBO
    # the decoder entropy: the Bernoulli entropy of the logits the fit's forward passes computed, in float64
    logits = torch.cat(seen).double()
    want = torch.distributions.Bernoulli(logits=logits).entropy().sum(-1).mean()
    assert float(metrics["entropy/train/decoder"]) == pytest.approx(float(want), rel=1e-4)
