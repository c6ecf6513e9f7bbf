"""Phase 1 of ``stopping.py``: train VAE-1 runs and save what a stopping rule could see, epoch by epoch.

A plain PyTorch loop (no Lightning) over ``GaussianVAE(kind="vae1")``: minibatches, Adam, loss = -ELBO.
Per epoch it records exactly what ``EntropyMonitor`` publishes, computed the same way:

- ``train_*``: ``EntropySumELBO`` and ``GaussianELBO`` updated with every training step's output while
  the weights change within the epoch, computed at the epoch's end;
- ``val_*``: the same two metrics over the validation set after the epoch, one z sample per point;
- ``*_gap = elbo - sum`` and ``*_rel_gap = gap / max(|sum|, 0.1 D)``.

``val_elbo`` is also what a user's own ``self.log("val_elbo", elbo.mean())`` in ``validation_step``
hands to ``EarlyStopping`` (the same step outputs, averaged over the same points).

The ground truth, hidden from every rule: ``test_elbo``, the ELBO of a separate held-out test set
(drawn with the training data, used for nothing else), averaged over ``samples`` z draws per point.
``val_elbo_acc``, the same on the validation set, is kept for the analysis only.
The draws are fixed for the whole run (common random numbers), so epoch-to-epoch differences are not
sampling noise.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from lightning_entropy_vae import EntropySumELBO, GaussianELBO
from lightning_entropy_vae.data import (
    load_digits_tensor,
    make_eight_gaussians,
    make_pca_ring,
    make_ppca_data,
    make_swiss_roll,
)
from lightning_entropy_vae.models import GaussianVAE

SIGNALS = ("train_sum", "train_elbo", "train_gap", "train_rel_gap",
           "val_sum", "val_elbo", "val_gap", "val_rel_gap")
REL_GAP_FLOOR = 0.1  # nats per data dimension, as EntropyMonitor's rel_gap_floor


@dataclass(frozen=True)
class DataSpec:
    """One data set of the benchmark and the VAE-1 trained on it."""

    name: str
    make: Callable[[int, int], Tensor]  # (n, seed) -> (n, D); rows are split train / val / test
    n_train: int
    n_val: int
    n_test: int
    latents: int
    hidden: tuple[int, ...]
    epochs: dict[float, int]  # the budget per learning rate (the small rate learns slower: a longer budget)


LRS = (3e-4, 3e-3)  # half a decade either side of Adam's default 1e-3, both common choices


def _digits(n: int, seed: int) -> Tensor:
    x = load_digits_tensor()
    return x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))][:n]


DATASETS = {
    "ppca": DataSpec("ppca", lambda n, s: make_ppca_data(n, data_dim=20, latent_dim=4, noise_std=0.5, seed=s),
                     4000, 1000, 2000, latents=4, hidden=(64, 64), epochs={3e-4: 800, 3e-3: 400}),
    "pca_ring": DataSpec("pca_ring", lambda n, s: make_pca_ring(n, data_dim=10, noise_std=0.05, seed=s),
                         4000, 1000, 2000, latents=2, hidden=(64, 64), epochs={3e-4: 1000, 3e-3: 500}),
    "swiss_roll": DataSpec("swiss_roll", lambda n, s: make_swiss_roll(n, noise_std=0.05, seed=s),
                           4000, 1000, 2000, latents=2, hidden=(64, 64), epochs={3e-4: 600, 3e-3: 300}),
    "digits": DataSpec("digits", _digits, 1077, 360, 360, latents=8, hidden=(128, 128),
                       epochs={3e-4: 2000, 3e-3: 1000}),
    "eight_gaussians": DataSpec("eight_gaussians", lambda n, s: make_eight_gaussians(n, noise_std=0.1, seed=s),
                                4000, 1000, 2000, latents=2, hidden=(64, 64), epochs={3e-4: 800, 3e-3: 400}),
}


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one run (saved with its history; a changed config retrains)."""

    data: str
    lr: float
    seed: int
    epochs: int
    n_train: int
    n_val: int
    n_test: int
    latents: int
    hidden: tuple[int, ...]
    batch_size: int = 128
    samples: int = 32

    @property
    def name(self) -> str:
        return f"{self.data}_lr{self.lr:g}_s{self.seed}"


def config_for(data: str, lr: float, seed: int, smoke: bool = False) -> RunConfig:
    spec = DATASETS[data]
    if smoke:
        return RunConfig(data, lr, seed, epochs=6, n_train=256, n_val=128, n_test=128, latents=spec.latents,
                         hidden=(16,), samples=20)
    epochs = spec.epochs.get(lr, max(spec.epochs.values()))
    return RunConfig(data, lr, seed, epochs, spec.n_train, spec.n_val, spec.n_test, spec.latents, spec.hidden)


def _rel(gap: float, total: float, dim: int) -> float:
    return gap / max(abs(total), REL_GAP_FLOOR * dim)


def _published(sum_metric: EntropySumELBO, elbo_metric: GaussianELBO, dim: int, stage: str) -> dict[str, float]:
    total, elbo = float(sum_metric.compute()["sum"]), float(elbo_metric.compute())
    sum_metric.reset()
    elbo_metric.reset()
    return {f"{stage}_sum": total, f"{stage}_elbo": elbo, f"{stage}_gap": elbo - total,
            f"{stage}_rel_gap": _rel(elbo - total, total, dim)}


def _metric_input(out: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach() for k, v in out.items()}


def train_run(cfg: RunConfig) -> dict:
    """Train one run and return its per-epoch history (lists of floats, one entry per epoch)."""
    spec = DATASETS[cfg.data]
    x = spec.make(cfg.n_train + cfg.n_val + cfg.n_test, cfg.seed)
    train, val, test = x[:cfg.n_train], x[cfg.n_train:cfg.n_train + cfg.n_val], x[cfg.n_train + cfg.n_val:]
    dim = x.shape[1]
    torch.manual_seed(cfg.seed)
    model = GaussianVAE(dim, cfg.latents, kind="vae1", hidden_dims=cfg.hidden, lr=cfg.lr)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    shuffle = torch.Generator().manual_seed(cfg.seed + 1)
    test_eps = torch.randn(cfg.samples, cfg.n_test, cfg.latents, generator=torch.Generator().manual_seed(cfg.seed + 2))
    val_eps = torch.randn(cfg.samples, cfg.n_val, cfg.latents, generator=torch.Generator().manual_seed(cfg.seed + 3))
    metrics = {stage: (EntropySumELBO(warn_fixed_variance=False), GaussianELBO()) for stage in ("train", "val")}
    history: dict[str, list[float]] = {key: [] for key in (*SIGNALS, "test_elbo", "val_elbo_acc", "seconds")}
    start = time.perf_counter()
    for _ in range(cfg.epochs):
        model.train()
        for idx in torch.randperm(cfg.n_train, generator=shuffle).split(cfg.batch_size):
            out = model.step(train[idx])
            loss = -out["elbo"].mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for metric in metrics["train"]:
                metric.update(_metric_input(out))
        model.eval()
        with torch.no_grad():
            for batch in val.split(cfg.batch_size):
                out = model.step(batch)
                for metric in metrics["val"]:
                    metric.update(_metric_input(out))
            row = {**_published(*metrics["train"], dim, "train"), **_published(*metrics["val"], dim, "val")}
            row["test_elbo"] = float(model.step(test, eps=test_eps)["elbo"].mean())
            row["val_elbo_acc"] = float(model.step(val, eps=val_eps)["elbo"].mean())
        row["seconds"] = time.perf_counter() - start
        for key, value in row.items():
            history[key].append(value if math.isfinite(value) else float("nan"))
    return {"config": asdict(cfg), "dim": dim, "torch": torch.__version__, "history": history}


def load_or_train(cfg: RunConfig, out: Path, log: Callable[[str], None] = print) -> dict:
    """The saved run ``out/<name>.json`` if its config matches, else train it and save it."""
    path = out / f"{cfg.name}.json"
    if path.exists():
        run = json.loads(path.read_text())
        if run["config"] == json.loads(json.dumps(asdict(cfg))):
            return run
    run = train_run(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(run))
    tmp.replace(path)
    h = run["history"]
    log(f"  trained {cfg.name}: {cfg.epochs} epochs in {h['seconds'][-1]:.1f} s; test ELBO last"
        f" {h['test_elbo'][-1]:.3f}, best {max(h['test_elbo']):.3f}; train rel gap {h['train_rel_gap'][-1]:+.2%}")
    return run
