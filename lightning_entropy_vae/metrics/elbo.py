r"""TorchMetrics metric for the sampled minibatch ELBO, averaged over data points."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch  # noqa: F401  (doctest namespace)
from torch import Tensor

from lightning_entropy_vae.functional import _inputs as _in
from lightning_entropy_vae.functional._checks import as_float_tensor, check_batch, missing_inputs_error
from lightning_entropy_vae.functional.elbo import _gaussian_elbo_update
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
    ``prior_logvar`` (or ``posterior``/``prior``/``likelihood``). An optional ``weight`` ``(B,)`` weighs
    the points (0 drops a point, NaN-safe).

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

    def update(self, outputs: Mapping[str, Any] | None = None, /, *, weight: Tensor | None = None,
               **kwargs: Any) -> None:
        owner = "GaussianELBO.update()"
        kw = merge_inputs(owner, outputs, kwargs)
        elbo = kw.get("elbo")
        if elbo is not None:
            elbo = as_float_tensor("elbo", elbo)
            if elbo.dim() != 1:
                raise ValueError(f"Expected `elbo` of shape (B,) (one ELBO per sample), but got {tuple(elbo.shape)}.")
            if self.nan_strategy == "error":
                self._check_finite({"elbo": elbo}, weight)
        else:
            elbo = self._elbo_from_pieces(owner, kw, weight)
        self._accumulate(lambda per_sample: [elbo if per_sample else elbo.sum()], (), elbo.shape[0], elbo, weight)

    def _elbo_from_pieces(self, owner: str, kw: Mapping[str, Any], weight: Tensor | None) -> Tensor:
        d = _in.data(kw.get("x"))
        if d.x is None:
            raise missing_inputs_error(owner, "`elbo` (B,), or `x` with the encoder and decoder statistics", kw)
        enc = _in.encoder(kw.get("enc_mean"), kw.get("enc_logvar"), kw.get("posterior"), owner=owner, given=kw)
        if enc.mean is None:
            raise missing_inputs_error(owner, "`enc_mean` and `enc_logvar` (or a `posterior`)", kw)
        batch, latent_dim = enc.logvar.shape
        p = _in.prior(kw.get("prior_logvar"), kw.get("prior"), latent_dim=latent_dim, batch=batch,
                     check_rows=False)
        dec = _in.decoder(kw.get("dec_mean"), kw.get("dec_logvar"), kw.get("likelihood"), d, owner=owner,
                          need_mean=True, given=kw)
        check_batch(owner, encoder=batch, decoder=dec.batch_size, x=d.batch_size)
        if self.nan_strategy == "error":
            self._check_finite({"x": d.x, "enc_mean": enc.mean, "enc_logvar": enc.logvar, "dec_mean": dec.mean,
                                "dec_logvar": dec.logvar, "prior_logvar": p.logvar}, weight)
        return _gaussian_elbo_update(enc, p, dec, d)

    def compute(self) -> Tensor:
        (elbo,), count = self._totals()
        return elbo / count

    def plot(self, val: Any = None, ax: Any = None) -> Any:
        """Plot the value (or a list of values) with TorchMetrics' plotting helper."""
        return self._plot(val, ax)
