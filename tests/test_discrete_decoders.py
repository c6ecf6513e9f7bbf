"""Bernoulli and categorical decoders in the functional API: entropies and ELBOs against torch.distributions in
float64, the dispatch on the decoder a step returns, every error message, and the stationary identity
ELBO = entropy sum on a trained Bernoulli VAE."""

import math
import re

import pytest
import torch
import torch.nn.functional as TF
from torch import nn
from torch.distributions import (
    Bernoulli,
    Categorical,
    ContinuousBernoulli,
    Independent,
    Normal,
    OneHotCategorical,
    Poisson,
    kl_divergence,
)

import lightning_entropy_vae.functional as F
from lightning_entropy_vae.metrics import DecoderEntropy, EntropySumELBO

B, H = 4, 3
IMAGE = (2, 3, 5)  # (C, H, W): D = 30


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _exact(message):
    return "^" + re.escape(message) + "$"


def _encoder(seed=1, dtype=torch.float64):
    g = _gen(seed)
    return torch.randn(B, H, generator=g, dtype=dtype), torch.randn(B, H, generator=g, dtype=dtype) - 1.0


def _kl(mean, logvar, prior_logvar=None):
    """Reference KL(q || p) per point from torch.distributions."""
    prior_scale = torch.ones(()) if prior_logvar is None else (0.5 * prior_logvar).exp()
    q, p = Normal(mean, (0.5 * logvar).exp()), Normal(torch.zeros_like(mean), prior_scale.to(mean))
    return kl_divergence(q, p).sum(-1)


def _logits(shape, seed=2, scale=3.0, dtype=torch.float64):
    """Random logits with a few at +-50, where exp overflows float32's softplus and sigmoids saturate."""
    t = scale * torch.randn(shape, generator=_gen(seed), dtype=dtype)
    flat = t.view(-1)
    flat[:3] = torch.tensor([50.0, -50.0, 0.0], dtype=dtype)
    return t


def _encoder_minus_prior(logvar, prior_logvar=None):
    """Reference mean encoder entropy minus prior entropy from torch.distributions."""
    enc = Normal(torch.zeros_like(logvar), (0.5 * logvar).exp()).entropy().sum(-1).mean()
    prior_scale = torch.ones(H, dtype=logvar.dtype) if prior_logvar is None else (0.5 * prior_logvar).exp()
    return enc - Normal(torch.zeros(H, dtype=logvar.dtype), prior_scale).entropy().sum()


# ------------------------------------------------------------------------------------------- entropies
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bernoulli_entropy_matches_torch_distributions_on_images(reduction):
    logits = _logits((B, *IMAGE))
    per_point = Bernoulli(logits=logits).entropy().reshape(B, -1).sum(-1)
    expected = {"mean": per_point.mean(), "sum": per_point.sum(), "none": per_point}[reduction]
    ours = F.decoder_entropy(dec_logits=logits, x=torch.zeros(B, *IMAGE, dtype=torch.float64), reduction=reduction)
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    # without x the leading dimension is the batch
    torch.testing.assert_close(F.decoder_entropy(dec_logits=logits, reduction=reduction), expected, rtol=1e-12,
                               atol=1e-12)


def test_bernoulli_entropy_is_finite_where_a_naive_formula_overflows():
    """|logits| = 100 in float32: exp(100) is inf, so log(1 + exp(eta)) - sigmoid(eta) * eta is inf - 100 = inf."""
    logits = torch.tensor([[100.0, -100.0, 0.0, 30.0, -30.0]])
    naive = (torch.log(1 + torch.exp(logits)) - torch.sigmoid(logits) * logits).sum()
    assert not torch.isfinite(naive)
    expected = Bernoulli(logits=logits.double()).entropy().sum()
    torch.testing.assert_close(F.decoder_entropy(dec_logits=logits).double(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_categorical_entropy_matches_torch_distributions(reduction):
    logits = _logits((B, *IMAGE, 7))
    per_point = Categorical(logits=logits).entropy().reshape(B, -1).sum(-1)
    expected = per_point.mean() if reduction == "mean" else per_point
    x = torch.zeros(B, *IMAGE, dtype=torch.long)
    ours = F.decoder_entropy(dec_class_logits=logits, x=x, reduction=reduction)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    # float32 logits of +-1000, where softmax(eta) * eta with a naive log(sum(exp)) is nan
    big = torch.tensor([[[1000.0, -1000.0, 0.0]]])
    torch.testing.assert_close(F.decoder_entropy(dec_class_logits=big), torch.tensor(0.0))


def test_bernoulli_probability_entropy_matches_torch_distributions():
    probs = torch.rand(B, *IMAGE, generator=_gen(3), dtype=torch.float64) * 0.98 + 0.01
    expected = Bernoulli(probs=probs).entropy().reshape(B, -1).sum(-1)
    torch.testing.assert_close(F.decoder_entropy(dec_probs=probs, reduction="none"), expected, rtol=1e-12, atol=0)
    # saturated probabilities: 0 and 1 have no entropy (their logs are clamped at -100)
    torch.testing.assert_close(F.decoder_entropy(dec_probs=torch.tensor([[0.0, 1.0]])), torch.tensor(0.0))


def test_likelihood_distributions_map_to_the_decoder_tensors():
    logits, class_logits = _logits((B, 6)), _logits((B, 6, 4))
    x_index = torch.randint(0, 4, (B, 6), generator=_gen(4))
    bern = F.decoder_entropy(dec_logits=logits)
    for likelihood in (Bernoulli(logits=logits), Independent(Bernoulli(logits=logits), 1)):
        torch.testing.assert_close(F.decoder_entropy(likelihood=likelihood), bern, rtol=1e-12, atol=0)
    cat = F.decoder_entropy(dec_class_logits=class_logits, x=x_index)
    for likelihood in (Categorical(logits=class_logits), Independent(Categorical(logits=class_logits), 1),
                       OneHotCategorical(logits=class_logits)):
        torch.testing.assert_close(F.decoder_entropy(likelihood=likelihood), cat, rtol=1e-12, atol=0)
    mean, logvar = _encoder()
    expected = (Categorical(logits=class_logits).log_prob(x_index).sum(-1) - _kl(mean, logvar)).mean()
    torch.testing.assert_close(F.elbo(x=x_index, enc_mean=mean, enc_logvar=logvar,
                                      likelihood=Independent(Categorical(logits=class_logits), 1)), expected)


def test_continuous_bernoulli_entropy_and_elbo():
    """Its entropy against a numerical integral of -p log p over [0, 1]; its ELBO against log_prob minus the KL."""
    logits = torch.tensor([[-3.0, 0.2, 4.0]], dtype=torch.float64)
    grid = torch.linspace(0.0, 1.0, 200_001, dtype=torch.float64)
    log_p = ContinuousBernoulli(logits=logits.unsqueeze(-1)).log_prob(grid)  # (1, 3, grid)
    expected = torch.trapezoid(-log_p.exp() * log_p, grid).sum()
    likelihood = ContinuousBernoulli(logits=logits)
    torch.testing.assert_close(F.decoder_entropy(likelihood=likelihood), expected, rtol=1e-8, atol=0)
    mean, logvar = torch.zeros(1, 2, dtype=torch.float64), torch.full((1, 2), -1.0, dtype=torch.float64)
    x = torch.tensor([[0.1, 0.5, 0.9]], dtype=torch.float64)
    elbo = F.elbo(x=x, enc_mean=mean, enc_logvar=logvar, likelihood=likelihood)
    torch.testing.assert_close(elbo, likelihood.log_prob(x).sum() - _kl(mean, logvar).sum())


def test_entropy_sum_of_each_decoder():
    mean, logvar = _encoder()
    prior_logvar = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    logits, class_logits = _logits((B, *IMAGE)), _logits((B, *IMAGE, 5))
    probs = torch.sigmoid(_logits((B, *IMAGE), seed=5, scale=1.0))
    base = _encoder_minus_prior(logvar, prior_logvar)
    cases = {
        "dec_logits": (logits, Bernoulli(logits=logits).entropy()),
        "dec_probs": (probs, Bernoulli(probs=probs).entropy()),
        "dec_class_logits": (class_logits, Categorical(logits=class_logits).entropy()),
    }
    for key, (value, entropy) in cases.items():
        expected = base - entropy.reshape(B, -1).sum(-1).mean()
        ours = F.entropy_sum(enc_mean=mean, enc_logvar=logvar, prior_logvar=prior_logvar, **{key: value})
        torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------- ELBOs
@pytest.mark.parametrize("samples", [None, 3])
def test_bernoulli_elbo_matches_log_prob_minus_kl(samples):
    """Gray-level x in [0, 1] on images; with S z-samples the log-likelihood is their mean."""
    mean, logvar = _encoder()
    prior_logvar = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    x = torch.rand(B, *IMAGE, generator=_gen(6), dtype=torch.float64)
    x[0, 0, 0, :2] = torch.tensor([0.0, 1.0], dtype=torch.float64)
    logits = _logits((B, *IMAGE) if samples is None else (samples, B, *IMAGE))
    ll = Bernoulli(logits=logits, validate_args=False).log_prob(x).flatten(-3).sum(-1)
    ll = ll if samples is None else ll.mean(0)
    expected = ll - _kl(mean, logvar, prior_logvar)
    ours = F.bernoulli_elbo(x=x, enc_mean=mean, enc_logvar=logvar, dec_logits=logits, prior_logvar=prior_logvar,
                            reduction="none")
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(F.elbo(x=x, enc_mean=mean, enc_logvar=logvar, dec_logits=logits,
                                      prior_logvar=prior_logvar), expected.mean(), rtol=1e-12, atol=1e-12)


def test_bernoulli_probability_elbo_is_minus_the_bce_loss():
    """A model's own BCE (sum) + KL equals minus the ELBO from `dec_probs`, saturated probabilities included."""
    mean, logvar = _encoder()
    x = torch.bernoulli(torch.full((B, *IMAGE), 0.5, dtype=torch.float64), generator=_gen(7))
    probs = torch.rand(B, *IMAGE, generator=_gen(8), dtype=torch.float64)
    probs.view(-1)[:4] = torch.tensor([0.0, 1.0, 1e-60, 1.0 - 1e-17], dtype=torch.float64)
    x.view(-1)[:4] = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    bce = TF.binary_cross_entropy(probs, x, reduction="none").reshape(B, -1).sum(-1)
    expected = -bce - _kl(mean, logvar)
    ours = F.bernoulli_elbo(x=x, enc_mean=mean, enc_logvar=logvar, dec_probs=probs, reduction="none")
    torch.testing.assert_close(ours, expected, rtol=1e-14, atol=0)
    loss = TF.binary_cross_entropy(probs, x, reduction="sum") / B + _kl(mean, logvar).mean()
    torch.testing.assert_close(F.elbo(x=x, enc_mean=mean, enc_logvar=logvar, dec_probs=probs), -loss)


@pytest.mark.parametrize("x_kind", ["index", "one_hot", "probabilities"])
def test_categorical_elbo_matches_log_prob_minus_kl(x_kind):
    mean, logvar = _encoder()
    classes = 6
    logits = _logits((B, *IMAGE, classes))
    index = torch.randint(0, classes, (B, *IMAGE), generator=_gen(9))
    log_probs = torch.stack([Categorical(logits=logits).log_prob(torch.full_like(index, c)) for c in range(classes)],
                            -1)  # (B, *data, C): the log-probability of each class, from torch.distributions
    if x_kind == "index":
        x, ll = index, Categorical(logits=logits).log_prob(index)
    elif x_kind == "one_hot":
        x = TF.one_hot(index, classes).double()
        ll = OneHotCategorical(logits=logits).log_prob(x)
    else:
        x = torch.softmax(torch.randn(B, *IMAGE, classes, generator=_gen(10), dtype=torch.float64), -1)
        ll = (x * log_probs).sum(-1)
    expected = ll.reshape(B, -1).sum(-1) - _kl(mean, logvar)
    ours = F.categorical_elbo(x=x, enc_mean=mean, enc_logvar=logvar, dec_class_logits=logits, reduction="none")
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    # S z-samples: the mean of their log-likelihoods
    stacked = torch.stack([logits, logits.flip(0)])
    ll2 = F.categorical_elbo(x=x, enc_mean=mean, enc_logvar=logvar, dec_class_logits=stacked, reduction="none")
    flipped = F.categorical_elbo(x=x, enc_mean=mean, enc_logvar=logvar, dec_class_logits=logits.flip(0),
                                 reduction="none")
    torch.testing.assert_close(ll2, (ours + flipped) / 2, rtol=1e-12, atol=1e-12)


def test_elbo_dispatches_and_keeps_the_gaussian_numbers():
    mean, logvar = _encoder()
    x = torch.randn(B, 5, generator=_gen(11), dtype=torch.float64)
    gaussian = {"x": x, "enc_mean": mean, "enc_logvar": logvar, "dec_mean": torch.zeros_like(x),
                "dec_logvar": torch.tensor(-0.5, dtype=torch.float64)}
    scale = torch.tensor(math.exp(-0.25), dtype=torch.float64)
    expected = (Normal(torch.zeros_like(scale), scale).log_prob(x).sum(-1) - _kl(mean, logvar)).mean()
    torch.testing.assert_close(F.elbo(**gaussian), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(F.gaussian_elbo(**gaussian), expected, rtol=1e-12, atol=0)


def test_bernoulli_log_likelihood_of_loss_conventions_is_unchanged():
    x = torch.tensor([[1.0, 0.0, 0.3]], dtype=torch.float64)
    probs = torch.tensor([[0.8, 1e-9, 0.6]], dtype=torch.float64)
    expected = math.log(0.8) + math.log1p(-1e-6) + 0.3 * math.log(0.6) + 0.7 * math.log(0.4)  # probs clamped at 1e-6
    torch.testing.assert_close(F.bernoulli_log_likelihood(x=x, probs=probs), torch.tensor([expected],
                                                                                           dtype=torch.float64))


def test_metrics_read_a_bernoulli_likelihood():
    """The metrics' own calls (unchanged) reach the Bernoulli entropy through a `likelihood`."""
    _, logvar = _encoder()
    logits = _logits((B, 6))
    expected = _encoder_minus_prior(logvar) - Bernoulli(logits=logits).entropy().sum(-1).mean()
    metric = EntropySumELBO()
    metric.update(enc_logvar=logvar, likelihood=Bernoulli(logits=logits))
    torch.testing.assert_close(metric.compute()["sum"], expected.float(), rtol=1e-5, atol=1e-5)
    dec = DecoderEntropy()
    dec.update(likelihood=Independent(Bernoulli(logits=logits), 1))
    torch.testing.assert_close(dec.compute(), Bernoulli(logits=logits).entropy().sum(-1).mean().float(), rtol=1e-5,
                               atol=1e-5)


# ------------------------------------------------------------------------------------------------ errors
def _z(*shape):
    return torch.zeros(shape)


_ONE_DECODER = ("Expected one decoder: `dec_mean`/`dec_logvar` (Gaussian), `dec_logits` or `dec_probs` (Bernoulli),"
                " `dec_class_logits` (categorical) or a `likelihood`, but got ")
_ENC = {"enc_mean": _z(2, 1), "enc_logvar": _z(2, 1)}
_GAUSSIAN_ONLY = (" is defined for Gaussian decoders only ({}), but got a non-Gaussian decoder: {}. The entropy sum of"
                  " a Bernoulli or categorical decoder needs no decoder variance: use entropy_sum() and elbo().")
ERRORS = {
    "Gaussian and Bernoulli": (
        lambda: F.entropy_sum(enc_logvar=_z(2, 1), dec_mean=_z(2, 3), dec_logvar=_z(), dec_logits=_z(2, 3)),
        ValueError, _ONE_DECODER + "`dec_mean`, `dec_logvar`, `dec_logits`.",
    ),
    "logits and probabilities": (
        lambda: F.decoder_entropy(dec_logits=_z(2, 3), dec_probs=_z(2, 3)),
        ValueError, _ONE_DECODER + "`dec_logits`, `dec_probs`.",
    ),
    "likelihood and class logits": (
        lambda: F.elbo(x=_z(2, 3), **_ENC, dec_class_logits=_z(2, 3, 4), likelihood=Bernoulli(logits=_z(2, 3))),
        ValueError, _ONE_DECODER + "`dec_class_logits`, `likelihood`.",
    ),
    "gaussian_elbo with logits": (
        lambda: F.gaussian_elbo(x=_z(2, 3), **_ENC, dec_logits=_z(2, 3)),
        ValueError,
        "gaussian_elbo() computes the ELBO of a Gaussian decoder, but got a Bernoulli decoder (`dec_logits`,"
        " `dec_probs` or a Bernoulli `likelihood`). Call bernoulli_elbo() for it, or elbo(), which reads the decoder"
        " from the inputs.",
    ),
    "bernoulli_elbo with a Gaussian decoder": (
        lambda: F.bernoulli_elbo(x=_z(2, 3), **_ENC, dec_mean=_z(2, 3), dec_logvar=_z()),
        ValueError,
        "bernoulli_elbo() computes the ELBO of a Bernoulli decoder, but got a Gaussian decoder (`dec_mean`/"
        "`dec_logvar` or a Gaussian `likelihood`). Call gaussian_elbo() for it, or elbo(), which reads the decoder"
        " from the inputs.",
    ),
    "categorical_elbo with logits": (
        lambda: F.categorical_elbo(x=_z(2, 3), **_ENC, dec_logits=_z(2, 3)),
        ValueError,
        "categorical_elbo() computes the ELBO of a categorical decoder, but got a Bernoulli decoder (`dec_logits`,"
        " `dec_probs` or a Bernoulli `likelihood`). Call bernoulli_elbo() for it, or elbo(), which reads the decoder"
        " from the inputs.",
    ),
    "bernoulli_elbo with a continuous Bernoulli": (
        lambda: F.bernoulli_elbo(x=_z(2, 3), **_ENC, likelihood=ContinuousBernoulli(logits=_z(2, 3))),
        ValueError,
        "bernoulli_elbo() computes the ELBO of a Bernoulli decoder, but got a continuous Bernoulli decoder (a"
        " ContinuousBernoulli `likelihood`). Call elbo(), which reads the decoder from the inputs.",
    ),
    "bernoulli_elbo without a decoder": (
        lambda: F.bernoulli_elbo(x=_z(2, 3), **_ENC),
        ValueError,
        "bernoulli_elbo() needs `dec_logits` or `dec_probs` (or a Bernoulli `likelihood`), but got None. Return the"
        " encoder and decoder statistics from your step, for example:",
    ),
    "logits not the shape of x": (
        lambda: F.bernoulli_elbo(x=_z(2, 3, 4), **_ENC, dec_logits=_z(2, 12)),
        ValueError,
        "Expected `dec_logits` of shape (B, *data) = (2, 3, 4) or (S, B, *data) matching `x` (2, 3, 4), but got"
        " (2, 12).",
    ),
    "class logits not matching the indices": (
        lambda: F.categorical_elbo(x=torch.zeros(2, 3, dtype=torch.long), **_ENC, dec_class_logits=_z(2, 4, 5)),
        ValueError,
        "Expected `dec_class_logits` of shape (B, *data, C) = (2, 3, C) or (S, B, *data, C) matching `x` (2, 3)"
        " (class indices (B, *data) of an integer dtype, or one-hot or probability vectors (B, *data, C)), but got"
        " (2, 4, 5).",
    ),
    "integer one-hot x": (
        lambda: F.categorical_elbo(x=torch.nn.functional.one_hot(torch.tensor([[0, 2, 1], [3, 0, 0]]), 4), **_ENC,
                                   dec_class_logits=_z(2, 3, 4)),
        ValueError,
        "Expected `dec_class_logits` of shape (B, *data, C) = (2, 3, 4, C) or (S, B, *data, C) matching `x` (2, 3, 4)"
        " (class indices (B, *data) of an integer dtype, or one-hot or probability vectors (B, *data, C)), but got"
        " (2, 3, 4). An integer `x` of the logits' shape looks one-hot: one-hot `x` must be floating point"
        " (`x.float()`), or pass the class indices (`x.argmax(-1)`).",
    ),
    "one-hot x with other classes": (
        lambda: F.categorical_elbo(x=_z(2, 3, 4), **_ENC, dec_class_logits=_z(2, 3, 5)),
        ValueError,
        "Expected `dec_class_logits` of shape (B, *data, C) = (2, 3, 4) or (S, B, *data, C) matching `x` (2, 3, 4)"
        " (class indices (B, *data) of an integer dtype, or one-hot or probability vectors (B, *data, C)), but got"
        " (2, 3, 5).",
    ),
    "class logits without classes": (
        lambda: F.decoder_entropy(dec_class_logits=_z(4)),
        ValueError,
        "Expected `dec_class_logits` of shape (B, *data, C), class logits over the last dimension, but got (4,).",
    ),
    "logits without a batch": (
        lambda: F.decoder_entropy(dec_logits=_z(4)),
        ValueError, "Expected `dec_logits` of shape (B, *data), one per data dimension, but got (4,).",
    ),
    "integer logits": (
        lambda: F.decoder_entropy(dec_logits=torch.zeros(2, 3, dtype=torch.long)),
        TypeError, "Expected `dec_logits` to be a floating-point tensor, but got dtype torch.int64.",
    ),
    "integer x with a Bernoulli decoder": (
        lambda: F.bernoulli_elbo(x=torch.zeros(2, 3, dtype=torch.long), **_ENC, dec_logits=_z(2, 3)),
        TypeError, "Expected `x` to be a floating-point tensor, but got dtype torch.int64.",
    ),
    "batch sizes": (
        lambda: F.entropy_sum(enc_logvar=_z(2, 1), dec_logits=_z(3, 4)),
        ValueError, "Expected one batch size B across the inputs of entropy_sum(), but got `encoder`: 2, `decoder`: 3.",
    ),
    "Poisson": (
        lambda: F.entropy_sum(enc_logvar=_z(2, 1), likelihood=Poisson(_z(2, 3) + 1.0)),
        TypeError,
        "Expected a `likelihood` with a constant base measure (Normal, MultivariateNormal, LowRankMultivariateNormal,"
        " Bernoulli, Categorical, OneHotCategorical, ContinuousBernoulli, or Independent of one of them), but got"
        " Poisson. The entropy-sum result does not hold for a Poisson likelihood: its base measure depends on x, so"
        " the expected log-likelihood is not minus an expected entropy at stationary points (Warnken et al., arXiv"
        " 2501.09022, replace it by pseudo-entropies).",
    ),
    "optimal_decoder_variance": (
        lambda: F.optimal_decoder_variance(x=_z(2, 3), dec_logits=_z(2, 3)),
        ValueError,
        "optimal_decoder_variance()" + _GAUSSIAN_ONLY.format("the mean squared residual of a Gaussian decoder",
                                                             "`dec_logits`"),
    ),
    "profiled_decoder_entropy": (
        lambda: F.profiled_decoder_entropy(x=_z(2, 3), dec_probs=_z(2, 3)),
        ValueError,
        "profiled_decoder_entropy()" + _GAUSSIAN_ONLY.format("the Gaussian entropy at the stationary variance",
                                                             "`dec_probs`"),
    ),
    "profiled_entropy_sum": (
        lambda: F.profiled_entropy_sum(x=_z(2, 3), enc_logvar=_z(2, 1), likelihood=Categorical(logits=_z(2, 3, 4))),
        ValueError,
        "profiled_entropy_sum()" + _GAUSSIAN_ONLY.format("the Gaussian entropy at the stationary variance",
                                                         "a Categorical `likelihood`"),
    ),
    "gaussian_log_likelihood": (
        lambda: F.gaussian_log_likelihood(x=_z(2, 3), dec_class_logits=_z(2, 3, 4)),
        ValueError,
        "gaussian_log_likelihood()" + _GAUSSIAN_ONLY.format("the log-density of N(dec_mean, exp(dec_logvar))",
                                                            "`dec_class_logits`"),
    ),
    "mse_convention of a BCE loss": (
        lambda: F.mse_convention("bce", data_dim=784),
        ValueError,
        "Expected a squared-error `reconstruction` ('sum', 'half_sum', 'mean'), but got 'bce': the decoder variance"
        " of mse_convention() is defined for Gaussian decoders only. A cross-entropy loss trains a Bernoulli or"
        " categorical decoder: return `dec_logits` or `dec_probs` (or `dec_class_logits`) and use bernoulli_elbo()"
        " (or categorical_elbo()) for its ELBO.",
    ),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_error_message(name):
    call, error, message = ERRORS[name]
    pattern = "^" + re.escape(message) if message.endswith("for example:") else _exact(message)
    with pytest.raises(error, match=pattern):
        call()


# ------------------------------------------------ keyword-only vocabulary, as tests/test_inputs.py for the others
def _bernoulli_step():
    mean, logvar = _encoder()
    return {"loss": torch.tensor(1.0), "x": torch.rand(B, 5, generator=_gen(12), dtype=torch.float64),
            "enc_mean": mean, "enc_logvar": logvar, "dec_logits": _logits((B, 5)), "prior_logvar": torch.zeros(H),
            "elbo": torch.zeros(B), "data_dim": 5}


def _categorical_step():
    out = _bernoulli_step()
    del out["dec_logits"]
    return {**out, "x": torch.randint(0, 4, (B, 5), generator=_gen(13)), "dec_class_logits": _logits((B, 5, 4))}


STEPS = {
    "bernoulli_elbo": (_bernoulli_step, ("x", "enc_mean", "enc_logvar", "dec_logits", "prior_logvar")),
    "categorical_elbo": (_categorical_step, ("x", "enc_mean", "enc_logvar", "dec_class_logits", "prior_logvar")),
}


@pytest.mark.parametrize("name", list(STEPS))
def test_a_step_output_feeds_the_elbo_and_the_entropies(name):
    make, needs = STEPS[name]
    out = make()
    function = getattr(F, name)
    own = function(**{key: out[key] for key in needs})
    torch.testing.assert_close(function(**out), own, rtol=0, atol=0)
    torch.testing.assert_close(F.elbo(**out), own, rtol=0, atol=0)
    assert torch.isfinite(F.entropy_sum(**out))
    with pytest.raises(TypeError, match=_exact(f"{name}() takes 0 positional arguments but 1 was given")):
        function(out["x"])
    with pytest.raises(TypeError, match=f"^{re.escape(name)}\\(\\) got unexpected keyword argument\\(s\\) `reductoin`"
                                        " \\(did you mean `reduction`\\?\\)"):
        function(**out, reductoin="sum")


# --------------------------------------------------------------------------- the stationary identity
def _bernoulli_vae(steps):
    """A Bernoulli VAE (a linear encoder; a tanh MLP decoder whose last layer is linear with a bias) trained full batch
    with L-BFGS in float64 on a generated binary data set, with fixed reparameterisation noise (S = 8 z-samples per
    point); its step output for that noise."""
    g = _gen(20)
    n, d, h, k, s = 100, 6, 1, 3, 8
    x = torch.bernoulli(torch.sigmoid(torch.randn(n, h, generator=g, dtype=torch.float64)
                                      @ (2.0 * torch.randn(d, h, generator=g, dtype=torch.float64)).T), generator=g)
    eps = torch.randn(s, n, h, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    encoder = nn.Linear(d, 2 * h).double()
    decoder = nn.Sequential(nn.Linear(h, k), nn.Tanh(), nn.Linear(k, d)).double()

    def step():
        mean, logvar = encoder(x).chunk(2, -1)
        return {"x": x, "enc_mean": mean, "enc_logvar": logvar,
                "dec_logits": decoder(mean + (0.5 * logvar).exp() * eps)}

    def closure():  # minus the ELBO from torch.distributions
        optimizer.zero_grad()
        out = step()
        ll = Bernoulli(logits=out["dec_logits"]).log_prob(x).sum(-1).mean(0)
        loss = -(ll - _kl(out["enc_mean"], out["enc_logvar"])).mean()
        loss.backward()
        return loss

    optimizer = torch.optim.LBFGS([*encoder.parameters(), *decoder.parameters()], lr=1.0, max_iter=steps,
                                  history_size=50, line_search_fn="strong_wolfe", tolerance_grad=1e-12,
                                  tolerance_change=1e-15)
    if steps:
        optimizer.step(closure)
    with torch.no_grad():
        return step()


def _relative_gap(out):
    elbo, entropy_sum = F.bernoulli_elbo(**out), F.entropy_sum(**out)
    return ((elbo - entropy_sum).abs() / elbo.abs()).item()


RELATIVE_GAP_BOUND = 1e-3


def test_elbo_equals_the_entropy_sum_at_a_stationary_point_of_a_bernoulli_vae():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trained, untrained = _relative_gap(_bernoulli_vae(STATIONARY_STEPS)), _relative_gap(_bernoulli_vae(0))
    finally:
        torch.set_num_threads(threads)
    assert trained < RELATIVE_GAP_BOUND < untrained, (trained, untrained)


STATIONARY_STEPS = 1000
