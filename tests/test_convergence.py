"""Trained models: the ELBO converges to the entropy sum (Damm et al., AISTATS 2023).

Robustness of the recipes was checked over seeds 0-3 (pPCA, largest relative error 4.6e-4 after 2000 steps)
and 0-5 (PCA-ring, largest relative gap 2.5e-3 after 3000 steps); the thresholds below are the issue's.
"""

import pytest
import torch
from helpers import train_full_batch
from sklearn.decomposition import PCA

from lightning_entropy_vae.data import make_pca_ring, make_ppca_data
from lightning_entropy_vae.functional import entropy_sum
from lightning_entropy_vae.models import GaussianVAE


@pytest.fixture(autouse=True)
def _one_thread():
    """These small models are overhead-bound: one thread is faster, and far faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _elbo_and_entropy_sum(model, x, num_samples):
    """Mean ELBO with ``num_samples`` draws per point (to average out its noise) and the sample-free sum."""
    model.num_samples = num_samples
    with torch.no_grad():
        out = model.step(x)
    model.num_samples = 1
    return out["elbo"].mean().item(), entropy_sum(**out).item()


def _relative(value, reference):
    return abs(value - reference) / abs(reference)


def test_linear_vae_elbo_and_entropy_sum_reach_the_ppca_log_likelihood():
    """Both equal scikit-learn's maximum pPCA log-likelihood (mean per point) at the optimum."""
    x = make_ppca_data(2000, data_dim=10, latent_dim=3, noise_std=0.5, seed=0)
    reference = PCA(n_components=3).fit(x.double().numpy()).score(x.double().numpy())
    torch.manual_seed(0)
    model = GaussianVAE(10, 3, kind="linear", lr=0.05)
    elbo, total = _elbo_and_entropy_sum(model, x, num_samples=200)
    assert _relative(elbo, reference) > 0.05 and _relative(total, reference) > 0.05  # untrained: far off
    train_full_batch(model, x, steps=2000)
    elbo, total = _elbo_and_entropy_sum(model, x, num_samples=200)
    print(
        f"pPCA: sklearn {reference:.4f}, ELBO {elbo:.4f} (rel. error {_relative(elbo, reference):.1e}),"
        f" entropy sum {total:.4f} (rel. error {_relative(total, reference):.1e})"
    )
    assert _relative(elbo, reference) < 0.005
    assert _relative(total, reference) < 0.005


def test_vae1_mlp_elbo_converges_to_the_entropy_sum_on_the_pca_ring():
    """A VAE-1 MLP on the paper's PCA-ring (D = 10), full batch: relative gap below 1 % at the end of training."""
    x = make_pca_ring(1000, data_dim=10, noise_std=0.3, seed=0)
    torch.manual_seed(0)
    model = GaussianVAE(10, 2, kind="vae1", hidden_dims=(32, 32), lr=0.01)
    elbo, total = _elbo_and_entropy_sum(model, x, num_samples=100)
    assert _relative(elbo, total) > 0.05  # untrained: far from a stationary point
    train_full_batch(model, x, steps=3000)
    elbo, total = _elbo_and_entropy_sum(model, x, num_samples=100)
    sigma2 = model.dec_logvar.exp().item()
    print(
        f"PCA-ring VAE-1: ELBO {elbo:.4f}, entropy sum {total:.4f}, relative gap {_relative(elbo, total):.1e},"
        f" sigma^2 {sigma2:.4f}"
    )
    # a non-trivial stationary point: the decoder explains the ring down to about its noise (0.3^2 = 0.09),
    # where a collapsed model would keep the data's variance (about 1 per dimension)
    assert sigma2 < 0.15
    assert _relative(elbo, total) < 0.01
