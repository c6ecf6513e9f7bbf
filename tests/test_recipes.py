"""The recipes of docs/recipes.md, run: pythae, Pyro and diffusers' AutoencoderKL for real (where they install), and
a stand-in of the lightning-bolts VAE (bolts 0.7.0 requires pytorch-lightning<2, which cannot be installed next to
Lightning 2).

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


def _monitor_warnings(record):
    return [str(w.message) for w in record if "EntropyMonitor" in str(w.message)]


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
class PyroVAE(pl.LightningModule):
    """A Pyro model and guide trained by Lightning, each run once per step: ``returns="distributions"`` traces
    them (what ``Trace_ELBO`` does) and returns the distributions of the traces; ``returns="loss"`` returns
    ``Trace_ELBO().differentiable_loss`` alone (the statistics then come from a Capture).

    ``calls`` counts the runs of the model, the guide and the encoder; ``seen`` keeps, per step, x, the posterior's
    loc and scale and the likelihood's loc that the step's pass computed."""

    def __init__(self, returns, data_dim=5, latent_dim=2, scale=0.5):
        super().__init__()
        self.returns, self.latent_dim, self.scale = returns, latent_dim, scale
        self.encoder, self.decoder = nn.Linear(data_dim, 2 * latent_dim), nn.Linear(latent_dim, data_dim)
        self.calls = {"model": 0, "guide": 0, "encoder": 0}
        self.encoder.register_forward_hook(lambda *_: self.calls.__setitem__("encoder", self.calls["encoder"] + 1))
        self.seen = []

    def model(self, x):
        import pyro
        import pyro.distributions as dist

        self.calls["model"] += 1
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            zeros = x.new_zeros(x.shape[0], self.latent_dim)
            z = pyro.sample("z", dist.Normal(zeros, torch.ones_like(zeros)).to_event(1))
            loc = self.decoder(z)
            self.seen[-1]["dec_loc"] = loc.detach()
            pyro.sample("x", dist.Normal(loc, self.scale).to_event(1), obs=x)

    def guide(self, x):
        import pyro
        import pyro.distributions as dist

        self.calls["guide"] += 1
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            mu, logvar = self.encoder(x).chunk(2, -1)
            self.seen[-1].update(x=x, loc=mu.detach(), scale=torch.exp(0.5 * logvar).detach())
            pyro.sample("z", dist.Normal(mu, torch.exp(0.5 * logvar)).to_event(1))

    def training_step(self, batch, batch_idx):
        from pyro import poutine
        from pyro.infer import Trace_ELBO

        x = batch[0]
        self.seen.append({})
        if self.returns == "loss":
            return Trace_ELBO().differentiable_loss(self.model, self.guide, x) / x.shape[0]
        guide_trace = poutine.trace(self.guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(self.model, trace=guide_trace)).get_trace(x)
        elbo = model_trace.log_prob_sum() - guide_trace.log_prob_sum()  # Trace_ELBO's estimate, summed over x
        # glue
        return {"loss": -elbo / x.shape[0], "x": x, "posterior": guide_trace.nodes["z"]["fn"],
                "prior": model_trace.nodes["z"]["fn"], "likelihood": model_trace.nodes["x"]["fn"]}
        # /glue

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


@pytest.mark.parametrize("returns", ["distributions", "loss"])
def test_pyro_model_and_guide_run_once_per_step(tmp_path, returns):
    """The logged ELBO and entropy sum are those of the distributions the step's one pass built (float64
    references); the model, the guide and the encoder ran once per step."""
    pyro = pytest.importorskip("pyro")
    pyro.clear_param_store()
    torch.manual_seed(0)
    module = PyroVAE(returns)
    if returns == "loss":
        # glue
        capture = Capture(enc_mean=(module.encoder, lambda h: h.chunk(2, -1)[0]),
                          enc_logvar=(module.encoder, lambda h: h.chunk(2, -1)[1]),
                          dec_mean=module.decoder, dec_logvar=2 * math.log(module.scale))  # the likelihood's scale
        # /glue
    monitor = EntropyMonitor(stages=("train",), extract=capture if returns == "loss" else None)
    trainer = monitor_trainer(tmp_path, [monitor], max_epochs=2)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(module, DataLoader(TensorDataset(torch.randn(12, 5)), batch_size=4))
    assert trainer.global_step == 6
    assert module.calls == {"model": 6, "guide": 6, "encoder": 6}  # no second pass
    assert len(module.seen) == 6
    # the monitor's values of the last epoch (3 batches), from the step's own distributions, in float64
    last = module.seen[3:]
    x, loc, scale, dec_loc = (torch.cat([s[k] for s in last]).double() for k in ("x", "loc", "scale", "dec_loc"))
    q = Independent(Normal(loc, scale), 1)
    prior = Independent(Normal(torch.zeros_like(loc), 1.0), 1)
    lik = Independent(Normal(dec_loc, module.scale), 1)
    want_elbo = (lik.log_prob(x) - kl_divergence(q, prior)).mean()
    want_sum = q.entropy().mean() - prior.entropy()[0] - lik.entropy()[0]
    metrics = trainer.callback_metrics
    assert math.isclose(float(metrics["entropy/train/elbo"]), float(want_elbo), rel_tol=1e-5)
    assert math.isclose(float(metrics["entropy/train/sum"]), float(want_sum), rel_tol=1e-5)
    if returns == "loss":  # a number as dec_logvar: a fixed variance
        assert any("decoder variance is fixed" in m for m in _monitor_warnings(record))


# ------------------------------------------------------------------------------------------- diffusers
def _autoencoder_kl(use_quant_conv):
    """A tiny diffusers AutoencoderKL: 1 x 8 x 8 images, 2 latent channels of 4 x 4 (H = 32)."""
    diffusers = pytest.importorskip("diffusers")
    return diffusers.AutoencoderKL(
        in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1, latent_channels=2,
        norm_num_groups=4, sample_size=8, use_quant_conv=use_quant_conv, use_post_quant_conv=use_quant_conv)


class DiffusersModule(pl.LightningModule):
    """A diffusers VAE training step: the MSE averaged over the pixels plus ``kl_weight`` x the KL summed over the
    latents (``posterior.kl()``), averaged over the batch. Records the step's losses."""

    def __init__(self, vae, kl_weight=1e-6):
        super().__init__()
        self.vae, self.kl_weight = vae, kl_weight
        self.losses = []

    def training_step(self, batch, batch_idx):
        x = batch[0]
        posterior = self.vae.encode(x).latent_dist
        recon = self.vae.decode(posterior.sample()).sample
        loss = nn.functional.mse_loss(recon, x) + self.kl_weight * posterior.kl().mean()
        self.losses.append(float(loss))
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


@pytest.mark.parametrize("use_quant_conv", [True, False])
def test_diffusers_autoencoder_kl(tmp_path, use_quant_conv):
    """The logged ELBO is the Gaussian ELBO of the loss the step trains (sigma^2 = kl_weight x D / 2), from the
    posterior and the reconstruction of the step's own pass, with and without ``quant_conv``."""
    torch.manual_seed(0)
    vae = _autoencoder_kl(use_quant_conv)
    module = DiffusersModule(vae)
    assert (vae.quant_conv is None) is not use_quant_conv
    # glue
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    c = F.mse_convention("mean", data_dim=1 * 8 * 8, kl="sum", kl_weight=module.kl_weight)  # the loss's sigma^2
    moments = vae.quant_conv if vae.quant_conv is not None else vae.encoder  # what encode() turns into latent_dist
    capture = Capture(posterior=(moments, DiagonalGaussianDistribution), dec_mean=vae.decoder,
                      dec_logvar=c.dec_logvar)
    monitor = EntropyMonitor(stages=("train",), extract=capture, latent_groups="channel")
    # /glue
    seen = {"moments": [], "recon": []}
    moments.register_forward_hook(lambda m, i, out: seen["moments"].append(out.detach()))
    vae.decoder.register_forward_hook(lambda m, i, out: seen["recon"].append(out.detach()))
    trainer = monitor_trainer(tmp_path, [monitor], max_epochs=1, logger=CSVLogger(tmp_path, name="kl"))
    with pytest.warns(UserWarning, match="decoder variance is fixed"):
        trainer.fit(module, DataLoader(TensorDataset(_images()), batch_size=4))
    assert len(seen["moments"]) == len(seen["recon"]) == 4  # one pass per step
    # float64 references from the step's pass: diffusers' moments are (mean, logvar) along channels, logvar clamped
    x = _images().double()
    mean, logvar = torch.cat(seen["moments"]).double().chunk(2, dim=1)
    logvar = logvar.clamp(-30.0, 20.0)
    recon = torch.cat(seen["recon"]).double()
    assert mean.shape == (16, 2, 4, 4)  # H = 32 latents in 2 channels
    q = Independent(Normal(mean, torch.exp(0.5 * logvar)), 3)
    kl = kl_divergence(q, Independent(Normal(torch.zeros_like(mean), 1.0), 3))
    lik = Independent(Normal(recon, math.sqrt(c.dec_var)), 3)
    want = (lik.log_prob(x) - kl).mean()
    metrics = trainer.callback_metrics
    logged = float(metrics["entropy/train/elbo"])
    assert math.isclose(logged, float(want), rel_tol=1e-5)
    assert math.isclose(logged, c.elbo(sum(module.losses) / len(module.losses)), rel_tol=1e-5)  # of its own loss
    assert math.isclose(float(metrics["entropy/train/encoder"]), float(q.entropy().mean()), rel_tol=1e-5)
    assert math.isclose(float(metrics["entropy/train/prior"]), 16 * math.log(2 * math.pi * math.e), rel_tol=1e-6)
    # sigma^2 = 1 (dec_logvar=0.0) is another model's ELBO, off by far more than the ELBO's own size
    at_one = (Independent(Normal(recon, 1.0), 3).log_prob(x) - kl).mean()
    assert abs(float(at_one) - float(want)) > abs(float(want)) / 2
    header = (tmp_path / "kl" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {f"entropy/train/channel_active/{c}" for c in range(2)} <= set(header)


def test_capture_of_a_none_submodule_says_what_is_expected():
    """diffusers' ``quant_conv`` is None with ``use_quant_conv=False``: hooking it is a TypeError that says a
    submodule was expected and names ``quant_conv``."""
    vae = _autoencoder_kl(use_quant_conv=False)
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    with pytest.raises(TypeError, match=r"Expected the submodule of `posterior` \(the first element of its pair\) to"
                                        r" be a submodule \(an nn.Module\), but got None: .*`quant_conv` None"):
        Capture(posterior=(vae.quant_conv, DiagonalGaussianDistribution), dec_mean=vae.decoder)
    with pytest.raises(TypeError, match=r"Expected `enc_mean` to be a submodule \(an nn.Module\), but got None"):
        Capture(enc_mean=vae.quant_conv)


# ------------------------------------------------------------------------------- bolts stand-in
class BoltsVAE(pl.LightningModule):
    """A stand-in of pl_bolts.models.autoencoders.VAE (0.7.0), whose ``_run_step``, ``sample`` and ``step`` it copies
    with smaller linear layers: fc_mu / fc_var heads, the KL in closed form (``torch.distributions.kl_divergence``),
    a step that returns only the loss. bolts 0.7.0 itself requires pytorch-lightning<2 and subclasses its
    LightningModule, which a Lightning 2 Trainer rejects."""

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
        p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(std))
        q = torch.distributions.Normal(mu, std)
        z = q.rsample()
        return p, q, z

    def step(self, batch, batch_idx):
        x, _y = batch
        _z, x_hat, p, q = self._run_step(x)
        recon_loss = nn.functional.mse_loss(x_hat, x, reduction="mean")
        kl = torch.distributions.kl_divergence(q, p)
        kl = kl.mean()
        kl *= self.kl_coeff
        loss = kl + recon_loss
        self.seen.append((x, x_hat.detach(), q.loc.detach(), q.scale.detach(), float(loss)))
        return loss, {"recon_loss": recon_loss, "kl": kl, "loss": loss}

    def training_step(self, batch, batch_idx):
        loss, logs = self.step(batch, batch_idx)
        self.log_dict({f"train_{k}": v for k, v in logs.items()}, on_step=True, on_epoch=False)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def test_bolts_vae_returns_only_a_loss(tmp_path):
    """The bolts recipe states the variance bolts' loss trains (sigma^2 = D/(20H)): the logged ELBO is the Gaussian
    ELBO at that variance, and -loss/scale - offset of bolts' own loss (its KL is in closed form)."""
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
    x, x_hat, mu, std = (torch.cat(t).double() for t in list(zip(*module.seen))[:4])
    q, prior = Independent(Normal(mu, std), 1), Independent(Normal(torch.zeros_like(mu), 1.0), 1)
    lik = Independent(Normal(x_hat, math.sqrt(c.dec_var) * torch.ones_like(x_hat)), 1)
    kl = kl_divergence(q, prior)
    want = (lik.log_prob(x) - kl).mean()
    assert math.isclose(logged, float(want), rel_tol=1e-5)
    # bolts' own loss, per batch (equal batches): the logged ELBO is c.elbo of its mean
    losses = [loss for *_, loss in module.seen]
    assert math.isclose(logged, float(c.elbo(sum(losses) / len(losses))), rel_tol=1e-5)
    # dec_logvar=0.0 (sigma^2 = 1) logs another model's ELBO
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
    # a supported model: neither the fixed-variance nor the Bernoulli-loss warning of a Gaussian reading
    assert not [str(w.message) for w in record if "decoder variance is fixed" in str(w.message)
                or "Bernoulli (BCE)" in str(w.message)]
    metrics = trainer.callback_metrics
    total_loss = sum(loss for _, loss in module.losses)
    assert float(metrics["entropy/train/elbo"]) == pytest.approx(-total_loss / 44, rel=1e-5)
    assert float(metrics["entropy/train/objective_is_elbo"]) == 1.0  # BCE summed over the batch: the ELBO
    # the decoder entropy: the Bernoulli entropy of the logits the fit's forward passes computed, in float64
    logits = torch.cat(seen).double()
    want = torch.distributions.Bernoulli(logits=logits).entropy().sum(-1).mean()
    assert float(metrics["entropy/train/decoder"]) == pytest.approx(float(want), rel=1e-4)
