r"""Is the training loss the beta = 1 ELBO? A least-squares fit of the returned losses over a rolling window of batches.

The entropy sum is the limit of the beta = 1 ELBO only, so a stopping rule must not count epochs trained on
something else (beta != 1, KL warm-up, free bits, a scaled loss, extra terms). Per batch k the check keeps one row:
``y_k = -loss_k`` as returned (times Lightning's accumulation factor), the batch size ``n_k``, the ELBO summed over
its points ``E_k`` and, per latent h, the KL summed over its points ``K_hk`` (``K_k = sum_h K_hk``). The rows of the
most recent ``window`` batches, across epochs, are fitted under two readings of the loss:

.. math::

    \text{mean:}\quad y_k = a\,\frac{E_k}{n_k} + b\,\frac{K_k}{n_k} + c, \qquad
    \text{sum:}\quad y_k = a\,E_k + b\,K_k + c\,n_k + c_0 .

The mean reading is a loss averaged over the batch up to a constant; the sum reading is a loss summed over the
batch that drops a per-point constant (a summed MSE drops ``D/2 log 2 pi sigma^2``), so its offset grows with the
batch size. The beta = 1 ELBO is ``a = 1, b = 0`` in one of them; a beta-VAE loss has ``b = 1 - beta`` (times
``a``), a scaled loss ``a != 1``. Where the batch sizes differ the two readings differ, and the one with the clearly
smaller residual is taken; where they are equal both fit alike (``a_sum = a_mean / n``) and the one whose ``a`` is
closest to 1 on a log scale is taken. A second fit in the chosen reading gives each latent its own KL coefficient
``b_h``: free bits (``loss = recon + sum_h max(lambda, KL_h)``) leave the KL of a latent below ``lambda`` uncharged,
so ``b_h = 1`` for it and 0 for the others. It needs ``H + 3`` unknowns and runs once the window holds
``H + MIN_BATCHES - 1`` rows; a latent whose KL does not vary within the window has no identifiable ``b_h`` (nor
any effect on the losses there) and is not judged.

Confident: each judged coefficient's interval, estimate +- t standard errors (t: Student's quantile of
:data:`CONFIDENCE` standard-normal units for the fit's residual degrees of freedom), lies inside the tolerance
band (``|a - 1| <= TOLERANCE``, ``|b| <= TOLERANCE``: beta within 2 % of 1) for "the ELBO", or wholly outside it
for "not the ELBO". The residual standard deviation used for the errors is at least the rounding of the losses in
their dtype (``eps``, set by the caller), so float16/bfloat16 losses widen the intervals instead of misleading them.
A coefficient counts as confidently off only in a fit that explains the losses up to their rounding
(:data:`EXACT`). Losses rounded to float16/bfloat16 whose residual is their rounding alone cannot resolve beta to
2 % where the KL varies little between batches; for them the band is :data:`LOW_PRECISION_TOLERANCE` (10 %).

"The ELBO" also needs a residual below :data:`RESIDUAL` of the losses' size. A larger residual alone never makes
"not the ELBO": a Monte Carlo KL in the loss is an unbiased ELBO estimate that leaves one. Its noise shares the
step's z with the reconstruction term inside the ELBO column, which biases ``a`` (about 0.9 on real losses), but it
has mean zero given the data, so it does not bias the coefficient of a column that depends on the data alone. Losses
the fit does not explain up to their rounding are therefore judged with ``a`` held at 1, on
``-loss - ELBO = b x KL + const.``: "not the ELBO" where ``b``
lies confidently outside the band (a KL weight other than 1, or one that changes within the window, as in KL
warm-up), "cannot tell" otherwise. Anything between is "cannot tell" (``None``): too few rows, a KL or an ELBO that
barely varies within the window, noisy losses.

The same fit on the Bernoulli ELBO of ``dec_mean`` read as probabilities (where the caller passes it) tells a
BCE-trained model (:meth:`ObjectiveCheck.bernoulli`): its loss is fit exactly by the Bernoulli ELBO and not by the
Gaussian one, which the monitor then computes for a decoder the model does not have.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

#: |a - 1| and |b| allowed: beta within 2 % of 1.
TOLERANCE = 0.02
#: The band for losses whose residual is their float16/bfloat16 rounding alone: such losses cannot resolve beta to
#: 2 % where the KL varies between batches by less than their rounding (bfloat16 keeps 8 bits), so the intervals
#: must lie within beta +- 10 % there; a KL that barely varies still leaves them wider ("cannot tell").
LOW_PRECISION_TOLERANCE = 0.1
#: Losses count as low precision from float16's resolution on (``eps`` >= 2**-10).
LOW_PRECISION_EPS = 2.0 ** -10
#: A residual within this many times the losses' rounding (and within 0.1 % of their size), or within twice it,
#: is the rounding of the losses and of the ELBO and KL sums (float32 sums over a batch) alone.
EXACT = 1000.0
#: Width of the intervals in standard errors (a normal's 99.7 %; Student's t with the fit's degrees of freedom).
CONFIDENCE = 3.0
#: The fit's residual standard deviation allowed for "the ELBO", relative to the losses' size: the rounding of
#: float16 or bfloat16 losses (about 0.2 %) passes, a loss that the ELBO and the KL do not explain does not.
RESIDUAL = 0.01
#: The Gaussian fit's residual standard deviation, relative to the spread of the losses between batches, above which
#: a much better Bernoulli fit (a tenth of the residual) counts (a BCE loss against the Gaussian ELBO: 0.8-6 %) ...
MISFIT = 0.005
#: ... and relative to the losses' size, in units of their dtype's resolution (rounding of float16/bfloat16 losses).
ROUNDING = 4.0
#: Rows needed before any verdict: the sum reading has four unknowns (a, b, c, c0), and six rows leave two residual
#: degrees of freedom for its standard errors. Student's t is wide there (about 15, 3.9 at ten), so that early only
#: losses explained up to their rounding are judged; an epoch of six batches is judged on its own. The per-latent
#: fit needs ``H - 1`` more.
MIN_BATCHES = 6
#: Rows kept by default: enough for a per-latent fit of up to 32 latents with 30 degrees of freedom, and recent
#: enough (a few epochs of a small data set, a fraction of one of a large one) to follow a changing KL weight.
WINDOW = 64


class ObjectiveVerdict(NamedTuple):
    """Is the training loss the beta = 1 ELBO? ``is_elbo``: True, False, or None while nothing can tell."""

    is_elbo: bool | None
    #: one sentence a user reads in a warning
    why: str
    #: the fit ``-loss = elbo_coef x ELBO + kl_coef x KL + const.`` in ``convention`` (NaN where not fitted)
    elbo_coef: float = math.nan
    kl_coef: float = math.nan
    #: the reading of the loss the coefficients are in: ``"mean"`` or ``"sum"`` over the batch (None if not fitted)
    convention: str | None = None
    #: why the losses look like a Bernoulli (BCE) ELBO of ``dec_mean`` rather than the Gaussian one, or None
    bernoulli: str | None = None


class _Fit(NamedTuple):
    coef: list[float]
    se: list[float]
    residual: float  # the residual standard deviation of the fit (not floored)
    sigma: float  # the one used for the standard errors: at least the losses' smallest rounding
    rounding: float  # the standard deviation of the losses' rounding in their dtype (at most)
    dof: int


class ObjectiveCheck:
    r"""Judges whether ``-loss`` is the beta = 1 ELBO from the most recent ``window`` batches (across epochs).

    .. math::

        -\text{loss}_k = a\,\text{ELBO}_k + b\,\text{KL}_k + \text{const.}, \quad a = 1,\ b = 0,

    with ELBO and KL read as batch means or batch sums (see the module's docstring for the two readings, the
    per-latent fit and what "confident" means).

    Args:
        window: rows kept, the most recent batches; at least :data:`MIN_BATCHES`.

    Raises:
        TypeError: if ``window`` is not an int.
        ValueError: if ``window`` is below :data:`MIN_BATCHES`.

    Example:
        >>> check = ObjectiveCheck(window=16)
        >>> for k in range(12):
        ...     n = 32 if k < 11 else 20
        ...     kl = [(3.0 + 0.1 * (k % 5)) * n, (1.0 + 0.05 * (k % 3)) * n]
        ...     elbo = (-40.0 + 0.3 * k - 0.2 * (k % 4)) * n
        ...     check.add(neg_loss=elbo / n, points=n, elbo_sum=elbo, kl_sums=kl)
        >>> verdict = check.verdict()
        >>> verdict.is_elbo, verdict.convention, round(verdict.elbo_coef, 6), round(verdict.kl_coef, 6) + 0.0
        (True, 'mean', 1.0, 0.0)
    """

    def __init__(self, window: int = WINDOW) -> None:
        if isinstance(window, bool) or not isinstance(window, int):
            raise TypeError(f"Expected `window` to be an int, but got {type(window).__name__}.")
        if window < MIN_BATCHES:
            raise ValueError(f"Expected `window` to be at least {MIN_BATCHES} (MIN_BATCHES), but got {window}.")
        self.window = window
        #: the resolution (``finfo.eps``) of the losses' dtype, set by the caller
        self.eps = 0.0
        # rows: (-loss, points, elbo_sum, bernoulli_sum or None, kl_sums)
        self._rows: deque[tuple[float, int, float, float | None, tuple[float, ...]]] = deque(maxlen=window)

    def add(self, neg_loss: float, points: int, elbo_sum: float, kl_sums: Sequence[float],
            bernoulli_sum: float | None = None) -> None:
        """One batch: -loss (already times the accumulation factor), its size, its ELBO summed over its points, per
        latent its KL summed over its points, and the Bernoulli ELBO of its ``dec_mean`` summed likewise if known.

        Raises:
            ValueError: if ``points`` is below 1, or ``kl_sums`` has another number of latents than the rows held.
        """
        if points < 1:
            raise ValueError(f"Expected `points` (the batch size) to be at least 1, but got {points}.")
        kl = tuple(float(v) for v in kl_sums)
        if self._rows and len(kl) != len(self._rows[-1][4]):
            raise ValueError(f"Expected `kl_sums` of {len(self._rows[-1][4])} latents as in the rows held, but got"
                             f" {len(kl)}.")
        self._rows.append((float(neg_loss), int(points), float(elbo_sum),
                           None if bernoulli_sum is None else float(bernoulli_sum), kl))

    @property
    def batches(self) -> int:
        """Rows in the window."""
        return len(self._rows)

    # ------------------------------------------------------------------------------------------------ fits
    def _columns(self, rows: Sequence[tuple], convention: str, per_latent: bool, bernoulli: bool = False
                 ) -> tuple[np.ndarray, np.ndarray]:
        """The design (rows, p) and -loss (rows,) of one reading: ELBO, KL (or one column per latent), offsets."""
        data = np.array([[r[0], r[1], r[3] if bernoulli else r[2], *r[4]] for r in rows], dtype=np.float64)
        y, n, e, kl = data[:, 0], data[:, 1], data[:, 2], data[:, 3:]
        kl = kl if per_latent else kl.sum(1, keepdims=True)
        ones = np.ones_like(n)
        if convention == "mean":
            x = np.column_stack([e / n, kl / n[:, None], ones])
        else:
            x = np.column_stack([e, kl, n, ones])
        return x, y

    def _fit(self, x: np.ndarray, y: np.ndarray) -> _Fit:
        """Least squares of y on the columns of x: coefficients and standard errors (inf where not identifiable)."""
        scale = np.sqrt((x * x).mean(0))
        scale[scale == 0] = 1.0
        u, s, vt = np.linalg.svd(x / scale, full_matrices=False)
        keep = s > 1e-10 * s[0]
        rank = int(keep.sum())
        coef_scaled = vt[keep].T @ ((u[:, keep].T @ y) / s[keep])
        rss = float(((y - (x / scale) @ coef_scaled) ** 2).sum())
        dof = len(y) - rank
        residual = math.sqrt(rss / dof) if dof > 0 else math.inf
        # the losses' rounding in their dtype (relative error eps/2 to eps: half of this at least), and at least a
        # float64 least-squares residual's
        rounding = max(self.eps, 1e-12) * float(np.abs(y).mean()) / math.sqrt(12.0)
        sigma = max(residual, 0.5 * rounding)
        var = (vt[keep].T ** 2 / s[keep] ** 2).sum(1) * sigma ** 2
        # a coefficient that moves along a direction the rows do not fix is not identifiable
        lost = (np.abs(vt[~keep]) > 1e-6).any(0) if rank < len(s) else np.zeros(len(s), dtype=bool)
        se = np.where(lost, np.inf, np.sqrt(var)) / scale
        return _Fit((coef_scaled / scale).tolist(), se.tolist(), residual, sigma, rounding, dof)

    def _readings(self, rows: Sequence[tuple], bernoulli: bool = False) -> dict[str, _Fit]:
        return {name: self._fit(*self._columns(rows, name, per_latent=False, bernoulli=bernoulli))
                for name in ("mean", "sum")}

    def _choose(self, fits: dict[str, _Fit]) -> str:
        """The reading whose residual is not clearly larger than the other's and whose a is closest to 1 (log)."""
        best = min(f.sigma for f in fits.values())
        close = [name for name, f in fits.items() if f.sigma <= 2.0 * best]

        def distance(name: str) -> float:
            a = fits[name].coef[0]
            return abs(math.log(a)) if a > 0 else math.inf

        return min(close, key=lambda name: (distance(name), fits[name].sigma))

    # --------------------------------------------------------------------------------------------- verdict
    def verdict(self) -> ObjectiveVerdict:
        """Whether the window's losses are -ELBO up to a constant (True), confidently are not (False), or cannot tell
        (None), with the fitted coefficients in the reading found and, where the Bernoulli ELBO fits, why."""
        rows = list(self._rows)
        k = len(rows)
        bernoulli = self.bernoulli()
        if k < MIN_BATCHES:
            return ObjectiveVerdict(None, f"{k} batch(es) with a loss: too few to tell (the check needs"
                                          f" {MIN_BATCHES})", bernoulli=bernoulli)
        fits = self._readings(rows)
        name = self._choose(fits)
        fit = fits[name]
        a, b = fit.coef[0], fit.coef[1]
        t = _t_quantile(fit.dof)
        (a_lo, a_hi), (b_lo, b_hi) = ((c - t * se, c + t * se) for c, se in zip(fit.coef[:2], fit.se[:2]))
        y = np.array([r[0] for r in rows])
        size = float(np.abs(y).mean() + y.std())
        reading = f"over the last {k} batches (the loss read as a batch {name})"
        coefs = f"-loss = {a:.4g} x ELBO + {b:.3g} x KL + const."
        latents = self._latents(rows, name)
        # float16/bfloat16 losses explained up to their rounding: the band they can resolve
        rounded = self.eps >= LOW_PRECISION_EPS and fit.residual <= fit.rounding
        tol = LOW_PRECISION_TOLERANCE if rounded else TOLERANCE
        a_off = a_lo > 1 + TOLERANCE or a_hi < 1 - TOLERANCE
        b_off = b_lo > TOLERANCE or b_hi < -TOLERANCE
        a_in = a_lo >= 1 - tol and a_hi <= 1 + tol
        b_in = b_lo >= -tol and b_hi <= tol

        def out(is_elbo: bool | None, why: str) -> ObjectiveVerdict:
            return ObjectiveVerdict(is_elbo, why, a, b, name, bernoulli)

        # free bits: some latents' KL coefficients off where the common one is not, in a fit that explains the losses
        # up to their rounding, or in one that halves the common fit's residual (noise, as a Monte Carlo KL's, does not)
        if latents is not None and latents[1] and latents[0] <= RESIDUAL * size and (
                latents[0] < 0.5 * fit.residual or (self._exact(latents[0], fit, size) and not (a_off or b_off))):
            return out(False, f"{coefs} {reading}, and the KL of latent(s) {latents[1]} enters -loss with"
                              f" coefficient(s) {latents[2]} instead of 0: the loss does not charge their KL (free"
                              " bits?); expected 1 x ELBO + 0 x KL")
        if a_in and b_in and fit.residual <= RESIDUAL * size:
            dtype = " (what losses rounded to their dtype resolve)" if rounded else ""
            return out(True, f"{coefs} {reading}: the beta = 1 ELBO within {tol:.0%}{dtype} (a in [{a_lo:.4g},"
                             f" {a_hi:.4g}], b in [{b_lo:.3g}, {b_hi:.3g}])")
        if not self._exact(fit.residual, fit, size):
            return self._noisy(rows, name, fit, size, out)
        if a_off and not b_off and b_in and a > 0:
            return out(False, f"the loss is {a:.3g} x -ELBO (batch {name}) over the last {k} batches: a scaled"
                              " ELBO; expected 1 x -ELBO + const.")
        if a_off or b_off:
            beta = 1 - b / a if a != 0 else math.nan
            scaled = f", scaled by {a:.3g}" if a_off else ""
            return out(False, f"{coefs} {reading}: a loss with KL weight beta = {beta:.3g}{scaled}; expected 1 x"
                              " ELBO + 0 x KL")
        vary = "the KL" if not b_in else "the ELBO"
        return out(None, f"{coefs} {reading}, but {vary} varies too little between batches to tell (a in"
                         f" [{a_lo:.4g}, {a_hi:.4g}], b in [{b_lo:.3g}, {b_hi:.3g}]; within {tol:.0%} needed)")

    @staticmethod
    def _exact(residual: float, fit: _Fit, size: float) -> bool:
        """Whether a fit's residual is the rounding of the losses and of the ELBO and KL sums alone (losses that are a
        function of the ELBO and the KL), rather than noise or terms they do not explain."""
        return residual <= max(2.0 * fit.rounding, min(EXACT * fit.rounding, 1e-3 * size))

    def _noisy(self, rows: Sequence[tuple], name: str, fit: _Fit, size: float,
               out: Callable[[bool | None, str], ObjectiveVerdict]) -> ObjectiveVerdict:
        """Losses the fit does not explain up to their rounding (:meth:`_exact`): a Monte Carlo KL in the loss, a KL
        weight that changes within the window, or other terms. Noise that shares the step's z with the reconstruction
        term biases ``a`` (the ELBO column holds that reconstruction), but not a coefficient of columns that depend on
        the data alone: ``-loss - ELBO = b x KL + const.`` (``a`` held at 1) is judged on ``b`` alone."""
        x, y = self._columns(rows, name, per_latent=False)
        held = self._fit(x[:, 1:], y - x[:, 0])
        b, se = held.coef[0], held.se[0]
        t = _t_quantile(held.dof)
        share = 100 * fit.residual / size
        coefs = (f"-loss = 1 x ELBO + {b:.3g} x KL + const. over the last {len(rows)} batches (the loss read as a"
                 f" batch {name}; the ELBO's coefficient held at 1)")
        if b - t * se > TOLERANCE or b + t * se < -TOLERANCE:
            return out(False, f"{coefs}, with a residual of {share:.2g} % of the losses: a KL weight beta ="
                              f" {1 - b:.3g} on average, or one that changes within the window (KL warm-up?);"
                              " expected 1 x ELBO + 0 x KL")._replace(elbo_coef=1.0, kl_coef=b)
        return out(None, f"{coefs}, but with a residual of {fit.residual:.3g} ({share:.2g} % of the losses): noisy"
                         f" losses (a Monte Carlo KL?) or terms the ELBO does not explain, and b in"
                         f" [{b - t * se:.3g}, {b + t * se:.3g}]")._replace(elbo_coef=1.0, kl_coef=b)

    def _latents(self, rows: Sequence[tuple], name: str) -> tuple[float, str, str] | None:
        """The per-latent fit in reading ``name``: its residual, the latents whose KL coefficient lies confidently
        outside the tolerance, and their coefficients; None where the rows are too few or there is one latent."""
        latents = len(rows[0][4])
        if latents < 2 or len(rows) < latents + MIN_BATCHES - 1:
            return None
        fit = self._fit(*self._columns(rows, name, per_latent=True))
        t = _t_quantile(fit.dof)
        off = [h for h in range(latents)
               if abs(fit.coef[1 + h]) - t * fit.se[1 + h] > TOLERANCE]
        return fit.residual, ", ".join(str(h) for h in off), ", ".join(f"{fit.coef[1 + h]:.3g}" for h in off)

    def bernoulli(self) -> str | None:
        """Why the losses look like a Bernoulli (BCE) ELBO of ``dec_mean`` and not like the Gaussian ELBO, or
        ``None`` (they do not, or fewer than :data:`MIN_BATCHES` rows with both ELBOs cannot tell)."""
        rows = [r for r in self._rows if r[3] is not None]
        if len(rows) < MIN_BATCHES:
            return None
        gaussian = min(f.residual for f in self._readings(rows).values())
        bernoulli = min(f.residual for f in self._readings(rows, bernoulli=True).values())
        y = np.array([r[0] for r in rows])
        spread = float(y.std())
        floor = max(MISFIT * spread, ROUNDING * self.eps * abs(float(y.mean())))
        if gaussian <= floor or bernoulli > 0.1 * gaussian:
            return None
        share = 100 * gaussian / spread
        return (f"over the last {len(rows)} batches the Bernoulli ELBO explains -loss up to a residual of"
                f" {bernoulli:.2g} nats, the Gaussian ELBO only up to {gaussian:.2g} nats ({share:.2g} % of the"
                " losses' spread)")

    # ----------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """The window as plain Python types (for checkpoints and JSON): ``rows`` of ``[-loss, points, elbo_sum,
        *kl_sums]``, ``bernoulli`` (a float or None per row), ``window`` and ``eps``."""
        return {"window": self.window, "eps": self.eps,
                "rows": [[y, float(n), e, *kl] for y, n, e, _, kl in self._rows],
                "bernoulli": [bern for _, _, _, bern, _ in self._rows]}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s window (the most recent ``window`` of its rows are kept).

        Raises:
            ValueError: if ``rows`` and ``bernoulli`` differ in length or a row is shorter than four numbers.
        """
        rows, bern = state["rows"], state.get("bernoulli", [None] * len(state["rows"]))
        if len(bern) != len(rows) or any(len(r) < 4 for r in rows):
            raise ValueError(f"Expected `rows` of [-loss, points, elbo_sum, *kl_sums] and one `bernoulli` entry per"
                             f" row, but got {len(rows)} rows (lengths {sorted({len(r) for r in rows})}) and"
                             f" {len(bern)} entries.")
        self.eps = float(state.get("eps", self.eps))
        self._rows.clear()
        for r, b in zip(rows, bern):
            self.add(r[0], int(r[1]), r[2], r[3:], b)


def _t_quantile(dof: int) -> float:
    """Student's t quantile of :data:`CONFIDENCE` standard-normal units (Cornish-Fisher expansion in 1/dof; within
    about 3 % from 4 degrees of freedom on); inf without any."""
    if dof < 1:
        return math.inf
    z = CONFIDENCE
    return (z + (z ** 3 + z) / (4 * dof) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * dof ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * dof ** 3))
