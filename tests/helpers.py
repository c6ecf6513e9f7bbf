"""Shared tiny modules for the EntropyMonitor tests: a recording VAE, loaders, trainers, a float64 reference.

``MonitorVAE`` is a linear Gaussian VAE (VAE-1: a scalar learnable decoder log-variance, prior N(0, I))
that keeps a detached copy of exactly what each of its steps returned, so the tests can recompute
every logged value independently with ``torch.distributions`` in float64 (``monitor_reference``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.distributions import Normal, kl_divergence
from torch.utils.data import DataLoader, TensorDataset

from lightning_entropy_vae import VAEOutput

D, H = 4, 2
RECORDED = ("x", "enc_mean", "enc_logvar", "dec_mean", "dec_logvar", "elbo", "loss")


def monitor_data(n: int, seed: int, data_dim: int = D) -> Tensor:
    """Correlated Gaussian data (n, data_dim), seeded."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=gen)
    w = torch.randn(2, data_dim, generator=gen)
    return z @ w + 0.3 * torch.randn(n, data_dim, generator=gen)


#: the callback tests' training and validation data (read only)
#: The tests' data sets, in one place: 4 and 2 batches of 4 rows, and a 6- and a 3-batch pair for tests that need
#: more batches per epoch (same seeds: TRAIN_24 starts with TRAIN's generator, VAL is VAL_12's seed with 8 rows).
TRAIN, VAL = monitor_data(16, seed=0), monitor_data(8, seed=1)
TRAIN_24, VAL_12 = monitor_data(24, seed=0), monitor_data(12, seed=1)


def train_full_batch(model: pl.LightningModule, x: Tensor, steps: int) -> None:
    """Adam at the model's learning rate, cosine-annealed to zero over ``steps`` full-batch steps."""
    opt = model.configure_optimizers()
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for i in range(steps):
        opt.zero_grad()
        model.training_step(x, i)["loss"].backward()
        opt.step()
        schedule.step()


def monitor_loader(x: Tensor, batch_size: int = 4) -> DataLoader:
    return DataLoader(TensorDataset(x), batch_size=batch_size, shuffle=False)


class MonitorVAE(pl.LightningModule):
    """Linear VAE-1 whose steps return the vocabulary and record (detached clones of) what they returned.

    Args:
        data_dim, latent_dim: D and H.
        lr: SGD learning rate (0 freezes the model).
        param_output: how ``dec_logvar`` is returned: ``"clone"`` (a copy, with grad), ``"live"`` (the
            ``nn.Parameter`` itself), ``"view"`` (``self.dec_logvar.expand(D)``) or ``"detach"``.
        sample: draw ``z = mean + std * eps``; ``False`` uses ``z = mean`` (deterministic).
        return_elbo: return the per-sample ``elbo``; otherwise the callback computes it from the pieces.
        beta: KL weight of the loss (the recorded and returned ``elbo`` always uses 1).
        nan_batch: (epoch, batch_idx) whose returned ``enc_logvar`` holds a NaN (the loss stays finite).
        nan_index: the same for every batch holding the data row of that index (batches ``(x, index)``).
        sanity_shift: added to the returned ``enc_logvar`` during the sanity check.
        init_logvar: initial decoder log-variance.
        log_probe: ``self.log("probe", loss, on_step=True)``, to see at which steps Lightning logs.
    """

    def __init__(self, data_dim: int = D, latent_dim: int = H, lr: float = 0.0, *,
                 param_output: str = "clone", sample: bool = True, return_elbo: bool = True,
                 beta: float = 1.0, nan_batch: tuple[int, int] | None = None, sanity_shift: float = 0.0,
                 init_logvar: float = 0.0, log_probe: bool = False, nan_index: int | None = None) -> None:
        super().__init__()
        self.data_dim, self.latent_dim, self.lr = data_dim, latent_dim, lr
        self.param_output, self.sample, self.return_elbo, self.beta = param_output, sample, return_elbo, beta
        self.nan_batch, self.sanity_shift = nan_batch, sanity_shift
        self.log_probe, self.nan_index = log_probe, nan_index
        self.enc = nn.Linear(data_dim, 2 * latent_dim)
        with torch.no_grad():
            self.enc.bias[latent_dim:] = -2.0  # encoder variances well below the collapse threshold
        self.dec = nn.Linear(latent_dim, data_dim)
        self.dec_logvar = nn.Parameter(torch.tensor(float(init_logvar)))
        self.train_log: list[dict[str, Any]] = []  # every training batch, all epochs
        self.val_log: list[dict[str, Any]] = []  # every validation batch, sanity check included

    def latents(self, mean: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
        """Hook for subclasses that shape the encoder statistics (collapse tests)."""
        return mean, logvar

    def _outputs(self, x: Tensor) -> dict[str, Tensor]:
        mean, logvar = self.enc(x).chunk(2, dim=-1)
        mean, logvar = self.latents(mean, logvar)
        std = torch.exp(0.5 * logvar)
        z = mean + std * torch.randn_like(std) if self.sample else mean
        dec_mean = self.dec(z)
        recon = Normal(dec_mean, torch.exp(0.5 * self.dec_logvar)).log_prob(x).sum(-1)
        kl = kl_divergence(Normal(mean, std), Normal(torch.zeros_like(mean), torch.ones_like(std))).sum(-1)
        out = {"x": x, "enc_mean": mean, "enc_logvar": logvar, "dec_mean": dec_mean, "elbo": recon - kl}
        out["loss"] = -(recon - self.beta * kl).mean()
        return out

    def _returned(self, out: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.param_output == "live":
            out["dec_logvar"] = self.dec_logvar
        elif self.param_output == "view":
            out["dec_logvar"] = self.dec_logvar.expand(self.data_dim)
        elif self.param_output == "detach":
            out["dec_logvar"] = self.dec_logvar.detach()
        else:
            out["dec_logvar"] = self.dec_logvar.clone()
        if not self.return_elbo:
            del out["elbo"]
        return out

    def _record(self, out: dict[str, Tensor], **tags: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {k: out[k].detach().clone() for k in RECORDED if k in out}
        entry["dec_logvar"] = self.dec_logvar.detach().clone()  # the value the step used (pre-step)
        entry.update(tags)
        return entry

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        out = self._outputs(batch[0])
        nan_here = self.nan_index is not None and bool((batch[1] == self.nan_index).any())
        if nan_here or self.nan_batch == (self.current_epoch, batch_idx):
            out["enc_logvar"] = out["enc_logvar"].clone()
            with torch.no_grad():
                out["enc_logvar"][0, 0] = float("nan")
        entry = self._record(out, epoch=self.current_epoch, step=self.global_step, batch_idx=batch_idx)
        self.train_log.append(entry)
        if self.log_probe:  # a step-level metric of Lightning's own, to compare logging steps with
            self.log("probe", out["loss"].detach(), on_step=True, on_epoch=False)
        return self._returned(out)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.train_log[-1]["dec_logvar_post"] = self.dec_logvar.detach().clone()

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        out = self._outputs(batch[0])
        if self.trainer.sanity_checking and self.sanity_shift:
            out["enc_logvar"] = out["enc_logvar"] + self.sanity_shift
        entry = self._record(out, epoch=self.current_epoch, dataloader_idx=dataloader_idx,
                             sanity=self.trainer.sanity_checking)
        self.val_log.append(entry)
        return self._returned(out)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    # selections of the logs
    def train_epoch(self, epoch: int) -> list[dict[str, Any]]:
        return [e for e in self.train_log if e["epoch"] == epoch]

    def val_epoch(self, epoch: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        return [e for e in self.val_log
                if e["epoch"] == epoch and e["dataloader_idx"] == dataloader_idx and not e["sanity"]]


def monitor_elbo(entry: dict[str, Tensor]) -> Tensor:
    """Per-sample Gaussian ELBO (B,) in float64 from the recorded pieces (z as drawn in the step)."""
    x, mean, logvar = entry["x"].double(), entry["enc_mean"].double(), entry["enc_logvar"].double()
    dec_mean, dec_logvar = entry["dec_mean"].double(), entry["dec_logvar"].double()
    std = torch.exp(0.5 * logvar)
    recon = Normal(dec_mean, torch.exp(0.5 * dec_logvar).expand_as(dec_mean)).log_prob(x).sum(-1)
    kl = kl_divergence(Normal(mean, std), Normal(torch.zeros_like(mean), torch.ones_like(std))).sum(-1)
    return recon - kl


def monitor_reference(entries: list[dict[str, Any]], *, floor: float = 0.1, criterion: str = "entropy",
                      threshold: float | None = None, dec_key: str = "dec_logvar") -> dict[str, Any]:
    """Every epoch-level value of the callback, recomputed in float64 with torch.distributions."""
    assert entries, "no batches recorded"

    def cat(key: str) -> Tensor:
        return torch.cat([e[key].double() for e in entries])

    x, mean, logvar = cat("x"), cat("enc_mean"), cat("enc_logvar")
    n, latent_dim = mean.shape
    data_dim = x.shape[1]
    posterior = Normal(mean, torch.exp(0.5 * logvar))
    latent_entropy = posterior.entropy().mean(0)
    encoder = posterior.entropy().sum(-1).mean()
    prior = Normal(torch.zeros(latent_dim, dtype=torch.float64), 1.0).entropy().sum()
    dec_per_point = torch.cat([
        Normal(torch.zeros_like(e["x"], dtype=torch.float64),
               torch.exp(0.5 * e[dec_key].double()).expand(e["x"].shape)).entropy().sum(-1)
        for e in entries
    ])
    decoder = dec_per_point.mean()
    total = encoder - prior - decoder
    elbo = cat("elbo").mean()
    gap = elbo - total
    rel_gap = gap / max(abs(float(total)), floor * data_dim)
    standard = Normal(torch.zeros_like(mean), torch.ones_like(mean))
    latent_kl = kl_divergence(posterior, standard).mean(0)
    mean_variance = mean.var(0, correction=0)
    if criterion == "entropy":
        collapsed = latent_entropy >= (1.0 if threshold is None else threshold)
    elif criterion == "kl":
        collapsed = latent_kl < (0.01 if threshold is None else threshold)
    else:
        collapsed = mean_variance < (0.01 if threshold is None else threshold)
    return {
        "encoder": float(encoder), "prior": float(prior), "decoder": float(decoder), "sum": float(total),
        "elbo": float(elbo), "gap": float(gap), "rel_gap": float(rel_gap), "abs_rel_gap": abs(float(rel_gap)),
        "active_latents": float((~collapsed).sum()), "latent_entropy": latent_entropy.tolist(),
        "latent_kl": latent_kl.tolist(), "collapsed": collapsed.tolist(), "n": n,
    }


SCALARS = ("encoder", "prior", "decoder", "sum", "elbo", "gap", "rel_gap", "abs_rel_gap", "active_latents")


def assert_logged_equal(metrics: dict[str, Any], prefix: str, ref: dict[str, Any], rel: float = 1e-5,
                        keys: tuple[str, ...] = SCALARS) -> None:
    """Every ``{prefix}/{key}`` in ``metrics`` equals the reference to ``rel`` (absolute floor 1e-5)."""
    for key in keys:
        got = float(metrics[f"{prefix}/{key}"])
        want = ref[key]
        assert math.isclose(got, want, rel_tol=rel, abs_tol=1e-5), f"{prefix}/{key}: {got}, expected {want}"


def monitor_trainer(tmp_path: Path, callbacks: list, **kwargs: Any) -> pl.Trainer:
    """A tiny CPU Trainer: no progress bar, summary, sanity check, checkpoints or logger unless asked."""
    options: dict[str, Any] = {
        "max_epochs": 2, "accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False,
        "enable_model_summary": False, "enable_checkpointing": False, "num_sanity_val_steps": 0,
        "default_root_dir": tmp_path, "log_every_n_steps": 1,
    }
    options.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **options)


class DestroyGlooGroupAtExit(pl.Callback):
    """Destroys the gloo process group when a worker exits, as Lightning does for NCCL only.

    With torch 2.13 and Lightning 2.6, a ``ddp_spawn`` worker on CPU that exits with its gloo group alive
    aborts at interpreter shutdown now and then ("terminate called without an active exception", SIGABRT),
    with or without this package's callbacks: a plain Lightning fit with EarlyStopping did so in 3 of 12
    runs, none of 24 with this callback (``python benchmarks/ddp_spawn_exit.py``).
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        import atexit

        from lightning.fabric.utilities.distributed import _destroy_dist_connection

        if trainer.world_size > 1:
            atexit.register(_destroy_dist_connection)


class RankReport(pl.Callback):
    """Writes each rank's stop decision to ``{folder}/rank{r}.json`` at the end of fit."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        convergence = next(cb for cb in trainer.callbacks if type(cb).__name__ == "EntropyConvergence")
        report = {"rank": trainer.global_rank, "world_size": trainer.world_size,
                  "should_stop": bool(trainer.should_stop), "current_epoch": trainer.current_epoch,
                  "stopped_epoch": convergence.stopped_epoch, "wait_count": convergence.wait_count,
                  "stop_reason": convergence.stop_reason,
                  "gap_window": [float(trainer.callback_metrics[f"entropy/train/{key}"])
                                 for key in ("gap_window", "gap_window_se", "data_dim")]}
        Path(self.folder, f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


# ---------------------------------------------------------------------------------------------- DDP
DDP_TRAIN_ROWS, DDP_VAL_ROWS = 16, 8
EPOCH_KEYS_DDP = [f"entropy/{stage}/{key}" for stage in ("train", "val")
                  for key in (*SCALARS, "skipped_batches")]


class DDPData(pl.LightningDataModule):
    """16 training and 8 validation rows ``(x, index)``, sharded as DistributedSampler(shuffle=False) does.

    Lightning always shuffles the training sampler it injects, so the shards are built here, in the
    process that runs the loop: rank r reads rows r, r + 2, ... With one process, the order interleaves
    the two ranks' batches, so that both runs see exactly the same batches.
    """

    def __init__(self) -> None:
        super().__init__()
        x = monitor_data(DDP_TRAIN_ROWS + DDP_VAL_ROWS, seed=7)
        self.train = TensorDataset(x[:DDP_TRAIN_ROWS], torch.arange(DDP_TRAIN_ROWS))
        self.val = TensorDataset(x[DDP_TRAIN_ROWS:], torch.arange(DDP_VAL_ROWS))

    def _loader(self, dataset: TensorDataset, batch_size: int) -> DataLoader:
        world_size, rank = self.trainer.world_size, self.trainer.global_rank
        n = len(dataset)
        if world_size > 1:
            rows = list(range(rank, n, world_size))
        else:  # the two shards' batches in turn
            shards = [list(range(r, n, 2)) for r in range(2)]
            rows = [i for start in range(0, n // 2, batch_size) for shard in shards
                    for i in shard[start:start + batch_size]]
        return DataLoader(torch.utils.data.Subset(dataset, rows), batch_size=batch_size, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train, 4)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val, 2)


def ddp_fit(folder: str, devices: int, strategy: str = "ddp_spawn") -> MonitorVAE:
    """Fit a frozen, deterministic MonitorVAE with an EntropyMonitor on CPU; ``devices=2`` uses ``strategy``
    (``"ddp_spawn"``, or ``"ddp"``, which starts rank 1 by running the calling script again).

    Both runs see the same batches (see ``DDPData``). The batch holding training row 5 (on rank 1)
    returns a NaN: skipped and counted, and left out of the gap window. The window is per process and full only
    when every process's is: rank 1 keeps one finite batch per epoch, one process three, so windows of 10 and 30
    batches both fill at the end of epoch 9, where the gate opens.
    """
    from lightning.pytorch.loggers import CSVLogger

    from lightning_entropy_vae import EntropyConvergence, EntropyMonitor

    torch.manual_seed(0)
    model = MonitorVAE(lr=0.0, sample=False, nan_index=5)
    monitor = EntropyMonitor(gap_window=10 if devices > 1 else 30)
    # the gate opens once the window is full (epoch 9); the frozen model's validation ELBO never improves on the
    # first check after it (epoch 10): it stops at epoch 11
    convergence = EntropyConvergence(gap_tolerance=1e6, gap_z=0.0, gate_epochs=1, patience=1,
                                     require_elbo_objective=False)
    strategy = {"strategy": strategy} if devices > 1 else {}
    trainer = pl.Trainer(
        accelerator="cpu", devices=devices, max_epochs=14,
        callbacks=[monitor, convergence, RankReport(folder), DestroyGlooGroupAtExit()],
        logger=CSVLogger(folder, name="csv", version=0), enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0, log_every_n_steps=1,
        default_root_dir=folder, use_distributed_sampler=False, **strategy,
    )
    trainer.fit(model, datamodule=DDPData())
    return model


class HeldOutNoneOnOneRank(MonitorVAE):
    """The validation and test steps of rank ``empty_rank`` all return None (its share of a held-out set filtered to
    nothing); the test steps of the other ranks return the vocabulary."""

    def __init__(self, empty_rank: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.empty_rank = empty_rank

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        out = super().validation_step(batch, batch_idx)
        return None if self.trainer.global_rank == self.empty_rank else out

    def test_step(self, batch: Any, batch_idx: int) -> Any:
        return None if self.trainer.global_rank == self.empty_rank else self._returned(self._outputs(batch[0]))


def ddp_fit_with_an_empty_rank(folder: str, empty_rank: int = 1, strategy: str = "ddp_spawn") -> None:
    """Two CPU processes, of which ``empty_rank`` keeps no validation or test batch: ``fit`` (with Lightning's
    default sanity check) then ``test`` (the default monitor's test stage starts only where the test steps return the
    vocabulary)."""
    from lightning.pytorch.loggers import CSVLogger

    from lightning_entropy_vae import EntropyMonitor

    torch.manual_seed(0)
    model = HeldOutNoneOnOneRank(empty_rank=empty_rank, lr=0.0, sample=False)
    data = DDPData()
    data.test_dataloader = data.val_dataloader
    for version, run in enumerate(("fit", "test")):  # a CSV file each: a spawned run rewrites its logger's file
        trainer = pl.Trainer(
            accelerator="cpu", devices=2, strategy=strategy, max_epochs=2,
            callbacks=[EntropyMonitor(), DestroyGlooGroupAtExit()],
            logger=CSVLogger(folder, name="csv", version=version), enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=2, log_every_n_steps=1,
            default_root_dir=folder, use_distributed_sampler=False,
        )
        getattr(trainer, run)(model, datamodule=data)


def package_env(**extra: str) -> dict[str, str]:
    """The environment for a subprocess that imports the same copy of the package as the tests: a checkout goes on
    ``PYTHONPATH``; an installed wheel is found without help (and site-packages put ahead of the standard library
    would let a backport such as ``dataclasses`` shadow it)."""
    import lightning_entropy_vae

    env = {**os.environ, **extra}
    root = Path(lightning_entropy_vae.__file__).resolve().parents[1]
    if root.name not in ("site-packages", "dist-packages"):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    return env


class ManualVAE(MonitorVAE):
    """Manual optimization with two optimizers (encoder, decoder), returning a VAEOutput."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        out = self._outputs(batch[0])
        self.train_log.append(self._record(out, epoch=self.current_epoch, step=self.global_step,
                                           batch_idx=batch_idx))
        returned = VAEOutput(**self._returned(dict(out)))  # a "clone" dec_logvar is the pre-step value
        for opt in self.optimizers():
            opt.zero_grad()
        self.manual_backward(out["loss"])
        for opt in self.optimizers():
            opt.step()
        return returned

    def configure_optimizers(self):
        decoder = [self.dec.weight, self.dec.bias, self.dec_logvar]
        return [torch.optim.SGD(self.enc.parameters(), lr=self.lr), torch.optim.SGD(decoder, lr=self.lr)]


class FixedVariance(MonitorVAE):
    """A constant decoder log-variance (VAE-0): its gap does not close."""

    def training_step(self, batch, batch_idx):
        return {**super().training_step(batch, batch_idx), "dec_logvar": torch.zeros(())}

    def validation_step(self, batch, batch_idx):
        return {**super().validation_step(batch, batch_idx), "dec_logvar": torch.zeros(())}
