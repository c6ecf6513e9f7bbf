"""Where a logging step of EntropyMonitor spends its time, and what the reduction of kept batches costs.

Fits the reference MLP VAE of ``overhead.py`` (B = 128, N = 20,000: 157 steps per epoch, a CSV logger, the default
``log_every_n_steps=50``) for ``--epochs`` epochs with the parts wrapped by a stopwatch, and prints each part's
number of calls and median time (all calls, and the second half of the calls: warm caches). The parts nest:

- ``logging step`` (``EntropyMonitor._log_step``) holds ``window`` (``StageTracker.window``: the step keys' ELBO
  and entropy sum of the batches since the last logging step, from a stack of the keys they read) and the
  publication (``_publish.step``, holding ``log_to_loggers``);
- ``reduce`` (``StageTracker.reduce``: at the epoch's end, or when 256 batches are kept) holds the ``finite``
  probe, the per-batch columns and the ``metric updates`` (the three metrics' ``update``).

``stack`` is timed wherever it runs (in ``window`` and in ``reduce``).

    python benchmarks/logging_step_profile.py            # ~10 s
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import MLPVAE, make_data

from lightning_entropy_vae import EntropyMonitor
from lightning_entropy_vae.callbacks import _loggers, _publish, _stage, entropy_monitor
from lightning_entropy_vae.metrics import ELBO, EntropySumELBO, PosteriorCollapse

TIMES: dict[str, list[float]] = {}


def wrap(owner: Any, name: str, label: str) -> None:
    fn = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        TIMES.setdefault(label, []).append(time.perf_counter() - start)
        return out

    setattr(owner, name, timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"$ python {' '.join(sys.argv)}\ntorch {torch.__version__}, lightning {pl.__version__}, threads 1")
    stage = _stage.StageTracker
    for owner, name, label in [
        (entropy_monitor.EntropyMonitor, "_log_step", "logging step"), (stage, "window", "  window"),
        (_publish, "step", "  _publish.step"), (_loggers, "log_to_loggers", "    log_to_loggers (all keys)"),
        (stage, "reduce", "reduce"), (stage, "_stack", "stack (window and reduce)"),
        (stage, "_finite", "  finite (probe, host read)"),
        (stage, "_per_batch_columns", "  per-batch columns (ELBO, sum, KL)"), (stage, "_update", "  metric updates"),
        (EntropySumELBO, "update", "    EntropySumELBO.update"), (ELBO, "update", "    ELBO.update"),
        (PosteriorCollapse, "update", "    PosteriorCollapse.update"),
    ]:
        wrap(owner, name, label)
    data = make_data(20_000)
    trainer = pl.Trainer(max_epochs=args.epochs, logger=CSVLogger(tempfile.mkdtemp()),
                         callbacks=[EntropyMonitor(stages=("train",))], enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(MLPVAE(), DataLoader(TensorDataset(data), batch_size=128, shuffle=True))
    print(f"{'part':34s} {'calls':>5s} {'median us':>10s} {'2nd half':>9s}")
    for label, times in TIMES.items():
        print(f"{label:34s} {len(times):5d} {statistics.median(times) * 1e6:10.1f}"
              f" {statistics.median(times[len(times) // 2:]) * 1e6:9.1f}")


if __name__ == "__main__":
    main()
