"""Held-out ELBO estimation: the entropy sum against the sampled ELBO and an IWAE reference (Damm et al., Fig. 2).

The paper's procedure: train a VAE, then estimate its ELBO on shuffled held-out data in batches of 10
from n = 10, 100, 1,000 and 10,000 points, ten times each. The sampled ELBO varies with the points
drawn and with the z samples. The entropy sum needs no z samples for VAE-1 (mean over the points of
0.5 * sum_h log tau_h^2(x), minus (D/2) log(2 pi e sigma^2)); for VAE-3 its decoder entropy is taken at
the z the step drew. Either way it varies far less than the sampled ELBO at every n.

The reference a user would otherwise compute is the importance-weighted log-likelihood (IWAE bound,
K = 1,000 z samples per point; Burda et al. 2016), a tighter bound on log p(x) than the ELBO. It is
computed here for the same points at n <= 1,000 (``--iwae-max-n``), with its cost per point.

VAE-1 and VAE-3 on pPCA data (D = 20, k = 4), the PCA-ring (D = 10) and the paper's k = 10 manifold
in D = 100, 25,000 training and 25,000 held-out points each (the split of the paper's code for its
synthetic data). The paper's Fig. 2 is a VAE-1 on CelebA (D = 12,288): the sampled ELBO's spread grows
with D (a point's log-likelihood sums D terms), the entropy sum's comes from the encoder variances.

    python examples/elbo_estimation.py                                 # 6 models, about 4 min on one core
    python examples/elbo_estimation.py --data digits --sizes 10 100    # digits: 359 held-out images
    python examples/elbo_estimation.py --smoke                         # a few seconds
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torch.distributions import Normal

import lightning_entropy_vae.functional as F
from lightning_entropy_vae.data import (
    load_digits_tensor,
    make_manifold,
    make_pca_ring,
    make_ppca_data,
    split_tensor,
)
from lightning_entropy_vae.models import GaussianVAE

from _common import adam_with_fast_variance, example_parser, pyplot, save_figure

NAME = "elbo_estimation"
DATA = ("ppca", "pca_ring", "manifold", "digits")
GENERATORS = {"ppca": make_ppca_data, "pca_ring": make_pca_ring, "manifold": make_manifold}
#: Per data set: latents H and the generator's arguments (digits: scikit-learn's, dequantised).
SETTINGS = {"ppca": {"latents": 4, "data_dim": 20, "latent_dim": 4, "noise_std": 0.3},
            "pca_ring": {"latents": 2, "data_dim": 10, "noise_std": 0.05},
            "manifold": {"latents": 10, "latent_dim": 10, "data_dim": 100, "noise_std": 0.05},
            "digits": {"latents": 8}}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = example_parser(__doc__, NAME)
    parser.add_argument("--data", nargs="+", choices=DATA, default=["ppca", "pca_ring", "manifold"],
                        help="data sets (default: ppca pca_ring manifold)")
    parser.add_argument("--kinds", nargs="+", choices=("vae1", "vae3"), default=["vae1", "vae3"],
                        help="models (default: vae1 vae3)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000, 10000],
                        help="held-out sample sizes n, multiples of the batch size (default: 10 100 1000 10000)")
    parser.add_argument("--repeats", type=int, default=10, help="estimates per size (default: 10)")
    parser.add_argument("--batch-size", type=int, default=10, help="held-out batch size (default: 10, the paper's)")
    parser.add_argument("--n", type=int, default=50_000,
                        help="synthetic points, split half/half into training and held-out (default: 50,000)")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs (default: 30)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64], help="MLP widths (default: 64 64)")
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam lr, cosine decay to 0 (default: 1e-2)")
    parser.add_argument("--variance-lr", type=float, default=10.0,
                        help="learning rate of the decoder variance as a multiple of --lr (default: 10)")
    parser.add_argument("--iwae-samples", type=int, default=1000, help="IWAE samples K (default: 1,000)")
    parser.add_argument("--iwae-max-n", type=int, default=1000,
                        help="compute the IWAE reference for n up to this (default: 1,000)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes, args.repeats, args.n, args.epochs = [10, 100, 1000], 3, 4000, 1
        args.iwae_samples, args.iwae_max_n, args.hidden = 50, 100, [16]
    bad = [n for n in args.sizes if n <= 0 or n % args.batch_size]
    if bad:
        parser.error(f"--sizes must be positive multiples of --batch-size {args.batch_size}, got {bad}")
    return args


class CosineVAE(GaussianVAE):
    """GaussianVAE with a cosine learning-rate decay to 0, so training ends near a stationary point.

    Its decoder variance learns ``variance_lr`` times faster than the rest (see ``adam_with_fast_variance``).
    """

    variance_lr = 10.0

    def configure_optimizers(self) -> dict:
        optimizer = adam_with_fast_variance(self, self.hparams.lr, self.variance_lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.trainer.max_epochs)
        return {"optimizer": optimizer, "lr_scheduler": schedule}


def make_data(name: str, args: argparse.Namespace) -> tuple[Tensor, Tensor]:
    """Training and held-out data: half of ``args.n`` synthetic points each, or the digits' 80/20 split."""
    settings = {k: v for k, v in SETTINGS[name].items() if k != "latents"}
    if name == "digits":  # 17 grey levels: dequantise, or VAE-3 drives the variance of blank pixels to 0
        x = load_digits_tensor()
        x = x + torch.rand(x.shape, generator=torch.Generator().manual_seed(args.seed)) / 16
        return split_tensor(x, val_fraction=0.2, seed=args.seed)
    return split_tensor(GENERATORS[name](args.n, seed=args.seed, **settings), val_fraction=0.5, seed=args.seed)


def train(kind: str, data: Tensor, latents: int, args: argparse.Namespace) -> GaussianVAE:
    L.seed_everything(args.seed, verbose=False)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=128, shuffle=True)
    model = CosineVAE(data.shape[1], latents, kind=kind, hidden_dims=args.hidden, lr=args.lr)
    model.variance_lr = args.variance_lr
    trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, loader)
    return model.eval()


def single_sample_estimates(model: GaussianVAE, x: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """Sampled ELBO and entropy sum of ``x`` (n, D) in batches of ``batch_size``, averaged over the batches."""
    out = model.step(x)  # one z per point, as in training
    elbo = out["elbo"]  # (n,) per point
    entropy_sum = F.entropy_sum(enc_logvar=out["enc_logvar"], dec_logvar=out["dec_logvar"], x=out["x"],
                                reduction="none")
    per_batch = [v.reshape(-1, batch_size).mean(1) for v in (elbo, entropy_sum)]  # what each batch reports
    return per_batch[0].mean(), per_batch[1].mean()


def iwae_log_likelihood(model: GaussianVAE, x: Tensor, samples: int) -> Tensor:
    r"""Importance-weighted estimate of log p(x) per point (n,), with ``samples`` draws from q(z|x).

    .. math:: \log \frac1K \sum_k \frac{p(x|z_k)\,p(z_k)}{q(z_k|x)},\quad z_k \sim q(z|x)

    Written with ``torch.distributions`` (not the package's functions): the reference, not the estimate.
    """
    chunk = max(1, 4_000_000 // (samples * max(x.shape[1], model.latent_dim)))
    values = []
    for part in x.split(chunk):
        mean, logvar = model.encode(part)
        posterior = Normal(mean, torch.exp(0.5 * logvar))
        z = posterior.sample((samples,))  # (K, b, H)
        dec_mean, dec_logvar = model.decode(z)
        log_lik = Normal(dec_mean, torch.exp(0.5 * dec_logvar)).log_prob(part).sum(-1)
        log_prior = Normal(0.0, 1.0).log_prob(z).sum(-1)
        log_w = log_lik + log_prior - posterior.log_prob(z).sum(-1)
        values.append(torch.logsumexp(log_w, 0) - math.log(samples))
    return torch.cat(values)


def estimate(model: GaussianVAE, held_out: Tensor, args: argparse.Namespace) -> dict:
    """Ten (``repeats``) estimates per n from a fresh shuffle of the held-out data each time."""
    gen = torch.Generator().manual_seed(args.seed)
    sizes = [n for n in args.sizes if n <= len(held_out)]
    est = {key: torch.full((len(sizes), args.repeats), math.nan) for key in ("elbo", "sum", "iwae")}
    seconds = {"single": 0.0, "iwae": 0.0}
    points = {"single": 0, "iwae": 0}
    with torch.no_grad():
        for i, n in enumerate(sizes):
            for r in range(args.repeats):
                x = held_out[torch.randperm(len(held_out), generator=gen)[:n]]
                start = time.perf_counter()
                est["elbo"][i, r], est["sum"][i, r] = single_sample_estimates(model, x, args.batch_size)
                seconds["single"] += time.perf_counter() - start
                points["single"] += n
                if n <= args.iwae_max_n:
                    start = time.perf_counter()
                    est["iwae"][i, r] = iwae_log_likelihood(model, x, args.iwae_samples).mean()
                    seconds["iwae"] += time.perf_counter() - start
                    points["iwae"] += n
        out = model.step(held_out)  # why the spreads differ: how much a single point's value varies
        point_sum = F.entropy_sum(enc_logvar=out["enc_logvar"], dec_logvar=out["dec_logvar"], x=out["x"],
                                  reduction="none")
    result = {"sizes": sizes, "held_out": len(held_out), "estimates": {k: v.tolist() for k, v in est.items()},
              "point_std_elbo": float(out["elbo"].std()), "point_std_sum": float(point_sum.std())}
    for key, v in est.items():
        result[f"{key}_mean"] = v.mean(1).tolist()
        result[f"{key}_std"] = v.std(1).tolist()
    result["std_ratio"] = dict(zip(sizes, (est["elbo"].std(1) / est["sum"].std(1)).tolist()))
    result["us_per_point"] = {k: 1e6 * seconds[k] / max(points[k], 1) for k in seconds}
    return result


def plot(results: dict[str, dict], path: Path) -> None:
    """Per model: the estimates per n (dots, one per repeat) and their standard deviations (bars, log axis)."""
    plt = pyplot()

    styles = {"elbo": ("sampled ELBO", "C0"), "sum": ("entropy sum", "C3"), "iwae": ("IWAE log-lik.", "C2")}
    fig, axes = plt.subplots(len(results), 2, figsize=(10, 2.8 * len(results)), squeeze=False)
    for (left, right), (key, r) in zip(axes, results.items()):
        sizes = r["sizes"]
        width = 0.8 / len(styles)
        for j, (name, (label, color)) in enumerate(styles.items()):
            values = torch.tensor(r["estimates"][name])
            offset = 1.15 ** (j - 1)  # side by side on the log axis
            for i, n in enumerate(sizes):
                if not torch.isnan(values[i]).all():
                    left.scatter([n * offset] * values.shape[1], values[i], s=9, color=color, alpha=0.7,
                                 label=label if i == 0 else None)
            std = [s if s == s else 0.0 for s in r[f"{name}_std"]]
            right.bar([i + (j - 1) * width for i in range(len(sizes))], std, width=width, color=color, label=label)
        left.set_xscale("log")
        left.set_ylabel(f"{key}\nestimate [nats per point]")
        right.set_yscale("log")
        right.set_xticks(range(len(sizes)), [str(n) for n in sizes])
        right.set_ylabel("std over repeats")
    axes[0, 0].legend(fontsize="small")
    axes[0, 1].legend(fontsize="small")
    axes[-1, 0].set_xlabel("held-out points n")
    axes[-1, 1].set_xlabel("held-out points n")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for name in args.data:
        train_x, held_out = make_data(name, args)
        latents = SETTINGS[name]["latents"]
        for kind in args.kinds:
            start = time.perf_counter()
            model = train(kind, train_x, latents, args)
            r = estimate(model, held_out, args)
            r.update(data=name, kind=kind, data_dim=train_x.shape[1], latents=latents, n_train=len(train_x),
                     iwae_samples=args.iwae_samples,
                     seconds=round(time.perf_counter() - start, 1))
            results[f"{name}/{kind}"] = r
            report(r, args)
    plot(results, args.out / "elbo_estimation.png")
    print(f"Figure: {(args.out / 'elbo_estimation.png').resolve()}")
    return results


def report(r: dict, args: argparse.Namespace) -> None:
    print(f"\n{r['kind'].upper()} on {r['data']} (D = {r['data_dim']}, H = {r['latents']}, {r['n_train']} training"
          f" points); {args.repeats} estimates per n from {r['held_out']} shuffled held-out points in batches of"
          f" {args.batch_size} (nats per point):")
    print(f"{'n':>6s}{'ELBO mean':>11s}{'ELBO std':>10s}{'sum mean':>10s}{'sum std':>10s}{'std ratio':>11s}"
          f"{'IWAE mean':>11s}{'IWAE std':>10s}")
    for i, n in enumerate(r["sizes"]):
        iwae = "" if math.isnan(r["iwae_mean"][i]) else f"{r['iwae_mean'][i]:11.3f}{r['iwae_std'][i]:10.4f}"
        print(f"{n:>6d}{r['elbo_mean'][i]:11.3f}{r['elbo_std'][i]:10.4f}{r['sum_mean'][i]:10.3f}"
              f"{r['sum_std'][i]:10.4f}{r['std_ratio'][n]:10.1f}x{iwae}")
    print(f"Per point (all held-out points, one z each): std of the ELBO {r['point_std_elbo']:.3f}, of the entropy"
          f" sum {r['point_std_sum']:.3f} ({r['point_std_elbo'] / r['point_std_sum']:.1f}x).")
    cost = r["us_per_point"]
    print(f"Cost per point: ELBO and entropy sum together {cost['single']:.1f} us; IWAE with K ="
          f" {args.iwae_samples} {cost['iwae']:.0f} us ({cost['iwae'] / cost['single']:.0f}x).")


if __name__ == "__main__":
    main()
