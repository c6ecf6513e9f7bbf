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
"""

from __future__ import annotations

import math

#: |a - 1| and |b| allowed: beta within 2 % of 1.
TOLERANCE = 0.02
#: The fit's residual standard deviation allowed, relative to the losses' size: their rounding in float16 or
#: bfloat16 (about 0.4 %) passes, a loss that the ELBO and the KL do not explain (another reduction) does not.
RESIDUAL = 0.01
#: Sums per reduction: n, y, e, k, yy, ee, kk, ye, yk, ek.
_N_SUMS = 10


class ObjectiveCheck:
    """Regression sums of one epoch, for the loss read as a batch mean and as a batch sum."""

    def __init__(self) -> None:
        self.sums = {"mean": [0.0] * _N_SUMS, "sum": [0.0] * _N_SUMS}

    def add(self, neg_loss: float, elbo_sum: float, kl_sum: float, points: int) -> None:
        """One batch: -loss (already times the accumulation factor), its ELBO and KL summed over its points."""
        for name, (e, k) in (("mean", (elbo_sum / points, kl_sum / points)), ("sum", (elbo_sum, kl_sum))):
            s, y = self.sums[name], neg_loss
            for i, v in enumerate((1.0, y, e, k, y * y, e * e, k * k, y * e, y * k, e * k)):
                s[i] += v

    @property
    def batches(self) -> int:
        return int(self.sums["mean"][0])

    def verdict(self) -> tuple[bool | None, str]:
        """``(True, why)`` for a -ELBO loss up to a constant, ``(False, why)`` otherwise, ``(None, why)`` when the
        epoch had too few batches (fewer than 5) to tell."""
        if self.batches < 5:
            return None, f"{self.batches} batch(es) with a loss: too few to tell"
        fits = {name: _fit(s) for name, s in self.sums.items()}
        for name, (a, b, se_a, se_b, residual, scale) in fits.items():
            off_a = abs(a - 1.0) > TOLERANCE and abs(a - 1.0) > 3 * se_a
            off_b = abs(b) > TOLERANCE and abs(b) > 3 * se_b
            if not (off_a or off_b) and residual <= RESIDUAL * scale:
                return True, f"-loss = {a:.4g} x ELBO + {b:.3g} x KL + const. (loss read as a batch {name})"
        a, b, *_ = min(fits.values(), key=lambda f: abs(f[0] - 1.0) + abs(f[1]))
        return False, (f"-loss = {a:.4g} x ELBO + {b:.3g} x KL + const. over the epoch's batches (expected 1 x ELBO"
                       " + 0 x KL: beta != 1, KL annealing, a scaled loss or extra terms)")


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
