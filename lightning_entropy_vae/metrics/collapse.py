r"""TorchMetrics metric for per-latent posterior-collapse statistics and flags."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from lightning_entropy_vae.functional import _inputs as _in
from lightning_entropy_vae.functional._checks import missing_inputs_error
from lightning_entropy_vae.functional.collapse import (
    LATENT_ROWS,
    _check_criterion,
    _latent_statistics_compute,
    _latent_statistics_update,
)
from lightning_entropy_vae.metrics._base import SumAndCountMetric, merge_inputs, require_matplotlib

__all__ = ["PosteriorCollapse"]


class PosteriorCollapse(SumAndCountMetric):
    r"""Per-latent average encoder entropy, KL, active-unit variance, and collapse flags.

    .. math::

        \bar{\mathcal{H}}_h = \frac1N\sum_n \tfrac12\log(2\pi e\,\tau_h^2(x_n)),\quad
        \mathrm{KL}_h = \frac1N\sum_n \mathrm{KL}(q(z_h|x_n)\|p(z_h)),\quad
        V_h = \operatorname{Var}_n\,\nu_h(x_n)

    Collapse criteria (``criterion``): ``"entropy"`` (the paper's: :math:`\bar{\mathcal{H}}_h \ge 1.0`
    for a N(0, 1) prior, or within the same margin 0.4189 of a learnable prior's entropy), ``"kl"``
    (:math:`\mathrm{KL}_h` below 0.01 nats) or ``"active_units"`` (:math:`V_h` below 0.01).

    ``update`` takes the vocabulary: ``enc_mean`` and ``enc_logvar`` ``(B, H)`` (or ``posterior``),
    optional ``prior_logvar``/``prior``. ``compute`` returns a dict of ``(H,)`` tensors
    ``latent_entropy``, ``prior_latent_entropy``, ``latent_kl``, ``latent_mean_variance``,
    ``collapsed`` (bool), the scalars ``num_active`` and ``num_collapsed`` (float; NaN before any point was
    kept), and for the ``"entropy"`` criterion ``entropy_threshold``, each latent's collapse threshold.
    An optional ``weight`` ``(B,)`` in ``update`` weighs the points (0 drops a point, NaN-safe). The other names
    of the vocabulary (and ``loss``) are ignored, any other key is an error. States: one ``(H,)`` sum per row of
    the functional statistics (``posterior_collapse_logvar``, ``posterior_collapse_prior_logvar``, ...),
    ``posterior_collapse_count`` and ``posterior_collapse_skipped``.

    Args:
        criterion: ``"entropy"`` (default), ``"kl"`` or ``"active_units"``.
        threshold: the criterion's threshold; default 1.0, 0.01, 0.01 respectively.
        latent_dim: H, the number of latents (fixes the state shapes, as ``num_classes`` does elsewhere).
        nan_strategy: ``"skip"`` (default), ``"ignore"`` or ``"error"``.
        kwargs: passed to :class:`torchmetrics.Metric`.

    Raises:
        TypeError: a key or keyword that is neither a name of the vocabulary nor ``loss`` (with the closest name).
        ValueError: a bad ``latent_dim``, ``criterion`` or ``threshold``; inputs of the wrong shape or without
            ``enc_mean``; non-finite inputs with ``nan_strategy="error"``.

    Example:
        >>> metric = PosteriorCollapse(latent_dim=3)
        >>> enc_mean = torch.randn(64, 3) * torch.tensor([1.0, 1.0, 0.0])
        >>> enc_logvar = torch.tensor([-4.0, -3.0, 0.0]).expand(64, 3)
        >>> out = metric(enc_mean=enc_mean, enc_logvar=enc_logvar)
        >>> metric.compute()["collapsed"], metric.compute()["num_active"]
        (tensor([False, False,  True]), tensor(2.))
    """

    higher_is_better = None
    _prefix = "posterior_collapse"
    _inputs = ("enc_mean", "enc_logvar", "posterior", "prior_logvar", "prior")

    def __init__(
        self,
        latent_dim: int,
        criterion: str = "entropy",
        threshold: float | None = None,
        nan_strategy: str = "skip",
        **kwargs: Any,
    ) -> None:
        super().__init__(nan_strategy, **kwargs)
        self.threshold = _check_criterion(criterion, threshold)
        self.criterion = criterion
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError(f"Expected `latent_dim` to be a positive int, but got {latent_dim!r}.")
        self.latent_dim = latent_dim
        self._add_sum_states()

    def _sum_layout(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        return tuple((row, (self.latent_dim,)) for row in LATENT_ROWS)

    def update(self, outputs: Mapping[str, Any] | None = None, /, *, weight: Tensor | None = None,
               **kwargs: Any) -> None:
        owner = "PosteriorCollapse.update()"
        kw = merge_inputs(owner, outputs, kwargs, self._inputs)
        enc = _in.encoder(kw.get("enc_mean"), kw.get("enc_logvar"), kw.get("posterior"), owner=owner, given=kw)
        if enc.mean is None:
            raise missing_inputs_error(owner, "`enc_mean` and `enc_logvar` (or a `posterior`)", kw)
        batch, latent_dim = enc.logvar.shape
        if latent_dim != self.latent_dim:
            raise ValueError(
                f"Expected `enc_logvar` with H = latent_dim = {self.latent_dim} latents, but got {latent_dim}."
            )
        p = _in.prior(kw.get("prior_logvar"), kw.get("prior"), latent_dim=latent_dim, batch=batch,
                     check_rows=False)
        if self.nan_strategy == "error":
            self._check_finite({"enc_mean": enc.mean, "enc_logvar": enc.logvar, "prior_logvar": p.logvar}, weight)
        self._accumulate(lambda per_sample: [_latent_statistics_update(enc, p, per_sample)], (), batch, enc.logvar,
                         weight)

    def compute(self) -> dict[str, Tensor]:
        count = self._count()
        sums = torch.stack([self._state(row) for row in LATENT_ROWS])
        return _latent_statistics_compute(sums, count, self.criterion, self.threshold)

    def plot(self, val: Mapping[str, Tensor] | None = None, ax: Any = None) -> Any:
        """Bar chart of each latent's average encoder entropy against the collapse threshold and the prior.

        The paper's Fig. 3b style: bars of :math:`\\bar{\\mathcal{H}}_h`, a dashed line at the collapse
        threshold and a dotted line at the prior entropy (1.4189 for N(0, 1)). Needs matplotlib.

        Returns:
            ``(fig, ax)``.
        """
        plt = require_matplotlib("PosteriorCollapse.plot()")
        val = self.compute() if val is None else val
        ent = val["latent_entropy"].detach().float().cpu()
        prior = val["prior_latent_entropy"].detach().float().cpu()
        collapsed = val["collapsed"].cpu()
        fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(max(4.0, 0.35 * len(ent) + 2), 3.2))
        idx = range(len(ent))
        colors = ["#bbbbbb" if c else "#1f77b4" for c in collapsed.tolist()]
        ax.bar(idx, ent.tolist(), color=colors)
        threshold = val.get("entropy_threshold")
        if threshold is not None:
            threshold = threshold.detach().float().cpu()
            ax.step([i - 0.5 for i in idx] + [len(ent) - 0.5], [*threshold.tolist(), threshold[-1].item()] if len(ent)
                    else [], where="post", ls="--", color="C3", label="collapse threshold")
        ax.step([i - 0.5 for i in idx] + [len(ent) - 0.5], [*prior.tolist(), prior[-1].item()] if len(ent) else [],
                where="post", ls=":", color="k", label="prior entropy")
        ax.set_xlabel("latent h")
        ax.set_ylabel("average encoder entropy [nats]")
        ax.set_title(f"active latents: {int((~collapsed).sum())} of {len(ent)}")
        ax.legend(loc="lower right", fontsize="small")
        return fig, ax
