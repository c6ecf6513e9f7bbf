"""The callbacks for ``import pytorch_lightning as pl`` code: also subclasses of ``pytorch_lightning.Callback``.

Lightning ships the same classes twice, as ``lightning.pytorch`` and as the standalone ``pytorch_lightning``
package, and each namespace's type checks know only its own classes. The package's callbacks subclass
``lightning.pytorch.Callback``: a ``pytorch_lightning.Trainer`` runs them in a list
(``Trainer(callbacks=[EntropyMonitor()])``), but rejects them where it checks the type: a single callback
``Trainer(callbacks=EntropyMonitor())``, and ``pytorch_lightning.cli.LightningCLI`` configurations. The classes
here are the same callbacks, subclasses of both namespaces' ``Callback``; their logged keys and checkpoint state
are the same. Loggers of either namespace are recognised by both.

Example:
    >>> import pytorch_lightning as pl
    >>> from lightning_entropy_vae.pytorch_lightning import EntropyConvergence, EntropyMonitor
    >>> isinstance(EntropyMonitor(), pl.Callback)
    True
    >>> trainer = pl.Trainer(callbacks=[EntropyMonitor(), EntropyConvergence()], logger=False)
"""

from __future__ import annotations

import pytorch_lightning

from lightning_entropy_vae.callbacks import entropy_convergence, entropy_monitor

__all__ = ["EntropyConvergence", "EntropyMonitor"]


class EntropyMonitor(entropy_monitor.EntropyMonitor, pytorch_lightning.Callback):
    __doc__ = entropy_monitor.EntropyMonitor.__doc__


class EntropyConvergence(entropy_convergence.EntropyConvergence, pytorch_lightning.Callback):
    __doc__ = entropy_convergence.EntropyConvergence.__doc__
