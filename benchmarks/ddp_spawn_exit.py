"""How often a CPU ``ddp_spawn`` fit aborts at interpreter exit, with and without destroying the gloo group.

Runs a plain Lightning fit (the tests' ``MonitorVAE`` with Lightning's ``EarlyStopping``, none of this
package's callbacks) ``--runs`` times in each arm, each in a fresh interpreter, and prints how many exited
non-zero and how many of those printed "terminate called without an active exception". The second arm adds
``tests/helpers.py``'s ``DestroyGlooGroupAtExit``, which ``tests/test_callback_ddp.py`` uses.

    python benchmarks/ddp_spawn_exit.py --runs 12      # about 2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = r'''
import sys
sys.path.insert(0, {tests!r})
import torch, lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping
from helpers import MonitorVAE, DDPData, DestroyGlooGroupAtExit

class Model(MonitorVAE):
    def validation_step(self, batch, i):
        out = super().validation_step(batch, i)
        self.log("probe_val", torch.tensor(1.0), sync_dist=True)
        return out

if __name__ == "__main__":
    torch.manual_seed(0)
    callbacks = [EarlyStopping("probe_val", patience=1)] + ([DestroyGlooGroupAtExit()] if {destroy} else [])
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=4, callbacks=callbacks,
                         logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, num_sanity_val_steps=0, default_root_dir={folder!r},
                         use_distributed_sampler=False)
    trainer.fit(Model(lr=0.0, sample=False), datamodule=DDPData())
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=12)
    args = parser.parse_args()
    import lightning
    import torch

    print(f"$ python {' '.join(sys.argv)}\ntorch {torch.__version__}, lightning {lightning.__version__}")
    for destroy in (False, True):
        failed = aborted = 0
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as folder:
                script = Path(folder, "fit.py")  # a file, so that spawn can import the __main__ guard
                script.write_text(WORKER.format(tests=str(ROOT / "tests"), destroy=destroy, folder=folder))
                done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
            failed += done.returncode != 0
            aborted += "terminate called without an active exception" in done.stderr
        arm = "with DestroyGlooGroupAtExit" if destroy else "plain Lightning         "
        print(f"{arm}: {failed} of {args.runs} runs exited non-zero ({aborted} with the abort at exit)")


if __name__ == "__main__":
    main()
