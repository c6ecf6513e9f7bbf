r"""Log-likelihoods and entropies of Bernoulli and categorical decoders, per data point (private).

One formula per family, the cross term of a distribution's log-probabilities with weights: the log-likelihood
weighs them with the data, the entropy with the distribution's own probabilities,

.. math::

    \log p(x|z) = \sum_d x_d \log p_d + (1 - x_d) \log(1 - p_d), \qquad
    \mathcal{H}[p(\cdot|z)] = -\sum_d p_d \log p_d + (1 - p_d) \log(1 - p_d)

for Bernoulli, and :math:`\sum_d \sum_c x_{dc} \log \pi_{dc}` (an index ``x`` picks :math:`\log\pi_{d,x_d}`),
:math:`-\sum_d \sum_c \pi_{dc} \log \pi_{dc}` for categorical. From logits :math:`\eta` the log-probabilities are
:math:`\log\sigma(\pm\eta)` and :math:`\operatorname{log\_softmax}(\eta)`, finite for any finite logit, so that the
entropy is :math:`\operatorname{softplus}(\eta) - \sigma(\eta)\eta` and :math:`\operatorname{logsumexp}(\eta) -
\sum_c \operatorname{softmax}(\eta)_c \eta_c` without overflow. From probabilities (``dec_probs``) the logs are
clamped at -100, as ``torch.nn.functional.binary_cross_entropy`` clamps them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: ``torch.nn.functional.binary_cross_entropy`` clamps its logs at -100.
BCE_LOG_FLOOR = -100.0


def bernoulli_cross(a: Tensor, b: Tensor, log_p: Tensor, log_q: Tensor) -> Tensor:
    r"""Elementwise :math:`a \log p + b \log(1 - p)`: ``a = x, b = 1 - x`` gives the log-likelihood of ``x``,
    ``a = p, b = 1 - p`` minus the entropy."""
    return a * log_p + b * log_q


def categorical_cross(x: Tensor, log_probs: Tensor) -> Tensor:
    r"""Per data dimension :math:`\sum_c x_c \log\pi_c` over the last dimension of ``log_probs`` (..., D, C); an
    integer ``x`` (..., D) picks :math:`\log\pi_{x}`. ``x`` broadcasts against the leading z-samples."""
    if not x.is_floating_point():
        index = x.long().unsqueeze(-1).expand(*log_probs.shape[:-1], 1)
        return log_probs.gather(-1, index).squeeze(-1)
    return (x * log_probs).sum(-1)


def _finite(log_probs: Tensor) -> Tensor:
    """Log-probabilities with -inf (a logit of -inf) at the dtype's lowest value, so that 0 * log 0 is 0."""
    return log_probs.clamp_min(torch.finfo(log_probs.dtype).min)


def bernoulli_logs(layout: str, params: Tensor) -> tuple[Tensor, Tensor]:
    """``(log p, log(1 - p))`` from logits (``"bernoulli"``) or from probabilities (``"bernoulli_probs"``)."""
    if layout == "bernoulli":
        return _finite(F.logsigmoid(params)), _finite(F.logsigmoid(-params))
    return params.log().clamp_min(BCE_LOG_FLOOR), torch.log1p(-params).clamp_min(BCE_LOG_FLOOR)


def _per_point(values: Tensor, lead: int) -> Tensor:
    """Sum over the data dimensions; the mean over the z-samples of an ``(S, B, D)`` input: shape (B,)."""
    total = values.sum(-1)
    return total.mean(0) if lead == 2 else total


def log_likelihood(layout: str, params: Tensor, lead: int, x: Tensor) -> Tensor:
    """Per-point log-likelihood (B,) of the flattened data ``x`` (B, D) (``(B, D, C)`` vectors or ``(B, D)`` class
    indices for a categorical decoder), averaged over the z-samples."""
    if layout == "categorical":
        return _per_point(categorical_cross(x, _finite(torch.log_softmax(params, -1))), lead)
    x = x.to(params.dtype) if x.dtype != params.dtype else x
    log_p, log_q = bernoulli_logs(layout, params)
    return _per_point(bernoulli_cross(x, 1.0 - x, log_p, log_q), lead)


def entropy(layout: str, params: Tensor, lead: int) -> Tensor:
    """Per-point decoder entropy (B,): summed over the data dimensions, averaged over the z-samples."""
    if layout == "categorical":
        log_probs = _finite(torch.log_softmax(params, -1))
        return _per_point(-categorical_cross(log_probs.exp(), log_probs), lead)
    log_p, log_q = bernoulli_logs(layout, params)
    p, q = (torch.sigmoid(params), torch.sigmoid(-params)) if layout == "bernoulli" else (params, 1.0 - params)
    return _per_point(-bernoulli_cross(p, q, log_p, log_q), lead)
