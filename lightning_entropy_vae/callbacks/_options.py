"""The EntropyMonitor's settings: one immutable object, checked once when the monitor is built (private)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lightning_utilities.core.imports import RequirementCache

from lightning_entropy_vae.callbacks import _groups, _loggers
from lightning_entropy_vae.functional import COLLAPSE_CRITERIA
from lightning_entropy_vae.functional._checks import number_argument

STAGES = ("train", "val", "test")
#: ``extract(pl_module, outputs, batch) -> mapping``: a step's vocabulary, for modules whose step output cannot change
Extract = Callable[[Any, Any, Any], Mapping[str, Any]]
#: the bar chart (``log_bar_chart_every_n_epochs``) draws with matplotlib, an optional extra
MATPLOTLIB = RequirementCache("matplotlib")


@dataclass(frozen=True)
class MonitorOptions:
    """What an :class:`~lightning_entropy_vae.EntropyMonitor` was asked to do (see its docstring for each field)."""

    stages: tuple[str, ...]
    optional_test: bool  # the test stage monitored only where test steps return the vocabulary (not named)
    collapse_criterion: str
    collapse_threshold: float | None
    rel_gap_floor: float
    ema_decay: float
    max_latents_as_scalars: int
    log_histograms: bool
    tensorboard_per_latent: tuple[str, ...]
    log_bar_chart_every_n_epochs: int
    extract: Extract | None
    nan_strategy: str
    warn_on_collapse: bool
    latent_groups: str | None
    prefix: str
    gap_window: int = 32

    @classmethod
    def build(cls, *, stages: Any, collapse_criterion: Any, collapse_threshold: Any, rel_gap_floor: Any,
              ema_decay: Any, max_latents_as_scalars: Any, log_histograms: Any, tensorboard_per_latent: Any,
              log_bar_chart_every_n_epochs: Any, extract: Any, nan_strategy: Any, warn_on_collapse: Any,
              latent_groups: Any, prefix: Any, gap_window: Any = 32) -> MonitorOptions:
        """Check every argument (raising with what was expected and what was got) and return the options."""
        optional_test = stages is None
        stages = STAGES if stages is None else (stages,) if isinstance(stages, str) else tuple(stages)
        if not stages or any(s not in STAGES for s in stages):
            raise ValueError(f"Expected `stages` to be a non-empty subset of {STAGES}, but got {stages!r}.")
        if not isinstance(prefix, str) or not re.fullmatch(r"[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*", prefix):
            raise ValueError(f"Expected `prefix` to be a key prefix such as 'entropy' or 'vae/entropy' (letters,"
                             f" digits, '_', '-', inner '/'), but got {prefix!r}.")
        if collapse_criterion not in COLLAPSE_CRITERIA:
            raise ValueError(
                f"Expected `collapse_criterion` to be one of {COLLAPSE_CRITERIA}, but got {collapse_criterion!r}."
            )
        number_argument("collapse_threshold", collapse_threshold, "a finite number or None", math.isfinite,
                        optional=True)
        number_argument("rel_gap_floor", rel_gap_floor, "a positive number", lambda v: 0 < v < math.inf)
        number_argument("ema_decay", ema_decay, "a number in [0, 1)", lambda v: 0.0 <= v < 1.0)
        for name, value in (("max_latents_as_scalars", max_latents_as_scalars),
                            ("log_bar_chart_every_n_epochs", log_bar_chart_every_n_epochs)):
            number_argument(name, value, "a non-negative int", lambda v: v >= 0, integer=True)
        if log_bar_chart_every_n_epochs and not MATPLOTLIB:
            raise ModuleNotFoundError(
                f"EntropyMonitor(log_bar_chart_every_n_epochs={log_bar_chart_every_n_epochs}) draws with matplotlib,"
                " which is not installed. Install it with `pip install lightning-entropy-vae[examples]` (or"
                " `pip install matplotlib`), or pass log_bar_chart_every_n_epochs=0."
            )
        rows = (tensorboard_per_latent,) if isinstance(tensorboard_per_latent, str) else tuple(tensorboard_per_latent)
        if any(row not in _loggers.PER_LATENT_ROWS for row in rows):
            raise ValueError(f"Expected `tensorboard_per_latent` to be a subset of {_loggers.PER_LATENT_ROWS},"
                             f" but got {tensorboard_per_latent!r}.")
        if extract is not None and not callable(extract):
            raise TypeError(f"Expected `extract` to be callable(pl_module, outputs, batch), but got {extract!r}.")
        if nan_strategy not in ("skip", "error"):
            raise ValueError(f"Expected `nan_strategy` to be one of ('skip', 'error'), but got {nan_strategy!r}.")
        if latent_groups is not None and latent_groups not in _groups.LATENT_GROUPS:
            raise ValueError(f"Expected `latent_groups` to be None or one of {_groups.LATENT_GROUPS}, but got"
                             f" {latent_groups!r}.")
        number_argument("gap_window", gap_window, "an int >= 10 (training batches)", lambda v: v >= 10, integer=True)
        return cls(stages=stages, optional_test=optional_test, collapse_criterion=collapse_criterion,
                   collapse_threshold=collapse_threshold, rel_gap_floor=float(rel_gap_floor),
                   ema_decay=float(ema_decay), max_latents_as_scalars=max_latents_as_scalars,
                   log_histograms=bool(log_histograms), tensorboard_per_latent=rows,
                   log_bar_chart_every_n_epochs=log_bar_chart_every_n_epochs, extract=extract,
                   nan_strategy=nan_strategy, warn_on_collapse=bool(warn_on_collapse), latent_groups=latent_groups,
                   prefix=prefix, gap_window=gap_window)

    def state_key_fields(self) -> dict[str, Any]:
        """What the monitor's ``state_key`` is made of: the default's key stays as it was before the test stage and
        the prefix were options, so that older checkpoints still restore."""
        key: dict[str, Any] = {"stages": tuple(s for s in self.stages if s != "test" or not self.optional_test),
                               "collapse_criterion": self.collapse_criterion}
        if self.prefix != "entropy":
            key["prefix"] = self.prefix
        return key

    def key(self, stage: str, name: str) -> str:
        """A logged key: ``{prefix}/{stage}/{name}``."""
        return f"{self.prefix}/{stage}/{name}"

