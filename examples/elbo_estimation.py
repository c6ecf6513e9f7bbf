"""ELBO estimation on held-out data: the entropy sum against the sampled ELBO (Damm et al., Fig. 2b).

Train a VAE-1, then estimate its ELBO on held-out data from n = 10 ... 10,000 points, 10 times
each. The sampled ELBO varies with the points drawn and with the z samples; the entropy sum of
VAE-1 (mean over the points of 0.5 * sum_h log tau_h^2(x), minus (D/2) log(2 pi e sigma^2)) needs no
z samples and varies only through the encoder variances, so its spread is far smaller at every n.

    python examples/elbo_estimation.py                   # pPCA data, fresh held-out samples, ~30 s
    python examples/elbo_estimation.py --data digits     # digits; held-out images drawn with replacement
    python examples/elbo_estimation.py --smoke           # a few seconds
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
import torch
from torch import Tensor

import lightning_entropy_vae.functional as F
from lightning_entropy_vae.data import DigitsDataModule, TensorDataModule, make_ppca_data
from lightning_entropy_vae.models import GaussianVAE

from _common import example_parser, pyplot, save_figure

NAME = "elbo_estimation"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = example_parser(__doc__, NAME)
    parser.add_argument("--data", choices=("ppca", "digits"), default="ppca", help="data set (default: ppca)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 30, 100, 300, 1000, 3000, 10000],
                        help="held-out sample sizes n (default: 10 30 ... 10000)")
    parser.add_argument("--repeats", type=int, default=10, help="estimates per size (default: 10)")
    parser.add_argument("--n-train", type=int, default=5000, help="pPCA training points (default: 5000)")
    parser.add_argument("--latents", type=int, default=4, help="latents H (default: 4)")
    parser.add_argument("--epochs", type=int, default=60, help="training epochs (default: 60)")
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam lr, cosine decay to 0 (default: 1e-2)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes, args.repeats, args.n_train, args.epochs = [10, 100, 1000], 3, 500, 2
    return args


PPCA = {"data_dim": 20, "latent_dim": 4, "noise_std": 0.3}


class CosineVAE(GaussianVAE):
    """GaussianVAE with a cosine learning-rate decay to 0, so training ends near a stationary point."""

    def configure_optimizers(self) -> dict:
        optimizer = super().configure_optimizers()
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.trainer.max_epochs)
        return {"optimizer": optimizer, "lr_scheduler": schedule}


def held_out_sampler(args: argparse.Namespace, data: TensorDataModule):
    """``sample(n, repeat)``: n held-out points, fresh from the pPCA model or drawn with replacement."""
    if args.data == "ppca":
        def sample(n: int, repeat: int) -> Tensor:  # new samples of the same pPCA model (param_seed fixed)
            return make_ppca_data(n, **PPCA, seed=10_000 + 100 * n + repeat, param_seed=args.seed)
    else:
        pool, gen = data.val, torch.Generator().manual_seed(args.seed)

        def sample(n: int, repeat: int) -> Tensor:
            return pool[torch.randint(len(pool), (n,), generator=gen)]
    return sample


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    L.seed_everything(args.seed, verbose=False)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.data == "ppca":
        data = TensorDataModule(make_ppca_data(args.n_train, **PPCA, seed=args.seed), batch_size=128)
    else:
        data = DigitsDataModule(batch_size=64, seed=args.seed)

    model = CosineVAE(data.data_dim, args.latents, kind="vae1", hidden_dims=(64, 64), lr=args.lr)
    trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False,
                        limit_val_batches=0, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model, data)
    model.eval()

    sample = held_out_sampler(args, data)
    estimates = {key: torch.empty(len(args.sizes), args.repeats) for key in ("elbo", "sum")}
    with torch.no_grad():
        for i, n in enumerate(args.sizes):
            for r in range(args.repeats):
                out = model.step(sample(n, r))  # one z sample per point, as in training
                estimates["elbo"][i, r] = out["elbo"].mean()
                estimates["sum"][i, r] = F.entropy_sum(**out)
    mean = {k: v.mean(1) for k, v in estimates.items()}
    std = {k: v.std(1) for k, v in estimates.items()}
    ratio = std["elbo"] / std["sum"]
    result = {"sizes": list(args.sizes), "repeats": args.repeats,
              **{f"{k}_mean": v.tolist() for k, v in mean.items()},
              **{f"{k}_std": v.tolist() for k, v in std.items()},
              "std_ratio": dict(zip(args.sizes, ratio.tolist()))}
    plot(args.sizes, mean, std, args.out / "elbo_estimation.png")

    print(f"\nVAE-1 on {args.data} data (D = {data.data_dim}, H = {args.latents}); held-out estimates,"
          f" {args.repeats} repeats per n (nats per point):")
    print(f"{'n':>6s}{'ELBO mean':>11s}{'ELBO std':>10s}{'sum mean':>10s}{'sum std':>10s}{'std ratio':>11s}")
    for i, n in enumerate(args.sizes):
        print(f"{n:>6d}{mean['elbo'][i]:11.3f}{std['elbo'][i]:10.4f}{mean['sum'][i]:10.3f}{std['sum'][i]:10.4f}"
              f"{ratio[i]:10.1f}x")
    print(f"Figure: {(args.out / 'elbo_estimation.png').resolve()}")
    return result


def plot(sizes: list[int], mean: dict[str, Tensor], std: dict[str, Tensor], path: Path) -> None:
    plt = pyplot()

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("elbo", "sampled ELBO"), ("sum", "entropy sum")):
        left.errorbar(sizes, mean[key], yerr=std[key], capsize=3, marker="o", label=label)
        right.plot(sizes, std[key], marker="o", label=label)
    left.set_xscale("log")
    left.set_xlabel("held-out points n")
    left.set_ylabel("estimate, mean +- std [nats per point]")
    left.legend()
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("held-out points n")
    right.set_ylabel("standard deviation over repeats")
    save_figure(fig, path)


if __name__ == "__main__":
    main()
