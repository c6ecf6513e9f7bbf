"""Every error message of the functional API and the metrics: what was expected, what was got."""

import math
import re

import pytest
import torch
from torch.distributions import Bernoulli, Independent, MultivariateNormal, Normal, Poisson, StudentT

import lightning_entropy_vae.functional as F
from lightning_entropy_vae.functional import _checks, _inputs
from lightning_entropy_vae.metrics import (
    DecoderEntropy,
    EncoderEntropy,
    EntropySumELBO,
    GaussianELBO,
    PosteriorCollapse,
    PriorEntropy,
)


def z(*shape):
    return torch.zeros(shape)


def _exact(message):
    """A pattern that matches ``message`` literally and as the whole error text."""
    return "^" + re.escape(message) + "$"


GAUSSIANS = "(Normal, Independent(Normal), MultivariateNormal or LowRankMultivariateNormal)"
LIKELIHOODS = ("Normal, MultivariateNormal, LowRankMultivariateNormal, Bernoulli, Categorical, OneHotCategorical,"
               " ContinuousBernoulli, or Independent of one of them")

# (call, exception type, the whole message)
CASES = {
    # ---- encoder
    "enc_logvar vs enc_mean": (
        lambda: F.gaussian_kl(enc_mean=z(128, 16), enc_logvar=z(128, 8)),
        ValueError,
        "Expected `enc_logvar` of shape (B, H) matching `enc_mean` (128, 16), but got (128, 8).",
    ),
    "enc_logvar 3-d vs enc_mean": (  # (B, *latent) latents are flattened, but enc_mean must match first
        lambda: F.gaussian_kl(enc_mean=z(2, 3, 4), enc_logvar=z(2, 4, 3)),
        ValueError,
        "Expected `enc_logvar` of shape (B, H) matching `enc_mean` (2, 3, 4), but got (2, 4, 3).",
    ),
    "enc_logvar 1-d": (
        lambda: F.entropy_sum(enc_logvar=z(3), dec_logvar=z(), x=z(3, 2)),
        ValueError,
        "Expected `enc_logvar` of shape (B, H) (or (B, *latent)), but got (3,).",
    ),
    "posterior shape": (  # a full covariance over (B, *latent) has no flat form
        lambda: F.encoder_entropy(posterior=MultivariateNormal(z(2, 3, 4), torch.eye(4))),
        ValueError,
        "Expected `posterior` with batch and event shape (B, H) (or (B, *latent) for a diagonal one),"
        " but got (2, 3, 4) (batch_shape=(2, 3), event_shape=(4,)).",
    ),
    "posterior event shape": (
        lambda: F.latent_entropy(posterior=Normal(z(2), 1.0)),
        ValueError,
        "Expected `posterior` with batch and event shape (B, H) (or (B, *latent) for a diagonal one),"
        " but got (2,) (batch_shape=(2,), event_shape=()).",
    ),
    # ---- prior
    "prior shape": (
        lambda: F.entropy_sum(enc_logvar=z(2, 3), dec_logvar=z(), x=z(2, 4), prior=Normal(z(4), 1.0)),
        ValueError,
        "Expected `prior` with batch and event shape (H,) = (3,), or (B, H) = (2, 3) for a diagonal prior repeated"
        " over the batch (a Pyro plate), but got (4,).",
    ),
    "prior_logvar H": (
        lambda: F.entropy_sum(enc_logvar=z(2, 3), dec_logvar=z(), x=z(2, 4), prior_logvar=z(4)),
        ValueError,
        "Expected `prior_logvar` of shape (H,) = (3,) matching the encoder's latents (or (B, H), the prior in"
        " effect for each sample), but got (4,).",
    ),
    "prior_logvar B": (
        lambda: F.gaussian_kl(enc_mean=z(2, 3), enc_logvar=z(2, 3), prior_logvar=z(5, 3)),
        ValueError,
        "Expected `prior_logvar` of shape (H,) = (3,) matching the encoder's latents (or (B, H), the prior in"
        " effect for each sample), but got (5, 3).",
    ),
    "prior_logvar 3-d": (
        lambda: F.prior_entropy(prior_logvar=z(2, 2, 3)),
        ValueError,
        "Expected `prior_logvar` of shape (H,) = (3,) matching the encoder's latents (or (B, H), the prior in"
        " effect for each sample), but got (2, 2, 3).",
    ),
    "prior_entropy without H": (
        lambda: F.prior_entropy(),
        ValueError,
        "prior_entropy() needs the number of latents: pass"
        " `latent_dim`, `prior_logvar`, `prior` or `enc_logvar`,"
        " but got none of them.",
    ),
    # ---- data and decoder
    "x 1-d": (
        lambda: F.decoder_entropy(dec_logvar=z(), x=z(4)),
        ValueError,
        "Expected `x` of shape (B, D) (or (B, C, H, W) images), but got (4,).",
    ),
    "dec_mean vs x": (
        lambda: F.decoder_entropy(dec_logvar=z(), dec_mean=z(2, 5), x=z(2, 4)),
        ValueError,
        "Expected `dec_mean` of shape (B, *data) = (2, 4) or (S, B,"
        " *data) matching `x` (2, 4), but got (2, 5).",
    ),
    "dec_mean batch vs x": (
        lambda: F.gaussian_log_likelihood(x=z(2, 4), dec_mean=z(3, 4), dec_logvar=z()),
        ValueError,
        "Expected `dec_mean` of shape (B, *data) = (2, 4) or (S, B,"
        " *data) matching `x` (2, 4), but got (3, 4).",
    ),
    "dec_mean vs image x": (
        lambda: F.decoder_entropy(dec_logvar=z(), dec_mean=z(2, 12), x=z(2, 1, 3, 4)),
        ValueError,
        "Expected `dec_mean` of shape (B, *data) = (2, 1, 3, 4) or (S, B, *data) matching `x` (2, 1, 3, 4),"
        " but got (2, 12).",
    ),
    "dec_mean 4-d without x": (
        lambda: F.decoder_entropy(dec_logvar=z(), dec_mean=z(2, 3, 4, 5)),
        ValueError,
        "Expected `dec_mean` of shape (B, D) or (S, B, D), but got (2, 3, 4, 5).",
    ),
    "dec_logvar (D,) vs x": (
        lambda: F.decoder_entropy(dec_logvar=z(6), x=z(2, 5)),
        ValueError,
        "Expected `dec_logvar` of shape () (one variance), (5,) (one per dimension), (B, 1) = (2, 1) (one per"
        " sample), (B, *data) = (2, 5) or (S, B, *data), matching `x` (2, 5), but got (6,).",
    ),
    "dec_logvar (S,B,D) vs x": (
        lambda: F.decoder_entropy(dec_logvar=z(3, 2, 6), x=z(2, 5)),
        ValueError,
        "Expected `dec_logvar` of shape () (one variance), (5,) (one per dimension), (B, 1) = (2, 1) (one per"
        " sample), (B, *data) = (2, 5) or (S, B, *data), matching `x` (2, 5), but got (3, 2, 6).",
    ),
    "dec_logvar of an image vs x": (
        lambda: F.decoder_entropy(dec_logvar=z(2, 7), x=z(2, 1, 2, 3)),
        ValueError,
        "Expected `dec_logvar` of shape () (one variance), (1, 2, 3) or (6,) (one per dimension), (B, 1) = (2, 1)"
        " (one per sample), (B, *data) = (2, 1, 2, 3) or (S, B, *data), matching `x` (2, 1, 2, 3), but got (2, 7).",
    ),
    "dec_logvar (D,) vs dec_mean": (
        lambda: F.decoder_entropy(dec_logvar=z(6), dec_mean=z(2, 5)),
        ValueError,
        "Expected `dec_logvar` of shape (D,) = (5,) matching the data, but got (6,).",
    ),
    "dec_logvar (B,D) vs dec_mean": (
        lambda: F.decoder_entropy(dec_logvar=z(2, 6), dec_mean=z(2, 5)),
        ValueError,
        "Expected `dec_logvar` of shape (B, D) or (S, B, D) matching `dec_mean` (2, 5), but got (2, 6).",
    ),
    "dec_logvar (S,B,D) vs single-sample dec_mean": (
        lambda: F.decoder_entropy(dec_logvar=z(3, 2, 5), dec_mean=z(2, 5), x=z(2, 5)),
        ValueError,
        "Expected `dec_logvar` of shape (B, D) or (S, B, D) matching `dec_mean` (2, 5), but got (3, 2, 5).",
    ),
    "dec_logvar (B,1) vs dec_mean": (
        lambda: F.decoder_entropy(dec_logvar=z(3, 1), dec_mean=z(2, 5)),
        ValueError,
        "Expected `dec_logvar` of shape (B, D) = (2, 5), (B, 1) or (S, B, D), but got (3, 1).",
    ),
    "likelihood vs x": (
        lambda: F.decoder_entropy(likelihood=Normal(z(2, 4), 1.0), x=z(2, 3)),
        ValueError,
        "Expected `likelihood` with batch and event shape (B, *data) or (S, B, *data) matching `x` (2, 3),"
        " but got (2, 4).",
    ),
    "likelihood 1-d": (
        lambda: F.decoder_entropy(likelihood=Normal(z(4), 1.0)),
        ValueError,
        "Expected `likelihood` with batch and event shape (B, D) or (S, B, D), but got (4,).",
    ),
    # ---- batch sizes across keys
    "batch: entropy_sum": (
        lambda: F.entropy_sum(enc_logvar=z(4, 3), dec_logvar=z(), x=z(5, 2)),
        ValueError,
        "Expected one batch size B across the inputs of"
        " entropy_sum(), but got `encoder`: 4, `decoder`: 5, `x`: 5.",
    ),
    "batch: entropy_sum likelihood": (
        lambda: F.entropy_sum(enc_logvar=z(4, 3), likelihood=Normal(z(5, 2), 1.0)),
        ValueError,
        "Expected one batch size B across the inputs of entropy_sum(), but got `encoder`: 4, `decoder`: 5.",
    ),
    "batch: gaussian_elbo": (
        lambda: F.gaussian_elbo(x=z(5, 2), enc_mean=z(4, 3), enc_logvar=z(4, 3), dec_mean=z(5, 2), dec_logvar=z()),
        ValueError,
        "Expected one batch size B across the inputs of gaussian_elbo(), but got `encoder`: 4, `decoder`: 5,"
        " `x`: 5.",
    ),
    "batch: EntropySumELBO": (
        lambda: EntropySumELBO(warn_fixed_variance=False).update(
            enc_logvar=z(2, 3), dec_logvar=z(), x=z(3, 4)
        ),
        ValueError,
        "Expected one batch size B across the inputs of EntropySumELBO.update(), but got `encoder`: 2,"
        " `decoder`: 3, `x`: 3.",
    ),
    "batch: GaussianELBO": (
        lambda: GaussianELBO().update(
            x=z(3, 4), enc_mean=z(2, 3), enc_logvar=z(2, 3), dec_mean=z(3, 4), dec_logvar=z()
        ),
        ValueError,
        "Expected one batch size B across the inputs of GaussianELBO.update(), but got `encoder`: 2,"
        " `decoder`: 3, `x`: 3.",
    ),
    # ---- dtypes and types
    "non-tensor": (
        lambda: F.encoder_entropy(enc_logvar=[[0.0]]),
        TypeError,
        "Expected `enc_logvar` to be a torch.Tensor, but got list.",
    ),
    "non-tensor list": (  # a Python float or int is a fixed log-variance; a list is not
        lambda: F.decoder_entropy(dec_logvar=[0.5], x=z(2, 3)),
        TypeError,
        "Expected `dec_logvar` to be a torch.Tensor, but got list.",
    ),
    "integer enc_logvar": (
        lambda: F.encoder_entropy(enc_logvar=torch.zeros(2, 3, dtype=torch.long)),
        TypeError,
        "Expected `enc_logvar` to be a floating-point tensor, but got dtype torch.int64.",
    ),
    "integer x": (
        lambda: F.decoder_entropy(dec_logvar=z(), x=torch.zeros(2, 3, dtype=torch.uint8)),
        TypeError,
        "Expected `x` to be a floating-point tensor, but got dtype torch.uint8.",
    ),
    "bool dec_mean": (
        lambda: F.gaussian_log_likelihood(x=z(2, 3), dec_mean=torch.zeros(2, 3, dtype=torch.bool), dec_logvar=z()),
        TypeError,
        "Expected `dec_mean` to be a floating-point tensor, but got dtype torch.bool.",
    ),
    "posterior not a distribution": (
        lambda: F.encoder_entropy(posterior=z(2, 3)),
        TypeError,
        "Expected `posterior` to be a torch.distributions.Distribution, or an object with a `.mean` and a"
        " `.logvar` (or `.var`, `.std`, `.scale`) tensor, but got Tensor.",
    ),
    "likelihood Poisson": (
        lambda: F.decoder_entropy(likelihood=Poisson(z(2, 3) + 0.5)),
        TypeError,
        f"Expected a `likelihood` with a constant base measure ({LIKELIHOODS}), but got Poisson. The entropy-sum"
        " result does not hold for a Poisson likelihood: its base measure depends on x, so the expected"
        " log-likelihood is not minus an expected entropy at stationary points (Warnken et al., arXiv 2501.09022,"
        " replace it by pseudo-entropies).",
    ),
    "likelihood Independent(Bernoulli) in gaussian_elbo": (
        lambda: F.gaussian_elbo(
            x=z(2, 3), enc_mean=z(2, 1), enc_logvar=z(2, 1), likelihood=Independent(Bernoulli(probs=z(2, 3) + 0.5), 1)
        ),
        ValueError,
        "gaussian_elbo() computes the ELBO of a Gaussian decoder, but got a Bernoulli decoder (`dec_logits`,"
        " `dec_probs` or a Bernoulli `likelihood`). Call bernoulli_elbo() for it, or elbo(), which reads the"
        " decoder from the inputs.",
    ),
    "likelihood StudentT": (
        lambda: F.decoder_entropy(likelihood=StudentT(3.0, z(2, 3), z(2, 3) + 1.0)),
        TypeError,
        f"Expected a `likelihood` the entropy-sum result covers ({LIKELIHOODS}), but got StudentT, which is not"
        " supported.",
    ),
    "posterior Bernoulli": (
        lambda: F.encoder_entropy(posterior=Independent(Bernoulli(probs=z(2, 3) + 0.5), 1)),
        TypeError,
        f"Expected a Gaussian `posterior` {GAUSSIANS}, but got Bernoulli. The three-entropies result covers"
        " Gaussian encoders only.",
    ),
    "prior Bernoulli": (
        lambda: F.prior_entropy(prior=Bernoulli(probs=z(3) + 0.5)),
        TypeError,
        f"Expected a Gaussian `prior` {GAUSSIANS}, but got Bernoulli. The three-entropies result covers"
        " Gaussian priors only.",
    ),
    # ---- function arguments
    "reduction": (
        lambda: F.encoder_entropy(enc_logvar=z(2, 3), reduction="avg"),
        ValueError,
        "Expected `reduction` to be one of 'mean', 'sum', 'none', but got 'avg'.",
    ),
    "reduction of the ELBO": (
        lambda: F.gaussian_elbo(
            x=z(2, 4), enc_mean=z(2, 3), enc_logvar=z(2, 3), dec_mean=z(2, 4), dec_logvar=z(), reduction=None
        ),
        ValueError,
        "Expected `reduction` to be one of 'mean', 'sum', 'none', but got None.",
    ),
    "gaussian_entropy neither": (
        lambda: F.gaussian_entropy(),
        ValueError,
        "Expected exactly one of `logvar` and `covariance`, but got neither.",
    ),
    "gaussian_entropy both": (
        lambda: F.gaussian_entropy(z(3), covariance=torch.eye(3)),
        ValueError,
        "Expected exactly one of `logvar` and `covariance`, but got both.",
    ),
    "covariance shape": (
        lambda: F.gaussian_entropy(covariance=z(3, 4)),
        ValueError,
        "Expected `covariance` of shape (..., K, K), but got (3, 4).",
    ),
    "criterion": (
        lambda: F.collapsed_latents(z(3), criterion="entropyy"),
        ValueError,
        "Expected `criterion` to be one of ('entropy', 'kl', 'active_units'), but got 'entropyy'.",
    ),
    "criterion of posterior_collapse": (
        lambda: F.posterior_collapse(enc_mean=z(2, 3), enc_logvar=z(2, 3), criterion="KL"),
        ValueError,
        "Expected `criterion` to be one of ('entropy', 'kl', 'active_units'), but got 'KL'.",
    ),
    "threshold str": (
        lambda: F.collapsed_latents(z(3), threshold="1"),
        TypeError,
        "Expected `threshold` to be a finite number, but got '1'.",
    ),
    "threshold nan": (
        lambda: F.collapsed_latents(z(3), threshold=math.nan),
        ValueError,
        "Expected `threshold` to be a finite number, but got nan.",
    ),
    "threshold bool": (
        lambda: F.posterior_collapse(enc_mean=z(2, 3), enc_logvar=z(2, 3), threshold=True),
        TypeError,
        "Expected `threshold` to be a finite number, but got True.",
    ),
    "collapsed_latents entropy": (
        lambda: F.collapsed_latents(None),
        ValueError,
        "collapsed_latents(criterion='entropy') needs `latent_entropy`, but got None.",
    ),
    "collapsed_latents kl": (
        lambda: F.collapsed_latents(z(3), criterion="kl"),
        ValueError,
        "collapsed_latents(criterion='kl') needs `latent_kl`, but got None.",
    ),
    "collapsed_latents active_units": (
        lambda: F.collapsed_latents(z(3), criterion="active_units"),
        ValueError,
        "collapsed_latents(criterion='active_units') needs `latent_mean_variance`, but got None.",
    ),
    "bic negative k": (
        lambda: F.bic(z(), -1, 10),
        ValueError,
        "Expected `num_parameters` to be a non-negative int, but got -1.",
    ),
    "bic float k": (
        lambda: F.bic(z(), 2.0, 10),
        ValueError,
        "Expected `num_parameters` to be a non-negative int, but got 2.0.",
    ),
    "bic bool k": (
        lambda: F.bic(z(), True, 10),
        ValueError,
        "Expected `num_parameters` to be a non-negative int, but got True.",
    ),
    "bic zero N": (
        lambda: F.bic(z(), 1, 0),
        ValueError,
        "Expected `num_points` to be a positive int, but got 0.",
    ),
    "bic bool N": (
        lambda: F.bic(z(), 1, True),
        ValueError,
        "Expected `num_points` to be a positive int, but got True.",
    ),
    "bic float N": (
        lambda: F.bic(z(), 1, 10.0),
        ValueError,
        "Expected `num_points` to be a positive int, but got 10.0.",
    ),
    # ---- metric arguments and inputs
    "nan_strategy": (
        lambda: EncoderEntropy(nan_strategy="drop"),
        ValueError,
        "Expected `nan_strategy` to be one of ('skip', 'ignore', 'error'), but got 'drop'.",
    ),
    "nan_strategy of EntropySumELBO": (
        lambda: EntropySumELBO(nan_strategy=None),
        ValueError,
        "Expected `nan_strategy` to be one of ('skip', 'ignore', 'error'), but got None.",
    ),
    "positional non-mapping": (
        lambda: EncoderEntropy().update([1]),
        TypeError,
        "EncoderEntropy.update() takes a mapping of the vocabulary"
        " (a dict or VAEOutput) or keyword arguments,"
        " but got a positional list.",
    ),
    "positional tensor": (
        lambda: PosteriorCollapse(3).update(z(2, 3)),
        TypeError,
        "PosteriorCollapse.update() takes a mapping of the"
        " vocabulary (a dict or VAEOutput) or keyword arguments,"
        " but got a positional Tensor.",
    ),
    "elbo shape": (
        lambda: GaussianELBO().update(elbo=z(2, 1)),
        ValueError,
        "Expected `elbo` of shape (B,) (one ELBO per sample), but got (2, 1).",
    ),
    "latent_dim zero": (
        lambda: PosteriorCollapse(latent_dim=0),
        ValueError,
        "Expected `latent_dim` to be a positive int, but got 0.",
    ),
    "latent_dim bool": (
        lambda: PosteriorCollapse(latent_dim=True),
        ValueError,
        "Expected `latent_dim` to be a positive int, but got True.",
    ),
    "latent_dim float": (
        lambda: PosteriorCollapse(latent_dim=3.0),
        ValueError,
        "Expected `latent_dim` to be a positive int, but got 3.0.",
    ),
    "PosteriorCollapse criterion": (
        lambda: PosteriorCollapse(3, criterion="x"),
        ValueError,
        "Expected `criterion` to be one of ('entropy', 'kl', 'active_units'), but got 'x'.",
    ),
    "PosteriorCollapse threshold": (
        lambda: PosteriorCollapse(3, threshold="x"),
        TypeError,
        "Expected `threshold` to be a finite number, but got 'x'.",
    ),
    "PosteriorCollapse H": (
        lambda: PosteriorCollapse(3).update(enc_mean=z(2, 4), enc_logvar=z(2, 4)),
        ValueError,
        "Expected `enc_logvar` with H = latent_dim = 3 latents, but got 4.",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_error_message(name):
    call, error, message = CASES[name]
    with pytest.raises(error, match=_exact(message)):
        call()


EXAMPLE = (
    "Return the encoder and decoder statistics from your step, for example:\n"
    '    return {"loss": loss, "x": x, "enc_mean": mu, "enc_logvar": logvar,\n'
    '            "dec_mean": x_hat, "dec_logvar": self.dec_logvar,\n'
    '            "elbo": elbo}  # elbo: (B,) per-sample ELBO, optional'
)

# (call, the message's first sentence): missing inputs name what is needed and what was given
MISSING = {
    "encoder_entropy": (
        lambda: F.encoder_entropy(),
        "encoder_entropy() needs `enc_logvar` (or a `posterior` distribution), but got None.",
    ),
    "entropy_sum decoder": (
        lambda: F.entropy_sum(enc_logvar=z(2, 3)),
        "entropy_sum() needs `dec_logvar` (or a `likelihood` distribution), but got None.",
    ),
    "decoder_entropy": (
        lambda: F.decoder_entropy(x=z(2, 3)),
        "decoder_entropy() needs `dec_logvar` (or a `likelihood` distribution), but got None.",
    ),
    "decoder_entropy scalar without B": (
        lambda: F.decoder_entropy(dec_logvar=z()),
        "decoder_entropy() needs `x` or `dec_mean` to know the batch size and data dimension D of a scalar"
        " `dec_logvar`, but got None.",
    ),
    "decoder_entropy (B,1) without D": (
        lambda: F.decoder_entropy(dec_logvar=z(2, 1)),
        "decoder_entropy() needs `x` or `dec_mean` to know the batch"
        " size and data dimension D of a per_sample"
        " `dec_logvar`, but got None.",
    ),
    "gaussian_log_likelihood x": (
        lambda: F.gaussian_log_likelihood(x=None, dec_mean=z(2, 3), dec_logvar=z()),
        "gaussian_log_likelihood() needs `x`, but got None.",
    ),
    "gaussian_log_likelihood dec_mean": (
        lambda: F.gaussian_log_likelihood(x=z(2, 3), dec_mean=None, dec_logvar=z()),
        "gaussian_log_likelihood() needs `dec_mean` and `x`, but got None.",
    ),
    "gaussian_kl": (
        lambda: F.gaussian_kl(enc_mean=None, enc_logvar=z(2, 3)),
        "gaussian_kl() needs `enc_mean` and `enc_logvar` (or a `posterior`), but got None.",
    ),
    "gaussian_elbo x": (
        lambda: F.gaussian_elbo(x=None, enc_mean=z(2, 3), enc_logvar=z(2, 3), dec_mean=z(2, 4), dec_logvar=z()),
        "gaussian_elbo() needs `x`, but got None.",
    ),
    "gaussian_elbo x for likelihood": (
        lambda: F.gaussian_elbo(x=None, enc_mean=z(2, 3), enc_logvar=z(2, 3), likelihood=Normal(z(2, 4), 1.0)),
        "gaussian_elbo() needs `x` (the data the `likelihood` scores), but got None.",
    ),
    "gaussian_elbo enc_mean": (
        lambda: F.gaussian_elbo(x=z(2, 4), enc_mean=None, enc_logvar=z(2, 3), dec_mean=z(2, 4), dec_logvar=z()),
        "gaussian_elbo() needs `enc_mean` and `enc_logvar` (or a `posterior`), but got None.",
    ),
    "optimal_decoder_variance": (
        lambda: F.optimal_decoder_variance(x=z(2, 4), dec_mean=None),
        "optimal_decoder_variance() needs `x` and `dec_mean`, but got None.",
    ),
    "optimal_prior_variance": (
        lambda: F.optimal_prior_variance(enc_mean=None, enc_logvar=z(2, 3)),
        "optimal_prior_variance() needs `enc_mean` and `enc_logvar`, but got None.",
    ),
    "profiled_decoder_entropy": (
        lambda: F.profiled_decoder_entropy(x=None, dec_mean=z(2, 3)),
        "profiled_decoder_entropy() needs `x` and `dec_mean`, but got None.",
    ),
    "profiled_entropy_sum": (
        lambda: F.profiled_entropy_sum(x=z(2, 3), dec_mean=None, enc_logvar=z(2, 3)),
        "profiled_entropy_sum() needs `x` and `dec_mean`, but got None.",
    ),
    "latent_kl": (
        lambda: F.latent_kl(enc_mean=None, enc_logvar=z(2, 3)),
        "latent_kl() needs `enc_mean` and `enc_logvar` (or a `posterior`), but got None.",
    ),
    "latent_mean_variance": (
        lambda: F.latent_mean_variance(enc_mean=None),
        "latent_mean_variance() needs `enc_mean` (or a `posterior`), but got None.",
    ),
    "posterior_collapse": (
        lambda: F.posterior_collapse(enc_mean=None, enc_logvar=z(2, 3)),
        "posterior_collapse() needs `enc_mean` and `enc_logvar` (or a `posterior`), but got None.",
    ),
    # metrics name the keys they were given
    "EncoderEntropy": (
        lambda: EncoderEntropy().update({"x": z(2, 3), "dec_mean": z(2, 3)}),
        "EncoderEntropy.update() needs `enc_logvar` (or a `posterior` distribution), but got `x`,"
        " `dec_mean`.",
    ),
    "EncoderEntropy empty": (
        lambda: EncoderEntropy().update({}),
        "EncoderEntropy.update() needs `enc_logvar` (or a `posterior` distribution), but got nothing.",
    ),
    "PriorEntropy": (
        lambda: PriorEntropy().update(prior_logvar=z(3)),
        "PriorEntropy.update() needs `enc_logvar` (or a `posterior` distribution), but got `prior_logvar`.",
    ),
    "DecoderEntropy": (
        lambda: DecoderEntropy().update({"x": z(2, 3)}),
        "DecoderEntropy.update() needs `dec_logvar` (or a `likelihood` distribution), but got `x`.",
    ),
    "DecoderEntropy without B and D": (
        lambda: DecoderEntropy(warn_fixed_variance=False).update({"dec_logvar": z()}),
        "DecoderEntropy.update() needs `x` or `dec_mean` to know the"
        " batch size and data dimension D of a scalar"
        " `dec_logvar`, but got `dec_logvar`.",
    ),
    "DecoderEntropy data_dim without B": (
        lambda: DecoderEntropy(warn_fixed_variance=False).update({"dec_logvar": z(), "data_dim": 4}),
        "DecoderEntropy.update() needs `x` or `dec_mean` to know the"
        " batch size B of a scalar `dec_logvar`, but"
        " got `dec_logvar`, `data_dim`.",
    ),
    "EntropySumELBO": (
        lambda: EntropySumELBO().update(enc_logvar=z(2, 3), x=z(2, 4)),
        "EntropySumELBO.update() needs `dec_logvar` (or a `likelihood` distribution), but got"
        " `enc_logvar`, `x`.",
    ),
    "EntropySumELBO profiled": (
        lambda: EntropySumELBO(profile_decoder_variance=True).update(
            enc_logvar=z(2, 3), dec_logvar=z(), x=z(2, 4)
        ),
        "EntropySumELBO.update() with profile_decoder_variance=True needs `x` and `dec_mean` (or"
        " `dec_sq_residual`), but got `enc_logvar`, `dec_logvar`, `x`.",
    ),
    "GaussianELBO": (
        lambda: GaussianELBO().update(enc_mean=z(2, 3)),
        "GaussianELBO.update() needs `elbo` (B,), or `x` with the encoder and decoder statistics, but"
        " got `enc_mean`.",
    ),
    "GaussianELBO enc_mean": (
        lambda: GaussianELBO().update(x=z(2, 3), enc_logvar=z(2, 3)),
        "GaussianELBO.update() needs `enc_mean` and `enc_logvar` (or a `posterior`), but got"
        " `x`, `enc_logvar`.",
    ),
    "GaussianELBO dec_mean": (
        lambda: GaussianELBO().update(x=z(2, 3), enc_mean=z(2, 3), enc_logvar=z(2, 3), dec_logvar=z()),
        "GaussianELBO.update() needs `dec_mean` and `x`, but got"
        " `x`, `enc_mean`, `enc_logvar`, `dec_logvar`.",
    ),
    "PosteriorCollapse": (
        lambda: PosteriorCollapse(3).update(enc_logvar=z(2, 3)),
        "PosteriorCollapse.update() needs `enc_mean` and `enc_logvar` (or a `posterior`), but got"
        " `enc_logvar`.",
    ),
}


@pytest.mark.parametrize("name", list(MISSING))
def test_missing_inputs_message(name):
    call, first = MISSING[name]
    with pytest.raises(ValueError, match=_exact(first + " " + EXAMPLE)):
        call()


@pytest.mark.parametrize(
    ("metric", "inputs", "key"),
    [
        (EncoderEntropy, {"enc_logvar": z(2, 3) / 0}, "enc_logvar"),
        (PriorEntropy, {"enc_logvar": z(2, 3), "prior_logvar": z(3) / 0}, "prior_logvar"),
        (DecoderEntropy, {"dec_logvar": z(), "dec_mean": z(2, 3) / 0}, "dec_mean"),
        (DecoderEntropy, {"dec_logvar": torch.full((2, 3), float("inf")), "x": z(2, 3)}, "dec_logvar"),
        (
            EntropySumELBO,
            {"enc_logvar": z(2, 3), "dec_logvar": torch.tensor(float("nan")), "x": z(2, 4)},
            "dec_logvar",
        ),
        (EntropySumELBO, {"enc_logvar": z(2, 3), "dec_logvar": z(), "x": z(2, 4) / 0}, "x"),
        (GaussianELBO, {"elbo": z(2) / 0}, "elbo"),
        (
            GaussianELBO,
            {
                "x": z(2, 3),
                "enc_mean": z(2, 1),
                "enc_logvar": z(2, 1) / 0,
                "dec_mean": z(2, 3),
                "dec_logvar": z(),
            },
            "enc_logvar",
        ),
        (PosteriorCollapse, {"enc_mean": z(2, 3) / 0, "enc_logvar": z(2, 3)}, "enc_mean"),
    ],
)
def test_nan_strategy_error_names_the_key(metric, inputs, key):
    args = {"latent_dim": 3} if metric is PosteriorCollapse else {}
    if metric in (DecoderEntropy, EntropySumELBO):
        args["warn_fixed_variance"] = False
    message = (
        f"{metric.__name__}.update() got non-finite values (NaN or Inf) in `{key}`. Expected finite"
        " tensors; use nan_strategy='skip' to skip such batches instead."
    )
    with pytest.raises(ValueError, match=_exact(message)):
        metric(nan_strategy="error", **args).update(inputs)


def test_private_checks_behind_the_public_ones():
    """Defensive branches that the public API's earlier checks make unreachable still read well."""
    with pytest.raises(
        ValueError, match=_exact("f() needs tensors with a batch dimension, but got None. " + EXAMPLE)
    ):
        _checks.check_batch("f()", encoder=None)
    with pytest.raises(
        ValueError,
        match=_exact("Expected one batch size B across the inputs of f(), but got `encoder`: 2, `x`: 3."),
    ):
        _checks.check_batch("f()", encoder=2, decoder=None, x=3)
    assert _checks.check_batch("f()", encoder=2, decoder=2, x=None) == 2
    flat_x = _inputs.Data(z(3, 4), z(3, 4), 3, None)  # a batch size without the per-sample shape
    with pytest.raises(
        ValueError, match=_exact("Expected `dec_mean` with batch size 3 matching `x`, but got (2, 4).")
    ):
        _inputs.decoder(z(2, 4), z(), None, flat_x, owner="f()")


# ---- keyword-only vocabulary: a misspelt keyword, a positional tensor, a step's whole output
def _step_output(b=4, h=3, d=5):
    """A step's output dict: every tensor name of the vocabulary, ``data_dim`` and the loss."""
    gen = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64)

    x, dec_mean = randn(b, d), randn(b, d)
    return {
        "loss": randn(),
        "x": x,
        "enc_mean": randn(b, h),
        "enc_logvar": randn(b, h) - 1.0,
        "dec_mean": dec_mean,
        "dec_logvar": randn() - 1.0,
        "prior_logvar": randn(h),
        "elbo": randn(b),
        "data_dim": d,
        "dec_sq_residual": (x - dec_mean).square().sum(-1),
    }


# each public vocabulary function and the keys of a step's output it reads
NEEDS = {
    "encoder_entropy": ("enc_logvar",),
    "prior_entropy": ("prior_logvar",),
    "decoder_entropy": ("dec_logvar", "x"),
    "entropy_sum": ("enc_logvar", "dec_logvar", "prior_logvar", "x"),
    "gaussian_log_likelihood": ("x", "dec_mean", "dec_logvar"),
    "gaussian_kl": ("enc_mean", "enc_logvar", "prior_logvar"),
    "gaussian_elbo": ("x", "enc_mean", "enc_logvar", "dec_mean", "dec_logvar", "prior_logvar"),
    "elbo": ("x", "enc_mean", "enc_logvar", "dec_mean", "dec_logvar", "prior_logvar"),
    "latent_entropy": ("enc_logvar",),
    "latent_kl": ("enc_mean", "enc_logvar", "prior_logvar"),
    "latent_mean_variance": ("enc_mean",),
    "posterior_collapse": ("enc_mean", "enc_logvar", "prior_logvar"),
    "optimal_decoder_variance": ("x", "dec_mean"),
    "optimal_prior_variance": ("enc_mean", "enc_logvar"),
    "profiled_decoder_entropy": ("x", "dec_mean"),
    "profiled_entropy_sum": ("x", "dec_mean", "enc_logvar", "prior_logvar"),
}

_REDUCTOIN = "`reductoin` (did you mean `reduction`?)"
_PRIOR_LOG_VAR = "`prior_log_var` (did you mean `prior_logvar`?)"
# (the misspelt keyword, the whole message): `reductoin` where the function has `reduction`, else `prior_log_var`
MISSPELT = {
    "encoder_entropy": (
        "reductoin",
        f"encoder_entropy() got unexpected keyword argument(s) {_REDUCTOIN}. Expected enc_logvar, posterior,"
        " reduction or names of the vocabulary.",
    ),
    "prior_entropy": (
        "prior_log_var",
        f"prior_entropy() got unexpected keyword argument(s) {_PRIOR_LOG_VAR}. Expected prior_logvar, latent_dim,"
        " prior, enc_logvar, enc_mean, posterior or names of the vocabulary.",
    ),
    "decoder_entropy": (
        "reductoin",
        f"decoder_entropy() got unexpected keyword argument(s) {_REDUCTOIN}. Expected dec_logvar, dec_mean, x,"
        " likelihood, reduction or names of the vocabulary.",
    ),
    "entropy_sum": (
        "reductoin",
        f"entropy_sum() got unexpected keyword argument(s) {_REDUCTOIN}. Expected enc_logvar, dec_logvar,"
        " prior_logvar, dec_mean, x, posterior, prior, likelihood, data_dim, reduction or names of the vocabulary.",
    ),
    "gaussian_log_likelihood": (
        "reductoin",
        f"gaussian_log_likelihood() got unexpected keyword argument(s) {_REDUCTOIN}. Expected x, dec_mean,"
        " dec_logvar, likelihood, reduction or names of the vocabulary.",
    ),
    "gaussian_kl": (
        "reductoin",
        f"gaussian_kl() got unexpected keyword argument(s) {_REDUCTOIN}. Expected enc_mean, enc_logvar,"
        " prior_logvar, posterior, prior, reduction or names of the vocabulary.",
    ),
    "gaussian_elbo": (
        "reductoin",
        f"gaussian_elbo() got unexpected keyword argument(s) {_REDUCTOIN}. Expected x, enc_mean, enc_logvar,"
        " dec_mean, dec_logvar, prior_logvar, posterior, prior, likelihood, reduction or names of the vocabulary.",
    ),
    "elbo": (
        "reductoin",
        f"elbo() got unexpected keyword argument(s) {_REDUCTOIN}. Expected x, enc_mean, enc_logvar, dec_mean,"
        " dec_logvar, dec_logits, dec_class_logits, dec_probs, prior_logvar, posterior, prior, likelihood, reduction"
        " or names of the vocabulary.",
    ),
    "latent_entropy": (
        "prior_log_var",
        f"latent_entropy() got unexpected keyword argument(s) {_PRIOR_LOG_VAR}. Expected enc_logvar, posterior"
        " or names of the vocabulary.",
    ),
    "latent_kl": (
        "prior_log_var",
        f"latent_kl() got unexpected keyword argument(s) {_PRIOR_LOG_VAR}. Expected enc_mean, enc_logvar,"
        " prior_logvar, posterior, prior, reduction or names of the vocabulary.",
    ),
    "latent_mean_variance": (
        "prior_log_var",
        f"latent_mean_variance() got unexpected keyword argument(s) {_PRIOR_LOG_VAR}. Expected enc_mean,"
        " posterior or names of the vocabulary.",
    ),
    "posterior_collapse": (
        "prior_log_var",
        f"posterior_collapse() got unexpected keyword argument(s) {_PRIOR_LOG_VAR}. Expected enc_mean,"
        " enc_logvar, prior_logvar, posterior, prior, criterion, threshold or names of the vocabulary.",
    ),
    "optimal_decoder_variance": (
        "prior_log_var",
        f"optimal_decoder_variance() got unexpected keyword argument(s) {_PRIOR_LOG_VAR}. Expected x, dec_mean"
        " or names of the vocabulary.",
    ),
    "optimal_prior_variance": (
        "prior_log_var",
        f"optimal_prior_variance() got unexpected keyword argument(s) {_PRIOR_LOG_VAR}. Expected enc_mean,"
        " enc_logvar or names of the vocabulary.",
    ),
    "profiled_decoder_entropy": (
        "prior_log_var",
        f"profiled_decoder_entropy() got unexpected keyword argument(s) {_PRIOR_LOG_VAR}. Expected x, dec_mean"
        " or names of the vocabulary.",
    ),
    "profiled_entropy_sum": (
        "prior_log_var",
        f"profiled_entropy_sum() got unexpected keyword argument(s) {_PRIOR_LOG_VAR}. Expected x, dec_mean,"
        " enc_logvar, prior_logvar, posterior, prior or names of the vocabulary.",
    ),
}


def test_every_public_vocabulary_function_is_checked():
    """The three tests below cover each public function that takes the vocabulary (all but four)."""
    not_vocabulary = {"gaussian_entropy", "collapsed_latents", "bic", "relative_gap", "fixed_decoder_variance",
                      "mse_convention", "MSEConvention", "bernoulli_log_likelihood",
                      "batch_means"}  # sizes; (x, probs); a series
    # the step output here has a Gaussian decoder; tests/test_discrete_decoders.py checks these two the same way
    other_decoders = {"bernoulli_elbo", "categorical_elbo"}
    functions = {name for name in F.__all__ if callable(getattr(F, name))} - not_vocabulary - other_decoders
    assert set(NEEDS) == functions
    assert set(MISSPELT) == functions


@pytest.mark.parametrize("name", list(MISSPELT))
def test_misspelt_keyword_names_it_and_suggests_the_right_one(name):
    out = _step_output()
    keyword, message = MISSPELT[name]
    inputs = {key: out[key] for key in NEEDS[name]}
    value = "sum" if keyword == "reductoin" else out["prior_logvar"]
    with pytest.raises(TypeError, match=_exact(message)):
        getattr(F, name)(**inputs, **{keyword: value})


@pytest.mark.parametrize("name", list(NEEDS))
def test_positional_tensor_is_a_type_error(name):
    out = _step_output()
    first = out[NEEDS[name][0]]
    with pytest.raises(TypeError, match=_exact(f"{name}() takes 0 positional arguments but 1 was given")):
        getattr(F, name)(first)
    # with the other inputs as keywords Python's message also counts them ("... (and 2 keyword-only arguments)")
    inputs = {key: out[key] for key in NEEDS[name][1:]}
    with pytest.raises(TypeError, match="^" + re.escape(f"{name}() takes 0 positional arguments but 1 ")):
        getattr(F, name)(first, **inputs)


@pytest.mark.parametrize("name", list(NEEDS))
def test_a_step_output_with_the_loss_feeds_every_function(name):
    """``f(**out)`` ignores the vocabulary it does not use (and ``loss``): the value of ``f`` on its own keys."""
    out = _step_output()
    function = getattr(F, name)
    value, expected = function(**out), function(**{key: out[key] for key in NEEDS[name]})
    if name == "posterior_collapse":
        assert set(value) == set(expected)
        for key in expected:
            if expected[key].dtype == torch.bool:
                assert torch.equal(value[key], expected[key])
            else:
                torch.testing.assert_close(value[key], expected[key], rtol=0, atol=0, equal_nan=True)
    else:
        assert value.dtype == torch.float64
        torch.testing.assert_close(value, expected, rtol=0, atol=0)
