"""The stopping benchmark: which rule should stop a Gaussian VAE's training?

Phase 1 (slow, resumable) trains VAE-1 runs in a plain PyTorch loop (``_stopping_train.py``): 11 data families
(``_stopping_data.FAMILIES``; the first five tune the rules, the others are held out) x 2 learning rates x 3 seeds
with loss = -ELBO.mean(); the loss variants ``sum``, ``beta4``, ``warmup``, ``freebits`` and ``scaled`` on a few
families (seed 0, the smaller rate); and the live ``sasa`` policy (rate drops and a stop on the batch-means gate of
the per-batch gap) on every family at the larger rate. Each run records per training batch what the monitor sees
(the loss, the ELBO and entropy sum summed over the batch, the per-latent KL, the KL weight) and per epoch what
``EntropyMonitor`` publishes plus, hidden from the rules, an accurate ELBO of a separate held-out test set (fixed z
draws). Runs are saved as ``<out>/<name>.json`` + ``.npz`` and read back with ``_stopping_train.load_runs``, so a
second call only replays.

Phase 2 (seconds) replays stopping rules offline over the saved runs (``_stopping_report.report``).

    python benchmarks/stopping.py                # everything (phase 1 about 35 minutes on one core)
    python benchmarks/stopping.py --smoke        # tiny sizes, seconds: every family, variant and policy once
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
from _stopping_data import FAMILIES, LRS
from _stopping_train import VARIANTS, RunConfig, config_for, is_saved, load_run, train_if_needed

ROOT = Path(__file__).resolve().parents[1]


VARIANT_FAMILIES = ("ppca", "digits", "breast_cancer", "wine")  # the loss variants run on these, seed 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", choices=tuple(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--lrs", nargs="+", type=float, default=list(LRS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS[1:], default=list(VARIANTS[1:]),
                        help="loss variants besides `mean`, run on seed 0 at the smallest rate (default: all)")
    parser.add_argument("--variant-families", nargs="+", choices=tuple(FAMILIES), default=list(VARIANT_FAMILIES))
    parser.add_argument("--no-sasa", action="store_true", help="skip the live `sasa` policy runs")
    parser.add_argument("--tune-seeds", nargs="+", type=int, default=[0, 1, 2],
                        help="seeds the winner is chosen on; the others are held out (default: 0 1 2)")
    parser.add_argument("--out", type=Path, default=None, help="saved runs (default: runs/stopping2)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes for CI (seconds), no docs written")
    parser.add_argument("--train-only", action="store_true", help="phase 1 only")
    parser.add_argument("--replay-only", action="store_true", help="phase 2 over the runs already saved")
    parser.add_argument("--no-docs", action="store_true",
                        help="do not write docs/figures/stopping_benchmark.png and the docs/results.md section")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds, args.tune_seeds, args.no_docs = [0, 1], [0], True
    if args.out is None:
        args.out = ROOT / "runs" / ("stopping2-smoke" if args.smoke else "stopping2")
    return args


def planned(args: argparse.Namespace) -> list[RunConfig]:
    """Phase 1's runs: every (seed, family, rate) with `mean`; the variants; `sasa` at the largest rate."""
    configs = [config_for(family, lr, seed, smoke=args.smoke)
               for seed in args.seeds for family in args.families for lr in args.lrs]
    configs += [config_for(family, min(args.lrs), min(args.seeds), variant=variant, smoke=args.smoke)
                for variant in args.variants for family in args.variant_families]
    if not args.no_sasa:
        configs += [config_for(family, max(args.lrs), seed, policy="sasa", smoke=args.smoke)
                    for seed in args.seeds for family in args.families]
    return configs


def header() -> None:
    print("$ " + shlex.join([sys.executable, *sys.argv]))
    print(f"python {platform.python_version()}, torch {torch.__version__}, lightning {lightning.__version__},"
          f" torchmetrics {torchmetrics.__version__}, numpy {np.__version__}, threads {torch.get_num_threads()},"
          f" {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)


def train_all(args: argparse.Namespace) -> list[dict]:
    """Phase 1: every planned run, loaded when saved with the same config, else trained (not with --replay-only)."""
    runs, start, trained = [], time.perf_counter(), 0
    for cfg in planned(args):
        if not (args.replay_only or is_saved(cfg, args.out)):
            trained += train_if_needed(cfg, args.out, log=lambda s: print(s, flush=True))
        if is_saved(cfg, args.out):
            runs.append(load_run(args.out / f"{cfg.name}.json"))
    train_seconds = sum(float(run["seconds"][-1]) for run in runs)
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
