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
    report_parser.add_argument("--out", type=Path, default=None,
                               help="where to write the PNGs (default: the run's own folder)")
    report_parser.add_argument("--prefix", default="entropy",
                               help="the keys' prefix, as in EntropyMonitor(prefix=...) (default: entropy)")
    which = report_parser.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, default=None, metavar="N",
                       help="draw the run in the folder version_N (default: the latest run under LOGDIR)")
    which.add_argument("--all", action="store_true", help="draw every run under LOGDIR, each into its own folder")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo.run(args)
    return _report(args)


def _names(args: argparse.Namespace, runs: list[Path]) -> str:
    return ", ".join(run.relative_to(args.logdir).as_posix() for run in runs)


def _report(args: argparse.Namespace) -> int:
    from lightning_entropy_vae.report import _one_loggers_versions, find_runs, plot_run

    runs = find_runs(args.logdir)
    if args.version is not None:
        runs = [run for run in runs if run.name == f"version_{args.version}"] or _no_version(args, runs)
        if len(runs) > 1 and args.out is not None:  # one version of each of several loggers, drawn into one --out
            print(f"error: version_{args.version} names {len(runs)} runs under {args.logdir}: {_names(args, runs)};"
                  " their figures would overwrite each other in --out: pass one of these folders instead",
                  file=sys.stderr)
            return 2
        if not runs:
            return 2
    elif not args.all and len(runs) > 1:
        others = ("--version N or --all draws the others" if _one_loggers_versions(runs) else
                  f"--all draws the others, or name one: {_names(args, runs)}")
        print(f"Run:     {runs[-1]} (the latest of {len(runs)} runs under {args.logdir}; {others})")
        runs = runs[-1:]
    failed = 0
    for run in runs or [args.logdir]:  # no run: plot_run says what it expected
        out = run if args.out is None else (args.out / run.relative_to(args.logdir) if args.all else args.out)
        if args.all:
            print(f"Run:     {run}")
        try:
            for path in plot_run(run, out, prefix=args.prefix):
                print(f"Figure:  {path.resolve()}")
        except (FileNotFoundError, ImportError) as err:  # with --all, the other runs are still drawn
            print(f"error: {err}", file=sys.stderr)
            failed += 1
            if isinstance(err, ImportError):
                break
    return 2 if failed else 0


def _no_version(args: argparse.Namespace, runs: list[Path]) -> list[Path]:
    names = ", ".join(str(run) for run in runs) or "none"
    print(f"error: expected a run folder version_{args.version} under {args.logdir}, but found: {names}",
          file=sys.stderr)
    return []

if __name__ == "__main__":
    sys.exit(main())
