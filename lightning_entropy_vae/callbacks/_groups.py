"""Per-group summaries of the per-latent statistics, for latents of shape ``(C, h, w)`` (private).

An image VAE's ``(B, 4, 16, 16)`` latents are H = 1,024 latents: one key each would bury a dashboard. With
``EntropyMonitor(latent_groups="channel")`` each channel c gets two keys per epoch:
``entropy/{stage}/channel_active/{c}`` (its active latents) and ``entropy/{stage}/channel_entropy/{c}`` (the
mean of its latents' average encoder entropies).
"""

from __future__ import annotations

import torch
from torch import Tensor

#: The groupings ``EntropyMonitor(latent_groups=...)`` knows.
LATENT_GROUPS = ("channel",)

#: A collapse warning names at most this many latents, then counts the rest.
MAX_NAMED = 8


def group_keys(stage: str, collapse: dict[str, Tensor], latent_shape: tuple[int, ...],
               prefix: str = "entropy") -> dict[str, float]:
    """The per-channel keys of an epoch (one device-to-host copy); none for flat ``(H,)`` latents.

    A channel is the first dimension of a point's latents (``C`` of ``(C, h, w)``); NaN without kept points.
    """
    if len(latent_shape) < 2:
        return {}
    channels = latent_shape[0]
    entropy = collapse["latent_entropy"].reshape(channels, -1)
    active = (~collapse["collapsed"]).reshape(channels, -1).sum(-1).to(entropy.dtype)
    active = torch.where(collapse["num_active"].isnan(), float("nan"), active)
    values = torch.cat([active, entropy.mean(-1)]).cpu().tolist()
    width = len(str(channels - 1))
    out = {f"{prefix}/{stage}/channel_active/{c:0{width}d}": values[c] for c in range(channels)}
    out.update({f"{prefix}/{stage}/channel_entropy/{c:0{width}d}": values[channels + c] for c in range(channels)})
    return out


def named_latents(latents: list[int], latent_shape: tuple[int, ...]) -> str:
    """``latents`` for a warning: the first :data:`MAX_NAMED`, as ``(c, i, j)`` for N-D latents, and a count.

    Example:
        >>> named_latents([1], (2,))
        'latent(s) [1]'
        >>> named_latents(list(range(700)), (700,))
        '700 latents [0, 1, 2, 3, 4, 5, 6, 7, ...]'
        >>> named_latents([5, 13], (4, 2, 2))
        'latent(s) [(1, 0, 1), (3, 0, 1)]'
    """
    shown = latents[:MAX_NAMED]
    if len(latent_shape) > 1:
        shown = [tuple(int(i) for i in torch.unravel_index(torch.tensor(h), latent_shape)) for h in shown]
    if len(latents) <= MAX_NAMED:
        return f"latent(s) {shown}"
    return f"{len(latents)} latents [{', '.join(map(str, shown))}, ...]"
