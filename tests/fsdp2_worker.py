"""Worker of tests/test_callback_fsdp2.py: EntropyMonitor under FSDP2 (``fully_shard`` through Lightning's
``ModelParallelStrategy``) on one CPU process, run in a child interpreter (it initialises a gloo process group).

FSDP2 turns the parameters into DTensors and runs the forward pass on unsharded tensors of its own, which it frees
after the backward pass (unless ``set_reshard_after_backward(False)``; ``"every_other"`` keeps them after even
batches and frees them after odd ones, as under gradient accumulation). Prints one JSON line per case:
``{"case", "decoder", "expected", "error"}``: the logged training decoder entropy of the last epoch and the one
computed from the log-variances the forward passes used, or the error the fit raised.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import warnings

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_entropy_vae import EntropyMonitor

D, H, BATCHES = 6, 2, 4


class ShardedVAE(pl.LightningModule):
    """A linear VAE-1 whose ``dec_logvar`` is a (1,) parameter (FSDP2 shards no scalars), returned as ``returned``:
    ``"copy"`` (``.detach().clone()``) or ``"view"`` (``.expand(D)`` of the unsharded parameter)."""

    def __init__(self, returned: str, reshard_after_backward: bool | str = True) -> None:
        super().__init__()
        self.returned, self.reshard_after_backward = returned, reshard_after_backward
        self.enc, self.dec = nn.Linear(D, 2 * H), nn.Linear(H, D)
        self.dec_logvar = nn.Parameter(torch.zeros(1))
        self.used: list[float] = []  # the log-variance each forward pass used

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        fully_shard(self, mesh=self.device_mesh["data_parallel"])
        if self.reshard_after_backward is False:
            self.set_reshard_after_backward(False)

    def on_train_batch_start(self, batch, batch_idx):
        if self.reshard_after_backward == "every_other":  # as under gradient accumulation: keep, then free
            self.set_reshard_after_backward(batch_idx % 2 == 1)

    def forward(self, x):
        mean, logvar = self.enc(x).chunk(2, -1)
        dec_mean = self.dec(mean + torch.exp(0.5 * logvar) * torch.randn_like(mean))
        lv = self.dec_logvar
        self.used.append(float(lv.detach()[0]))
        rec = -0.5 * ((x - dec_mean) ** 2 * torch.exp(-lv) + lv + math.log(2 * math.pi)).sum(-1)
        kl = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).sum(-1)
        returned = lv.detach().clone() if self.returned == "copy" else lv
        return {"loss": -(rec - kl).mean(), "elbo": rec - kl, "x": x, "enc_mean": mean, "enc_logvar": logvar,
                "dec_mean": dec_mean, "dec_logvar": returned.expand(D)}

    def training_step(self, batch, batch_idx):
        return self(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2)


def run(case: str, returned: str, reshard_after_backward: bool | str = True) -> dict:
    torch.manual_seed(0)
    model = ShardedVAE(returned, reshard_after_backward)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=2, callbacks=[EntropyMonitor(stages=("train",))],
                         strategy=ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1), logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         default_root_dir=tempfile.mkdtemp())
    data = DataLoader(TensorDataset(torch.randn(8 * BATCHES, D, generator=torch.Generator().manual_seed(1))),
                      batch_size=8)
    try:
        trainer.fit(model, data)
    except Exception as err:  # the test checks which
        return {"case": case, "error": f"{type(err).__name__}: {err}"}
    last = model.used[-BATCHES:]
    expected = 0.5 * D * (math.log(2 * math.pi * math.e) + sum(last) / len(last))
    return {"case": case, "decoder": float(trainer.callback_metrics["entropy/train/decoder"]), "expected": expected,
            "moved": max(last) - min(last), "error": None}


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    cases = {"copy": ("copy",), "view": ("view",), "view_kept": ("view", False),
             "view_every_other": ("view", "every_other")}
    for name in sys.argv[1:] or cases:
        print(json.dumps(run(name, *cases[name])), flush=True)
