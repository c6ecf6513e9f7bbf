"""The demo: a Gaussian VAE on scikit-learn's digits, watched by the EntropyMonitor.

``python -m lightning_entropy_vae demo`` trains, prints a summary table, writes logs and PNG figures,
and prints where they are and how to open them in TensorBoard. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

KINDS = ("vae0", "vae1", "vae2", "vae3", "linear")
LOGGERS = ("tensorboard", "csv", "wandb")


def _positive_int(text: str) -> int:
    """An argparse type: an int >= 1 (argparse's error names the option and the value)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, but got {text}")
    return value


_positive_int.__name__ = "int"  # argparse's "invalid int value: 'ten'"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", choices=KINDS, default="vae1", help="model type (default: vae1)")
    parser.add_argument("--latents", type=_positive_int, default=8, help="number of latents H (default: 8)")
    parser.add_argument("--epochs", type=_positive_int, default=150, help="training epochs (default: 150)")
    parser.add_argument("--batch-size", type=_positive_int, default=64, help="batch size (default: 64)")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default: 3e-3)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[128], help="MLP hidden sizes (default: 128)")
    parser.add_argument("--logger", choices=LOGGERS, default="tensorboard", help="logger (default: tensorboard)")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default: 1; the model is too small to gain from more)")
    parser.add_argument("--no-progress-bar", action="store_true",
                        help="hide the progress bar (hidden anyway when the output is not a terminal: then a"
                             " line every tenth of the run)")


def _make_logger(name: str, out: Path) -> Any:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

    if name == "tensorboard":
        return TensorBoardLogger(str(out), name="tensorboard", version="")
    if name == "csv":
        return CSVLogger(str(out), name="csv", version="")
    return WandbLogger(project="lightning-entropy-vae-demo", save_dir=str(out), offline=True)


def _summary(metrics: dict[str, Any], latents: int) -> str:
    def get(stage: str, key: str) -> float:
        value = metrics.get(f"entropy/{stage}/{key}")
        return float("nan") if value is None else float(value)

    rows = [f"{'':6s}{'ELBO':>12s}{'entropy sum':>14s}{'gap':>10s}{'rel. gap':>10s}{'active':>10s}"]
    for stage in ("train", "val"):
        rows.append(
            f"{stage:6s}{get(stage, 'elbo'):12.3f}{get(stage, 'sum'):14.3f}{get(stage, 'gap'):10.3f}"
            f"{100 * get(stage, 'rel_gap'):9.2f}%{int(get(stage, 'active_latents')):>6d} of {latents}"
        )
    return "\n".join(rows)


def _epoch_lines(epochs: int) -> Any:
    """A callback that prints one short line every tenth of the run: the progress of a run whose output is a file
    or a pipe, where a progress bar would write a line per redraw (hundreds of KB)."""
    from lightning.pytorch.callbacks import Callback

    every = max(1, epochs // 10)

    class EpochLines(Callback):
        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            epoch = trainer.current_epoch + 1
            if epoch % every == 0 or epoch == epochs:
                value = trainer.callback_metrics.get("entropy/train/rel_gap")
                gap = "" if value is None else f"  train rel. gap {100 * float(value):.2f}%"
                print(f"epoch {epoch}/{epochs}{gap}", flush=True)

    return EpochLines()


def _make_out(out: Path) -> str | None:
    """Create the output folder; what is wrong with ``--out`` if it cannot be (``None`` when it is ready)."""
    if out.exists() and not out.is_dir():
        return f"expected --out to be a folder (created if missing), but {out} is an existing file"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a parent that is a file, no permission, a read-only file system
        return f"expected --out to be a folder that can be created, but creating {out} failed: {err.strerror or err}"
    return None


def run(args: argparse.Namespace) -> int:
    import lightning as L
    import torch
    from lightning.pytorch.loggers import CSVLogger

    from lightning_entropy_vae import EntropyMonitor
    from lightning_entropy_vae.data import DigitsDataModule
    from lightning_entropy_vae.models import GaussianVAE
    from lightning_entropy_vae.report import plot_run

    out: Path = args.out
    problem = _make_out(out)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, args.threads))
    L.seed_everything(args.seed, verbose=False)
    data = DigitsDataModule(batch_size=args.batch_size, seed=args.seed)
    model = GaussianVAE(64, args.latents, kind=args.kind, hidden_dims=tuple(args.hidden), lr=args.lr)
    loggers = [_make_logger(args.logger, out)]
    if args.logger != "csv":  # the figures are drawn from a CSV copy of the same scalars
        loggers.append(CSVLogger(str(out), name="csv", version=""))
    bar = not args.no_progress_bar and sys.stdout.isatty()
    callbacks = [EntropyMonitor()] + ([] if bar or args.no_progress_bar else [_epoch_lines(args.epochs)])
    trainer = L.Trainer(
        max_epochs=args.epochs, accelerator="cpu", devices=1, logger=loggers, callbacks=callbacks,
        log_every_n_steps=10, enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=bar,
    )
    start = time.perf_counter()
    trainer.fit(model, data)
    elapsed = time.perf_counter() - start
    figures = plot_run(out / "csv", out / "figures")
    print(f"\nDigits (1797 x 64), {args.kind.upper()} with H = {args.latents}, {args.epochs} epochs in {elapsed:.0f} s")
    print(_summary(dict(trainer.callback_metrics), args.latents))
    print("\nrelative gap = (ELBO - entropy sum) / max(|entropy sum|, 0.1 * D); near 0 at convergence.")
    print(f"\nLogs:    {out.resolve()}")
    for path in figures:
        print(f"Figure:  {path.resolve()}")
    if args.logger == "tensorboard":
        print(f"View:    tensorboard --logdir {(out / 'tensorboard').resolve()}")
    elif args.logger == "wandb":
        print(f"View:    wandb sync {(out / 'wandb').resolve()}/offline-run-*   (needs a W&B account)")
    return 0
