"""The callbacks for ``import pytorch_lightning as pl`` code: also subclasses of ``pytorch_lightning.Callback``.

Lightning ships the same classes twice, as ``lightning.pytorch`` and as the standalone ``pytorch_lightning``
package, and each namespace's type checks know only its own classes. The package's callbacks subclass
``lightning.pytorch.Callback``: a ``pytorch_lightning.Trainer`` runs them in a list
(``Trainer(callbacks=[EntropyMonitor()])``), but rejects them where it checks the type: a single callback
``Trainer(callbacks=EntropyMonitor())``, and ``pytorch_lightning.cli.LightningCLI`` configurations. The classes
here are the same callbacks, subclasses of both namespaces' ``Callback``; their logged keys and checkpoint state
are the same. Loggers of either namespace are recognised by both.

The callbacks implement the Lightning 2 hooks, so this module needs ``pytorch_lightning>=2.2`` (as
``lightning>=2.2`` for the main namespace): importing it with an older ``pytorch_lightning`` (1.x, the version
lightning-bolts 0.7.0 pins) raises an ``ImportError`` that names the installed and the needed version, instead of
a ``TypeError`` from a hook signature during ``fit``.

Example:
    >>> import pytorch_lightning as pl
    >>> from lightning_entropy_vae.pytorch_lightning import EntropyConvergence, EntropyMonitor
    >>> isinstance(EntropyMonitor(), pl.Callback)
    True
    >>> trainer = pl.Trainer(callbacks=[EntropyMonitor(), EntropyConvergence()], logger=False)
"""

from __future__ import annotations

import re

import pytorch_lightning

from lightning_entropy_vae.callbacks import entropy_convergence, entropy_monitor

__all__ = ["EntropyConvergence", "EntropyMonitor"]

#: The oldest ``pytorch_lightning`` whose Trainer calls the hooks these callbacks implement.
_MIN_VERSION = (2, 2)


def _check_version(version: str) -> None:
    """Raise ``ImportError`` for a ``pytorch_lightning`` version older than ``_MIN_VERSION``."""
    found = re.match(r"(\d+)\.(\d+)", str(version))
    needed = ".".join(map(str, _MIN_VERSION))
    if found is not None and tuple(int(part) for part in found.groups()) < _MIN_VERSION:
        raise ImportError(
            f"lightning_entropy_vae.pytorch_lightning needs pytorch_lightning>={needed} (the Lightning 2 callback"
            f" hooks), but found pytorch_lightning {version}. Upgrade it (pip install 'pytorch-lightning>={needed}')"
            " or use the `lightning` package: `from lightning_entropy_vae import EntropyMonitor` with"
            " `lightning.pytorch.Trainer`."
        )


_check_version(getattr(pytorch_lightning, "__version__", "unknown"))


class EntropyMonitor(entropy_monitor.EntropyMonitor, pytorch_lightning.Callback):
    __doc__ = entropy_monitor.EntropyMonitor.__doc__


class EntropyConvergence(entropy_convergence.EntropyConvergence, pytorch_lightning.Callback):
    __doc__ = entropy_convergence.EntropyConvergence.__doc__
