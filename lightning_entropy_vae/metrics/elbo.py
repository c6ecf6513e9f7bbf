r"""TorchMetrics metric for the sampled minibatch ELBO, averaged over data points."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch  # noqa: F401  (doctest namespace)
from torch import Tensor

from lightning_entropy_vae.functional import _inputs as _in
from lightning_entropy_vae.functional.elbo import _kl_per_sample, _log_likelihood_per_sample
from lightning_entropy_vae.metrics._base import SumAndCountMetric, merge_inputs

__all__ = ["GaussianELBO"]


class GaussianELBO(SumAndCountMetric):
    r"""Mean minibatch ELBO over data points: the user's ``elbo`` or one computed from the pieces.

    .. math::

        \frac1N\sum_n \left[\frac1S\sum_s\log\mathcal{N}(x_n;\mu(z_{n,s}),\sigma^2(z_{n,s}))
        - \mathrm{KL}(q(z|x_n)\,\|\,p(z))\right]

    ``update`` takes the vocabulary. If ``elbo`` (shape ``(B,)``) is present it is used as is (report
    the beta = 1 ELBO there when training with beta != 1 or KL annealing); otherwise the Gaussian
    ELBO is computed from ``x``, ``enc_mean``, ``enc_logvar``, ``dec_mean``, ``dec_logvar`` and
    ``prior_logvar`` (or ``posterior``/``prior``/``likelihood``).

    Example (a plain PyTorch loop):
        >>> metric = GaussianELBO()
        >>> metric.update(elbo=torch.tensor([-1.0, -3.0]))
        >>> metric.update(x=torch.zeros(2, 3), enc_mean=torch.zeros(2, 1), enc_logvar=torch.zeros(2, 1),
        ...               dec_mean=torch.zeros(2, 3), dec_logvar=torch.tensor(0.0))
        >>> metric.compute()  # (-1 - 3 - 2 * 2.7568) / 4
        tensor(-2.3784)
    """

    higher_is_better = True
    _prefix = "gaussian_elbo"

    def __init__(self, nan_strategy: str = "skip", **kwargs: Any) -> None:
        super().__init__(nan_strategy, **kwargs)
        self._add_sum_states(1)

    def update(self, outputs: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
        owner = "GaussianELBO.update()"
        kw = merge_inputs(owner, outputs, kwargs)
        elbo = kw.get("elbo")
        if elbo is not None:
            elbo = _in.as_float_tensor("elbo", elbo)
            if elbo.dim() != 1:
                raise ValueError(f"Expected `elbo` of shape (B,) (one ELBO per sample), but got {tuple(elbo.shape)}.")
            if self.nan_strategy == "error":
                self._check_finite({"elbo": elbo})
            self._accumulate(elbo.sum().reshape(1), elbo.shape[0])
            return
        d = _in.data(kw.get("x"))
        if d.x is None:
            raise _in.missing_inputs_error(owner, "`elbo` (B,), or `x` with the encoder and decoder statistics", kw)
        enc = _in.encoder(
            kw.get("enc_mean"), kw.get("enc_logvar"), kw.get("posterior"), owner=owner, given=kw
        )
        if enc.mean is None:
            raise _in.missing_inputs_error(owner, "`enc_mean` and `enc_logvar` (or a `posterior`)", kw)
        batch, latent_dim = enc.logvar.shape
        p = _in.prior(kw.get("prior_logvar"), kw.get("prior"), latent_dim=latent_dim, batch=batch)
        dec = _in.decoder(kw.get("dec_mean"), kw.get("dec_logvar"), kw.get("likelihood"), d, owner=owner,
                          need_mean=True, given=kw)
        _in.check_batch(owner, encoder=enc.logvar.shape[0], decoder=dec.batch_size, x=d.batch_size)
        if self.nan_strategy == "error":
            named = {"x": d.x, "enc_mean": enc.mean, "enc_logvar": enc.logvar, "dec_mean": dec.mean,
                     "dec_logvar": dec.logvar, "prior_logvar": p.logvar}
            self._check_finite({k: v for k, v in named.items() if v is not None})
        per_sample = _log_likelihood_per_sample(dec, d) - _kl_per_sample(enc, p, kw.get("posterior"))
        self._accumulate(per_sample.sum().reshape(1), d.batch_size)

    def compute(self) -> Tensor:
        totals, count = self._totals()
        return totals[0] / count

    def plot(self, val: Any = None, ax: Any = None) -> Any:
        """Plot the value (or a list of values) with TorchMetrics' plotting helper."""
        return self._plot(val, ax)
