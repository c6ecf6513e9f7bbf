"""Tests of ``lightning_entropy_vae.functional`` against torch.distributions and float64 closed forms."""

import math

import numpy as np
import pytest
import torch
from torch.distributions import (
    Independent,
    LowRankMultivariateNormal,
    MultivariateNormal,
    Normal,
    kl_divergence,
)

import lightning_entropy_vae.functional as F

B, H, D, S = 7, 3, 5, 4
F64 = torch.float64
LOG_2PI_E = math.log(2 * math.pi * math.e)


def _randn(*shape, seed=0, gen=None):
    gen = gen if gen is not None else torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=F64)


def _close(actual, expected, atol=1e-10):
    """Equal to ``atol`` in float64 (``assert_close`` also checks that the dtype is float64)."""
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=F64), rtol=0, atol=atol)


def _spd(*batch, k, gen):
    a = _randn(*batch, k, k, gen=gen)
    return a @ a.transpose(-1, -2) + 0.5 * torch.eye(k, dtype=F64)


def _std(logvar):
    return torch.exp(0.5 * logvar)


# --------------------------------------------------------------------------------------- entropies
def test_gaussian_entropy_matches_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    logvar = _randn(B, H, gen=gen)
    _close(F.gaussian_entropy(logvar), Normal(0.0, _std(logvar)).entropy().sum(-1))
    cov = _spd(B, k=H, gen=gen)
    _close(F.gaussian_entropy(covariance=cov), MultivariateNormal(torch.zeros(H, dtype=F64), cov).entropy())
    _close(
        F.gaussian_entropy(covariance=cov[0]), MultivariateNormal(torch.zeros(H, dtype=F64), cov[0]).entropy()
    )
    # the diagonal and the covariance paths agree on a diagonal covariance
    _close(F.gaussian_entropy(covariance=torch.diag_embed(logvar.exp())), F.gaussian_entropy(logvar))


def _posteriors(gen):
    mean, logvar = _randn(B, H, gen=gen), _randn(B, H, gen=gen) - 1
    factor = 0.5 * _randn(B, H, 2, gen=gen)
    return {
        "Normal": Normal(mean, _std(logvar)),
        "Independent": Independent(Normal(mean, _std(logvar)), 1),
        "MultivariateNormal": MultivariateNormal(mean, _spd(B, k=H, gen=gen)),
        "LowRankMultivariateNormal": LowRankMultivariateNormal(mean, factor, logvar.exp()),
    }


def _per_sample_entropy(dist, lead=1):
    """Entropy of ``dist`` summed over everything after the first ``lead`` dimensions."""
    ent = dist.entropy()
    return ent.sum(dim=tuple(range(lead, ent.dim()))) if ent.dim() > lead else ent


def test_encoder_entropy_tensor_path():
    logvar = _randn(B, H, seed=1)
    expected = Normal(torch.zeros_like(logvar), _std(logvar)).entropy().sum(-1)
    _close(F.encoder_entropy(enc_logvar=logvar), expected.mean())
    _close(F.encoder_entropy(enc_logvar=logvar, reduction="sum"), expected.sum())
    _close(F.encoder_entropy(enc_logvar=logvar, reduction="none"), expected)


@pytest.mark.parametrize("kind", ["Normal", "Independent", "MultivariateNormal", "LowRankMultivariateNormal"])
def test_encoder_entropy_from_posterior(kind):
    posterior = _posteriors(torch.Generator().manual_seed(2))[kind]
    expected = _per_sample_entropy(posterior)
    assert expected.shape == (B,)
    _close(F.encoder_entropy(posterior=posterior), expected.mean())
    _close(F.encoder_entropy(posterior=posterior, reduction="none"), expected)


def test_prior_entropy_standard_learnable_and_distribution():
    gen = torch.Generator().manual_seed(3)
    enc_logvar = _randn(B, H, gen=gen)
    standard = Normal(torch.zeros(H, dtype=F64), torch.ones(H, dtype=F64)).entropy().sum()
    _close(F.prior_entropy(enc_logvar=enc_logvar), standard)
    _close(F.prior_entropy(enc_mean=enc_logvar), standard)
    torch.testing.assert_close(F.prior_entropy(latent_dim=H), standard.float())
    prior_logvar = _randn(H, gen=gen)
    _close(F.prior_entropy(prior_logvar=prior_logvar), Normal(0.0, _std(prior_logvar)).entropy().sum())
    # (B, H): the prior in effect for each sample; the value is the mean over samples
    per_sample = _randn(B, H, gen=gen)
    _close(F.prior_entropy(prior_logvar=per_sample), Normal(0.0, _std(per_sample)).entropy().sum(-1).mean())
    mean = _randn(H, gen=gen)
    for prior in (
        Normal(mean, _std(prior_logvar)),
        Independent(Normal(mean, _std(prior_logvar)), 1),
        MultivariateNormal(mean, _spd(k=H, gen=gen)),
        LowRankMultivariateNormal(mean, _randn(H, 2, gen=gen), prior_logvar.exp()),
    ):
        _close(F.prior_entropy(prior=prior), prior.entropy().sum())


def _decoder_case(layout, gen):
    """(dec_logvar, dec_mean, x, the reference Normal (B, D) or (S, B, D)) for each ``dec_logvar`` layout."""
    x = _randn(B, D, gen=gen)
    sampled = layout.startswith("S,")
    mean = _randn(S, B, D, gen=gen) if sampled else _randn(B, D, gen=gen)
    shape = {
        "()": (),
        "(D,)": (D,),
        "(B,D)": (B, D),
        "(B,1)": (B, 1),
        "S,(S,B,D)": (S, B, D),
        "S,(S,B,1)": (S, B, 1),
        "S,()": (),
        "S,(B,D)": (B, D),
        "S,(B,1)": (B, 1),
    }[layout]
    logvar = _randn(*shape, gen=gen) - 0.5
    return logvar, mean, x, Normal(mean, _std(logvar).expand_as(mean))


LAYOUTS = ["()", "(D,)", "(B,D)", "(B,1)", "S,(S,B,D)", "S,(S,B,1)", "S,()", "S,(B,D)", "S,(B,1)"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_decoder_entropy_every_layout(layout):
    logvar, mean, x, reference = _decoder_case(layout, torch.Generator().manual_seed(4))
    expected = reference.entropy().sum(-1)
    expected = expected.mean(0) if expected.dim() == 2 else expected
    _close(F.decoder_entropy(dec_logvar=logvar, dec_mean=mean, x=x), expected.mean())
    _close(F.decoder_entropy(dec_logvar=logvar, dec_mean=mean), expected.mean())
    _close(F.decoder_entropy(dec_logvar=logvar, dec_mean=mean, reduction="none"), expected)
    _close(F.decoder_entropy(dec_logvar=logvar, dec_mean=mean, x=x, reduction="sum"), expected.sum())
    if logvar.dim() < 3 and logvar.shape != (B, 1):  # B and D can come from x alone
        _close(F.decoder_entropy(dec_logvar=logvar, x=x), expected.mean())


@pytest.mark.parametrize("layout", ["()", "(C,H,W)", "(B,C,H,W)", "(B,1)", "(S,B,C,H,W)"])
def test_decoder_entropy_images(layout):
    gen = torch.Generator().manual_seed(5)
    image = (2, 3, 4)
    x = _randn(B, *image, gen=gen)
    mean = _randn(S, B, *image, gen=gen) if layout.startswith("(S") else _randn(B, *image, gen=gen)
    shape = {
        "()": (),
        "(C,H,W)": image,
        "(B,C,H,W)": (B, *image),
        "(B,1)": (B, 1),
        "(S,B,C,H,W)": (S, B, *image),
    }[layout]
    logvar = _randn(*shape, gen=gen)
    std = _std(logvar).reshape(B, 1, 1, 1) if layout == "(B,1)" else _std(logvar)
    lead = 2 if layout.startswith("(S") else 1
    expected = _per_sample_entropy(Normal(mean, std.expand_as(mean)), lead)
    expected = expected.mean(0) if lead == 2 else expected
    _close(F.decoder_entropy(dec_logvar=logvar, dec_mean=mean, x=x, reduction="none"), expected)
    if lead == 1 and layout != "(B,1)":
        _close(F.decoder_entropy(dec_logvar=logvar, x=x), expected.mean())


def _likelihoods(gen):
    mean, logvar = _randn(B, D, gen=gen), _randn(B, D, gen=gen)
    sampled_mean, sampled_logvar = _randn(S, B, D, gen=gen), _randn(S, B, D, gen=gen)
    return {
        "Normal": (Normal(mean, _std(logvar)), 1),
        "Independent": (Independent(Normal(mean, _std(logvar)), 1), 1),
        "Normal(S,B,D)": (Normal(sampled_mean, _std(sampled_logvar)), 2),
        "Independent(S,B,D)": (Independent(Normal(sampled_mean, _std(sampled_logvar)), 1), 2),
        "MultivariateNormal": (MultivariateNormal(mean, _spd(B, k=D, gen=gen)), 1),
        "LowRankMultivariateNormal": (
            LowRankMultivariateNormal(mean, _randn(B, D, 2, gen=gen), logvar.exp()),
            1,
        ),
    }


@pytest.mark.parametrize(
    "kind",
    [
        "Normal",
        "Independent",
        "Normal(S,B,D)",
        "Independent(S,B,D)",
        "MultivariateNormal",
        "LowRankMultivariateNormal",
    ],
)
def test_decoder_entropy_from_likelihood(kind):
    likelihood, lead = _likelihoods(torch.Generator().manual_seed(6))[kind]
    expected = _per_sample_entropy(likelihood, lead)
    expected = expected.mean(0) if lead == 2 else expected
    assert expected.shape == (B,)
    _close(F.decoder_entropy(likelihood=likelihood, reduction="none"), expected)
    _close(F.decoder_entropy(likelihood=likelihood, x=_randn(B, D, seed=0)), expected.mean())


def test_decoder_entropy_from_image_likelihood():
    gen = torch.Generator().manual_seed(7)
    mean, logvar = _randn(B, 2, 3, 4, gen=gen), _randn(B, 2, 3, 4, gen=gen)
    expected = Normal(mean, _std(logvar)).entropy().sum((1, 2, 3))
    x = _randn(B, 2, 3, 4, gen=gen)
    for likelihood in (Normal(mean, _std(logvar)), Independent(Normal(mean, _std(logvar)), 3)):
        _close(F.decoder_entropy(likelihood=likelihood, x=x, reduction="none"), expected)


def test_entropy_sum_is_encoder_minus_prior_minus_decoder():
    gen = torch.Generator().manual_seed(8)
    enc_mean, enc_logvar, prior_logvar = _randn(B, H, gen=gen), _randn(B, H, gen=gen), _randn(H, gen=gen)
    x, dec_mean, dec_logvar = _randn(B, D, gen=gen), _randn(B, D, gen=gen), _randn(gen=gen)
    enc = Normal(enc_mean, _std(enc_logvar)).entropy().sum(-1)
    prior = Normal(0.0, _std(prior_logvar)).entropy().sum()
    dec = D * Normal(0.0, _std(dec_logvar)).entropy()
    _close(
        F.entropy_sum(enc_logvar=enc_logvar, dec_logvar=dec_logvar, prior_logvar=prior_logvar, x=x),
        (enc - prior - dec).mean(),
    )
    _close(
        F.entropy_sum(enc_logvar=enc_logvar, dec_logvar=dec_logvar, prior_logvar=prior_logvar, x=x, reduction="none"),
        enc - prior - dec,
    )
    # VAE-1 closed form: the encoder and prior constants cancel
    vae1 = (0.5 * enc_logvar.sum(-1)).mean() - 0.5 * D * (LOG_2PI_E + dec_logvar)
    _close(F.entropy_sum(enc_logvar=enc_logvar, dec_logvar=dec_logvar, dec_mean=dec_mean), vae1)
    # distributions instead of tensors give the same sum
    from_dists = F.entropy_sum(
        posterior=Normal(enc_mean, _std(enc_logvar)),
        prior=Normal(torch.zeros(H, dtype=F64), _std(prior_logvar)),
        likelihood=Normal(dec_mean, _std(dec_logvar).expand(B, D)),
        x=x,
    )
    _close(from_dists, (enc - prior - dec).mean())
    # and one dict feeds the function: unused keys are ignored
    out = {
        "enc_mean": enc_mean,
        "enc_logvar": enc_logvar,
        "dec_mean": dec_mean,
        "dec_logvar": dec_logvar,
        "x": x,
        "elbo": torch.zeros(B, dtype=F64),
        "loss": torch.zeros(()),
    }
    _close(F.entropy_sum(**out), vae1)


# ------------------------------------------------------------------------------ ELBO, likelihood, KL
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gaussian_log_likelihood_every_layout(layout):
    logvar, mean, x, reference = _decoder_case(layout, torch.Generator().manual_seed(9))
    expected = reference.log_prob(x).sum(-1)
    expected = expected.mean(0) if expected.dim() == 2 else expected
    _close(F.gaussian_log_likelihood(x=x, dec_mean=mean, dec_logvar=logvar, reduction="none"), expected)
    _close(F.gaussian_log_likelihood(x=x, dec_mean=mean, dec_logvar=logvar), expected.mean())


def test_gaussian_log_likelihood_images_and_distributions():
    gen = torch.Generator().manual_seed(10)
    x, mean, logvar = _randn(B, 2, 3, 4, gen=gen), _randn(B, 2, 3, 4, gen=gen), _randn(2, 3, 4, gen=gen)
    expected = Normal(mean, _std(logvar).expand_as(mean)).log_prob(x).sum((1, 2, 3))
    _close(F.gaussian_log_likelihood(x=x, dec_mean=mean, dec_logvar=logvar, reduction="none"), expected)
    _close(
        F.gaussian_log_likelihood(x=x, likelihood=Normal(mean, _std(logvar).expand_as(mean)), reduction="none"),
        expected,
    )
    x = _randn(B, D, gen=gen)
    for likelihood, lead in _likelihoods(gen).values():
        expected = likelihood.log_prob(x if lead == 1 else x.expand(S, B, D))
        expected = expected.sum(-1) if expected.dim() == lead + 1 else expected
        expected = expected.mean(0) if lead == 2 else expected
        _close(F.gaussian_log_likelihood(x=x, likelihood=likelihood, reduction="none"), expected)


def test_gaussian_kl_matches_kl_divergence():
    gen = torch.Generator().manual_seed(11)
    mean, logvar, prior_logvar = _randn(B, H, gen=gen), _randn(B, H, gen=gen), _randn(H, gen=gen)
    q = Independent(Normal(mean, _std(logvar)), 1)
    zeros = torch.zeros(H, dtype=F64)
    standard = Independent(Normal(zeros, torch.ones(H, dtype=F64)), 1)
    learnable = Independent(Normal(zeros, _std(prior_logvar)), 1)
    _close(F.gaussian_kl(enc_mean=mean, enc_logvar=logvar, reduction="none"), kl_divergence(q, standard))
    _close(F.gaussian_kl(enc_mean=mean, enc_logvar=logvar), kl_divergence(q, standard).mean())
    _close(
        F.gaussian_kl(enc_mean=mean, enc_logvar=logvar, prior_logvar=prior_logvar, reduction="none"),
        kl_divergence(q, learnable),
    )
    per_sample = _randn(B, H, gen=gen)
    _close(
        F.gaussian_kl(enc_mean=mean, enc_logvar=logvar, prior_logvar=per_sample, reduction="none"),
        kl_divergence(q, Independent(Normal(torch.zeros_like(mean), _std(per_sample)), 1)),
    )
    # full covariances: posterior, prior or both
    prior_mean = _randn(H, gen=gen)
    full_q = MultivariateNormal(mean, _spd(B, k=H, gen=gen))
    full_p = MultivariateNormal(prior_mean, _spd(k=H, gen=gen))
    low_rank_q = LowRankMultivariateNormal(mean, _randn(B, H, 2, gen=gen), logvar.exp())
    diag_p = Normal(prior_mean, _std(prior_logvar))
    as_mvn = MultivariateNormal(prior_mean, torch.diag(prior_logvar.exp()))
    cases = [
        (full_q, None, kl_divergence(full_q, MultivariateNormal(zeros, torch.eye(H, dtype=F64)))),
        (full_q, full_p, kl_divergence(full_q, full_p)),
        (low_rank_q, as_mvn, kl_divergence(MultivariateNormal(mean, low_rank_q.covariance_matrix), as_mvn)),
        (q, full_p, kl_divergence(MultivariateNormal(mean, torch.diag_embed(logvar.exp())), full_p)),
        (q, diag_p, kl_divergence(q, Independent(diag_p, 1))),
        (Normal(mean, _std(logvar)), Independent(diag_p, 1), kl_divergence(q, Independent(diag_p, 1))),
    ]
    for posterior, prior, expected in cases:
        _close(F.gaussian_kl(posterior=posterior, prior=prior, reduction="none"), expected)


@pytest.mark.parametrize("num_samples", [1, S])
def test_gaussian_elbo_from_tensors_equals_from_distributions(num_samples):
    gen = torch.Generator().manual_seed(12)
    x, enc_mean, enc_logvar, prior_logvar = (
        _randn(B, D, gen=gen),
        _randn(B, H, gen=gen),
        _randn(B, H, gen=gen),
        _randn(H, gen=gen),
    )
    dec_mean = _randn(num_samples, B, D, gen=gen).squeeze(0)
    dec_logvar = _randn(D, gen=gen)
    tensors = F.gaussian_elbo(
        x=x,
        enc_mean=enc_mean,
        enc_logvar=enc_logvar,
        dec_mean=dec_mean,
        dec_logvar=dec_logvar,
        prior_logvar=prior_logvar,
        reduction="none",
    )
    dists = F.gaussian_elbo(
        x=x,
        posterior=Normal(enc_mean, _std(enc_logvar)),
        prior=Normal(torch.zeros(H, dtype=F64), _std(prior_logvar)),
        likelihood=Normal(dec_mean, _std(dec_logvar).expand_as(dec_mean)),
        reduction="none",
    )
    _close(tensors, dists)
    log_lik = Normal(dec_mean, _std(dec_logvar).expand_as(dec_mean)).log_prob(x).sum(-1)
    log_lik = log_lik.mean(0) if num_samples > 1 else log_lik
    kl = kl_divergence(Normal(enc_mean, _std(enc_logvar)), Normal(0.0, _std(prior_logvar))).sum(-1)
    _close(tensors, log_lik - kl)
    _close(
        F.gaussian_elbo(
            x=x,
            enc_mean=enc_mean,
            enc_logvar=enc_logvar,
            dec_mean=dec_mean,
            dec_logvar=dec_logvar,
            prior_logvar=prior_logvar,
        ),
        (log_lik - kl).mean(),
    )


# ------------------------------------------------------------------ the exact identity (THEORY.md)
def _identity_batch(seed, n=64, h=4, d=9):
    """Random float64 tensors of a single-sample step: z = nu + tau * eps, mu(z) = tanh(z W) + b."""
    gen = torch.Generator().manual_seed(seed)
    x = 1.5 * _randn(n, d, gen=gen) + 0.3
    enc_mean, enc_logvar = _randn(n, h, gen=gen), _randn(n, h, gen=gen) - 1.0
    z = enc_mean + _std(enc_logvar) * _randn(n, h, gen=gen)
    dec_mean = torch.tanh(z @ _randn(h, d, gen=gen)) + _randn(d, gen=gen)
    return x, enc_mean, enc_logvar, dec_mean


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_identity_vae1_and_vae2(seed):
    x, enc_mean, enc_logvar, dec_mean = _identity_batch(seed)
    d = x.shape[1]
    residual = (x - dec_mean).square().sum(-1).mean()  # R
    second_moment = (enc_mean.square() + enc_logvar.exp()).mean(0)  # m_h
    gen = torch.Generator().manual_seed(100 + seed)
    dec_logvar = _randn(gen=gen)
    prior_logvar = _randn(*second_moment.shape, gen=gen)
    sigma2, alpha2 = dec_logvar.exp(), prior_logvar.exp()
    out = {
        "x": x,
        "enc_mean": enc_mean,
        "enc_logvar": enc_logvar,
        "dec_mean": dec_mean,
        "dec_logvar": dec_logvar,
    }
    # VAE-1
    gap = F.gaussian_elbo(**out) - F.entropy_sum(**out)
    _close(gap, 0.5 * (1 - second_moment).sum() + 0.5 * (d - residual / sigma2))
    # VAE-2
    gap = F.gaussian_elbo(**out, prior_logvar=prior_logvar) - F.entropy_sum(**out, prior_logvar=prior_logvar)
    _close(gap, 0.5 * (1 - second_moment / alpha2).sum() + 0.5 * (d - residual / sigma2))
    # at the closed-form stationary variances of the same batch the two sides agree
    sigma2_opt = F.optimal_decoder_variance(x=x, dec_mean=dec_mean)
    alpha2_opt = F.optimal_prior_variance(enc_mean=enc_mean, enc_logvar=enc_logvar)
    _close(sigma2_opt, residual / d)
    _close(alpha2_opt, second_moment)
    out.update(dec_logvar=sigma2_opt.log(), prior_logvar=alpha2_opt.log())
    assert abs(F.gaussian_elbo(**out).item()) > 1.0
    _close(F.gaussian_elbo(**out) - F.entropy_sum(**out), 0.0)
    # VAE-1 at sigma^2* leaves only the prior term
    del out["prior_logvar"]
    _close(F.gaussian_elbo(**out) - F.entropy_sum(**out), 0.5 * (1 - second_moment).sum())


def test_closed_form_variances_are_stationary_points_of_the_elbo():
    x, enc_mean, enc_logvar, dec_mean = _identity_batch(3)
    dec_logvar = F.optimal_decoder_variance(x=x, dec_mean=dec_mean).log().requires_grad_()
    prior_logvar = F.optimal_prior_variance(enc_mean=enc_mean, enc_logvar=enc_logvar).log().requires_grad_()
    elbo = F.gaussian_elbo(
        x=x,
        enc_mean=enc_mean,
        enc_logvar=enc_logvar,
        dec_mean=dec_mean,
        dec_logvar=dec_logvar,
        prior_logvar=prior_logvar,
    )
    grads = torch.autograd.grad(elbo, [dec_logvar, prior_logvar])
    for grad in grads:
        _close(grad, torch.zeros_like(grad))


# --------------------------------------------------------------------------------- low precision
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_are_accumulated_in_float32(dtype):
    gen = torch.Generator().manual_seed(13)
    big = 12288  # a 64 x 64 x 3 image
    logvar = (0.3 * _randn(4, big, gen=gen) - 2.0).to(dtype)
    x = _randn(4, big, gen=gen).to(dtype)
    exact = logvar.double()  # the reference sees exactly the low-precision values
    checks = [
        (F.encoder_entropy(enc_logvar=logvar), (0.5 * (LOG_2PI_E + exact)).sum(-1).mean()),
        (F.decoder_entropy(dec_logvar=logvar, x=x), (0.5 * (LOG_2PI_E + exact)).sum(-1).mean()),
        (F.decoder_entropy(dec_logvar=logvar[0, :1].reshape(()), x=x), 0.5 * big * (LOG_2PI_E + exact[0, 0])),
        # H = D here: the encoder and prior constants cancel
        (
            F.entropy_sum(enc_logvar=logvar, dec_logvar=logvar, x=x),
            (0.5 * exact).sum(-1).mean() - (0.5 * (LOG_2PI_E + exact)).sum(-1).mean(),
        ),
    ]
    for value, reference in checks:
        assert value.dtype == torch.float32
        # float32 accumulation: a relative error of about 1e-7; a bfloat16 sum would be off by about 1e-2
        torch.testing.assert_close(value.double(), reference, rtol=2e-6, atol=1e-3)
    sixty_four = exact.to(F64)
    assert F.encoder_entropy(enc_logvar=sixty_four).dtype == F64
    assert F.decoder_entropy(dec_logvar=sixty_four, x=sixty_four).dtype == F64
    assert F.entropy_sum(enc_logvar=sixty_four, dec_logvar=sixty_four, x=sixty_four).dtype == F64
    assert F.prior_entropy(enc_logvar=sixty_four).dtype == F64


# -------------------------------------------------------------------------------------- collapse
def test_latent_statistics():
    gen = torch.Generator().manual_seed(14)
    mean, logvar, prior_logvar = _randn(50, H, gen=gen), _randn(50, H, gen=gen), _randn(H, gen=gen)
    _close(F.latent_entropy(enc_logvar=logvar), Normal(0.0, _std(logvar)).entropy().mean(0))
    posterior = MultivariateNormal(mean, _spd(50, k=H, gen=gen))  # marginal variances for a full covariance
    marginal_std = posterior.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt()
    _close(F.latent_entropy(posterior=posterior), Normal(0.0, marginal_std).entropy().mean(0))
    q = Normal(mean, _std(logvar))
    _close(F.latent_kl(enc_mean=mean, enc_logvar=logvar), kl_divergence(q, Normal(0.0, 1.0)).mean(0))
    _close(
        F.latent_kl(enc_mean=mean, enc_logvar=logvar, prior_logvar=prior_logvar),
        kl_divergence(q, Normal(0.0, _std(prior_logvar))).mean(0),
    )
    prior = Normal(_randn(H, gen=gen), _std(prior_logvar))
    _close(F.latent_kl(posterior=q, prior=prior), kl_divergence(q, prior).mean(0))
    _close(F.latent_mean_variance(enc_mean=mean), np.var(mean.numpy(), axis=0))
    _close(F.latent_mean_variance(posterior=q), np.var(mean.numpy(), axis=0))


def test_collapsed_latents_each_criterion():
    entropy = torch.tensor([0.2, 0.999, 1.0, 1.3], dtype=F64)
    assert F.collapsed_latents(entropy).tolist() == [False, False, True, True]
    assert F.collapsed_latents(entropy, threshold=1.2).tolist() == [False, False, False, True]
    kl = torch.tensor([2.0, 0.011, 0.009, 0.0], dtype=F64)
    assert F.collapsed_latents(latent_kl=kl, criterion="kl").tolist() == [False, False, True, True]
    assert F.collapsed_latents(latent_kl=kl, criterion="kl", threshold=0.5).tolist() == [
        False,
        True,
        True,
        True,
    ]
    variance = torch.tensor([1.0, 0.02, 0.005, 0.0], dtype=F64)
    flags = F.collapsed_latents(latent_mean_variance=variance, criterion="active_units")
    assert flags.tolist() == [False, False, True, True]
    assert F.COLLAPSE_CRITERIA == ("entropy", "kl", "active_units")
    assert F.DEFAULT_THRESHOLDS == {"entropy": 1.0, "kl": 0.01, "active_units": 0.01}


def test_collapsed_latents_learnable_prior_margin():
    # prior variances 4 and 0.25: latent entropy thresholds prior entropy - 0.4189 (= 1.0 for N(0, 1))
    prior = 0.5 * torch.log(2 * math.pi * math.e * torch.tensor([4.0, 0.25, 1.0], dtype=F64))
    margin = 0.5 * LOG_2PI_E - 1.0
    assert margin == pytest.approx(0.4189385, abs=1e-7)
    below, above = prior - margin - 1e-6, prior - margin + 1e-6
    assert F.collapsed_latents(below, prior_latent_entropy=prior).tolist() == [False, False, False]
    assert F.collapsed_latents(above, prior_latent_entropy=prior).tolist() == [True, True, True]
    # q = N(0, 1) is informative under a N(0, 4) prior; q = p = N(0, 0.25) carries nothing
    latent = 0.5 * torch.log(2 * math.pi * math.e * torch.tensor([1.0, 0.25, 0.3], dtype=F64))
    assert F.collapsed_latents(latent).tolist() == [True, False, False]  # the absolute 1.0-nat rule
    assert F.collapsed_latents(latent, prior_latent_entropy=prior).tolist() == [False, True, False]


def test_posterior_collapse_dict():
    gen = torch.Generator().manual_seed(15)
    n = 200
    # latent 0: informative; latent 1: q = p = N(0, 1); latent 2: q = p = N(0, 4) under a learnable prior
    enc_mean = torch.stack([_randn(n, gen=gen), torch.zeros(n, dtype=F64), torch.zeros(n, dtype=F64)], 1)
    enc_logvar = torch.tensor([-3.0, 0.0, math.log(4.0)], dtype=F64).expand(n, 3)
    prior_logvar = torch.tensor([0.0, 0.0, math.log(4.0)], dtype=F64)
    stats = F.posterior_collapse(enc_mean=enc_mean, enc_logvar=enc_logvar, prior_logvar=prior_logvar)
    assert set(stats) == {
        "latent_entropy",
        "prior_latent_entropy",
        "latent_kl",
        "latent_mean_variance",
        "collapsed",
        "num_active",
        "num_collapsed",
        "entropy_threshold",
    }
    _close(stats["latent_entropy"], F.latent_entropy(enc_logvar=enc_logvar))
    _close(stats["prior_latent_entropy"], Normal(0.0, _std(prior_logvar)).entropy())
    _close(stats["latent_kl"], F.latent_kl(enc_mean=enc_mean, enc_logvar=enc_logvar, prior_logvar=prior_logvar))
    _close(stats["latent_mean_variance"], F.latent_mean_variance(enc_mean=enc_mean))
    assert stats["collapsed"].tolist() == [False, True, True]
    # the counts are float tensors (NaN when no point was seen)
    _close(stats["num_active"], 1.0)
    _close(stats["num_collapsed"], 2.0)
    # the "entropy" criterion's threshold per latent: the prior's entropy less 0.5 * log(2 pi e) - 1.0
    _close(stats["entropy_threshold"], Normal(0.0, _std(prior_logvar)).entropy() - (0.5 * LOG_2PI_E - 1.0))
    # under the absolute rule latent 2 of a standard-normal model would also be collapsed; under the KL rule
    # only the exact matches with the prior collapse
    kl_stats = F.posterior_collapse(enc_mean=enc_mean, enc_logvar=enc_logvar, prior_logvar=prior_logvar, criterion="kl")
    assert kl_stats["collapsed"].tolist() == [False, True, True]
    assert "entropy_threshold" not in kl_stats
    units = F.posterior_collapse(enc_mean=enc_mean, enc_logvar=enc_logvar, criterion="active_units", threshold=0.5)
    assert units["collapsed"].tolist() == [False, True, True]
    assert units["num_active"].item() == 1
    assert units["num_active"].dtype == F64 and units["num_collapsed"].item() == 2


# ---------------------------------------------------------------------------- model selection, BIC
def test_bic_formula():
    elbo = torch.tensor([-10.0, -12.5], dtype=F64)
    for k, n in [(21, 10), (0, 1), (61, 100_000)]:
        _close(F.bic(elbo, num_parameters=k, num_points=n), k * math.log(n) - 2 * n * elbo)
    assert F.bic(-10.0, num_parameters=21, num_points=10).item() == pytest.approx(21 * math.log(10) + 200)


# ------------------------------------------------------------------------------------ profiling
@pytest.mark.parametrize("prior", ["standard", "(H,)", "(B,H)"])
@pytest.mark.parametrize("num_samples", [1, S])
def test_profiled_entropy_sum_is_entropy_sum_at_optimal_variance(prior, num_samples):
    gen = torch.Generator().manual_seed(16)
    x, enc_logvar = _randn(B, D, gen=gen), _randn(B, H, gen=gen)
    dec_mean = _randn(num_samples, B, D, gen=gen).squeeze(0)
    prior_logvar = {"standard": None, "(H,)": _randn(H, gen=gen), "(B,H)": _randn(B, H, gen=gen)}[prior]
    sigma2 = F.optimal_decoder_variance(x=x, dec_mean=dec_mean)
    residual = (x - dec_mean).square()
    _close(sigma2, residual.mean())
    expected = F.entropy_sum(
        enc_logvar=enc_logvar, dec_logvar=sigma2.log(), prior_logvar=prior_logvar, dec_mean=dec_mean, x=x
    )
    profiled = F.profiled_entropy_sum(x=x, dec_mean=dec_mean, enc_logvar=enc_logvar, prior_logvar=prior_logvar)
    assert profiled.shape == ()
    _close(profiled, expected)
    _close(F.profiled_decoder_entropy(x=x, dec_mean=dec_mean), 0.5 * D * (LOG_2PI_E + math.log(residual.mean().item())))
    _close(F.profiled_decoder_entropy(x=x, dec_mean=dec_mean), F.decoder_entropy(dec_logvar=sigma2.log(), x=x))
