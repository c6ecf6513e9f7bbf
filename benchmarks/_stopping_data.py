"""The data families of the stopping benchmark and the model trained on each.

Every family is a :class:`Family`: a generator ``make(n, seed) -> (n, D)`` float32 (rows are split train / val /
test in order), the split sizes, the VAE (an MLP ``GaussianVAE(kind="vae1")`` or the conv VAE of
``_stopping_models.py``) and the budget in epochs per learning rate. All data are generated or shipped with
scikit-learn (no download). The first five are the tuning families; the others are held out:

==================  ===============================================================================================
ppca                probabilistic PCA, D = 20, 4 latents
pca_ring            the paper's PCA-ring, D = 10
swiss_roll          the swiss roll, D = 3
digits              scikit-learn's 8x8 digits, flattened (D = 64, values in [0, 1])
eight_gaussians     eight Gaussians on a circle, D = 2
breast_cancer       scikit-learn's breast cancer table (569 x 30, standardised): 4 batches, the last one smaller
wine                scikit-learn's wine table (178 x 13, standardised): 110 training points, one batch per epoch
mfa                 a mixture of 4 factor analysers, D = 16, 2 factors each, per-dimension noise
manifold            a 3-d nonlinear manifold lifted to D = 16 (``make_manifold``)
digits_conv         the digits as 1 x 8 x 8 images, conv VAE with a learned scalar decoder variance
digits_small        300 training digits and a wide VAE: the validation ELBO creeps, then declines
==================  ===============================================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_entropy_vae.data import (
    load_digits_tensor,
    make_eight_gaussians,
    make_manifold,
    make_pca_ring,
    make_ppca_data,
    make_swiss_roll,
)

TUNING = ("ppca", "pca_ring", "swiss_roll", "digits", "eight_gaussians")
LRS = (3e-3, 1e-2)


@dataclass(frozen=True)
class Family:
    """One data family of the benchmark and the VAE trained on it."""

    name: str
    make: Callable[[int, int], Tensor]  # (n, seed) -> (n, D) float32; rows are split train / val / test
    n_train: int
    n_val: int
    n_test: int
    latents: int
    hidden: tuple[int, ...]  # MLP widths; the conv VAE's channels
    epochs: dict[float, int]  # the budget per learning rate
    dim: int  # D, the data dimension
    model: str = "mlp"  # "mlp" (GaussianVAE vae1) or "conv" (ConvVAE on 1 x side x side images)
    samples: int = 8  # z draws per point of the accurate test and validation ELBOs

    @property
    def n(self) -> int:
        return self.n_train + self.n_val + self.n_test


def _permuted(x: Tensor, n: int, seed: int) -> Tensor:
    """The first ``n`` rows of ``x`` in an order drawn from ``seed``."""
    if n > x.shape[0]:
        raise ValueError(f"Expected at most {x.shape[0]} rows, but got n = {n}.")
    return x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))][:n]


def _standardised(x: Tensor) -> Tensor:
    std = x.std(dim=0)
    return (x - x.mean(dim=0)) / torch.where(std > 0, std, torch.ones_like(std))


def digits(n: int, seed: int) -> Tensor:
    """``n`` of scikit-learn's digits, (n, 64) in [0, 1], in a random order."""
    return _permuted(load_digits_tensor(), n, seed)


def _sklearn_table(name: str) -> Tensor:
    import sklearn.datasets

    return _standardised(torch.as_tensor(getattr(sklearn.datasets, name)().data, dtype=torch.float32))


def breast_cancer(n: int, seed: int) -> Tensor:
    """``n`` rows of scikit-learn's breast cancer table (569 x 30), each column standardised over the table."""
    return _permuted(_sklearn_table("load_breast_cancer"), n, seed)


def wine(n: int, seed: int) -> Tensor:
    """``n`` rows of scikit-learn's wine table (178 x 13), each column standardised over the table."""
    return _permuted(_sklearn_table("load_wine"), n, seed)


def mixture_of_factor_analysers(n: int, seed: int, data_dim: int = 16, components: int = 4, factors: int = 2,
                                param_seed: int = 0) -> Tensor:
    r"""A mixture of factor analysers: :math:`x = m_k + W_k f + \epsilon`, :math:`k` uniform.

    .. math::

        f \sim N(0, I_{factors}), \quad \epsilon \sim N(0, \mathrm{diag}(\psi)), \quad
        m_k \sim N(0, 4 I), \quad W_k \sim N(0, I), \quad \psi_d \sim U(0.05, 0.3)^2

    The parameters come from ``param_seed`` (the same distribution for every ``seed``), the samples from ``seed``.

    Returns:
        ``(n, data_dim)`` float32.
    """
    params = torch.Generator().manual_seed(10_000 + param_seed)
    means = 2.0 * torch.randn(components, data_dim, generator=params)
    loadings = torch.randn(components, data_dim, factors, generator=params)
    noise_std = 0.05 + 0.25 * torch.rand(data_dim, generator=params)
    gen = torch.Generator().manual_seed(seed)
    k = torch.randint(0, components, (n,), generator=gen)
    f = torch.randn(n, factors, 1, generator=gen)
    x = means[k] + (loadings[k] @ f).squeeze(-1) + noise_std * torch.randn(n, data_dim, generator=gen)
    return x.to(torch.float32)


def diabetes(n: int, seed: int) -> Tensor:
    """``n`` rows of scikit-learn's diabetes table (442 x 10), each column standardised over the table."""
    return _permuted(_sklearn_table("load_diabetes"), n, seed)


def s_curve(n: int, seed: int, data_dim: int = 12, noise_std: float = 0.05, param_seed: int = 0) -> Tensor:
    """scikit-learn's S curve (a 2-d sheet in 3-d, standardised) lifted to ``data_dim`` by a fixed random linear map
    (from ``param_seed``), with isotropic noise: ``(n, data_dim)`` float32."""
    from sklearn.datasets import make_s_curve

    sheet = _standardised(torch.as_tensor(make_s_curve(n, random_state=seed)[0], dtype=torch.float32))
    lift = torch.randn(3, data_dim, generator=torch.Generator().manual_seed(20_000 + param_seed)) / 3 ** 0.5
    return sheet @ lift + noise_std * torch.randn(n, data_dim, generator=torch.Generator().manual_seed(seed))


def blobs(n: int, seed: int, data_dim: int = 20, centers: int = 6, param_seed: int = 0) -> Tensor:
    r"""Isotropic Gaussian clusters: :math:`x = m_k + s_k \epsilon`, :math:`k` uniform, :math:`m_k \sim N(0, 9 I)`,
    :math:`s_k \sim U(0.5, 1.5)` (from ``param_seed``), samples from ``seed``: ``(n, data_dim)`` float32."""
    params = torch.Generator().manual_seed(30_000 + param_seed)
    means = 3.0 * torch.randn(centers, data_dim, generator=params)
    scales = 0.5 + torch.rand(centers, generator=params)
    gen = torch.Generator().manual_seed(seed)
    k = torch.randint(0, centers, (n,), generator=gen)
    return means[k] + scales[k, None] * torch.randn(n, data_dim, generator=gen)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("ppca", lambda n, s: make_ppca_data(n, data_dim=20, latent_dim=4, noise_std=0.5, seed=s),
           500, 250, 300, latents=4, hidden=(64, 64), dim=20, epochs={3e-3: 500, 1e-2: 300}),
    Family("pca_ring", lambda n, s: make_pca_ring(n, data_dim=10, noise_std=0.05, seed=s),
           500, 250, 300, latents=2, hidden=(64, 64), dim=10, epochs={3e-3: 1000, 1e-2: 500}),
    Family("swiss_roll", lambda n, s: make_swiss_roll(n, noise_std=0.05, seed=s),
           500, 250, 300, latents=2, hidden=(64, 64), dim=3, epochs={3e-3: 500, 1e-2: 300}),
    Family("digits", digits, 600, 250, 300, latents=8, hidden=(128, 128), dim=64, epochs={3e-3: 300, 1e-2: 200}),
    Family("eight_gaussians", lambda n, s: make_eight_gaussians(n, noise_std=0.1, seed=s),
           500, 250, 300, latents=2, hidden=(64, 64), dim=2, epochs={3e-3: 500, 1e-2: 300}),
    Family("breast_cancer", breast_cancer, 400, 85, 84, latents=6, hidden=(64, 64), dim=30,
           epochs={3e-3: 400, 1e-2: 250}),
    Family("wine", wine, 110, 34, 34, latents=4, hidden=(32, 32), dim=13, epochs={3e-3: 1000, 1e-2: 600}),
    Family("mfa", mixture_of_factor_analysers, 500, 250, 300, latents=4, hidden=(64, 64), dim=16,
           epochs={3e-3: 500, 1e-2: 300}),
    Family("manifold", lambda n, s: make_manifold(n, latent_dim=3, data_dim=16, noise_std=0.05, seed=s),
           500, 250, 300, latents=3, hidden=(64, 64), dim=16, epochs={3e-3: 500, 1e-2: 300}),
    Family("digits_conv", digits, 600, 250, 300, latents=8, hidden=(16, 32), dim=64, epochs={3e-3: 300, 1e-2: 200},
           model="conv", samples=4),
    Family("digits_small", digits, 300, 200, 200, latents=16, hidden=(256, 256), dim=64,
           epochs={3e-3: 300, 1e-2: 200}),
)}

#: Families defined after ``EntropyConvergence()``'s defaults were fixed, with their sizes and budgets set before any
#: run on them, and used for no choice: ``stopping_fresh.py`` reports the shipped rule on them (an untouched look).
FRESH: dict[str, Family] = {f.name: f for f in (
    Family("diabetes", diabetes, 300, 71, 71, latents=4, hidden=(64, 64), dim=10, epochs={3e-3: 600, 1e-2: 400}),
    Family("s_curve", s_curve, 500, 250, 300, latents=2, hidden=(64, 64), dim=12, epochs={3e-3: 500, 1e-2: 300}),
    Family("blobs", blobs, 500, 250, 300, latents=4, hidden=(64, 64), dim=20, epochs={3e-3: 500, 1e-2: 300}),
)}
