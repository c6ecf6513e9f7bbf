"""Per-call cost of ``update()`` of each metric of :mod:`lightning_entropy_vae.metrics` on CPU.

One thread, a batch of B points with H latents and D data dimensions, and a learnable scalar
``dec_logvar`` (an ``nn.Parameter``, as a VAE-1 returns it). Each metric is timed with ``timeit``:
``--repeat`` repeats of ``--number`` calls after a warm-up, the metrics interleaved round-robin so
that machine noise hits all of them alike. Reported: min and median microseconds per call.

Target: ``EntropySumELBO.update`` at most 1.0x a ``torchmetrics.MeanMetric.update`` of the batch's ELBO
(B values) timed in the same run (the median over repeats of the per-repeat ratio). Exit code 0
unless ``--strict``.

    python benchmarks/metric_update.py [--batch 128 --latents 16 --dim 64 --repeat 15 --strict]
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

import lightning
import torch
import torchmetrics
from torch import nn

if __package__ in (None, ""):  # run as a script from a checkout: import the package next to benchmarks/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_entropy_vae.metrics import (
    DecoderEntropy,
    EncoderEntropy,
    EntropySumELBO,
    GaussianELBO,
    PosteriorCollapse,
    PriorEntropy,
)

TARGET_RATIO = 1.0
TARGET_NAME = "EntropySumELBO"
REFERENCE_NAME = "torchmetrics.MeanMetric (elbo)"
FLOOR_NAME = "(floor: 1-sum TorchMetrics metric)"


class _FloorMetric(torchmetrics.Metric):
    """Reference: the cheapest useful update (one sum into one state) through TorchMetrics' wrapper."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.zeros(()), dist_reduce_fx="sum")

    def update(self, outputs: dict) -> None:
        self.total.add_(outputs["enc_logvar"].sum())

    def compute(self) -> torch.Tensor:
        return self.total


def make_inputs(batch: int, latents: int, dim: int) -> tuple[dict, dict]:
    """Step outputs with and without ``elbo``; ``dec_logvar`` is a learnable scalar parameter."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, dim, generator=g)
    kw = {
        "x": x,
        "enc_mean": torch.randn(batch, latents, generator=g),
        "enc_logvar": torch.randn(batch, latents, generator=g) * 0.1 - 2.0,
        "dec_mean": x + 0.1 * torch.randn(batch, dim, generator=g),
        "dec_logvar": nn.Parameter(torch.tensor(-2.0)),
    }
    with_elbo = {**kw, "elbo": torch.randn(batch, generator=g) - 50.0}
    return with_elbo, kw


def cases(batch: int, latents: int, dim: int) -> list[tuple[str, Callable[[], None]]]:
    with_elbo, without_elbo = make_inputs(batch, latents, dim)
    metrics = [
        ("EntropySumELBO", EntropySumELBO(), with_elbo),
        ("GaussianELBO (elbo given)", GaussianELBO(), with_elbo),
        ("GaussianELBO (computed)", GaussianELBO(), without_elbo),
        (f"PosteriorCollapse(latent_dim={latents})", PosteriorCollapse(latent_dim=latents), with_elbo),
        ("EncoderEntropy", EncoderEntropy(), with_elbo),
        ("DecoderEntropy", DecoderEntropy(), with_elbo),
        ("PriorEntropy", PriorEntropy(), with_elbo),
        (FLOOR_NAME, _FloorMetric(), with_elbo),
    ]
    out = []
    for name, metric, inputs in metrics:
        out.append((name, (lambda m=metric, kw=inputs: m.update(kw))))
    mean, elbo = torchmetrics.MeanMetric(), with_elbo["elbo"]
    out.append((REFERENCE_NAME, lambda: mean.update(elbo)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128, help="B (default 128)")
    parser.add_argument("--latents", type=int, default=16, help="H (default 16)")
    parser.add_argument("--dim", type=int, default=64, help="D (default 64)")
    parser.add_argument("--repeat", type=int, default=15, help="timeit repeats per metric (default 15)")
    parser.add_argument("--number", type=int, default=0, help="calls per repeat (default: about 20 ms worth)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    print("$ " + shlex.join([sys.executable, *sys.argv]))
    print(f"python {platform.python_version()}, torch {torch.__version__}, lightning {lightning.__version__},"
          f" torchmetrics {torchmetrics.__version__}, threads {torch.get_num_threads()},"
          f" {platform.machine()}")
    print(f"B={args.batch}, H={args.latents}, D={args.dim}, dec_logvar: learnable scalar nn.Parameter;"
          f" repeat={args.repeat}")

    todo = cases(args.batch, args.latents, args.dim)
    numbers = {}
    for name, fn in todo:  # warm-up, and pick a per-repeat call count of about 20 ms
        for _ in range(200):
            fn()
        if args.number:
            numbers[name] = args.number
        else:
            t = timeit.timeit(fn, number=200) / 200
            numbers[name] = max(50, int(0.02 / max(t, 1e-7)))
    times: dict[str, list[float]] = {name: [] for name, _ in todo}
    for _ in range(args.repeat):  # round-robin: every metric sees the same noise
        for name, fn in todo:
            n = numbers[name]
            times[name].append(timeit.timeit(fn, number=n) / n * 1e6)

    width = max(len(name) for name, _ in todo)
    print()
    floor = times[FLOOR_NAME]
    print(f"{'metric.update()':<{width}}  {'min us':>8}  {'median us':>9}  {'x floor':>7}  {'calls/rep':>9}")
    print("-" * (width + 41))
    for name, _ in todo:
        t = times[name]
        # per-repeat ratio to the floor metric timed in the same round: a machine-speed-free figure
        rel = statistics.median(a / b for a, b in zip(t, floor, strict=True))
        print(f"{name:<{width}}  {min(t):8.1f}  {statistics.median(t):9.1f}  {rel:7.2f}  {numbers[name]:9d}")
    print("(x floor: median over repeats of the time relative to the floor metric's in the same repeat)")
    print()
    best, med = min(times[TARGET_NAME]), statistics.median(times[TARGET_NAME])
    ratio = statistics.median(a / b for a, b in zip(times[TARGET_NAME], times[REFERENCE_NAME], strict=True))
    ok = ratio <= TARGET_RATIO
    print(f"target {TARGET_NAME}.update() <= {TARGET_RATIO:.1f}x {REFERENCE_NAME}.update() in the same repeat:"
          f" {ratio:.2f}x (min {best:.1f} us, median {med:.1f} us; MeanMetric min"
          f" {min(times[REFERENCE_NAME]):.1f} us) -> {'PASS' if ok else 'FAIL'}")
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
