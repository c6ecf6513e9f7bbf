"""F.batch_means (the gap window's standard error), F.latent_kl per point and F.entropy_sum's data_dim, against
independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lightning_entropy_vae.functional as F


def _reference(values: np.ndarray, weights: np.ndarray, groups: int) -> tuple[float, float]:
    """Group means by hand in numpy: weighted mean, and the ratio estimator's standard error over the groups."""
    parts = np.array_split(np.arange(len(values)), groups)
    w_groups = np.array([weights[p].sum() for p in parts])
    m_groups = np.array([(weights[p] * values[p]).sum() / weights[p].sum() for p in parts])
    mean = (w_groups * m_groups).sum() / w_groups.sum()
    var = groups / (groups - 1) * ((w_groups * (m_groups - mean)) ** 2).sum() / w_groups.sum() ** 2
    return float(mean), float(math.sqrt(var))


def test_equal_weights_is_the_standard_deviation_of_the_group_means():
    rng = np.random.default_rng(0)
    values = rng.normal(size=100)
    mean, se = F.batch_means(torch.tensor(values), groups=10)
    group_means = values.reshape(10, 10).mean(1)
    assert float(mean) == pytest.approx(values.mean(), abs=1e-12)
    assert float(se) == pytest.approx(group_means.std(ddof=1) / math.sqrt(10), rel=1e-12)


@pytest.mark.parametrize("k", [20, 37, 64])
def test_weighted_uneven_groups_match_numpy(k):
    rng = np.random.default_rng(k)
    values, weights = rng.normal(size=k), rng.integers(1, 129, size=k).astype(float)
    mean, se = F.batch_means(torch.tensor(values), torch.tensor(weights), groups=10)
    ref_mean, ref_se = _reference(values, weights, 10)
    assert float(mean) == pytest.approx(ref_mean, rel=1e-12)
    assert float(se) == pytest.approx(ref_se, rel=1e-12)
    # the mean is the points' mean: per-batch means weighted by their points
    assert float(mean) == pytest.approx((values * weights).sum() / weights.sum(), rel=1e-12)


def test_fewer_values_than_groups_uses_one_group_per_value():
    values = torch.tensor([1.0, 2.0, 4.0])
    _, se = F.batch_means(values, groups=10)
    assert float(se) == pytest.approx(float(values.double().std() / math.sqrt(3)), rel=1e-12)


def test_autocorrelated_series_standard_error_is_close_to_the_true_one():
    """An AR(1) series with rho = 0.9: the plain s / sqrt(K) is ~4x too small; batch means come close to the true
    standard error of the mean, sigma / (1 - rho) / sqrt(K) for a long series, over 400 repetitions."""
    rho, k, reps = 0.9, 2000, 400
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(reps, k, generator=gen, dtype=torch.float64)
    series = torch.empty_like(noise)
    series[:, 0] = noise[:, 0] / math.sqrt(1 - rho**2)  # stationary start
    for t in range(1, k):
        series[:, t] = rho * series[:, t - 1] + noise[:, t]
    true_se = 1.0 / (1 - rho) / math.sqrt(k)
    batch = torch.stack([F.batch_means(s, groups=10)[1] for s in series])
    naive = series.std(dim=1) / math.sqrt(k)
    assert float(naive.mean()) < 0.5 * true_se  # the naive error: far too small
    assert float(batch.pow(2).mean().sqrt()) == pytest.approx(true_se, rel=0.15)
    # and the means scatter as the batch-means error says (the empirical standard deviation of the means)
    assert float(series.mean(dim=1).std()) == pytest.approx(true_se, rel=0.15)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"values": torch.zeros(1)}, ValueError, r"Expected `values` of shape \(K,\) with K >= 2, but got shape \(1,\)"),
    ({"values": torch.zeros(2, 3)}, ValueError, r"Expected `values` of shape \(K,\) with K >= 2, but got shape \(2, 3"),
    ({"values": torch.zeros(4), "weights": torch.ones(3)}, ValueError,
     r"Expected `weights` of shape \(4,\) matching `values`, but got \(3,\)"),
    ({"values": torch.zeros(4), "weights": torch.tensor([1.0, 0.0, 1.0, 1.0])}, ValueError,
     r"Expected positive `weights`, but got a minimum of 0.0"),
    ({"values": torch.zeros(4), "groups": 1}, ValueError, r"Expected `groups` to be an int >= 2, but got 1"),
    ({"values": torch.zeros(4), "groups": True}, ValueError, r"Expected `groups` to be an int >= 2, but got True"),
])
def test_errors_say_what_was_expected(kwargs, error, match):
    values = kwargs.pop("values")
    with pytest.raises(error, match=match):
        F.batch_means(values, **kwargs)


def test_latent_kl_per_point_matches_torch_distributions():
    gen = torch.Generator().manual_seed(1)
    mean, logvar = torch.randn(6, 3, generator=gen), torch.randn(6, 3, generator=gen)
    prior_logvar = torch.randn(3, generator=gen)
    got = F.latent_kl(enc_mean=mean, enc_logvar=logvar, prior_logvar=prior_logvar, reduction="none")
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mean, (0.5 * logvar).exp()),
                                            torch.distributions.Normal(0.0, (0.5 * prior_logvar).exp()))
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(F.latent_kl(enc_mean=mean, enc_logvar=logvar, prior_logvar=prior_logvar), ref.mean(0))
    with pytest.raises(ValueError, match=r"Expected `reduction` to be 'mean' or 'none', but got 'sum'"):
        F.latent_kl(enc_mean=mean, enc_logvar=logvar, reduction="sum")


def test_entropy_sum_data_dim_gives_d_for_a_per_point_variance_without_x():
    gen = torch.Generator().manual_seed(2)
    enc_logvar, dec_logvar, x = torch.randn(5, 2, generator=gen), torch.randn(5, 1, generator=gen), torch.zeros(5, 7)
    with_x = F.entropy_sum(enc_logvar=enc_logvar, dec_logvar=dec_logvar, x=x, reduction="none")
    with_dim = F.entropy_sum(enc_logvar=enc_logvar, dec_logvar=dec_logvar, data_dim=7, reduction="none")
    torch.testing.assert_close(with_dim, with_x)
    # the reference: per point, 0.5 sum_h log(2 pi e tau^2) - 0.5 H log(2 pi e) - 0.5 D log(2 pi e sigma^2)
    log_2pie = math.log(2 * math.pi * math.e)
    ref = 0.5 * (enc_logvar + log_2pie).sum(-1) - 0.5 * 2 * log_2pie - 0.5 * 7 * (dec_logvar[:, 0] + log_2pie)
    torch.testing.assert_close(with_dim, ref)
