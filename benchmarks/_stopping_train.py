"""Phase 1 of ``stopping.py``: train VAE runs and record, batch by batch and epoch by epoch, what a stopping rule sees.

A plain PyTorch loop (no Lightning): minibatches of 128 (the last one smaller), Adam, a VAE-1 per family (an MLP
``GaussianVAE(kind="vae1")`` or the conv VAE of ``_stopping_models.py``, see ``_stopping_data.FAMILIES``) whose
decoder log-variance starts at the log of the training data's mean variance per dimension.

Per training batch, from the step's output (what ``EntropyMonitor`` receives):

- ``batch_epoch``, ``batch_n`` (points), ``batch_beta`` (the KL weight of that batch's loss);
- ``batch_neg_loss``: minus the loss the optimizer stepped on, as a Lightning step would return it;
- ``batch_elbo_sum``: the step's per-point ``elbo`` summed over the batch;
- ``batch_entsum_sum``: ``F.entropy_sum(enc_logvar, dec_logvar, x, reduction="sum")``;
- ``batch_kl_sums`` (batches, H): per latent, ``0.5 (mu^2 + exp(lv) - 1 - lv)`` summed over the batch.

Per epoch, as ``EntropyMonitor`` publishes them: ``train_sum`` and ``train_elbo`` (``EntropySumELBO`` and
``GaussianELBO`` updated with every training step of the epoch while the weights change), ``val_sum`` and
``val_elbo`` (the same over the validation set after the epoch, one z draw per point); and ``lr``, ``seconds``
(cumulative). ``val_elbo`` is also what ``self.log("val_elbo", elbo.mean())`` would hand to ``EarlyStopping``.

The ground truth, hidden from every rule: ``test_elbo``, the ELBO of a held-out test set (drawn with the training
data, used for nothing else) averaged over ``samples`` z draws per point, fixed for the whole run (common random
numbers: epoch-to-epoch differences are not sampling noise). ``val_elbo_acc`` is the same on the validation set.

Loss variants (``VARIANTS``; the recorded ``elbo`` is always the beta = 1 ELBO): ``mean`` -ELBO.mean();
``sum`` the summed negative log-likelihood without its constant ``0.5 D log 2 pi`` per point plus the summed KL
(the ELBO up to a constant and a factor); ``beta4`` KL weight 4; ``warmup`` KL weight rising linearly from 0 to 1
over the first half of the budget's steps; ``freebits`` reconstruction plus ``sum_h max(lambda, KL_h)`` with ``KL_h``
the batch mean KL of latent h and lambda = ``FREE_BITS`` (saved in the run's config as ``free_bits``);
``scaled`` 2 x (-ELBO.mean()).

Policy ``sasa`` (live, on top of variant ``mean``): at each epoch end the last ``sasa_window`` per-batch gaps
``g_k = (elbo_sum - entsum_sum) / n_k`` since the last rate change give ``mean, se = F.batch_means(g, n, groups=10)``;
the gate opens when ``|mean| <= max(2 se, 0.01 D)``. An open gate multiplies the rate by 0.1 and clears the window
(at most twice); an open gate at the last rate stops the run (``stop_epoch`` in the record).

One run is ``<out>/<name>.json`` (meta: ``name``, ``config``, ``versions``, ``seconds``, ``stop_epoch``,
``lr_drop_epochs``) and ``<out>/<name>.npz`` (the arrays above); :func:`load_runs` reads them back.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from _stopping_data import FAMILIES, FRESH, Family
from _stopping_models import ConvVAE
from torch import Tensor, nn

import lightning_entropy_vae
from lightning_entropy_vae import EntropySumELBO, GaussianELBO
from lightning_entropy_vae import functional as F
from lightning_entropy_vae.models import GaussianVAE

VARIANTS = ("mean", "sum", "beta4", "warmup", "freebits", "scaled")
POLICIES = ("fixed", "sasa")
BATCH_ARRAYS = ("batch_epoch", "batch_n", "batch_neg_loss", "batch_elbo_sum", "batch_entsum_sum", "batch_kl_sums",
                "batch_beta")
EPOCH_ARRAYS = ("train_sum", "train_elbo", "val_sum", "val_elbo", "test_elbo", "val_elbo_acc", "lr", "seconds")
FREE_BITS = 3.0  # nats per latent: above the batch KL of some latent, so the variant's loss is not the ELBO
SASA_DROPS, SASA_FACTOR, SASA_GROUPS = 2, 0.1, 10


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one run (saved with it; a run saved under another config is trained again)."""

    family: str
    lr: float
    seed: int
    variant: str
    epochs: int
    n_train: int
    n_val: int
    n_test: int
    latents: int
    dims: tuple[int, ...]
    D: int  # the data dimension
    model: str = "mlp"
    policy: str = "fixed"
    batch_size: int = 128
    samples: int = 16
    sasa_window: int = 64
    free_bits: float | None = None  # lambda of ``freebits`` (None for the other variants)
    #: 2: a batch's statistics are read before its optimizer step (the decoder variance its forward pass used, as
    #: EntropyMonitor reads it); records of version 1 read the variance after the step and are trained again
    record_version: int = 2

    @property
    def name(self) -> str:
        policy = "" if self.policy == "fixed" else f"_{self.policy}"
        return f"{self.family}_{self.variant}{policy}_lr{self.lr:g}_s{self.seed}"


def family_spec(family: str) -> Family:
    """A benchmark family or one of the families added after the choice (``_stopping_data.FRESH``)."""
    return FAMILIES[family] if family in FAMILIES else FRESH[family]


def config_for(family: str, lr: float, seed: int, variant: str = "mean", policy: str = "fixed",
               smoke: bool = False) -> RunConfig:
    """The run of ``family`` at rate ``lr``: the family's sizes and budget, or tiny ones with ``smoke``."""
    if variant not in VARIANTS:
        raise ValueError(f"Expected `variant` in {VARIANTS}, but got {variant!r}.")
    if policy not in POLICIES:
        raise ValueError(f"Expected `policy` in {POLICIES}, but got {policy!r}.")
    spec = family_spec(family)
    free_bits = FREE_BITS if variant == "freebits" else None
    if smoke:
        dims = (4, 8) if spec.model == "conv" else (16,)
        return RunConfig(family, lr, seed, variant, epochs=6, n_train=min(spec.n_train, 200),
                         n_val=min(spec.n_val, 64), n_test=min(spec.n_test, 64), latents=spec.latents, dims=dims,
                         D=spec.dim, model=spec.model, policy=policy, samples=8, sasa_window=3, free_bits=free_bits)
    epochs = spec.epochs.get(lr, max(spec.epochs.values()))
    return RunConfig(family, lr, seed, variant, epochs, spec.n_train, spec.n_val, spec.n_test, spec.latents,
                     spec.hidden, spec.dim, spec.model, policy, samples=spec.samples, free_bits=free_bits)


def build_model(cfg: RunConfig, init_logvar: float = 0.0) -> nn.Module:
    """The VAE of ``cfg`` with its initial weights drawn from ``cfg.seed``."""
    torch.manual_seed(cfg.seed)
    if cfg.model == "conv":
        return ConvVAE(cfg.latents, channels=cfg.dims, side=round(cfg.D ** 0.5), init_logvar=init_logvar)
    return GaussianVAE(cfg.D, cfg.latents, kind="vae1", hidden_dims=cfg.dims, lr=cfg.lr, init_logvar=init_logvar)


def latent_kl(out: dict[str, Tensor]) -> Tensor:
    """``(B, H)``: KL(q(z_h|x) || N(0, 1)) per point and latent."""
    mean, logvar = out["enc_mean"], out["enc_logvar"]
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar)


def variant_loss(variant: str, out: dict[str, Tensor], kl: Tensor, beta: float, free_bits: float = FREE_BITS
                 ) -> Tensor:
    """The training loss of ``variant`` for the step output ``out`` and its per-latent KL ``kl`` (B, H).

    ``beta`` is the KL weight of ``warmup`` (the other variants fix their own); ``free_bits`` the lambda of
    ``freebits``.
    """
    elbo = out["elbo"]
    if variant == "mean":
        return -elbo.mean()
    if variant == "scaled":
        return -2.0 * elbo.mean()
    if variant == "sum":
        x, dec_mean, dec_logvar = out["x"], out["dec_mean"], out["dec_logvar"]
        nll = 0.5 * (x - dec_mean).square().sum(-1) / dec_logvar.exp() + 0.5 * x.shape[-1] * dec_logvar
        return nll.sum() + kl.sum()
    recon = elbo + kl.sum(-1)  # the expected log-likelihood per point
    if variant == "beta4":
        return -(recon - 4.0 * kl.sum(-1)).mean()
    if variant == "warmup":
        return -(recon - beta * kl.sum(-1)).mean()
    if variant == "freebits":
        return -recon.mean() + kl.mean(0).clamp(min=free_bits).sum()
    raise ValueError(f"Expected `variant` in {VARIANTS}, but got {variant!r}.")


def kl_weight(cfg: RunConfig, step: int, steps_per_epoch: int) -> float:
    """The KL weight of optimizer step ``step`` (0-based): 4 for ``beta4``, the ramp of ``warmup``, else 1."""
    if cfg.variant == "beta4":
        return 4.0
    if cfg.variant == "warmup":
        return min(1.0, step / (0.5 * cfg.epochs * steps_per_epoch))
    return 1.0


def sasa_gate(gaps: np.ndarray, points: np.ndarray, dim: int) -> bool:
    """Whether the window of per-batch gaps (nats per point) is stationary around zero."""
    mean, se = F.batch_means(torch.from_numpy(gaps), torch.from_numpy(points), groups=SASA_GROUPS)
    return abs(float(mean)) <= max(2.0 * float(se), 0.01 * dim)


def _split(cfg: RunConfig, spec: Family) -> tuple[Tensor, Tensor, Tensor]:
    x = spec.make(cfg.n_train + cfg.n_val + cfg.n_test, cfg.seed)
    if x.shape[1] != cfg.D:
        raise ValueError(f"Expected family {cfg.family!r} to make data of dimension {cfg.D}, but got {x.shape[1]}.")
    return x[:cfg.n_train], x[cfg.n_train:cfg.n_train + cfg.n_val], x[cfg.n_train + cfg.n_val:]


def _published(sum_metric: EntropySumELBO, elbo_metric: GaussianELBO, stage: str) -> dict[str, float]:
    total, elbo = float(sum_metric.compute()["sum"]), float(elbo_metric.compute())
    sum_metric.reset()
    elbo_metric.reset()
    return {f"{stage}_sum": total, f"{stage}_elbo": elbo}


def train_run(cfg: RunConfig) -> tuple[dict, dict[str, np.ndarray]]:
    """Train one run; return its meta (json-able) and its arrays."""
    train, val, test = _split(cfg, family_spec(cfg.family))
    model = build_model(cfg, init_logvar=math.log(float(train.var(dim=0).mean())))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    shuffle = torch.Generator().manual_seed(cfg.seed + 1)
    torch.manual_seed(cfg.seed + 4)  # the training z draws
    test_eps = torch.randn(cfg.samples, cfg.n_test, cfg.latents, generator=torch.Generator().manual_seed(cfg.seed + 2))
    val_eps = torch.randn(cfg.samples, cfg.n_val, cfg.latents, generator=torch.Generator().manual_seed(cfg.seed + 3))
    metrics = {stage: (EntropySumELBO(warn_fixed_variance=False), GaussianELBO()) for stage in ("train", "val")}
    steps_per_epoch = -(-cfg.n_train // cfg.batch_size)
    batch: dict[str, list] = {key: [] for key in BATCH_ARRAYS}
    epoch_rows: dict[str, list[float]] = {key: [] for key in EPOCH_ARRAYS}
    stop_epoch, drops, window_start = None, [], 0
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        for idx in torch.randperm(cfg.n_train, generator=shuffle).split(cfg.batch_size):
            beta = kl_weight(cfg, len(batch["batch_n"]), steps_per_epoch)
            out = model.step(train[idx])
            kl = latent_kl(out)
            free_bits = FREE_BITS if cfg.free_bits is None else cfg.free_bits
            loss = variant_loss(cfg.variant, out, kl, beta, free_bits)
            # what the step used: a returned parameter (VAE-1's dec_logvar) is copied before the step updates it
            seen = {k: v.detach().clone() if v.is_leaf and v.requires_grad else v.detach() for k, v in out.items()}
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for metric in metrics["train"]:
                metric.update(seen)
            entsum = F.entropy_sum(enc_logvar=seen["enc_logvar"], dec_logvar=seen["dec_logvar"], x=seen["x"],
                                   reduction="sum")
            batch["batch_epoch"].append(epoch)
            batch["batch_n"].append(idx.numel())
            batch["batch_neg_loss"].append(-float(loss.detach()))
            batch["batch_elbo_sum"].append(float(seen["elbo"].double().sum()))
            batch["batch_entsum_sum"].append(float(entsum))
            batch["batch_kl_sums"].append(kl.detach().sum(0).numpy())
            batch["batch_beta"].append(beta)
        model.eval()
        with torch.no_grad():
            for part in val.split(cfg.batch_size):
                out = model.step(part)
                for metric in metrics["val"]:
                    metric.update(out)
            row = {**_published(*metrics["train"], "train"), **_published(*metrics["val"], "val")}
            row["test_elbo"] = float(model.step(test, eps=test_eps)["elbo"].mean())
            row["val_elbo_acc"] = float(model.step(val, eps=val_eps)["elbo"].mean())
        row["lr"] = opt.param_groups[0]["lr"]
        row["seconds"] = time.perf_counter() - start
        for key in EPOCH_ARRAYS:
            epoch_rows[key].append(row[key])
        if cfg.policy == "sasa" and len(batch["batch_n"]) - window_start >= cfg.sasa_window:
            n = np.asarray(batch["batch_n"][-cfg.sasa_window:], dtype=np.float64)
            gaps = (np.asarray(batch["batch_elbo_sum"][-cfg.sasa_window:])
                    - np.asarray(batch["batch_entsum_sum"][-cfg.sasa_window:])) / n
            if sasa_gate(gaps, n, cfg.D):
                if len(drops) == SASA_DROPS:
                    stop_epoch = epoch
                    break
                drops.append(epoch)
                window_start = len(batch["batch_n"])
                for group in opt.param_groups:
                    group["lr"] *= SASA_FACTOR
    arrays = {
        "batch_epoch": np.asarray(batch["batch_epoch"], dtype=np.int32),
        "batch_n": np.asarray(batch["batch_n"], dtype=np.int32),
        "batch_neg_loss": np.asarray(batch["batch_neg_loss"], dtype=np.float64),
        "batch_elbo_sum": np.asarray(batch["batch_elbo_sum"], dtype=np.float64),
        "batch_entsum_sum": np.asarray(batch["batch_entsum_sum"], dtype=np.float64),
        "batch_kl_sums": np.stack(batch["batch_kl_sums"]).astype(np.float32),
        "batch_beta": np.asarray(batch["batch_beta"], dtype=np.float32),
        **{key: np.asarray(values, dtype=np.float64) for key, values in epoch_rows.items()},
    }
    meta = {"name": cfg.name, "config": _saved_config(cfg), "versions": versions(),
            "seconds": epoch_rows["seconds"][-1], "stop_epoch": stop_epoch, "lr_drop_epochs": drops}
    return meta, arrays


def versions() -> dict[str, str]:
    return {"lightning_entropy_vae": lightning_entropy_vae.__version__, "torch": torch.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def _saved_config(cfg: RunConfig) -> dict:
    """``cfg`` as saved: json types, without the fields that are None (``free_bits`` outside ``freebits``)."""
    return json.loads(json.dumps({k: v for k, v in asdict(cfg).items() if v is not None}))


def is_saved(cfg: RunConfig, out: Path) -> bool:
    """Whether ``out`` holds ``cfg``'s run, saved with the same config."""
    meta, arrays = out / f"{cfg.name}.json", out / f"{cfg.name}.npz"
    return meta.exists() and arrays.exists() and json.loads(meta.read_text())["config"] == _saved_config(cfg)


def save_run(meta: dict, arrays: dict[str, np.ndarray], out: Path) -> None:
    """Write ``<name>.npz`` then ``<name>.json`` (the json marks the run complete), each via a temporary file."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f"{meta['name']}.npz.tmp"
    with tmp.open("wb") as f:
        np.savez(f, **arrays)
    tmp.replace(out / f"{meta['name']}.npz")
    tmp = out / f"{meta['name']}.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(out / f"{meta['name']}.json")


def train_if_needed(cfg: RunConfig, out: Path, log: Callable[[str], None] = print) -> bool:
    """Train and save ``cfg``'s run unless ``out`` holds it already; return whether it trained."""
    if is_saved(cfg, out):
        return False
    meta, arrays = train_run(cfg)
    save_run(meta, arrays, out)
    test = arrays["test_elbo"]
    gap = (arrays["batch_elbo_sum"][-1] - arrays["batch_entsum_sum"][-1]) / arrays["batch_n"][-1]
    stopped = "" if meta["stop_epoch"] is None else f", sasa stop at epoch {meta['stop_epoch']}"
    log(f"  trained {cfg.name}: {len(test)} epochs in {meta['seconds']:.1f} s; test ELBO last {test[-1]:.3f},"
        f" best {test.max():.3f} at epoch {int(test.argmax())}; last batch gap {gap:+.3f}{stopped}")
    return True


def load_run(path: Path) -> dict:
    """One run: its meta (``name``, ``config``, ``versions``, ``stop_epoch``, ...) and its arrays as numpy.

    The meta's ``seconds`` (the run's total) is replaced by the array of the same name (cumulative per epoch, whose
    last entry is that total).
    """
    meta = json.loads(path.read_text())
    with np.load(path.with_suffix(".npz")) as arrays:
        return {**meta, **{key: arrays[key] for key in arrays.files}}


def load_runs(out_dir: Path | str) -> list[dict]:
    """Every run saved in ``out_dir``, sorted by name: meta keys plus the arrays (``BATCH_ARRAYS``, ``EPOCH_ARRAYS``).

    A json file without its ``.npz`` or without a ``config`` (another phase's output) is skipped.
    """
    runs = []
    for path in sorted(Path(out_dir).glob("*.json")):
        if not path.with_suffix(".npz").exists():
            continue
        meta = json.loads(path.read_text())
        if isinstance(meta, dict) and "config" in meta:
            runs.append(load_run(path))
    return runs
