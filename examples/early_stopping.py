"""Stop training once the ELBO has converged, instead of after a fixed epoch budget.

Three runs of the same VAE-1 on the same pPCA data, each with ``ModelCheckpoint(monitor="entropy/val/elbo",
mode="max")`` to restore the best epoch:

1. a fixed budget of ``--epochs`` epochs (``EntropyMonitor()`` only watches);
2. ``EntropyConvergence()``: once the mean per-batch training gap ELBO - sum over the last 32 batches, plus its
   batch-means standard error, is at most 0.01 nats per data dimension (training is stationary), stop
   when the held-out ELBO has not improved for 5 validation checks: the rule chosen on
   ``benchmarks/stopping.py``;
3. Lightning's stock ``EarlyStopping(monitor="entropy/val/elbo", mode="max", patience=10)``.

It prints the epochs each run took and the held-out ELBO (100 z samples per point) of the restored best
checkpoint; the figure marks the epoch each stopping rule stopped at, or says it did not stop (budget end).

    python examples/early_stopping.py            # pPCA data, a few minutes
    python examples/early_stopping.py --smoke    # a few seconds
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

from lightning_entropy_vae import EntropyConvergence, EntropyMonitor
from lightning_entropy_vae.data import TensorDataModule, make_ppca_data, split_tensor
from lightning_entropy_vae.models import GaussianVAE

from _common import example_parser, pyplot, save_figure

NAME = "early_stopping"
LABELS = {"fixed budget": "fixed budget", "convergence stop": "EntropyConvergence()",
          "stock early stopping": "EarlyStopping(val ELBO)"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = example_parser(__doc__, NAME)
    parser.add_argument("--epochs", type=int, default=150, help="the fixed epoch budget (default: 150)")
    parser.add_argument("--patience", type=int, default=10,
                        help="the stock EarlyStopping's validation checks without improvement (10)")
    parser.add_argument("--n", type=int, default=10_000, help="pPCA points, 20%% held out (default: 10,000)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs, args.n, args.patience = 3, 600, 1
    return args


class History(Callback):
    """Keeps the validation ELBO and relative gap of every epoch (for the figure)."""

    def __init__(self) -> None:
        self.elbo: list[float] = []
        self.rel_gap: list[float] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and "entropy/val/elbo" in trainer.callback_metrics:
            self.elbo.append(float(trainer.callback_metrics["entropy/val/elbo"]))
            self.rel_gap.append(float(trainer.callback_metrics["entropy/val/rel_gap"]))


def fit(data: TensorDataModule, args: argparse.Namespace, callbacks: list[Callback]) -> dict:
    L.seed_everything(args.seed, verbose=False)
    model = GaussianVAE(data.data_dim, 4, kind="vae1", hidden_dims=(64, 64), lr=3e-3)
    history = History()
    best = ModelCheckpoint(dirpath=args.out / "checkpoints", monitor="entropy/val/elbo", mode="max", save_top_k=1)
    trainer = L.Trainer(
        max_epochs=args.epochs, callbacks=[*callbacks, history, best], logger=False, accelerator="cpu", devices=1,
        enable_progress_bar=False, enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(model, data)
    seconds = time.perf_counter() - start
    model = GaussianVAE.load_from_checkpoint(best.best_model_path)  # the restore recipe
    Path(best.best_model_path).unlink()
    model.num_samples = 100  # a low-noise ELBO of the restored model on the held-out data
    with torch.no_grad():
        elbo = model.step(data.val)["elbo"].mean().item()
    return {"epochs": trainer.current_epoch, "stopped": bool(trainer.should_stop), "seconds": round(seconds, 1),
            "val_elbo": elbo, "val_rel_gap": history.rel_gap[-1], "history": history}


def stop_label(name: str, run: dict) -> str:
    """The figure's label of a run's last epoch: where its callback stopped it, or the budget end it ran to."""
    if run["stopped"]:
        return f"{LABELS[name]}: stopped after {run['epochs']} epochs"
    return f"{LABELS[name]}: did not stop (budget end)"


def plot(runs: dict[str, dict], path: Path) -> list[str]:
    """Draw the validation ELBO and relative gap of the fixed budget with each other run's last epoch; return the
    legend's labels."""
    plt = pyplot()

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    budget = runs["fixed budget"]["history"]
    top.plot(budget.elbo, color="0.6", label="validation ELBO")
    bottom.plot([100 * g for g in budget.rel_gap], color="0.6")
    for i, (name, run) in enumerate(runs.items()):
        if name != "fixed budget":
            for ax in (top, bottom):
                ax.axvline(run["epochs"] - 1, color=f"C{i}", ls="--", label=stop_label(name, run))
    top.set_ylim(budget.elbo[len(budget.elbo) // 5] if len(budget.elbo) > 4 else None, None)
    top.set_ylabel("validation ELBO [nats]")
    legend = top.legend(fontsize="small")
    bottom.axhline(0, color="k", lw=0.5)
    bottom.set_ylim(-5, 5)
    bottom.set_ylabel("relative gap [%]")
    bottom.set_xlabel("epoch")
    save_figure(fig, path)
    return [text.get_text() for text in legend.get_texts()]


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    x = make_ppca_data(args.n, data_dim=20, latent_dim=4, noise_std=0.5, seed=args.seed)
    train, val = split_tensor(x, val_fraction=0.2, seed=args.seed)
    data = TensorDataModule(train, val, batch_size=128)

    # --smoke: a gate that opens as soon as a window of 10 batches is full
    gate, window = ({"gap_tolerance": 1e6}, {"gap_window": 10}) if args.smoke else ({}, {})
    convergence = EntropyConvergence(**gate, **({"patience": args.patience} if args.smoke else {}))
    stock = EarlyStopping(monitor="entropy/val/elbo", mode="max", patience=args.patience)
    runs = {  # keys of the returned dict
        "fixed budget": fit(data, args, [EntropyMonitor()]),
        "convergence stop": fit(data, args, [EntropyMonitor(**window), convergence]),
        "stock early stopping": fit(data, args, [EntropyMonitor(), stock]),
    }
    plot(runs, args.out / "early_stopping.png")

    budget = runs["fixed budget"]
    print(f"\nVAE-1 on pPCA data (D = 20, k = 4, {len(train)} training points); patience {args.patience};"
          " each run restores its best validation epoch:")
    print(f"{'run':38s}{'epochs':>7s}{'saved':>7s}{'seconds':>9s}{'val ELBO*':>11s}{'val rel. gap':>14s}")
    for name, run in runs.items():
        saved = budget["epochs"] - run["epochs"]
        print(f"{LABELS[name]:38s}{run['epochs']:7d}{saved:7d}{run['seconds']:9.1f}"
              f"{run['val_elbo']:11.3f}{run['val_rel_gap']:14.2%}")
    print("* of the restored best checkpoint, 100 z samples per held-out point; rel. gap: the last epoch's.")
    print(f"Figure: {(args.out / 'early_stopping.png').resolve()}")
    result = {name: {k: v for k, v in run.items() if k != "history"} for name, run in runs.items()}
    result["stop_reason"] = convergence.stop_reason
    return result


if __name__ == "__main__":
    main()
