"""The streaming model-selection data of the paper (Fig. 3a): segments of changing intrinsic dimension."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from lightning_entropy_vae.data.synthetic import _check_noise_std, _check_positive_int

_SUBSPACES = ("nested", "fresh")


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
    *,
    subspaces: Literal["nested", "fresh"] = "nested",
    param_seed: int | None = None,
) -> StreamingData:
    r"""A data stream of consecutive segments, each a noisy linear subspace of its own dimension.

    Segment ``i`` has intrinsic dimension ``k = dims[i]`` and ``segment_size`` rows

    .. math:: x = U_k (s \odot \epsilon) + \text{noise\_std}\cdot\eta,\quad
              \epsilon \sim N(0, I_k),\ \eta \sim N(0, I_D),

    with ``s`` the first ``k`` entries of ``linspace(1, 5, 10)`` (standard deviations) and ``U_k`` a
    (D, k) matrix with orthonormal columns. With ``subspaces="nested"`` (the paper's code) one orthogonal
    (D, D) matrix ``U``, from the SVD of one random Gaussian matrix, serves every segment and ``U_k`` is
    its first ``k`` columns, so the subspaces are nested. With ``subspaces="fresh"`` every segment draws
    its own ``U_k`` (QR of a Gaussian matrix). Row ``n`` belongs to segment ``n // segment_size``. The
    paper's setting is the default: D = 10, dims 6, 2, 4, 100,000 rows each, nested subspaces.

    Args:
        segment_size: rows per segment.
        dims: intrinsic dimension of each segment, each between 1 and ``min(data_dim, 10)``.
        data_dim: data dimension D.
        noise_std: standard deviation of the isotropic noise.
        seed: seed of the samples (and of the subspaces unless ``param_seed`` is given).
        subspaces: ``"nested"`` or ``"fresh"``, see above.
        param_seed: seed of the subspaces; fix it to draw another stream (another ``seed``) of the same
            subspaces, e.g. one stream per model as in the paper's code.

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
    if subspaces not in _SUBSPACES:
        raise ValueError(f"Expected `subspaces` to be one of {_SUBSPACES}, but got {subspaces!r}.")
    dims = tuple(dims)
    scales = torch.linspace(1, 5, 10, dtype=torch.float64)
    max_dim = min(data_dim, len(scales))
    if not dims or any(isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= max_dim for k in dims):
        raise ValueError(
            f"Expected `dims` to be a non-empty sequence of ints between 1 and {max_dim}"
            f" (min(data_dim, 10)), but got {dims!r}."
        )
    param_gen = torch.Generator().manual_seed(seed if param_seed is None else param_seed)
    if subspaces == "nested":
        full, _, _ = torch.linalg.svd(torch.randn(data_dim, data_dim, generator=param_gen, dtype=torch.float64))
        bases = [full[:, :k] for k in dims]
    else:
        bases = [torch.linalg.qr(torch.randn(data_dim, k, generator=param_gen, dtype=torch.float64))[0] for k in dims]
    gen = torch.Generator().manual_seed(seed)
    segments = []
    for k, basis in zip(dims, bases):
        eps = torch.randn(segment_size, k, generator=gen, dtype=torch.float64)
        noise = torch.randn(segment_size, data_dim, generator=gen, dtype=torch.float64)
        segments.append((scales[:k] * eps) @ basis.T + noise_std * noise)
    intrinsic_dim = torch.tensor(dims, dtype=torch.int64).repeat_interleave(segment_size)
    return StreamingData(torch.cat(segments).to(torch.float32), intrinsic_dim)
