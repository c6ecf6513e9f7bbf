"""Pure-torch functions for the three-entropies ELBO of VAEs (no Lightning import).

The encoder and the prior are Gaussian; the decoder is Gaussian (``dec_mean``/``dec_logvar``, Damm et al., AISTATS
2023), Bernoulli (``dec_logits``, or its probabilities ``dec_probs``) or categorical (``dec_class_logits``) (Warnken
et al., arXiv 2501.09022), one per step. Every function takes the package's vocabulary as keyword-only arguments
(``enc_mean``, ``enc_logvar``, ``dec_mean``, ``dec_logvar``, ``dec_logits``, ``dec_class_logits``, ``dec_probs``,
``prior_logvar``, ``x``, ``elbo``, ``posterior``, ``prior``, ``likelihood``). Vocabulary names a function does not
need are accepted and ignored, so a dict of the vocabulary (a step's output, ``loss`` included) feeds them all; any
other keyword, such as a misspelt ``reductoin`` or ``prior_log_var``, raises ``TypeError``::

    out = model.step(x)                      # a dict of the vocabulary
    F.entropy_sum(**out), F.elbo(**out)      # any decoder; F.gaussian_elbo(**out) for a Gaussian one

The entropies and :func:`elbo` read the decoder from the inputs; :func:`gaussian_elbo`, :func:`bernoulli_elbo` and
:func:`categorical_elbo` take one kind and name the right function for another; the stationary variance and the
profiled entropies are defined for Gaussian decoders only.

All values are nats per data point, computed in float32 or wider. Each quantity is implemented once:
``_<name>_update`` gives its per-sample sufficient statistic, ``_<name>_compute`` the value from their
sum, and the metrics of :mod:`lightning_entropy_vae.metrics` call the same two.
"""

from lightning_entropy_vae.functional._checks import LOG_2PI_E, VOCABULARY
from lightning_entropy_vae.functional.batch_means import batch_means
from lightning_entropy_vae.functional.collapse import (
    COLLAPSE_CRITERIA,
    DEFAULT_THRESHOLDS,
    collapsed_latents,
    latent_entropy,
    latent_kl,
    latent_mean_variance,
    posterior_collapse,
)
from lightning_entropy_vae.functional.discrete import bernoulli_elbo, categorical_elbo
from lightning_entropy_vae.functional.elbo import (
    elbo,
    gaussian_elbo,
    gaussian_kl,
    gaussian_log_likelihood,
    relative_gap,
)
from lightning_entropy_vae.functional.entropy import (
    decoder_entropy,
    encoder_entropy,
    entropy_sum,
    prior_entropy,
)
from lightning_entropy_vae.functional.gaussian import gaussian_entropy
from lightning_entropy_vae.functional.loss_conventions import (
    MSE_RECONSTRUCTIONS,
    MSEConvention,
    bernoulli_log_likelihood,
    mse_convention,
)
from lightning_entropy_vae.functional.model_selection import bic
from lightning_entropy_vae.functional.stationary import (
    fixed_decoder_variance,
    optimal_decoder_variance,
    optimal_prior_variance,
    profiled_decoder_entropy,
    profiled_entropy_sum,
)

__all__ = [
    "COLLAPSE_CRITERIA",
    "DEFAULT_THRESHOLDS",
    "LOG_2PI_E",
    "MSE_RECONSTRUCTIONS",
    "VOCABULARY",
    "MSEConvention",
    "batch_means",
    "bernoulli_elbo",
    "bernoulli_log_likelihood",
    "bic",
    "categorical_elbo",
    "collapsed_latents",
    "decoder_entropy",
    "elbo",
    "encoder_entropy",
    "entropy_sum",
    "fixed_decoder_variance",
    "gaussian_elbo",
    "gaussian_entropy",
    "gaussian_kl",
    "gaussian_log_likelihood",
    "latent_entropy",
    "latent_kl",
    "latent_mean_variance",
    "mse_convention",
    "optimal_decoder_variance",
    "optimal_prior_variance",
    "posterior_collapse",
    "prior_entropy",
    "profiled_decoder_entropy",
    "profiled_entropy_sum",
    "relative_gap",
]
