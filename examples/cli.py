"""EntropyMonitor configured from YAML with LightningCLI (needs ``jsonargparse[signatures]``).

``config.yaml`` beside this file lists the callback under ``trainer.callbacks`` with its
``class_path`` and ``init_args``, next to a ``GaussianVAE`` and the ``DigitsDataModule``; every
value can be overridden on the command line. Without a subcommand the script runs
``fit --config examples/config.yaml``.

    python examples/cli.py                                              # = fit --config examples/config.yaml
    python examples/cli.py fit --config examples/config.yaml --model.kind=vae3 --trainer.max_epochs=50
    python examples/cli.py fit --config examples/config.yaml --print_config
    python examples/cli.py --smoke                                      # 1 epoch of 2 batches

``--out DIR`` sets ``trainer.default_root_dir``, ``--threads N`` the torch CPU threads, and
``--smoke`` appends tiny ``--trainer.*`` overrides; everything else goes to LightningCLI.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch
from lightning.pytorch.cli import LightningCLI

from lightning_entropy_vae.data import DigitsDataModule
from lightning_entropy_vae.models import GaussianVAE

NAME = "cli"
CONFIG = Path(__file__).with_name("config.yaml")
SMOKE = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]


def main(argv: list[str] | None = None) -> dict:
    own = argparse.ArgumentParser(add_help=False)  # --help goes on to LightningCLI
    own.add_argument("--smoke", action="store_true")
    own.add_argument("--out", type=Path, default=None)
    own.add_argument("--threads", type=int, default=1)
    args, rest = own.parse_known_args(argv)
    torch.set_num_threads(args.threads)
    if not rest or rest[0].startswith("-"):  # no subcommand: fit with the bundled config
        rest = ["fit", "--config", str(CONFIG), *rest]
    if args.out is not None:
        rest.append(f"--trainer.default_root_dir={args.out}")
    if args.smoke:
        rest += SMOKE

    with warnings.catch_warnings():  # our own flags are in sys.argv; LightningCLI gets the rest as `args`
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
        cli = LightningCLI(GaussianVAE, DigitsDataModule, args=rest, save_config_kwargs={"overwrite": True})
    metrics = {key: float(value) for key, value in cli.trainer.callback_metrics.items()
               if key.startswith("entropy/")}
    if metrics:
        print(f"\nAfter {cli.trainer.current_epoch} epochs (nats per image):")
        for stage in ("train", "val"):
            if f"entropy/{stage}/sum" in metrics:
                m = {key.rsplit("/", 1)[1]: value for key, value in metrics.items()
                     if key.startswith(f"entropy/{stage}/")}
                print(f"  {stage:5s}  ELBO {m['elbo']:8.2f}   entropy sum {m['sum']:8.2f}   rel. gap"
                      f" {m['rel_gap']:7.2%}   active latents {int(m['active_latents'])}")
        print(f"Logs: {Path(cli.trainer.log_dir or cli.trainer.default_root_dir).resolve()}")
    return metrics


if __name__ == "__main__":
    main()
