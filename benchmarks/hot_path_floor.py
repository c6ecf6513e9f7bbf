"""What a plain training batch costs EntropyMonitor, against the floor of what it must do there.

The reference loop of ``overhead.py`` (MLP VAE, B = 128, CPU, one thread) runs one epoch per arm with one callback
whose batch hooks are timed by a stopwatch inside the fit (median CPU time per batch, µs; the stopwatch's own cost,
measured around an empty hook in the same fit, is subtracted):

- ``empty hooks``: ``on_train_batch_start``, ``on_before_optimizer_step`` and ``on_train_batch_end`` doing nothing
  (the stopwatch's floor, subtracted from every arm);
- ``one parameter copy``: ``on_before_optimizer_step`` clones the returned ``dec_logvar`` parameter, as the monitor must
  so that a batch reads the variance its forward pass used (the optimizer updates it in place before the batch ends);
- ``copy + detach + keep``: also ``on_train_batch_end`` detaches the step's tensors that hold the autograd graph and
  appends the output to a list: the least the monitor's per-batch work can be with the same guarantees (no device
  work, no autograd graph held, the pre-step variance);
- ``EntropyMonitor``: the monitor's three training batch hooks (their median calls: a logging step is not a plain
  batch).

    python benchmarks/hot_path_floor.py [--n 60000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

if __package__ in (None, ""):  # run as a script from a checkout: import the package next to benchmarks/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import fit_once, make_data

from lightning_entropy_vae import EntropyMonitor

HOOKS = ("on_train_batch_start", "on_before_optimizer_step", "on_train_batch_end")


class Floor(pl.Callback):
    """``level`` 0: empty hooks; 1: the parameter copy; 2: the copy, the detaches and the append."""

    def __init__(self, level: int) -> None:
        self.level, self.copies, self.kept = level, [], []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        pass

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self.level >= 1:
            self.copies.append(pl_module.dec_logvar.detach().clone())

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.level >= 2:
            self.kept.append({k: v.detach() if v.requires_grad else v for k, v in outputs.items()})
        if len(self.kept) >= 50 or len(self.copies) >= 50:  # dropped at a logging step's cadence
            self.kept, self.copies = [], []


def timed(callback: pl.Callback) -> dict[str, list[float]]:
    """Wrap the callback's batch hooks with a CPU-time stopwatch; the per-call times, per hook."""
    times: dict[str, list[float]] = {h: [] for h in HOOKS}
    for name in HOOKS:
        fn = getattr(callback, name)

        def wrapper(*args: Any, _fn: Any = fn, _out: list = times[name], **kwargs: Any) -> Any:
            start = time.process_time()
            try:
                return _fn(*args, **kwargs)
            finally:
                _out.append(time.process_time() - start)

        setattr(callback, name, wrapper)
    return times


def per_batch(times: dict[str, list[float]]) -> float:
    """A plain batch: the sum of the hooks' median calls (µs)."""
    return sum(statistics.median(t) for t in times.values() if t) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60_000, help="training points (default 60,000: 469 steps)")
    parser.add_argument("--rounds", type=int, default=3, help="fits per arm, medians over them (default 3)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"$ python {' '.join(sys.argv)}\ntorch {torch.__version__}, lightning {pl.__version__}, one thread,"
          f" N = {args.n:,}, B = 128, CPU time per plain training batch (median call of each hook, summed)")
    data = {"train": make_data(args.n), "val": make_data(512, seed=1)}
    fit_args = argparse.Namespace(model="mlp", accelerator="cpu", epochs=1)
    arms = {"empty hooks": lambda: Floor(0), "one parameter copy": lambda: Floor(1),
            "copy + detach + keep": lambda: Floor(2), "EntropyMonitor": lambda: EntropyMonitor(stages=("train",))}
    results: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.rounds):
        for name, make in arms.items():
            callback = make()
            times = timed(callback)
            fit_once("train+csv", callback, fit_args, data)
            results[name].append(per_batch(times))
    floor = statistics.median(results["empty hooks"])
    print(f"{'arm':24s} {'us per batch':>12s} {'net of the empty hooks':>23s}")
    for name, values in results.items():
        value = statistics.median(values)
        print(f"{name:24s} {value:12.1f} {value - floor:23.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
