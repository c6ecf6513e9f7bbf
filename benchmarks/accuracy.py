"""Accuracy numbers quoted in the README, printed (the tests assert the same with thresholds).

    python benchmarks/accuracy.py [--seeds 4]

1. The exact identity ELBO - entropy_sum = 0.5*sum_h(1 - m_h/alpha_h^2) + 0.5*(D - R/sigma^2) (float64,
   random batches), and its zero at sigma^2*, alpha^2* from the same batch.
2. Every entropy against torch.distributions ``.entropy()`` (float64).
3. A linear VAE on probabilistic-PCA data: ELBO and entropy sum vs scikit-learn's pPCA log-likelihood.
4. A VAE-1 MLP on the PCA-ring, full batch: the final relative gap |ELBO - sum| / |sum|.
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch
from sklearn.decomposition import PCA
from torch.distributions import Independent, LowRankMultivariateNormal, MultivariateNormal, Normal

from lightning_entropy_vae import functional as F
from lightning_entropy_vae.data import make_pca_ring, make_ppca_data
from lightning_entropy_vae.models import GaussianVAE


def identity_errors(seed: int) -> tuple[float, float]:
    g = torch.Generator().manual_seed(seed)
    B, H, D = 256, 5, 12
    kw = {"dtype": torch.float64, "generator": g}
    nu, lv = torch.randn(B, H, **kw), torch.randn(B, H, **kw) - 1
    x, mu = torch.randn(B, D, **kw), torch.randn(B, D, **kw)
    plv, dlv = torch.randn(H, **kw) * 0.3, torch.tensor(0.4, dtype=torch.float64)
    R = (x - mu).square().sum(-1).mean()
    m = (nu.square() + lv.exp()).mean(0)
    out = {"x": x, "enc_mean": nu, "enc_logvar": lv, "dec_mean": mu, "dec_logvar": dlv, "prior_logvar": plv}
    closed = 0.5 * (1 - m / plv.exp()).sum() + 0.5 * (D - R / dlv.exp())
    err = abs(float(F.gaussian_elbo(**out) - F.entropy_sum(**out) - closed))
    out["dec_logvar"] = F.optimal_decoder_variance(x=x, dec_mean=mu).log()
    out["prior_logvar"] = F.optimal_prior_variance(enc_mean=nu, enc_logvar=lv).log()
    zero = abs(float(F.gaussian_elbo(**out) - F.entropy_sum(**out)))
    return err, zero


def entropy_errors() -> float:
    g = torch.Generator().manual_seed(0)
    kw = {"dtype": torch.float64, "generator": g}
    B, H, D = 32, 4, 7
    lv, mean = torch.randn(B, H, **kw), torch.randn(B, H, **kw)
    a = torch.randn(B, H, H, **kw)
    cov = a @ a.transpose(-1, -2) + torch.eye(H, dtype=torch.float64)
    factor, diag = torch.randn(B, H, 2, **kw), torch.rand(B, H, **kw) + 0.1
    dlv = torch.randn(B, D, **kw)
    pairs = [
        (F.encoder_entropy(enc_logvar=lv, reduction="none"), Independent(Normal(mean, (0.5 * lv).exp()), 1).entropy()),
        (F.encoder_entropy(posterior=MultivariateNormal(mean, cov), reduction="none"),
         MultivariateNormal(mean, cov).entropy()),
        (F.encoder_entropy(posterior=LowRankMultivariateNormal(mean, factor, diag), reduction="none"),
         LowRankMultivariateNormal(mean, factor, diag).entropy()),
        (F.prior_entropy(prior_logvar=lv[0]),
         Independent(Normal(torch.zeros(H, dtype=torch.float64), (0.5 * lv[0]).exp()), 1).entropy()),
        (F.decoder_entropy(dec_logvar=dlv, reduction="none"),
         Independent(Normal(torch.zeros_like(dlv), (0.5 * dlv).exp()), 1).entropy()),
    ]
    return max(float((ours - ref).abs().max()) for ours, ref in pairs)


def train_full_batch(model: GaussianVAE, x: torch.Tensor, steps: int) -> None:
    opt = model.configure_optimizers()
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for i in range(steps):
        opt.zero_grad()
        model.training_step(x, i)["loss"].backward()
        opt.step()
        schedule.step()


def elbo_and_sum(model: GaussianVAE, x: torch.Tensor, num_samples: int) -> tuple[float, float]:
    model.num_samples = num_samples
    with torch.no_grad():
        out = model.step(x)
    model.num_samples = 1
    return out["elbo"].mean().item(), F.entropy_sum(**out).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}; seeds 0..{args.seeds - 1}\n")

    errs = [identity_errors(s) for s in range(args.seeds)]
    print(f"1. identity, float64: max |ELBO - sum - closed form| = {max(e for e, _ in errs):.1e};"
          f" max |ELBO - sum| at sigma^2*, alpha^2* = {max(z for _, z in errs):.1e}")
    print(f"2. entropies vs torch.distributions, float64: max abs difference {entropy_errors():.1e}")

    ppca = []
    for s in range(args.seeds):
        x = make_ppca_data(2000, data_dim=10, latent_dim=3, noise_std=0.5, seed=s)
        ref = PCA(n_components=3).fit(x.double().numpy()).score(x.double().numpy())
        torch.manual_seed(s)
        model = GaussianVAE(10, 3, kind="linear", lr=0.05)
        train_full_batch(model, x, 2000)
        elbo, total = elbo_and_sum(model, x, 200)
        ppca.append((abs(elbo - ref) / abs(ref), abs(total - ref) / abs(ref)))
        print(f"3. pPCA seed {s}: sklearn {ref:.4f}  ELBO {elbo:.4f}  entropy sum {total:.4f}")
    print(f"   relative error to pPCA: ELBO median {statistics.median(e for e, _ in ppca):.1e}"
          f" (max {max(e for e, _ in ppca):.1e}); entropy sum median {statistics.median(t for _, t in ppca):.1e}"
          f" (max {max(t for _, t in ppca):.1e})")

    gaps = []
    for s in range(args.seeds):
        x = make_pca_ring(1000, data_dim=10, noise_std=0.3, seed=s)
        torch.manual_seed(s)
        model = GaussianVAE(10, 2, kind="vae1", hidden_dims=(32, 32), lr=0.01)
        start = elbo_and_sum(model, x, 100)
        train_full_batch(model, x, 3000)
        elbo, total = elbo_and_sum(model, x, 100)
        gaps.append(abs(elbo - total) / abs(total))
        print(f"4. PCA-ring VAE-1 seed {s}: gap before training {abs(start[0] - start[1]) / abs(start[1]):.1%},"
              f" after: ELBO {elbo:.4f} sum {total:.4f} gap {gaps[-1]:.2e}")
    print(f"   final relative gap: median {statistics.median(gaps):.1e}, max {max(gaps):.1e}")
    assert math.isfinite(max(gaps))


if __name__ == "__main__":
    main()
