"""Is the training loss the beta = 1 ELBO? A per-epoch regression of the returned losses on the batches' ELBO and KL.

The entropy sum is the limit of the beta = 1 ELBO only, so a stopping rule must not count epochs trained on
something else (beta != 1, KL annealing, extra terms). Per kept batch k the callback has the returned loss
(times Lightning's accumulation factor), the batch's ELBO and its KL (mean per point and sum). A loss that is
-ELBO up to a constant offset and a reduction (mean or sum over the batch) satisfies, for one of the two
reductions,

    -loss_k = a * ELBO_k + b * KL_k + c    with a = 1 and b = 0,

whereas a beta-VAE loss has b = 1 - beta and a wrongly scaled loss a != 1. Both coefficients come from an
ordinary least-squares fit over the epoch's batches; a coefficient counts as off only when it is off by more
than the tolerance *and* by more than three standard errors (float16/bfloat16 losses are noisy; a KL that
barely varies between batches cannot tell beta from a constant offset, and then it does not matter).

Whatever the coefficients, a loss of the same Gaussian model (any beta, any scale, any constant) is fit exactly.
Where the steps return ``x`` and ``dec_mean``, the same regression on the Bernoulli ELBO of ``dec_mean`` read as
probabilities tells a BCE-trained model (:meth:`ObjectiveCheck.bernoulli`): its loss is fit exactly by the
Bernoulli ELBO and not by the Gaussian one, which the monitor then computes for a decoder the model does not have.
(A residual alone does not tell: a Monte Carlo KL estimate in the loss leaves a larger one, with no harm done.)
"""

from __future__ import annotations

import math
from typing import NamedTuple

#: |a - 1| and |b| allowed: beta within 2 % of 1.
TOLERANCE = 0.02
#: The fit's residual standard deviation allowed, relative to the losses' size: their rounding in float16 or
#: bfloat16 (about 0.4 %) passes, a loss that the ELBO and the KL do not explain (another reduction) does not.
RESIDUAL = 0.01
#: The Gaussian fit's residual standard deviation, relative to the spread of the losses between batches, above which
#: a much better Bernoulli fit (a tenth of the residual) counts (a BCE loss against the Gaussian ELBO: 0.8-6 %) ...
MISFIT = 0.005
#: ... and relative to the losses' size, in units of their dtype's resolution (rounding of float16/bfloat16 losses).
ROUNDING = 4.0
#: Batches the regression needs; an epoch with fewer is judged together with the most recent earlier batches.
MIN_BATCHES = 5
#: Sums per reduction: n, y, e, k, yy, ee, kk, ye, yk, ek.
_N_SUMS = 10


#: Batches kept as rows before they are folded into the sums (the fold runs at the epoch's end, not at a log step).
_MAX_ROWS = 4096


class ObjectiveVerdict(NamedTuple):
    """Is the training loss the beta = 1 ELBO? ``is_elbo``: True, False, or None while nothing can tell."""

    is_elbo: bool | None
    why: str
    #: the fit ``-loss = elbo_coef x ELBO + kl_coef x KL + const.`` (NaN where not fitted)
    elbo_coef: float = math.nan
    kl_coef: float = math.nan
    #: why the losses look like a Bernoulli (BCE) ELBO of ``dec_mean`` rather than the Gaussian one, or None
    bernoulli: str | None = None


class ObjectiveCheck:
    """Regression sums of one epoch, for the loss read as a batch mean and as a batch sum."""

    def __init__(self) -> None:
        self._sums = {"mean": [0.0] * _N_SUMS, "sum": [0.0] * _N_SUMS}
        self._bernoulli_sums = {"mean": [0.0] * _N_SUMS, "sum": [0.0] * _N_SUMS}
        self._rows: list[tuple[float, float, float, int, float | None]] = []
        self.eps = 0.0  # the resolution (``finfo.eps``) of the losses' dtype, set by the caller
        #: rows carried over from earlier epochs (:meth:`recent`)
        self.carried = 0
        self._tail: list[tuple[float, float, float, int, float | None]] = []  # the last MIN_BATCHES - 1 rows

    def recent(self, k: int) -> ObjectiveCheck:
        """A new check holding this one's last ``k`` (at most ``MIN_BATCHES - 1``) batches, for epochs too short to
        tell on their own."""
        out = ObjectiveCheck()
        for row in self._tail[-k:] if k > 0 else []:
            out.add(*row)
        out.carried, out.eps = out.batches, self.eps
        return out

    def add(self, neg_loss: float, elbo_sum: float, kl_sum: float, points: int,
            bernoulli_sum: float | None = None) -> None:
        """One batch: -loss (already times the accumulation factor), its ELBO and KL summed over its points, and the
        Bernoulli ELBO of its ``dec_mean`` if known."""
        row = (neg_loss, elbo_sum, kl_sum, points, bernoulli_sum)
        self._rows.append(row)
        self._tail = [*self._tail[-(MIN_BATCHES - 2):], row]
        if len(self._rows) >= _MAX_ROWS:
            self._fold()

    def _fold(self) -> None:
        for neg_loss, elbo_sum, kl_sum, points, bernoulli_sum in self._rows:
            _accumulate(self._sums, neg_loss, elbo_sum, kl_sum, points)
            if bernoulli_sum is not None:
                _accumulate(self._bernoulli_sums, neg_loss, bernoulli_sum, kl_sum, points)
        self._rows.clear()

    @property
    def sums(self) -> dict[str, list[float]]:
        """Per reading of the loss (``mean``, ``sum``): n, y, e, k, yy, ee, kk, ye, yk, ek over the batches."""
        self._fold()
        return self._sums

    @property
    def bernoulli_sums(self) -> dict[str, list[float]]:
        """The same with the Bernoulli ELBO of ``dec_mean`` as e (over the batches that had one)."""
        self._fold()
        return self._bernoulli_sums

    @property
    def batches(self) -> int:
        return int(self.sums["mean"][0])

    def verdict(self) -> ObjectiveVerdict:
        """Whether the losses are -ELBO up to a constant (``is_elbo`` True), are not (False), or too few batches (fewer
        than 5) could tell (None); with the fitted coefficients and, where the Bernoulli ELBO fits, why."""
        if self.batches < MIN_BATCHES:
            return ObjectiveVerdict(None, f"{self.batches} batch(es) with a loss: too few to tell")
        fits = {name: _fit(s) for name, s in self.sums.items()}
        bernoulli = self.bernoulli()
        for name, (a, b, se_a, se_b, residual, scale) in fits.items():
            off_a = abs(a - 1.0) > TOLERANCE and abs(a - 1.0) > 3 * se_a
            off_b = abs(b) > TOLERANCE and abs(b) > 3 * se_b
            if not (off_a or off_b) and residual <= RESIDUAL * scale:
                return ObjectiveVerdict(True, f"-loss = {a:.4g} x ELBO + {b:.3g} x KL + const. (loss read as a batch"
                                              f" {name})", a, b, bernoulli)
        a, b, *_ = min(fits.values(), key=lambda f: abs(f[0] - 1.0) + abs(f[1]))
        return ObjectiveVerdict(False, f"-loss = {a:.4g} x ELBO + {b:.3g} x KL + const. over the epoch's batches"
                                       " (expected 1 x ELBO + 0 x KL: beta != 1, KL annealing, a scaled loss or extra"
                                       " terms)", a, b, bernoulli)

    def bernoulli(self) -> str | None:
        """Why the losses look like a Bernoulli (BCE) ELBO of ``dec_mean`` and not like the Gaussian ELBO, or
        ``None`` (they do not, or fewer than 5 batches with both ELBOs cannot tell)."""
        if self.batches < 5 or self.bernoulli_sums["mean"][0] != self.batches:
            return None
        gaussian, bernoulli = (min(_residual(s) for s in sums.values()) for sums in (self.sums, self.bernoulli_sums))
        n, y, yy = self.sums["mean"][0], self.sums["mean"][1], self.sums["mean"][4]
        spread = math.sqrt(max(yy / n - (y / n) ** 2, 0.0))
        floor = max(MISFIT * spread, ROUNDING * self.eps * abs(y / n))
        if gaussian <= floor or bernoulli > 0.1 * gaussian:
            return None
        share = 100 * gaussian / spread
        return (f"over the epoch's {self.batches} batches the Bernoulli ELBO explains -loss up to a residual of"
                f" {bernoulli:.2g} nats, the Gaussian ELBO only up to {gaussian:.2g} nats ({share:.2g} % of the"
                " losses' spread)")


def _accumulate(sums: dict[str, list[float]], y: float, elbo_sum: float, kl_sum: float, points: int) -> None:
    for name, (e, k) in (("mean", (elbo_sum / points, kl_sum / points)), ("sum", (elbo_sum, kl_sum))):
        s = sums[name]
        for i, v in enumerate((1.0, y, e, k, y * y, e * e, k * k, y * e, y * k, e * k)):
            s[i] += v


def _residual(s: list[float]) -> float:
    return _fit(s)[4]


def _fit(s: list[float]) -> tuple[float, float, float, float, float, float]:
    """Least squares of y on (e, k) with an intercept: the two slopes, their standard errors, the residual
    standard deviation and the losses' size (mean |y| plus their standard deviation)."""
    n, y, e, k, yy, ee, kk, ye, yk, ek = s
    size = abs(y / n) + math.sqrt(max(yy / n - (y / n) ** 2, 0.0))
    # centred second moments
    cee, ckk, cek = ee - e * e / n, kk - k * k / n, ek - e * k / n
    cye, cyk, cyy = ye - y * e / n, yk - y * k / n, yy - y * y / n
    scale = max(cee, ckk, 1e-300)
    det = cee * ckk - cek * cek
    if det <= 1e-12 * scale * scale:  # ELBO and KL collinear (or constant): fit y on the ELBO alone
        a = cye / cee if cee > 0 else 1.0
        rss = max(cyy - a * cye, 0.0)
        se_a = math.sqrt(rss / max(n - 2, 1) / cee) if cee > 0 else math.inf
        return a, 0.0, se_a, math.inf, math.sqrt(rss / max(n - 2, 1)), size
    a = (ckk * cye - cek * cyk) / det
    b = (cee * cyk - cek * cye) / det
    rss = max(cyy - a * cye - b * cyk, 0.0)
    sigma2 = rss / max(n - 3, 1)
    return a, b, math.sqrt(sigma2 * ckk / det), math.sqrt(sigma2 * cee / det), math.sqrt(sigma2), size
