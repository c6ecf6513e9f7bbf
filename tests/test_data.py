"""Tests of the data generators and data modules (nothing downloads)."""

import math

import pytest
import torch
from sklearn.datasets import load_digits

from lightning_entropy_vae.data import (
    TOY_DATASETS,
    DigitsDataModule,
    TensorDataModule,
    ToyDataModule,
    load_digits_tensor,
    make_circle,
    make_cosine,
    make_eight_gaussians,
    make_lemniscate,
    make_manifold,
    make_pca_ring,
    make_ppca_data,
    make_spiral_3d,
    make_streaming_data,
    make_swiss_roll,
    split_tensor,
)

GENERATORS = [
    (make_circle, {}, 2),
    (make_eight_gaussians, {}, 2),
    (make_swiss_roll, {}, 3),
    (make_pca_ring, {}, 10),
    (make_pca_ring, {"data_dim": 5}, 5),
    (make_ppca_data, {"data_dim": 7, "latent_dim": 2}, 7),
    (make_cosine, {}, 2),
    (make_lemniscate, {}, 2),
    (make_spiral_3d, {}, 3),
    (make_manifold, {}, 100),
    (make_manifold, {"latent_dim": 3, "data_dim": 8}, 8),
]


def _eigvals(x):
    """Eigenvalues of the sample covariance of x, largest first."""
    return torch.linalg.eigvalsh(torch.cov(x.double().T)).flip(0)


@pytest.mark.parametrize(("fn", "kwargs", "dim"), GENERATORS)
def test_generators_shape_dtype_and_seed(fn, kwargs, dim):
    x = fn(300, seed=1, **kwargs)
    assert x.shape == (300, dim)
    assert x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert torch.equal(x, fn(300, seed=1, **kwargs))
    assert not torch.allclose(x, fn(300, seed=2, **kwargs))


@pytest.mark.parametrize(("fn", "kwargs", "dim"), GENERATORS)
def test_generators_validate_arguments(fn, kwargs, dim):
    with pytest.raises(ValueError, match=r"Expected `n` to be a positive int, but got 0\."):
        fn(0, **kwargs)
    with pytest.raises(ValueError, match=r"Expected `noise_std` to be a non-negative float, but got -0\.1\."):
        fn(10, noise_std=-0.1, **kwargs)


def test_ppca_data_is_a_noisy_h_dimensional_affine_subspace():
    clean = make_ppca_data(500, data_dim=10, latent_dim=3, noise_std=0.0, seed=0)
    centered = (clean - clean.mean(0)).double()
    assert torch.linalg.matrix_rank(centered, rtol=1e-5) == 3
    # same model (param_seed), fresh samples: the points lie in the same affine subspace
    other = make_ppca_data(500, data_dim=10, latent_dim=3, noise_std=0.0, seed=5, param_seed=0)
    assert not torch.allclose(other, clean)
    both = torch.cat([clean, other]).double()
    assert torch.linalg.matrix_rank(both - both.mean(0), rtol=1e-5) == 3
    noisy = make_ppca_data(20_000, data_dim=10, latent_dim=3, noise_std=0.3, seed=0)
    torch.testing.assert_close(
        _eigvals(noisy)[3:], torch.full((7,), 0.09, dtype=torch.float64), rtol=0.1, atol=0
    )
    assert _eigvals(noisy)[2] > 0.5


def test_toy_manifolds_without_noise():
    circle = make_circle(200, radius=1.5, noise_std=0.0).double()
    torch.testing.assert_close(circle.norm(dim=1), torch.full((200,), 1.5, dtype=torch.float64))
    eight = make_eight_gaussians(400, radius=2.0, noise_std=0.0).double()
    centres = torch.tensor([[2 * math.cos(k * math.pi / 4), 2 * math.sin(k * math.pi / 4)] for k in range(8)])
    nearest = torch.cdist(eight, centres.double()).min(dim=1)
    assert nearest.values.max() < 1e-6
    assert set(nearest.indices.tolist()) == set(range(8))
    roll = make_swiss_roll(500, noise_std=0.0).double() * 10
    t = roll[:, [0, 2]].norm(dim=1)
    assert t.min() >= 1.5 * math.pi - 1e-4 and t.max() <= 4.5 * math.pi + 1e-4
    torch.testing.assert_close(roll[:, 0], t * torch.cos(t), atol=1e-4, rtol=0)
    assert roll[:, 1].min() >= 0 and roll[:, 1].max() <= 21


def test_paper_manifolds_without_noise():
    """Each point satisfies the curve's implicit equation (float64 checks on the float32 output)."""
    cos = make_cosine(500, noise_std=0.0).double()
    assert cos[:, 0].min() >= 0 and cos[:, 0].max() <= 3 * math.pi + 1e-5 and cos[:, 0].max() > 3 * math.pi - 0.1
    torch.testing.assert_close(cos[:, 1], torch.cos(cos[:, 0]) + 1, atol=1e-5, rtol=0)
    eight = 2 * make_lemniscate(4000, noise_std=0.0).double()  # Gerono: X^4 = X^2 - Y^2
    torch.testing.assert_close(eight[:, 0] ** 4, eight[:, 0] ** 2 - eight[:, 1] ** 2, atol=1e-6, rtol=0)
    assert abs(float((eight[:, 0] > 0).double().mean()) - 0.6) < 0.03  # t ~ U(-pi/2, 2 pi): 1.5 of 2.5 loops
    spiral = make_spiral_3d(500, noise_std=0.0).double() - 1.5
    a, b, c = (spiral[:, 0] + spiral[:, 2]) / 2, spiral[:, 1], (spiral[:, 2] - spiral[:, 0]) / 2
    torch.testing.assert_close(a**2 + b**2, torch.full((500,), 6.25, dtype=torch.float64), atol=1e-5, rtol=0)
    assert c.min() >= -1e-6 and c.max() <= 3 + 1e-6
    torch.testing.assert_close(torch.atan2(a, b) % (2 * math.pi), 2 * math.pi * c / 3, atol=1e-4, rtol=0)


def test_manifold_is_a_function_of_its_first_k_coordinates():
    x = make_manifold(400, latent_dim=4, data_dim=12, noise_std=0.0, seed=1).double()
    base, rest = x[:, :4], x[:, 4:]
    torch.testing.assert_close(base.mean(0), torch.full((4,), -0.175, dtype=torch.float64), atol=0.06, rtol=0)
    torch.testing.assert_close(base.std(0), torch.full((4,), 0.35, dtype=torch.float64), rtol=0.15, atol=0)
    squares = base.square()
    for j in range(rest.shape[1]):  # some pair (a, b) of latent coordinates explains every other column
        errors = [(rest[:, j] - 0.35 * torch.cos(squares[:, a] + squares[:, b])).abs().max() for a in range(4)
                  for b in range(4)]
        assert min(errors) < 1e-5
    same_pairs = make_manifold(400, latent_dim=4, data_dim=12, noise_std=0.0, seed=2, param_seed=1).double()
    assert not torch.allclose(same_pairs, x)
    for j in range(8):
        a_b = [(a, b) for a in range(4) for b in range(4)
               if (rest[:, j] - 0.35 * torch.cos(squares[:, a] + squares[:, b])).abs().max() < 1e-5]
        s2 = same_pairs[:, :4].square()
        assert any((same_pairs[:, 4 + j] - 0.35 * torch.cos(s2[:, a] + s2[:, b])).abs().max() < 1e-5 for a, b in a_b)
    noisy = make_manifold(20_000, latent_dim=3, data_dim=6, noise_std=0.1, seed=0).double()
    clean = make_manifold(20_000, latent_dim=3, data_dim=6, noise_std=0.0, seed=0).double()
    torch.testing.assert_close((noisy - clean).std(0), torch.full((6,), 0.1, dtype=torch.float64), rtol=0.05, atol=0)
    with pytest.raises(ValueError, match=r"Expected `data_dim` >= `latent_dim` = 5, but got 4;"):
        make_manifold(10, latent_dim=5, data_dim=4)


def test_pca_ring_is_a_planar_ring():
    ring = make_pca_ring(2000, data_dim=10, noise_std=0.0, seed=3).double()
    assert torch.linalg.matrix_rank(ring, rtol=1e-5) == 2
    # same map for another sample seed when param_seed is shared
    other = make_pca_ring(100, noise_std=0.0, seed=4, param_seed=3).double()
    assert torch.linalg.matrix_rank(torch.cat([ring, other]), rtol=1e-5) == 2
    # a ring has a hole: no point comes near the origin (|y| >= 1 before the linear map)
    assert ring.norm(dim=1).min() > 0.1 * ring.norm(dim=1).max()
    assert torch.linalg.matrix_rank(make_pca_ring(500, noise_std=0.05).double()) == 10


def _segment_bases(x, n, dims):
    """Leading eigenvectors (D, k) of each segment's sample covariance."""
    return [torch.linalg.eigh(torch.cov(x[i * n : (i + 1) * n].double().T)).eigenvectors[:, -k:]
            for i, k in enumerate(dims)]


def _outside(inner, outer):
    """Norm of the part of the columns of ``inner`` outside the span of the orthonormal ``outer``."""
    return float((inner - outer @ (outer.T @ inner)).norm())


@pytest.mark.parametrize("subspaces", ["nested", "fresh"])
def test_streaming_segments_have_their_intrinsic_dimension(subspaces):
    n = 20_000
    x, intrinsic_dim = make_streaming_data(segment_size=n, dims=(6, 2, 4), noise_std=0.1, seed=0,
                                           subspaces=subspaces)
    assert x.shape == (3 * n, 10) and x.dtype == torch.float32
    assert intrinsic_dim.dtype == torch.int64
    assert intrinsic_dim.tolist() == [6] * n + [2] * n + [4] * n
    scales = torch.linspace(1, 5, 10, dtype=torch.float64)
    for i, k in enumerate((6, 2, 4)):
        eig = _eigvals(x[i * n : (i + 1) * n])
        torch.testing.assert_close(eig[:k], (scales[:k] ** 2 + 0.01).flip(0), rtol=0.06, atol=0)
        torch.testing.assert_close(
            eig[k:], torch.full((10 - k,), 0.01, dtype=torch.float64), rtol=0.1, atol=0
        )
    again = make_streaming_data(segment_size=50, seed=0, subspaces=subspaces)
    assert torch.equal(again.x, make_streaming_data(segment_size=50, seed=0, subspaces=subspaces).x)
    assert not torch.allclose(again.x, make_streaming_data(segment_size=50, seed=1, subspaces=subspaces).x)


def test_streaming_subspaces_nested_or_fresh():
    n = 20_000
    nested = _segment_bases(make_streaming_data(segment_size=n, seed=0).x, n, (6, 2, 4))
    # one orthogonal U: segment 2 (k = 2) and segment 3 (k = 4) lie in segment 1's 6-D subspace, 2 in 3
    assert _outside(nested[1], nested[0]) < 0.05
    assert _outside(nested[2], nested[0]) < 0.05
    assert _outside(nested[1], nested[2]) < 0.05
    fresh = _segment_bases(make_streaming_data(segment_size=n, seed=0, subspaces="fresh").x, n, (6, 2, 4))
    assert _outside(fresh[1], fresh[0]) > 0.5  # a new subspace per segment
    # param_seed fixes the subspaces; seed draws another stream of them
    other = make_streaming_data(segment_size=n, seed=7, param_seed=0)
    assert not torch.allclose(other.x[:100], make_streaming_data(segment_size=100, seed=0).x[:100])
    for mine, theirs in zip(_segment_bases(other.x, n, (6, 2, 4)), nested):
        assert _outside(mine, theirs) < 0.05
    assert _outside(_segment_bases(make_streaming_data(segment_size=n, seed=7).x, n, (6,))[0][:, -2:], nested[0]) > 0.1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"dims": (6, 11)},
            r"Expected `dims` to be a non-empty sequence of ints between 1 and 10 .*got \(6, 11\)",
        ),
        ({"dims": (3, 0)}, r"Expected `dims` .* but got \(3, 0\)\."),
        ({"dims": ()}, r"Expected `dims` .* but got \(\)\."),
        ({"dims": (3, 5), "data_dim": 4}, r"between 1 and 4 \(min\(data_dim, 10\)\), but got \(3, 5\)\."),
        ({"segment_size": 0}, r"Expected `segment_size` to be a positive int, but got 0\."),
        ({"subspaces": "random"}, r"Expected `subspaces` to be one of \('nested', 'fresh'\), but got 'random'\."),
    ],
)
def test_streaming_validates_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_streaming_data(**kwargs)


def test_digits_tensor():
    x = load_digits_tensor()
    assert x.shape == (1797, 64) and x.dtype == torch.float32
    assert x.min() == 0 and x.max() == 1
    torch.testing.assert_close(x * 16, torch.as_tensor(load_digits().data, dtype=torch.float32))
    z = load_digits_tensor(standardize=True)
    torch.testing.assert_close(z.mean(0), torch.zeros(64), atol=1e-5, rtol=0)
    std = z.std(0)
    constant = x.std(0) == 0
    assert constant.any()
    torch.testing.assert_close(std[~constant], torch.ones(int((~constant).sum())), atol=1e-4, rtol=0)
    assert (std[constant] == 0).all()


def test_split_tensor_partitions_rows_by_seed():
    rows = torch.arange(100.0).reshape(100, 1)
    train, val = split_tensor(rows, val_fraction=0.25, seed=3)
    assert train.shape == (75, 1) and val.shape == (25, 1)
    assert sorted(torch.cat([train, val]).flatten().tolist()) == list(range(100))
    assert torch.equal(val, split_tensor(rows, 0.25, seed=3)[1])
    assert not torch.equal(val, split_tensor(rows, 0.25, seed=4)[1])
    assert split_tensor(rows, 0.0)[1] is None
    with pytest.raises(
        ValueError, match=r"Expected `val_fraction` to be a float in \[0, 1\), but got 1\.0\."
    ):
        split_tensor(rows, 1.0)
    with pytest.raises(ValueError, match=r"`val_fraction=0.9` leaves no training rows out of 1; lower it\."):
        split_tensor(rows[:1], 0.9)


def test_digits_datamodule_split_batches_and_standardisation():
    dm = DigitsDataModule(batch_size=128, val_fraction=0.2, seed=0)
    assert dm.train.shape == (1438, 64) and dm.val.shape == (359, 64)
    assert dm.data_dim == 64
    assert torch.equal(dm.val, DigitsDataModule(seed=0).val)
    assert not torch.equal(dm.val, DigitsDataModule(seed=1).val)
    full = load_digits_tensor()
    assert sorted(map(tuple, torch.cat([dm.train, dm.val]).tolist())) == sorted(map(tuple, full.tolist()))
    train_sizes = [batch[0].shape for batch in dm.train_dataloader()]
    assert train_sizes == [(128, 64)] * 11 + [(30, 64)]
    (first_val,) = next(iter(dm.val_dataloader()))
    assert torch.equal(first_val, dm.val[:128])
    std_dm = DigitsDataModule(standardize=True, seed=0)
    torch.testing.assert_close(std_dm.train.mean(0), torch.zeros(64), atol=1e-5, rtol=0)
    torch.testing.assert_close(std_dm.val * std_dm.std + std_dm.mean, dm.val, atol=1e-5, rtol=0)
    assert not torch.allclose(std_dm.val.mean(0), torch.zeros(64), atol=1e-3)


def test_tensor_datamodule_loaders():
    train = torch.arange(20.0).reshape(10, 2)
    dm = TensorDataModule(train, batch_size=4, shuffle=False)
    batches = [x for (x,) in dm.train_dataloader()]
    assert [b.shape[0] for b in batches] == [4, 4, 2]
    assert torch.equal(torch.cat(batches), train)
    assert dm.val_dataloader() == []
    assert [
        x.shape[0] for (x,) in TensorDataModule(train, batch_size=4, drop_last=True).train_dataloader()
    ] == [4, 4]
    torch.manual_seed(0)
    shuffled = torch.cat([x for (x,) in TensorDataModule(train, batch_size=3).train_dataloader()])
    assert not torch.equal(shuffled, train)
    assert sorted(shuffled[:, 0].tolist()) == train[:, 0].tolist()


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (
            (torch.zeros(4, 2),),
            {"batch_size": 0},
            ValueError,
            r"Expected `batch_size` to be a positive int, but got 0\.",
        ),
        (
            (torch.zeros(4, 2),),
            {"batch_size": 2.0},
            ValueError,
            r"`batch_size` to be a positive int, but got 2\.0\.",
        ),
        (
            (torch.zeros(4, 2),),
            {"num_workers": -1},
            ValueError,
            r"`num_workers` to be a non-negative int, but got -1\.",
        ),
        (([[1.0, 2.0]],), {}, TypeError, r"Expected `train` to be a torch.Tensor, but got list\."),
        (
            (torch.zeros(4, 2, dtype=torch.int64),),
            {},
            ValueError,
            r"`train` to be a floating tensor .* torch.int64",
        ),
        ((torch.zeros(4),), {}, ValueError, r"of shape \(samples, \.\.\.\) .* shape \(4,\)\."),
        (
            (torch.zeros(4, 2), torch.zeros(3, 5)),
            {},
            ValueError,
            r"`val` rows of shape \(2,\) like `train`, but got \(5,\)",
        ),
    ],
)
def test_tensor_datamodule_validates_arguments(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        TensorDataModule(*args, **kwargs)


def test_toy_datamodule():
    dm = ToyDataModule("ppca", n=1000, val_fraction=0.1, batch_size=50, seed=2, data_dim=6, latent_dim=2)
    assert dm.train.shape == (900, 6) and dm.val.shape == (100, 6)
    assert len(dm.train_dataloader()) == 18
    full = make_ppca_data(1000, data_dim=6, latent_dim=2, seed=2)
    assert sorted(map(tuple, torch.cat([dm.train, dm.val]).tolist())) == sorted(map(tuple, full.tolist()))
    assert sorted(TOY_DATASETS) == [
        "circle", "cosine", "eight_gaussians", "lemniscate", "manifold", "pca_ring", "ppca", "spiral_3d", "swiss_roll"
    ]
    for name in TOY_DATASETS:
        if name != "ppca":
            assert ToyDataModule(name, n=50, val_fraction=0.0).val is None
    with pytest.raises(ValueError, match=r"Expected `name` to be one of \('circle', .*\), but got 'moons'\."):
        ToyDataModule("moons")
