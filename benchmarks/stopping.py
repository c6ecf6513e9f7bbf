"""The stopping benchmark: which rule should stop a Gaussian VAE's training?

Phase 1 (slow, resumable) trains VAE-1 runs, 5 data sets x 2 learning rates x 5 seeds, in a plain
PyTorch loop and saves per epoch what ``EntropyMonitor`` publishes (train and val ``sum``, ``elbo``,
``gap``, ``rel_gap``) and, hidden from the rules, an accurate ELBO of a separate held-out test set
(32 fixed z draws per point): see ``_stopping_train.py``. Finished runs are read back from
``--out`` (one JSON per run), so a second call only replays.

Phase 2 (seconds) replays stopping rules offline (``_stopping_rules.py``): fixed budget, Lightning's
``EarlyStopping`` on the validation ELBO, today's gap rule and the candidates, each with and without
a best-checkpoint restore. The shortfall of a run is the best test ELBO over the whole budget minus
the test ELBO at the stop epoch (or the restored epoch), nats per point. Rules are picked on the
tuning seeds by ``_stopping_grid.SELECTION`` (fixed before any result was seen) and by
``_stopping_grid.SELECTION_WORST_FIRST`` (added afterwards), and reported on the held-out seeds too.
The full run writes ``docs/figures/stopping_benchmark.png`` and its section of ``docs/results.md``.

    python benchmarks/stopping.py                # everything (phase 1 about an hour on one core)
    python benchmarks/stopping.py --smoke        # tiny sizes, seconds: checks the script, not the rules
    python benchmarks/stopping.py --train-only   # phase 1 only
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script from a checkout: the package and the helpers next to this file
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import lightning
import numpy as np
import torchmetrics
from _stopping_train import DATASETS, LRS, config_for, load_or_train

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", choices=tuple(DATASETS), default=list(DATASETS))
    parser.add_argument("--lrs", nargs="+", type=float, default=list(LRS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--tune-seeds", nargs="+", type=int, default=[0, 1, 2],
                        help="seeds the winner is chosen on; the others are held out (default: 0 1 2)")
    parser.add_argument("--out", type=Path, default=None, help="run histories (default: runs/stopping)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes for CI (seconds), no docs written")
    parser.add_argument("--train-only", action="store_true", help="phase 1 only")
    parser.add_argument("--replay-only", action="store_true", help="phase 2 over the runs already saved")
    parser.add_argument("--no-docs", action="store_true",
                        help="do not write docs/figures/stopping_benchmark.png and the docs/results.md section")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds, args.tune_seeds, args.no_docs = [0, 1], [0], True
    if args.out is None:
        args.out = ROOT / "runs" / ("stopping-smoke" if args.smoke else "stopping")
    return args


def header() -> None:
    print("$ " + shlex.join([sys.executable, *sys.argv]))
    print(f"python {platform.python_version()}, torch {torch.__version__}, lightning {lightning.__version__},"
          f" torchmetrics {torchmetrics.__version__}, numpy {np.__version__}, threads {torch.get_num_threads()},"
          f" {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)


def train_all(args: argparse.Namespace) -> list[dict]:
    """Phase 1: every (seed, data, lr) run, loaded when saved with the same config, else trained."""
    runs, start, trained = [], time.perf_counter(), 0
    for seed in args.seeds:
        for data in args.data:
            for lr in args.lrs:
                cfg = config_for(data, lr, seed, smoke=args.smoke)
                done = (args.out / f"{cfg.name}.json").exists()
                if args.replay_only and not done:
                    continue
                runs.append(load_or_train(cfg, args.out, log=lambda s: print(s, flush=True)))
                trained += not done
    train_seconds = sum(r["history"]["seconds"][-1] for r in runs)
    print(f"phase 1: {len(runs)} runs ({trained} trained now, {time.perf_counter() - start:.0f} s wall);"
          f" training time of all runs as recorded: {train_seconds / 60:.1f} min", flush=True)
    return runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    header()
    runs = train_all(args)
    if args.train_only:
        return 0
    from _stopping_report import report  # phase 2

    report(runs, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
