"""Phase 2 of ``stopping.py``: stopping rules as pure causal functions of a run's record.

A run's record (``_stopping_train.load_runs``) holds per batch what a callback sees during training
(``batch_n``, ``batch_neg_loss``, ``batch_elbo_sum``, ``batch_entsum_sum``, ``batch_kl_sums``, ``batch_epoch``)
and per epoch the published ``train_*``/``val_*`` values. A rule returns the epoch (0-based) at whose end
training stops, or ``None`` (the budget), and reads nothing after that epoch. The ground truth ``test_elbo``
is read only by :func:`score`.

The gap gate of the rebuilt ``EntropyConvergence`` runs the package's own code: at each epoch's end, over the
last ``W`` training batches (across epoch boundaries),
``mean, se = lightning_entropy_vae.functional.batch_means(g, n, groups=G)`` with ``g_k = (elbo_sum_k -
entsum_sum_k) / n_k``, and the objective verdict of ``lightning_entropy_vae.callbacks._objective.ObjectiveCheck``
fed every batch. Both are computed once per run and window (:class:`Replay`); the grid then only compares
numbers. The fallback (:func:`fallback_rule`) reads the same two published values at every epoch's end
(:meth:`Replay.published`); :func:`combined_rule` stops at the earlier of the gate rule and the fallback.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lightning_entropy_vae.callbacks._objective import ObjectiveCheck
from lightning_entropy_vae.functional import batch_means

REL_GAP_FLOOR = 0.1  # nats per data dimension: EntropyMonitor's rel_gap_floor
BETA1 = ("mean", "sum")  # variants whose loss is the beta = 1 ELBO throughout
NEVER = ("beta4", "freebits", "scaled")  # variants a rule must never stop (warm-up: not before beta reaches 1)
PER_BATCH = ("batch_epoch", "batch_n", "batch_neg_loss", "batch_elbo_sum", "batch_entsum_sum", "batch_kl_sums",
             "batch_beta")
PER_EPOCH = ("train_sum", "train_elbo", "val_sum", "val_elbo", "test_elbo", "val_elbo_acc", "lr", "seconds")


# ------------------------------------------------------------------------------------------------ records
@dataclass
class Record:
    """One run: its config (``meta``) and its arrays, per batch and per epoch."""

    meta: dict
    arrays: dict[str, np.ndarray]

    @property
    def name(self) -> str:
        m = self.meta
        return m.get("name") or f"{m['family']}_{m.get('variant', 'mean')}_lr{m['lr']:g}_s{m['seed']}"

    @property
    def family(self) -> str:
        return self.meta["family"]

    @property
    def variant(self) -> str:
        return self.meta.get("variant", "mean")

    @property
    def dim(self) -> int:
        return int(self.meta["D"])

    @property
    def epochs(self) -> int:
        """Epochs recorded (the budget, or fewer for a run that stopped itself)."""
        return len(self.arrays["test_elbo"])

    @property
    def budget(self) -> int:
        return int(self.meta.get("epochs", self.epochs))

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]


def as_record(run: dict | Record) -> Record:
    """A run of ``_stopping_train.load_runs`` (its meta keys, its ``config`` and the arrays at the top level) as
    :class:`Record`; ``meta`` is the config plus ``name`` and ``stop_epoch``, with variant ``sasa`` for the runs of
    the live ``sasa`` policy."""
    if isinstance(run, Record):
        return run
    meta = {**run.get("config", {}), **{k: run[k] for k in ("name", "stop_epoch") if k in run}}
    if meta.get("policy", "fixed") != "fixed":
        meta["variant"] = meta["policy"]
    arrays = {key: np.asarray(run[key], dtype=float) for key in (*PER_BATCH, *PER_EPOCH) if key in run}
    arrays["batch_epoch"] = arrays["batch_epoch"].astype(int)
    if arrays["batch_kl_sums"].ndim == 1:
        arrays["batch_kl_sums"] = arrays["batch_kl_sums"][:, None]
    return Record(meta, arrays)


# -------------------------------------------------------------------------------- the package's statistics
#: rows of the objective check: its own default, as the callback uses it
OBJECTIVE_WINDOW = int(inspect.signature(ObjectiveCheck.__init__).parameters["window"].default)


class _Verdicts:
    """``ObjectiveCheck(window)`` over a record's batches, asked at chosen epoch ends: each time it is fed the
    batches since the last time it was asked, up to the last ``window`` (it keeps no more), then judges."""

    def __init__(self, rec: Record, window: int = OBJECTIVE_WINDOW) -> None:
        self.rec, self.window, self.fed = rec, window, 0
        self.check = ObjectiveCheck(window=window)

    def at(self, end: int) -> float:
        """``verdict().is_elbo`` after the first ``end`` batches: 1.0 (True), 0.0 (False), NaN (None)."""
        rec = self.rec
        for k in range(max(self.fed, end - self.window), end):
            self.check.add(float(rec["batch_neg_loss"][k]), int(rec["batch_n"][k]), float(rec["batch_elbo_sum"][k]),
                           rec["batch_kl_sums"][k].tolist())
        self.fed = end
        is_elbo = self.check.verdict().is_elbo
        return math.nan if is_elbo is None else float(is_elbo)


def objective_verdicts(rec: Record, window: int = OBJECTIVE_WINDOW, ask: np.ndarray | None = None) -> np.ndarray:
    """Per epoch, ``ObjectiveCheck(window).verdict().is_elbo`` at the epoch's end, the check fed every batch so far
    in order: 1.0 (True), 0.0 (False), NaN (None, or an epoch where ``ask`` is False)."""
    verdicts, out = _Verdicts(rec, window), np.full(rec.epochs, np.nan)
    for t, end in enumerate(_epoch_ends(rec)):
        if ask is None or ask[t]:
            out[t] = verdicts.at(int(end))
    return out


def _epoch_ends(rec: Record) -> np.ndarray:
    """Per epoch t, the number of batches seen by its end."""
    return np.searchsorted(rec["batch_epoch"], np.arange(rec.epochs), side="right")


def train_gaps(rec: Record) -> np.ndarray:
    """Per batch, g_k = (elbo_sum_k - entsum_sum_k) / n_k, nats per point."""
    return (rec["batch_elbo_sum"] - rec["batch_entsum_sum"]) / rec["batch_n"]


def window_stats(rec: Record, window: int, groups: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Per epoch, ``batch_means`` of the train gap over the last ``window`` batches: (mean, se); NaN before
    ``window`` batches were seen."""
    g, n = train_gaps(rec), rec["batch_n"]
    mean, se = np.full(rec.epochs, np.nan), np.full(rec.epochs, np.nan)
    for t, end in enumerate(_epoch_ends(rec)):
        if end < window:
            continue
        m, s = batch_means(g[end - window:end], n[end - window:end], groups=groups)
        mean[t], se[t] = float(m), float(s)
    return mean, se


GATE_FORMS = ("max", "ci")


@dataclass(frozen=True)
class GateConfig:
    """The rebuilt rule: the batch-means gate over W batches (G groups), E epochs in a row, then patience P.

    An epoch counts, with ``form`` ``"max"``, when |mean| <= max(z se, tol) (the gap is within the window's noise
    or within tol); with ``"ci"``, when |mean| + z se <= tol (the gap is confidently within tol).
    """

    window: int
    z: float
    tol: float
    tol_unit: str  # "nats" (per point) or "D" (times the data dimension)
    epochs: int
    patience: int
    form: str = "max"
    groups: int = 10

    def __post_init__(self) -> None:
        if self.form not in GATE_FORMS:
            raise ValueError(f"Expected `form` in {GATE_FORMS}, but got {self.form!r}.")
        if self.tol_unit not in ("nats", "D"):
            raise ValueError(f"Expected `tol_unit` 'nats' or 'D', but got {self.tol_unit!r}.")

    def tol_nats(self, dim: int) -> float:
        return self.tol * (dim if self.tol_unit == "D" else 1)

    def gate(self, dim: int) -> tuple[int, int, str, float, float, int]:
        """What decides when the gate opens: (W, G, form, z, tol in nats per point, E)."""
        return self.window, self.groups, self.form, self.z, self.tol_nats(dim), self.epochs

    def counts(self, mean: float, se: float, dim: int) -> bool:
        """Whether a window with gap ``mean`` and standard error ``se`` counts (the objective aside)."""
        if self.form == "ci":
            return abs(mean) + self.z * se <= self.tol_nats(dim)
        return abs(mean) <= max(self.z * se, self.tol_nats(dim))

    @property
    def label(self) -> str:
        tol = f"{self.tol:g} nats" if self.tol_unit == "nats" else f"{self.tol:g} D"
        return f"gate({self.form}, W {self.window}, z {self.z:g}, tol {tol}, E {self.epochs}, P {self.patience})"


@dataclass
class Replay:
    """What the gate rules of one run need, computed once for a set of configs: the epoch each gate opens at.

    The epochs are replayed in order as the callback sees them: per window W, ``batch_means`` of the last W gaps;
    per gate (W, form, z, tol, E) whether the gap counts (:meth:`GateConfig.counts`); where some gate's does, the
    objective verdict (fed the batches it holds); a gate counts the epoch when both hold and opens after E in a row.
    Work
    is skipped where it cannot change any gate: statistics of a window whose gates have all opened, and verdicts
    at epochs where no unopened gate's gap is within its bound (``verdicts`` stays NaN there: not asked).
    """

    rec: Record
    configs: tuple[GateConfig, ...]
    #: per gate (``GateConfig.gate``) the epoch it opens at; given (a cache), nothing is recomputed
    opens: dict[tuple, int | None] | None = None
    verdicts: np.ndarray = field(init=False)
    stats: dict[int, tuple[np.ndarray, np.ndarray]] = field(init=False)
    _es: dict[tuple[int, int], int | None] = field(init=False, default_factory=dict)
    _published: dict[int, tuple[np.ndarray, np.ndarray]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.opens is not None:
            self.verdicts, self.stats = np.full(self.rec.epochs, np.nan), {}
            return
        rec, dim = self.rec, self.rec.dim
        gates = sorted({cfg.gate(dim) for cfg in self.configs})
        windows = sorted({(w, groups) for w, groups, *_ in gates})
        which = np.array([windows.index((w, groups)) for w, groups, *_ in gates], dtype=int)
        ci = np.array([gate[2] == "ci" for gate in gates], dtype=bool)
        z = np.array([gate[3] for gate in gates])
        tol = np.array([gate[4] for gate in gates])
        need = np.array([gate[5] for gate in gates])
        count, opened = np.zeros(len(gates), int), np.full(len(gates), -1)
        g, n = train_gaps(rec), rec["batch_n"]
        self.stats = {w: (np.full(rec.epochs, np.nan), np.full(rec.epochs, np.nan)) for w, _ in windows}
        self.verdicts = np.full(rec.epochs, np.nan)
        verdicts = _Verdicts(rec)
        mean, se = np.full(len(windows), np.nan), np.full(len(windows), np.nan)
        for t, end in enumerate(_epoch_ends(rec)):
            waiting = opened < 0
            if not waiting.any():
                break
            mean[:], se[:] = np.nan, np.nan
            for j, (w, groups) in enumerate(windows):
                if end >= w and (waiting & (which == j)).any():
                    m, s = batch_means(g[end - w:end], n[end - w:end], groups=groups)
                    mean[j], se[j] = self.stats[w][0][t], self.stats[w][1][t] = float(m), float(s)
            with np.errstate(invalid="ignore"):
                m, s = np.abs(mean[which]), se[which]
                within = waiting & np.where(ci, m + z * s <= tol, m <= np.maximum(z * s, tol))
            if within.any():
                self.verdicts[t] = verdicts.at(int(end))
            count = np.where(within & (self.verdicts[t] == 1.0), count + 1, 0)
            opened = np.where(waiting & (count >= need), t, opened)
        self.opens = {gate: (int(e) if e >= 0 else None) for gate, e in zip(gates, opened)}

    def published(self, window: int, groups: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """What the monitor publishes at every epoch's end, as the fallback reads it: the objective verdict
        (1.0, 0.0, NaN as :func:`objective_verdicts`) and the window's gap (``batch_means`` mean of the last
        ``window`` batch gaps, NaN before ``window`` batches were seen). The verdicts and window means the gate
        replay computed are reused; only the epochs it skipped are computed (memoised per window)."""
        if window not in self._published:
            rec, asked = self.rec, ~np.isnan(self.verdicts)
            verdicts = objective_verdicts(rec, ask=~asked)
            verdicts[asked] = self.verdicts[asked]
            mean = np.array(self.stats[window][0]) if window in self.stats else np.full(rec.epochs, np.nan)
            g, n = train_gaps(rec), rec["batch_n"]
            for t, end in enumerate(_epoch_ends(rec)):
                if end >= window and np.isnan(mean[t]):
                    mean[t] = float(batch_means(g[end - window:end], n[end - window:end], groups=groups)[0])
            self._published[window] = (verdicts, mean)
        return self._published[window]

    def seed_published(self, window: int, verdicts: np.ndarray, mean: np.ndarray) -> None:
        """Set what :meth:`published` returns for ``window`` (values saved from an earlier replay)."""
        if len(verdicts) != self.rec.epochs or len(mean) != self.rec.epochs:
            raise ValueError(f"Expected {self.rec.epochs} epochs of verdicts and gaps, but got {len(verdicts)} and"
                             f" {len(mean)}.")
        self._published[window] = (np.asarray(verdicts, dtype=float), np.asarray(mean, dtype=float))

    def patience_stop(self, start: int | None, patience: int) -> int | None:
        """Memoised :func:`patience_stop` on the val ELBO."""
        if start is None:
            return None
        key = (start, patience)
        if key not in self._es:
            self._es[key] = patience_stop(self.rec["val_elbo"], start, patience)
        return self._es[key]


# ------------------------------------------------------------------------------------------------- rules
def first_run_end(ok: np.ndarray, length: int) -> int | None:
    """The first index that ends ``length`` True values in a row of ``ok``, or None."""
    ok = np.asarray(ok, dtype=bool)
    if length < 1 or len(ok) < length:
        return None
    counts = np.concatenate([[0], np.cumsum(ok)])
    hit = np.nonzero(counts[length:] - counts[:-length] == length)[0]
    return int(hit[0]) + length - 1 if len(hit) else None


def patience_stop(values: np.ndarray, start: int, patience: int) -> int | None:
    """Lightning's ``EarlyStopping(mode="max", min_delta=0, check_finite=True)`` checked at epochs ``start, ...``:
    the first epoch after which the best value since ``start`` has not improved for ``patience`` checks, or a
    non-finite value; None if neither happens."""
    v = np.asarray(values, dtype=float)[start:]
    if len(v) == 0:
        return None
    bad = ~np.isfinite(v)
    first_bad = int(np.argmax(bad)) if bad.any() else len(v)
    v = v[:first_bad]
    stop = None
    if len(v):
        best_before = np.concatenate([[-np.inf], np.maximum.accumulate(v)[:-1]])
        improved = v > best_before
        last = np.maximum.accumulate(np.where(improved, np.arange(len(v)), 0))
        waited = np.nonzero(np.arange(len(v)) - last >= patience)[0]
        stop = int(waited[0]) if len(waited) else None
    if stop is None and first_bad < len(np.asarray(values)[start:]):
        stop = first_bad
    return None if stop is None else start + stop


def budget(rec: Record) -> int | None:
    """Train to the budget."""
    return None


def early_stopping(h: dict, monitor: str, patience: int, gate: float | None = None, mode: str = "arm",
                   consecutive: int = 1) -> int | None:
    """EarlyStopping on ``h[monitor]`` (per epoch), armed at the first epoch that ends ``consecutive`` epochs in a
    row of |``h["train_rel_gap"]``| < ``gate`` (from the start without a gate); that epoch is the first check."""
    if mode != "arm":
        raise ValueError(f"Expected `mode` 'arm', but got {mode!r}.")
    start = 0
    if gate is not None:
        with np.errstate(invalid="ignore"):
            start = first_run_end(np.abs(np.asarray(h["train_rel_gap"], dtype=float)) < gate, consecutive)
        if start is None:
            return None
    return patience_stop(h[monitor], start, patience)


def train_rel_gap(rec: Record) -> np.ndarray:
    """The published epoch train gap (elbo - sum) / max(|sum|, 0.1 D)."""
    return (rec["train_elbo"] - rec["train_sum"]) / np.maximum(np.abs(rec["train_sum"]), REL_GAP_FLOOR * rec.dim)


def todays_rule(rec: Record, tolerance: float = 0.01, gate_epochs: int = 10, patience: int = 10) -> int | None:
    """Today's ``EntropyConvergence``: |train rel gap| < 1 % for 10 epochs in a row, then patience 10."""
    return early_stopping({"train_rel_gap": train_rel_gap(rec), "val_elbo": rec["val_elbo"]}, "val_elbo",
                          patience, gate=tolerance, consecutive=gate_epochs)


def cache_key(rec: Record, configs: tuple[GateConfig, ...]) -> str:
    """What the gate epochs of ``rec`` depend on: its batch arrays, the gates, and the code that decides them
    (this file, the package's ``ObjectiveCheck`` and ``batch_means``)."""
    import hashlib

    digest = hashlib.sha256()
    for key in PER_BATCH:
        if key in rec.arrays:
            digest.update(np.ascontiguousarray(rec[key], dtype=np.float64).tobytes())
    digest.update(repr(sorted({cfg.gate(rec.dim) for cfg in configs})).encode())
    for path in (__file__, inspect.getsourcefile(ObjectiveCheck), inspect.getsourcefile(batch_means)):
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def gate_epoch(rp: Replay, cfg: GateConfig) -> int | None:
    """The epoch the gate opens at (the first one ending E counted epochs in a row), or None."""
    return rp.opens[cfg.gate(rp.rec.dim)]


def gate_rule(rp: Replay, cfg: GateConfig) -> int | None:
    """The rebuilt ``EntropyConvergence``: once the gate opens, EarlyStopping(val ELBO, patience P) from the next
    epoch on. The gate updates in ``on_train_epoch_end``, after that epoch's validation has run, so the callback's
    first counted check is the following epoch's validation."""
    opened = gate_epoch(rp, cfg)
    return rp.patience_stop(None if opened is None else opened + 1, cfg.patience)


# ------------------------------------------------------------------------------------------- the fallback
@dataclass(frozen=True)
class FallbackConfig:
    """The gated fallback of ``EntropyConvergence``: EarlyStopping on the val ELBO (patience P, ``min_delta``) whose
    checks count only while the training loss is the beta = 1 ELBO and the window's gap is within
    ``gap_factor`` times the gate's tolerance (``None``: no gap condition). A check that does not count sets the
    wait to 0 and still raises the best value ("reset")."""

    patience: int
    gap_factor: float | None = 3.0
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < 1:
            raise ValueError(f"Expected `patience` to be an int >= 1, but got {self.patience!r}.")
        if self.gap_factor is not None and not self.gap_factor > 0:
            raise ValueError(f"Expected `gap_factor` > 0 or None, but got {self.gap_factor!r}.")

    @property
    def label(self) -> str:
        gap = "no gap bound" if self.gap_factor is None else f"|gap| <= {self.gap_factor:g} tol"
        delta = f", min_delta {self.min_delta:g}" if self.min_delta else ""
        return f"fallback(P {self.patience}, {gap}{delta})"


def fallback_counts(verdicts: np.ndarray, gap: np.ndarray, bound: float | None) -> np.ndarray:
    """Per training epoch end, the callback's ``fallback_ok``: the objective verdict is 1 (the loss is the beta = 1
    ELBO) and, with a ``bound`` (nats per point), the window's gap is finite with |gap| <= bound."""
    ok = np.asarray(verdicts, dtype=float) == 1.0
    if bound is not None:
        gap = np.asarray(gap, dtype=float)
        with np.errstate(invalid="ignore"):
            ok &= np.isfinite(gap) & (np.abs(gap) <= bound)
    return ok


def fallback_stop(values: np.ndarray, counts: np.ndarray, patience: int, min_delta: float = 0.0) -> int | None:
    """The fallback's patience on ``values`` (the val ELBO, one check per epoch), causal and lagged as the callback
    runs: the check of epoch t (``on_validation_end``) reads ``counts[t - 1]``, set by the previous epoch's
    ``on_train_epoch_end``; the check of epoch 0 never counts. A counted check improves when value > best +
    ``min_delta`` (wait 0), else waits one more and stops at ``patience``; a check that does not count sets the
    wait to 0 and the best to max(best, value). Returns the stop epoch, or None."""
    best, wait = -math.inf, 0
    for t, value in enumerate(np.asarray(values, dtype=float).tolist()):
        if t == 0 or not counts[t - 1]:
            best, wait = max(best, value), 0
        elif value > best + min_delta:
            best, wait = value, 0
        else:
            wait += 1
            if wait >= patience:
                return t
    return None


def earliest(*stops: int | None) -> int | None:
    """The earliest of some stop epochs (None: no stop)."""
    return min((s for s in stops if s is not None), default=None)


def fallback_rule(rp: Replay, gate: GateConfig, fb: FallbackConfig) -> int | None:
    """The fallback alone, next to ``gate``: the monitor's window is the gate's (W batches), the gap bound
    ``fb.gap_factor`` times the gate's tolerance in nats per point."""
    verdicts, gap = rp.published(gate.window, gate.groups)
    bound = None if fb.gap_factor is None else fb.gap_factor * gate.tol_nats(rp.rec.dim)
    return fallback_stop(rp.rec["val_elbo"], fallback_counts(verdicts, gap, bound), fb.patience, fb.min_delta)


def combined_rule(rp: Replay, gate: GateConfig, fb: FallbackConfig) -> int | None:
    """``EntropyConvergence`` with the fallback: the earlier of the gate rule's stop and the fallback's."""
    return earliest(gate_rule(rp, gate), fallback_rule(rp, gate, fb))


def combined_label(gate: GateConfig, fb: FallbackConfig) -> str:
    return f"{gate.label} or {fb.label}"


# ------------------------------------------------------------------------------------------------ scoring
def restore_epoch(rec: Record, stop: int) -> int:
    """ModelCheckpoint(monitor=val ELBO, mode="max") up to the stop: the best finite val ELBO epoch (else stop)."""
    seen = rec["val_elbo"][:stop + 1]
    return int(np.nanargmax(seen)) if np.isfinite(seen).any() else stop


def beta1_epoch(rec: Record) -> int:
    """The first epoch from which every batch trains with beta = 1 (0 without ``batch_beta``; epochs if never)."""
    if "batch_beta" not in rec.arrays:
        return 0
    off = np.nonzero(np.abs(rec["batch_beta"] - 1.0) > 1e-12)[0]
    return 0 if len(off) == 0 else int(rec["batch_epoch"][off[-1]]) + 1


def score(rec: Record, stop: int | None) -> dict:
    """A rule's stop on one run, scored against the hidden test ELBO: stop epoch, % of the budget, whether it
    fired, the shortfall (best test ELBO over the budget minus the test ELBO there) without and with the
    restore, and whether the stop broke the never-stop target."""
    test = rec["test_elbo"]
    fired = stop is not None and stop + 1 < rec.epochs
    at = rec.epochs - 1 if stop is None else stop
    best = float(np.nanmax(test))
    restored = restore_epoch(rec, at)

    def short(epoch: int) -> float:
        return best - float(test[epoch]) if math.isfinite(test[epoch]) else math.inf

    forbidden = fired and (rec.variant in NEVER or (rec.variant == "warmup" and at < beta1_epoch(rec)))
    return {"stop": at, "stop_pct": 100.0 * (at + 1) / rec.budget, "fired": fired, "plain": short(at),
            "restore": short(restored), "restore_epoch": restored, "forbidden": forbidden}


def eligible(rec: Record) -> bool:
    """Counted in the fire rate: a beta = 1 run whose best test epoch comes before 80 % of the budget."""
    return rec.variant in BETA1 and int(np.nanargmax(rec["test_elbo"])) + 1 < 0.8 * rec.budget
