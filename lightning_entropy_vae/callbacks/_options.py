"""The EntropyMonitor's constructor arguments, checked (private)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

from lightning_entropy_vae.callbacks import _groups, _loggers
from lightning_entropy_vae.functional import COLLAPSE_CRITERIA, collapsed_latents

STAGES = ("train", "val", "test")
#: ``extract(pl_module, outputs, batch) -> mapping``: a step's vocabulary, for modules whose step output cannot change
Extract = Callable[[Any, Any, Any], Mapping[str, Any]]


def check_monitor_options(*, stages: Any, prefix: Any, collapse_criterion: Any, collapse_threshold: Any,
                          rel_gap_floor: Any, ema_decay: Any, max_latents_as_scalars: Any,
                          log_bar_chart_every_n_epochs: Any, tensorboard_per_latent: Any, extract: Any,
                          nan_strategy: Any, latent_groups: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Raise on a bad argument (saying what was expected and what was got); return ``stages`` (``None``: all three)
    and ``tensorboard_per_latent`` as tuples."""
    stages = STAGES if stages is None else tuple(stages)
    if not stages or any(s not in STAGES for s in stages):
        raise ValueError(f"Expected `stages` to be a non-empty subset of {STAGES}, but got {stages!r}.")
    if not isinstance(prefix, str) or not re.fullmatch(r"[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*", prefix):
        raise ValueError(f"Expected `prefix` to be a key prefix such as 'entropy' or 'vae/entropy' (letters,"
                         f" digits, '_', '-', inner '/'), but got {prefix!r}.")
    if collapse_criterion not in COLLAPSE_CRITERIA:
        raise ValueError(
            f"Expected `collapse_criterion` to be one of {COLLAPSE_CRITERIA}, but got {collapse_criterion!r}."
        )
    zero = torch.zeros(1)  # the criterion's and threshold's own checks
    collapsed_latents(zero, latent_kl=zero, latent_mean_variance=zero, criterion=collapse_criterion,
                      threshold=collapse_threshold)
    _positive("rel_gap_floor", rel_gap_floor)
    if isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float)) or not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"Expected `ema_decay` in [0, 1), but got {ema_decay!r}.")
    _non_negative_int("max_latents_as_scalars", max_latents_as_scalars)
    _non_negative_int("log_bar_chart_every_n_epochs", log_bar_chart_every_n_epochs)
    tensorboard_per_latent = (tensorboard_per_latent,) if isinstance(tensorboard_per_latent, str) \
        else tuple(tensorboard_per_latent)
    if any(row not in _loggers.PER_LATENT_ROWS for row in tensorboard_per_latent):
        raise ValueError(f"Expected `tensorboard_per_latent` to be a subset of {_loggers.PER_LATENT_ROWS},"
                         f" but got {tensorboard_per_latent!r}.")
    if extract is not None and not callable(extract):
        raise TypeError(f"Expected `extract` to be callable(pl_module, outputs, batch), but got {extract!r}.")
    if nan_strategy not in ("skip", "error"):
        raise ValueError(f"Expected `nan_strategy` to be one of ('skip', 'error'), but got {nan_strategy!r}.")
    if latent_groups is not None and latent_groups not in _groups.LATENT_GROUPS:
        raise ValueError(f"Expected `latent_groups` to be None or one of {_groups.LATENT_GROUPS}, but got"
                         f" {latent_groups!r}.")
    return stages, tensorboard_per_latent


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"Expected `{name}` to be a positive number, but got {value!r}.")


def _non_negative_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"Expected `{name}` to be a non-negative int, but got {value!r}.")


def state_key_fields(stages: tuple[str, ...], optional_test: bool, collapse_criterion: str,
                     prefix: str) -> dict[str, Any]:
    """What the monitor's ``state_key`` is made of: the default's key as before the test stage and the prefix came,
    so that older checkpoints still restore."""
    key: dict[str, Any] = {"stages": tuple(s for s in stages if s != "test" or not optional_test),
                           "collapse_criterion": collapse_criterion}
    if prefix != "entropy":
        key["prefix"] = prefix
    return key
