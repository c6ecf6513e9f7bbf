"""The paper's toy manifolds: VAE-1 and VAE-3 reach the entropy sum on each (Damm et al., Fig. 1 and 5).

The verification data of the paper's code (its ``ToyDataset``): a circle, eight Gaussians, a cosine,
a lemniscate, a swiss roll, a 3-D spiral and a k = 10 manifold in D = 100, each rescaled to [0, 1]
per coordinate as there. A VAE-1 (one learned decoder variance) and a VAE-3 (decoder variances
sigma_d^2(z)) train on each with Adam and a cosine learning-rate decay to 0, so that training ends
near a stationary point; the decoder variance (VAE-3: its output layer) learns 10x faster, like the
"fast" variance learning rate of the paper's code, so that it keeps up with the shrinking
reconstruction error. At the end the script scores the whole training set with S = 10 z samples per
point and reports the paper's relative difference |ELBO - entropy sum| / |ELBO| (its figures use a
0-4 % axis); the same difference is recorded after every epoch.

The paper's code adds no noise to the k-manifold; here every set carries noise of std 0.05 before
rescaling (the swiss roll 0.005, as scikit-learn's roll with noise 0.05 divided by 10), so that each
has a density in its D dimensions. The circle's noise is isotropic here, radial there.

    python examples/toy_manifolds.py                        # 7 data sets x 2 models, about 3 min on one core
    python examples/toy_manifolds.py --data circle cosine   # some of them
    python examples/toy_manifolds.py --smoke                # a few seconds
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from torch import Tensor

import lightning_entropy_vae.functional as F
from lightning_entropy_vae.data import (
    make_circle,
    make_cosine,
    make_eight_gaussians,
    make_lemniscate,
    make_manifold,
    make_spiral_3d,
    make_swiss_roll,
)
from lightning_entropy_vae.models import GaussianVAE

from _common import adam_with_fast_variance, example_parser, pyplot, save_figure

NAME = "toy_manifolds"
#: name: (generator, its arguments as in the paper's code, latents H)
DATASETS = {
    "circle": (make_circle, {"radius": 1.0, "noise_std": 0.05}, 2),
    "eight_gaussians": (make_eight_gaussians, {"radius": 0.4, "noise_std": 0.05}, 2),
    "cosine": (make_cosine, {"noise_std": 0.05}, 2),
    "lemniscate": (make_lemniscate, {"noise_std": 0.05}, 2),
    "swiss_roll": (make_swiss_roll, {"noise_std": 0.005}, 3),
    "spiral_3d": (make_spiral_3d, {"noise_std": 0.05}, 3),
    "manifold": (make_manifold, {"latent_dim": 10, "data_dim": 100, "noise_std": 0.05}, 10),
}
KINDS = ("vae1", "vae3")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = example_parser(__doc__, NAME)
    parser.add_argument("--data", nargs="+", choices=tuple(DATASETS), default=list(DATASETS),
                        help="data sets (default: all seven)")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="models (default: both)")
    parser.add_argument("--n", type=int, default=10_000, help="training points per data set (default: 10,000)")
    parser.add_argument("--epochs", type=int, default=100, help="training epochs (default: 100)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (default: 128)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64], help="MLP widths (default: 64 64)")
    parser.add_argument("--lr", type=float, default=1e-2, help="initial Adam lr, cosine decay to 0 (default: 1e-2)")
    parser.add_argument("--variance-lr", type=float, default=10.0,
                        help="learning rate of the decoder variance as a multiple of --lr (default: 10)")
    parser.add_argument("--eval-samples", type=int, default=10, help="z samples per point at the end (default: 10)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.n, args.epochs, args.hidden, args.eval_samples = 500, 2, [16], 2
    return args


def make_data(name: str, n: int, seed: int) -> Tensor:
    """``n`` points of the named set, each coordinate rescaled to [0, 1] (the paper's ``MinMaxScaler``)."""
    make, kwargs, _ = DATASETS[name]
    x = make(n, seed=seed, **kwargs)
    low, high = x.min(0).values, x.max(0).values
    return (x - low) / (high - low)


def elbo_and_sum(model: GaussianVAE, x: Tensor, samples: int) -> tuple[float, float]:
    """Sampled ELBO (``samples`` z per point) and entropy sum (decoder entropy at the same z), nats per point."""
    with torch.no_grad():
        eps = torch.randn(samples, x.shape[0], model.latent_dim)
        out = model.step(x, eps)
        entropy_sum = F.entropy_sum(enc_logvar=out["enc_logvar"], dec_logvar=out["dec_logvar"], x=out["x"])
    return float(out["elbo"].mean()), float(entropy_sum)


def rel_gap(elbo: float, entropy_sum: float) -> float:
    """The paper's relative difference |ELBO - entropy sum| / |ELBO|."""
    return abs(elbo - entropy_sum) / abs(elbo)


def floored_gap(elbo: float, entropy_sum: float, data_dim: int, floor: float = 0.1) -> float:
    """|ELBO - entropy sum| / max(|entropy sum|, floor * D): ``EntropyMonitor``'s ``abs_rel_gap``.

    The plain relative difference is ill-conditioned where the ELBO crosses zero: measuring the data in
    other units (x -> c x) shifts the ELBO by -D log c nats per point and leaves the gap itself unchanged.
    """
    return abs(elbo - entropy_sum) / max(abs(entropy_sum), floor * data_dim)


def fit(kind: str, x: Tensor, latents: int, args: argparse.Namespace) -> dict:
    """Train with Adam and a cosine decay; the relative gap after every epoch (S = 1) and at the end.

    Both are scored on the whole training set: the equality holds for the average over the data the
    ELBO is a stationary point of, and the ELBO of a subset varies with the points in it (Fig. 2).
    """
    torch.manual_seed(args.seed)
    model = GaussianVAE(x.shape[1], latents, kind=kind, hidden_dims=args.hidden, lr=args.lr)
    optimizer = adam_with_fast_variance(model, args.lr, args.variance_lr)
    steps = args.epochs * math.ceil(len(x) / args.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    curve = []
    start = time.perf_counter()
    for _ in range(args.epochs):
        for batch in x[torch.randperm(len(x))].split(args.batch_size):
            loss = -model.step(batch)["elbo"].mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        curve.append(rel_gap(*elbo_and_sum(model, x, 1)))
    elbo, entropy_sum = elbo_and_sum(model, x, args.eval_samples)
    return {"elbo": elbo, "sum": entropy_sum, "rel_gap": rel_gap(elbo, entropy_sum), "abs_gap": elbo - entropy_sum,
            "floored_gap": floored_gap(elbo, entropy_sum, x.shape[1]), "data_dim": x.shape[1], "curve": curve,
            "seconds": round(time.perf_counter() - start, 1)}


def plot(data: dict[str, Tensor], results: dict[str, dict], kinds: list[str], path: Path) -> None:
    """Top: the data sets (first two coordinates). Bottom: relative gap per epoch (log axis; dashed: 4 %)."""
    plt = pyplot()

    names = list(results)
    fig = plt.figure(figsize=(max(10, 1.6 * len(names)), 6.5))
    grid = fig.add_gridspec(2, len(names) * len(kinds), height_ratios=(1, 2.2))
    for i, name in enumerate(names):
        ax = fig.add_subplot(grid[0, i * len(kinds):(i + 1) * len(kinds)])
        shown = data[name][:2000]
        ax.scatter(shown[:, 0], shown[:, 1], s=1, alpha=0.4)
        ax.set_title(f"{name} (D = {data[name].shape[1]})", fontsize="small")
        ax.set_xticks([])
        ax.set_yticks([])
    for j, kind in enumerate(kinds):
        ax = fig.add_subplot(grid[1, j * len(names):(j + 1) * len(names)])
        for name in names:
            curve = [100 * v for v in results[name][kind]["curve"]]
            ax.plot(range(1, len(curve) + 1), curve, lw=1, label=name)
        ax.axhline(4, color="k", lw=0.8, ls="--")  # the top of the paper's axis
        ax.set_yscale("log")
        ax.set_ylim(1e-2, 100)
        ax.set_xlabel("epoch")
        ax.set_title(kind.upper().replace("VAE", "VAE-"))
        if j == 0:
            ax.set_ylabel("|ELBO - entropy sum| / |ELBO| [%]")
            ax.legend(fontsize="small", ncols=2)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    data = {name: make_data(name, args.n, args.seed) for name in args.data}
    results = {name: {kind: fit(kind, x, DATASETS[name][2], args) for kind in args.kinds}
               for name, x in data.items()}
    plot(data, results, args.kinds, args.out / "toy_manifolds.png")

    print(f"\n{args.n} training points per set, rescaled to [0, 1]; {args.epochs} epochs; ELBO with"
          f" S = {args.eval_samples} z samples per point, nats per point:")
    print(f"{'data':16s}{'D':>4s}{'H':>4s}" + "".join(
        f"{k + ' ELBO':>11s}{k + ' sum':>10s}{k + ' gap':>10s}{'floored':>9s}" for k in args.kinds))
    for name, per_kind in results.items():
        cells = "".join(f"{r['elbo']:11.3f}{r['sum']:10.3f}{r['rel_gap']:10.2%}{r['floored_gap']:9.2%}"
                        for r in per_kind.values())
        print(f"{name:16s}{data[name].shape[1]:4d}{DATASETS[name][2]:4d}{cells}")
    print("gap: the paper's relative difference |ELBO - entropy sum| / |ELBO|; floored: |ELBO - entropy sum| /"
          " max(|entropy sum|, 0.1 D), EntropyMonitor's abs_rel_gap, which stays finite where the ELBO crosses 0.")
    print(f"Figure: {(args.out / 'toy_manifolds.png').resolve()}")
    return results


if __name__ == "__main__":
    main()
