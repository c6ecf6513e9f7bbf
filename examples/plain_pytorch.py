"""The metrics in a plain PyTorch training loop, without Lightning.

``EntropySumELBO``, ``GaussianELBO`` and ``PosteriorCollapse`` are TorchMetrics metrics: call
``update`` with the dict your VAE step returns (they read the keys they need), ``compute`` at the end
of an epoch, ``reset`` before the next. Here a small Gaussian VAE with a learned decoder variance
trains on scikit-learn's digits; every few epochs it prints the training ELBO next to the entropy sum,
their relative gap, and the number of active latents on held-out data.

    python examples/plain_pytorch.py            # ~30 s
    python examples/plain_pytorch.py --smoke    # a few seconds
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor, nn

import lightning_entropy_vae.functional as F
from lightning_entropy_vae import EntropySumELBO, GaussianELBO, PosteriorCollapse
from lightning_entropy_vae.data import load_digits_tensor, split_tensor

from _common import example_parser, pyplot, save_figure

NAME = "plain_pytorch"


class VAE(nn.Module):
    """Gaussian VAE: MLP encoder and decoder, one learned decoder variance, prior N(0, I)."""

    def __init__(self, data_dim: int, latent_dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(data_dim, hidden), nn.Tanh(),
                                     nn.Linear(hidden, 2 * latent_dim))  # means and log-variances
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Tanh(), nn.Linear(hidden, data_dim))
        self.dec_logvar = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        enc_mean, enc_logvar = self.encoder(x).chunk(2, dim=-1)
        z = enc_mean + torch.exp(0.5 * enc_logvar) * torch.randn_like(enc_mean)
        # no "elbo" key: GaussianELBO computes it from the pieces (return your own to skip that)
        return {"x": x, "enc_mean": enc_mean, "enc_logvar": enc_logvar, "dec_mean": self.decoder(z),
                "dec_logvar": self.dec_logvar}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = example_parser(__doc__, NAME)
    parser.add_argument("--epochs", type=int, default=150, help="training epochs (default: 150)")
    parser.add_argument("--latents", type=int, default=16, help="number of latents H (default: 16)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default: 64)")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default: 3e-3)")
    parser.add_argument("--print-every", type=int, default=15, help="print every n epochs (default: 15)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs, args.print_every = 2, 1
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    train, val = split_tensor(load_digits_tensor(), val_fraction=0.2, seed=args.seed)

    model = VAE(train.shape[1], args.latents)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    entropy_sum, elbo = EntropySumELBO(), GaussianELBO()  # training epoch, per data point
    collapse = PosteriorCollapse(latent_dim=args.latents)  # held-out data

    history: dict[str, list[float]] = {"epoch": [], "elbo": [], "sum": []}
    print(f"{'epoch':>6s}{'ELBO':>10s}{'entropy sum':>13s}{'rel. gap':>10s}{'active':>8s}")
    for epoch in range(args.epochs):
        model.train()
        for i in torch.randperm(len(train)).split(args.batch_size):
            out = model(train[i])
            loss = -F.gaussian_elbo(**out)  # the functional twin of GaussianELBO, differentiable
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            elbo.update(out)  # metric updates run without gradient tracking
            entropy_sum.update(out)
        model.eval()
        with torch.no_grad():
            collapse.update(model(val))
        values = {"elbo": float(elbo.compute()), "sum": float(entropy_sum.compute()["sum"]),
                  "active": int(collapse.compute()["num_active"])}
        for metric in (elbo, entropy_sum, collapse):
            metric.reset()
        history["epoch"].append(epoch)
        history["elbo"].append(values["elbo"])
        history["sum"].append(values["sum"])
        # relative gap as EntropyMonitor computes it: the floor keeps it finite where the ELBO crosses 0
        values["rel_gap"] = (values["elbo"] - values["sum"]) / max(abs(values["sum"]), 0.1 * train.shape[1])
        if (epoch + 1) % args.print_every == 0 or epoch == args.epochs - 1:
            gap = values["rel_gap"]
            print(f"{epoch + 1:>6d}{values['elbo']:10.2f}{values['sum']:13.2f}{gap:10.2%}"
                  f"{values['active']:>5d}/{args.latents}")
    plot(history, args.out / "plain_pytorch.png")
    print(f"Figure: {(args.out / 'plain_pytorch.png').resolve()}")
    return values


def plot(history: dict[str, list[float]], path: Path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(history["epoch"], history["elbo"], label="ELBO (GaussianELBO)")
    ax.plot(history["epoch"], history["sum"], label="entropy sum (EntropySumELBO)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per image (training epoch)")
    ax.legend()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
