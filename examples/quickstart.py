"""Quickstart: your own Gaussian VAE, watched by ``EntropyMonitor``.

The LightningModule below is an ordinary VAE with one change: its steps return the encoder and
decoder statistics (the package's vocabulary) next to the loss. ``EntropyMonitor()`` in the Trainer
then logs, every epoch, the entropy sum (encoder entropy - prior entropy - decoder entropy) next to
the minibatch ELBO. With a learned decoder variance the two meet as training converges, so their
relative gap tells you how far from a stationary point the model is, and the entropy sum is a
sample-free estimate of the ELBO (Damm et al., AISTATS 2023).

    python examples/quickstart.py            # scikit-learn's digits, 150 epochs, ~20 s
    python examples/quickstart.py --smoke    # a few seconds
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.distributions import Normal

from lightning_entropy_vae import EntropyMonitor
from lightning_entropy_vae.data import DigitsDataModule

from _common import example_parser, pyplot, save_figure

NAME = "quickstart"


class VAE(L.LightningModule):
    """A Gaussian VAE with an MLP encoder and decoder and one learnable decoder variance sigma^2."""

    def __init__(self, data_dim: int = 64, latent_dim: int = 8, hidden: int = 128, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = nn.Sequential(nn.Linear(data_dim, hidden), nn.Tanh(),
                                     nn.Linear(hidden, 2 * latent_dim))  # means and log-variances
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Tanh(), nn.Linear(hidden, data_dim))
        self.dec_logvar = nn.Parameter(torch.zeros(()))  # log sigma^2, learned: the theorem needs it

    def step(self, batch: list) -> dict:
        (x,) = batch
        enc_mean, enc_logvar = self.encoder(x).chunk(2, dim=-1)
        z = enc_mean + torch.exp(0.5 * enc_logvar) * torch.randn_like(enc_mean)
        dec_mean = self.decoder(z)
        log_lik = Normal(dec_mean, torch.exp(0.5 * self.dec_logvar)).log_prob(x).sum(-1)
        kl = 0.5 * (enc_mean.square() + enc_logvar.exp() - 1 - enc_logvar).sum(-1)
        elbo = log_lik - kl  # (B,)
        # the loss plus the vocabulary EntropyMonitor reads
        return {"loss": -elbo.mean(), "elbo": elbo, "x": x, "enc_mean": enc_mean, "enc_logvar": enc_logvar,
                "dec_mean": dec_mean, "dec_logvar": self.dec_logvar}

    def training_step(self, batch: list, batch_idx: int) -> dict:
        return self.step(batch)

    def validation_step(self, batch: list, batch_idx: int) -> dict:
        return self.step(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = example_parser(__doc__, NAME)
    parser.add_argument("--epochs", type=int, default=150, help="training epochs (default: 150)")
    parser.add_argument("--latents", type=int, default=8, help="number of latents H (default: 8)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default: 64)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs = 2
    return args


def plot(metrics_csv: Path, path: Path) -> None:
    """The ELBO and the entropy sum per epoch, and their relative gap (from the CSVLogger's file)."""
    plt = pyplot()

    with metrics_csv.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("entropy/train/sum")]
    epochs = [int(r["epoch"]) for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True, height_ratios=[2, 1])
    top.plot(epochs, [float(r["entropy/train/elbo"]) for r in rows], label="minibatch ELBO")
    top.plot(epochs, [float(r["entropy/train/sum"]) for r in rows], label="entropy sum")
    top.set_ylabel("nats per image")
    top.legend()
    bottom.plot(epochs, [100 * float(r["entropy/train/rel_gap"]) for r in rows], color="C2")
    bottom.axhline(0, color="k", lw=0.5)
    bottom.set_ylim(-4, 4)
    bottom.set_ylabel("relative gap [%]")
    bottom.set_xlabel("epoch")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    L.seed_everything(args.seed, verbose=False)
    args.out.mkdir(parents=True, exist_ok=True)

    data = DigitsDataModule(batch_size=args.batch_size, seed=args.seed)
    model = VAE(data_dim=64, latent_dim=args.latents)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        callbacks=[EntropyMonitor()],
        logger=CSVLogger(args.out, name="", version=""),
        accelerator="cpu",
        devices=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, data)

    logged = trainer.callback_metrics
    names = ("elbo", "sum", "rel_gap", "active_latents")
    keys = [f"{stage}/{name}" for stage in ("train", "val") for name in names]
    result = {key: round(float(logged[f"entropy/{key}"]), 4) for key in keys}
    plot(args.out / "metrics.csv", args.out / "elbo_vs_entropy_sum.png")

    print(f"\nDigits, H = {args.latents}, {args.epochs} epochs (nats per image):")
    print(f"{'':6s}{'ELBO':>10s}{'entropy sum':>13s}{'rel. gap':>10s}")
    for stage in ("train", "val"):
        print(f"{stage:6s}{result[f'{stage}/elbo']:10.2f}{result[f'{stage}/sum']:13.2f}"
              f"{result[f'{stage}/rel_gap']:10.2%}")
    print(f"active latents: {int(result['val/active_latents'])} of {args.latents}")
    print("The theorem is about stationary points of the training ELBO: on held-out data the gap also"
          " holds the generalisation gap (the digits are few, the model overfits).")
    print(f"Logs and figure: {args.out.resolve()}")
    return result


if __name__ == "__main__":
    main()
