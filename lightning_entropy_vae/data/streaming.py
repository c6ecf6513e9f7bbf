"""The streaming model-selection data of the paper (Fig. 3a): segments of changing intrinsic dimension."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from lightning_entropy_vae.data.synthetic import _check_noise_std, _check_positive_int


class StreamingData(NamedTuple):
    """The stream ``x`` (N, D) float32 and the intrinsic dimension of the segment of each row (N,) int64."""

    x: Tensor
    intrinsic_dim: Tensor


def make_streaming_data(
    segment_size: int = 100_000,
    dims: Sequence[int] = (6, 2, 4),
    data_dim: int = 10,
    noise_std: float = 0.1,
    seed: int = 0,
) -> StreamingData:
    r"""A data stream of consecutive segments, each a noisy linear subspace of its own dimension.

    Segment ``i`` has intrinsic dimension ``k = dims[i]`` and ``segment_size`` rows

    .. math:: x = U (s \odot \epsilon) + \text{noise\_std}\cdot\eta,\quad
              \epsilon \sim N(0, I_k),\ \eta \sim N(0, I_D),

    with ``s`` the first ``k`` entries of ``linspace(1, 5, 10)`` and ``U`` a random orthonormal
    (D, k) matrix drawn per segment (QR of a Gaussian matrix). Row ``n`` belongs to segment
    ``n // segment_size``. The paper's setting is the default: D = 10, dims 6, 2, 4, 100,000 rows each.

    Args:
        segment_size: rows per segment.
        dims: intrinsic dimension of each segment, each between 1 and ``min(data_dim, 10)``.
        data_dim: data dimension D.
        noise_std: standard deviation of the isotropic noise.
        seed: seed of the subspaces and the samples.

    Returns:
        ``StreamingData(x, intrinsic_dim)``: ``x`` (len(dims) * segment_size, D) float32 and
        ``intrinsic_dim`` (len(dims) * segment_size,) int64.

    Raises:
        ValueError: if an argument is out of range.

    Example:
        >>> x, intrinsic_dim = make_streaming_data(segment_size=5, dims=(3, 1))
        >>> x.shape, intrinsic_dim.tolist()
        (torch.Size([10, 10]), [3, 3, 3, 3, 3, 1, 1, 1, 1, 1])
    """
    _check_positive_int("segment_size", segment_size)
    _check_positive_int("data_dim", data_dim)
    _check_noise_std(noise_std)
    dims = tuple(dims)
    scales = torch.linspace(1, 5, 10, dtype=torch.float64)
    max_dim = min(data_dim, len(scales))
    if not dims or any(isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= max_dim for k in dims):
        raise ValueError(
            f"Expected `dims` to be a non-empty sequence of ints between 1 and {max_dim}"
            f" (min(data_dim, 10)), but got {dims!r}."
        )
    gen = torch.Generator().manual_seed(seed)
    segments = []
    for k in dims:
        basis, _ = torch.linalg.qr(torch.randn(data_dim, k, generator=gen, dtype=torch.float64))
        eps = torch.randn(segment_size, k, generator=gen, dtype=torch.float64)
        noise = torch.randn(segment_size, data_dim, generator=gen, dtype=torch.float64)
        segments.append((scales[:k] * eps) @ basis.T + noise_std * noise)
    intrinsic_dim = torch.tensor(dims, dtype=torch.int64).repeat_interleave(segment_size)
    return StreamingData(torch.cat(segments).to(torch.float32), intrinsic_dim)
