"""Phase 2 of ``stopping.py``: stopping rules as pure functions over a run's per-epoch history.

A rule sees, at the end of each epoch ``t`` (0-based), only what a callback can see: the published
``train_*``/``val_*`` ``sum``, ``elbo``, ``gap``, ``rel_gap`` of epochs ``0 ... t`` (``val_elbo`` is
also the user's own logged validation ELBO) and ``D``. It returns the epoch at whose end training
stops, or ``None`` (the budget). Every rule here is causal: a stop at ``t`` reads no value after ``t``.
The ground truth ``test_elbo`` is only read by :func:`replay`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from _stopping_train import REL_GAP_FLOOR, SIGNALS

History = dict[str, np.ndarray]  # SIGNALS (and the derived "val_elbo_dn:<alpha>") -> (epochs,), plus "dim"


def as_history(run: dict) -> History:
    h = {key: np.asarray(run["history"][key], dtype=float) for key in (*SIGNALS, "test_elbo")}
    h["dim"] = np.asarray(run["dim"])
    return h


def scale(value: float, dim: int) -> float:
    """The package's relative-gap denominator: max(|value|, 0.1 D)."""
    return max(abs(value), REL_GAP_FLOOR * dim)


def denoised_val_elbo(h: History, alpha: float) -> np.ndarray:
    """val_sum + EMA(val_gap): the smooth entropy sum plus a smoothed held-out gap (causal)."""
    key = f"val_elbo_dn:{alpha:g}"
    if key not in h:
        ema = np.empty_like(h["val_gap"])
        acc = 0.0
        for t, gap in enumerate(h["val_gap"]):
            acc = gap if t == 0 else (1 - alpha) * acc + alpha * (gap if math.isfinite(gap) else acc)
            ema[t] = acc
        h[key] = h["val_sum"] + ema
    return h[key]


def signal(h: History, name: str) -> np.ndarray:
    if name.startswith("val_elbo_dn:"):
        return denoised_val_elbo(h, float(name.split(":")[1]))
    return h[name]


def gate_epoch(h: History, gate: float | None) -> int:
    """First epoch with |train rel gap| < gate (0 without a gate; len(h) if never)."""
    if gate is None:
        return 0
    hits = np.flatnonzero(np.abs(h["train_rel_gap"]) < gate)
    return int(hits[0]) if hits.size else len(h["train_rel_gap"])


# ------------------------------------------------------------------------------------------- rules
def budget(h: History) -> int | None:
    return None


def early_stopping(h: History, monitor: str, patience: int, gate: float | None = None) -> int | None:
    """Lightning's EarlyStopping(mode="max", min_delta=0), counting from the gate epoch on."""
    values = signal(h, monitor)
    best, wait = -math.inf, 0
    for t in range(gate_epoch(h, gate), len(values)):
        if values[t] > best:
            best, wait = values[t], 0
        else:  # also a NaN: Lightning counts a non-finite value as no improvement (check_finite stops)
            wait += 1
            if wait >= patience:
                return t
    return None


def gap_rule(h: History, stage: str, tolerance: float = 0.01, patience: int = 3) -> int | None:
    """Today's EntropyMonitor rule: |rel gap| < tolerance for `patience` consecutive checks."""
    count = 0
    for t, gap in enumerate(np.abs(h[f"{stage}_rel_gap"])):
        count = count + 1 if gap < tolerance else 0
        if count >= patience:
            return t
    return None


def plateau(h: History, monitor: str, window: int, tolerance: float, gate: float | None = None,
            patience: int = 1) -> int | None:
    """Stop when the least-squares slope of `monitor` over the last `window` epochs, times `window`
    (the gain projected over the next window), stays below tolerance * max(|value|, 0.1 D) for
    `patience` checks in a row, from the gate epoch on."""
    values, dim = signal(h, monitor), int(h["dim"])
    if len(values) < window:
        return None
    x = np.arange(window) - (window - 1) / 2
    gain = np.correlate(values, x, mode="valid") / (x @ x) * window  # gain[i]: window ending at i + window - 1
    floor = np.maximum(np.abs(values[window - 1:]), REL_GAP_FLOOR * dim)
    ok = gain < tolerance * floor  # NaN compares False
    ok[:max(0, gate_epoch(h, gate) - (window - 1))] = False
    return _first_run(ok, patience, offset=window - 1)


def overfit(h: History, drop: float, gate: float, alpha: float = 0.1) -> int | None:
    """The held-out ELBO sinking below the entropy sum: once |train rel gap| < gate (the training set's
    variances are at their stationary values), stop when an EMA of the val rel gap has fallen `drop`
    below its highest value since then."""
    start = gate_epoch(h, gate)
    ema, top = math.nan, -math.inf
    for t in range(start, len(h["val_rel_gap"])):
        gap = h["val_rel_gap"][t]
        if math.isfinite(gap):
            ema = gap if math.isnan(ema) else (1 - alpha) * ema + alpha * gap
        top = max(top, ema)
        if ema < top - drop:
            return t
    return None


def _first_run(ok: np.ndarray, patience: int, offset: int = 0) -> int | None:
    """First index (+ offset) that ends `patience` consecutive True values of `ok`."""
    count = 0
    for i, flag in enumerate(ok):
        count = count + 1 if flag else 0
        if count >= patience:
            return i + offset
    return None


def first_of(*rules: Callable[[History], int | None]) -> Callable[[History], int | None]:
    def rule(h: History) -> int | None:
        stops = [s for s in (r(h) for r in rules) if s is not None]
        return min(stops) if stops else None
    return rule


# ------------------------------------------------------------------------------------------ replay
@dataclass
class Rule:
    """A named rule with the monitor its best-checkpoint restore would use."""

    name: str
    family: str
    fn: Callable[[History], int | None]
    restore: str = "val_elbo"  # ModelCheckpoint(monitor=...) over the epochs up to the stop
    baseline: bool = False
    params: dict = field(default_factory=dict)


def replay(rule: Rule, h: History) -> dict:
    """Stop and restore epochs of `rule` on one run, and the shortfalls of the ground truth there."""
    test, dim = h["test_elbo"], int(h["dim"])
    epochs = len(test)
    stop = rule.fn(h)
    stop = epochs - 1 if stop is None else stop
    monitor = signal(h, rule.restore)[:stop + 1]
    restored = int(np.nanargmax(monitor)) if np.isfinite(monitor).any() else stop
    best = float(np.nanmax(test))
    out = {"stop": stop, "stop_frac": (stop + 1) / epochs, "restored": restored, "scale": scale(best, dim)}
    for key, epoch in (("plain", stop), ("restore", restored)):
        value = test[epoch]
        shortfall = best - value if math.isfinite(value) else math.inf
        out[key] = shortfall
        out[f"{key}_rel"] = shortfall / out["scale"]
    return out
