"""Command line: ``python -m lightning_entropy_vae {demo,report}``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from lightning_entropy_vae import demo

    parser = argparse.ArgumentParser(
        prog="python -m lightning_entropy_vae",
        description="The ELBO of a Gaussian VAE as a sum of three entropies: a demo and log reports.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser("demo", help="train a VAE on scikit-learn's digits with EntropyMonitor")
    demo.add_arguments(demo_parser)
    report_parser = commands.add_parser("report", help="draw the figures of a finished run from its logs")
    report_parser.add_argument("logdir", type=Path, help="a folder with TensorBoard event files or a metrics.csv")
    report_parser.add_argument("--out", type=Path, default=None, help="where to write the PNGs (default: LOGDIR)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo.run(args)
    from lightning_entropy_vae.report import plot_run

    try:
        written = plot_run(args.logdir, args.out)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(f"Figure:  {path.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
