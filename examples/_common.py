"""What every example script shares: its common command-line options and how it saves a figure.

Not an example itself. ``python examples/<script>.py`` puts this folder on ``sys.path``, so the
scripts import it as ``_common``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def example_parser(doc: str, name: str) -> argparse.ArgumentParser:
    """A parser described by the script's docstring, with ``--seed``, ``--threads``, ``--out`` and ``--smoke``.

    The script adds its own options, parses, and shrinks its sizes when ``args.smoke`` is set.
    """
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--out", type=Path, default=Path("runs/examples") / name, help="output folder")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes for CI (a few seconds)")
    return parser


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend, imported when a figure is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Lay out, write (120 dpi) and close a figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)


def adam_with_fast_variance(model: Any, lr: float, variance_factor: float) -> Any:
    """Adam for a ``GaussianVAE`` whose decoder variance (VAE-3: the bias of its output) learns faster.

    The decoder variance (VAE-3: the layer that outputs it) is the slowest parameter to settle: it has to
    follow the reconstruction error down, and a lagging variance leaves a gap of 0.5 * (D - R / sigma^2)
    nats per point. The paper's code has a separate ("fast") learning rate for it for the same reason.
    For VAE-3 the whole variance layer at the fast rate is unstable (a variance can shoot up, after which
    the mean of that dimension stops learning), so only the bias gets it.
    """
    import torch

    head = getattr(model, "dec_logvar_head", None)  # VAE-3: only its bias, a log-variance offset per dimension
    variance = [head.bias] if head is not None else [model.dec_logvar]
    ids = {id(p) for p in variance}
    return torch.optim.Adam([
        {"params": [p for p in model.parameters() if id(p) not in ids]},
        {"params": variance, "lr": variance_factor * lr},
    ], lr=lr)
