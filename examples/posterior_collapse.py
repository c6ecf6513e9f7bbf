"""Posterior-collapse monitoring: which latents carry information (Damm et al., Fig. 3b).

A collapsed latent h has q(z_h|x) = p(z_h) for every x: its average encoder entropy equals the
prior's (1.42 nats for N(0, 1)) and it adds nothing to the ELBO. ``EntropyMonitor`` counts latent h
as active when that average entropy is below 1.0 nat (the paper's criterion) and logs, per epoch,
each latent's entropy, KL and flag plus the number of active latents.

Part 1 trains a VAE-1 with more latents than the digits need (H = 32) and prints what the monitor
found, each latent's entropy, and the flags of two classic criteria (per-latent KL < 0.01 nats;
"active units", Var_x E_q[z_h] < 0.01, Burda et al. 2016), computed with ``PosteriorCollapse``.
Part 2 trains VAE-1s with H = 8 on pPCA data of known intrinsic dimension k and compares the
number of active latents found with k.

    python examples/posterior_collapse.py            # ~30 s
    python examples/posterior_collapse.py --smoke    # a few seconds
"""

from __future__ import annotations

import argparse
import csv
import warnings
from pathlib import Path

import lightning as L
import matplotlib
import matplotlib.pyplot as plt
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_entropy_vae import EntropyMonitor, PosteriorCollapse
from lightning_entropy_vae.data import DigitsDataModule, TensorDataModule, make_ppca_data, split_tensor
from lightning_entropy_vae.models import GaussianVAE

from _common import example_parser, save_figure

NAME = "posterior_collapse"
CRITERIA = ("entropy", "kl", "active_units")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = example_parser(__doc__, NAME)
    parser.add_argument("--latents", type=int, default=32, help="latents H of the digits VAE (default: 32)")
    parser.add_argument("--epochs", type=int, default=100, help="digits training epochs (default: 100)")
    parser.add_argument("--ppca-dims", type=int, nargs="*", default=[2, 5],
                        help="intrinsic dimensions k of the pPCA data sets (default: 2 5; none: skip part 2)")
    parser.add_argument("--ppca-latents", type=int, default=8, help="latents H of the pPCA VAEs (default: 8)")
    parser.add_argument("--ppca-epochs", type=int, default=40, help="pPCA training epochs (default: 40)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.latents, args.epochs, args.ppca_dims, args.ppca_epochs = 8, 2, [2], 2
    return args


def fit(model: GaussianVAE, data: TensorDataModule, epochs: int, logger: CSVLogger | bool) -> dict:
    """Train with EntropyMonitor; return the last epoch's logged metrics."""
    monitor = EntropyMonitor(warn_on_collapse=False)  # the per-epoch warnings would flood this demo
    trainer = L.Trainer(max_epochs=epochs, callbacks=[monitor], logger=logger, accelerator="cpu", devices=1,
                        log_every_n_steps=10, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model, data)
    return {key: float(value) for key, value in trainer.callback_metrics.items()}


def collapse_stats(model: GaussianVAE, x: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    """``PosteriorCollapse(criterion=...)`` of the trained model on ``x``, for each criterion."""
    stats = {}
    with torch.no_grad():
        out = model.step(x)
    for criterion in CRITERIA:
        metric = PosteriorCollapse(latent_dim=model.latent_dim, criterion=criterion)
        metric.update(out)
        stats[criterion] = metric.compute()
    return stats


def digits_part(args: argparse.Namespace) -> dict:
    L.seed_everything(args.seed, verbose=False)
    data = DigitsDataModule(batch_size=64, seed=args.seed)
    model = GaussianVAE(64, args.latents, kind="vae1", hidden_dims=(128,), lr=3e-3)
    logged = fit(model, data, args.epochs, CSVLogger(args.out, name="digits", version=""))
    stats = collapse_stats(model, data.val)
    per_latent = stats["entropy"]
    print(f"\nDigits, VAE-1 with H = {args.latents}, {args.epochs} epochs. Per latent, on validation data"
          " (* = collapsed under that criterion):")
    print(f"{'h':>3s}{'entropy':>9s}{'KL':>8s}{'Var E[z]':>10s}   collapsed by: entropy  kl  active_units")
    order = per_latent["latent_entropy"].argsort()
    for h in order.tolist():
        marks = ["*" if stats[c]["collapsed"][h] else "." for c in CRITERIA]
        flags = "".join(f"{mark:>{width}s}" for mark, width in zip(marks, (24, 4, 14)))
        print(f"{h:>3d}{per_latent['latent_entropy'][h]:9.3f}{per_latent['latent_kl'][h]:8.3f}"
              f"{per_latent['latent_mean_variance'][h]:10.4f}{flags}")
    monitor_active = int(logged["entropy/val/active_latents"])
    active = {c: int(stats[c]["num_active"]) for c in CRITERIA}
    agree = bool((stats["entropy"]["collapsed"] == stats["kl"]["collapsed"]).all()
                 and (stats["entropy"]["collapsed"] == stats["active_units"]["collapsed"]).all())
    print(f"Active latents: EntropyMonitor (val) {monitor_active}; PosteriorCollapse by entropy"
          f" {active['entropy']}, by kl {active['kl']}, by active_units {active['active_units']}"
          f" of {args.latents} ({'the three criteria agree' if agree else 'the criteria differ'})")
    plot_digits(args.out / "digits" / "metrics.csv", args.latents, args.out / "latent_entropies.png")
    figure, _ = PosteriorCollapse(latent_dim=args.latents).plot(per_latent)  # bars against the threshold
    figure.savefig(args.out / "latent_bars.png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    return {"monitor_active": monitor_active, "active": active, "criteria_agree": agree,
            "latent_entropy": per_latent["latent_entropy"].tolist()}


def ppca_part(args: argparse.Namespace) -> dict[int, int]:
    found = {}
    for k in args.ppca_dims:
        L.seed_everything(args.seed, verbose=False)
        x = make_ppca_data(3000, data_dim=10, latent_dim=k, noise_std=0.1, seed=args.seed + k)
        train, val = split_tensor(x, val_fraction=0.2, seed=args.seed)
        model = GaussianVAE(10, args.ppca_latents, kind="vae1", hidden_dims=(64,), lr=3e-3)
        logged = fit(model, TensorDataModule(train, val, batch_size=64), args.ppca_epochs, logger=False)
        found[k] = int(logged["entropy/val/active_latents"])
    if found:
        print(f"\npPCA data (D = 10), VAE-1 with H = {args.ppca_latents}:"
              " active latents found by EntropyMonitor (val)")
        for k, n in found.items():
            print(f"  intrinsic dimension k = {k}: {n} active latents")
    return found


def plot_digits(metrics_csv: Path, latents: int, path: Path) -> None:
    """Each latent's average encoder entropy per epoch (logged by EntropyMonitor) and the active count."""
    series: dict[str, list[float]] = {}  # key -> values in logging order (one per epoch)
    with metrics_csv.open(newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if value:
                    series.setdefault(key, []).append(float(value))
    width = len(str(latents - 1))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, height_ratios=[2, 1])
    for h in range(latents):
        values = series.get(f"entropy/val/latent_entropy/{h:0{width}d}", [])
        top.plot(range(len(values)), values, lw=0.8)
    top.axhline(1.0, color="C3", ls="--", label="collapse threshold (1.0 nat)")
    top.axhline(1.4189, color="k", ls=":", label="prior entropy (1.42 nats)")
    top.set_ylabel("average encoder entropy [nats]")
    top.legend(loc="lower right", fontsize="small")
    active = series.get("entropy/val/active_latents", [])
    bottom.plot(range(len(active)), active)
    bottom.set_ylabel("active latents")
    bottom.set_xlabel("epoch")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    matplotlib.use("Agg")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        result = {"digits": digits_part(args), "ppca_active": ppca_part(args)}
    print(f"Logs and figures: {args.out.resolve()}")
    return result


if __name__ == "__main__":
    main()
