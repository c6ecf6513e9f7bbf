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
    cfg = run["config"]
    h.update(name=f"{cfg['data']}_lr{cfg['lr']:g}_s{cfg['seed']}", data=cfg["data"], lr=cfg["lr"], seed=cfg["seed"])
    return h


def scale(value: float, dim: int) -> float:
    """The package's relative-gap denominator: max(|value|, 0.1 D)."""
    return max(abs(value), REL_GAP_FLOOR * dim)


def denoised_val_elbo(h: History, alpha: float) -> np.ndarray:
    """val_sum + EMA(val_gap): the smooth entropy sum plus a smoothed held-out gap (causal)."""
    key = f"val_elbo_dn:{alpha:g}"
    if key not in h:
        h[key] = h["val_sum"] + ema(h["val_gap"], alpha)
    return h[key]


def signal(h: History, name: str) -> np.ndarray:
    if name.startswith("val_elbo_dn:"):
        return denoised_val_elbo(h, float(name.split(":")[1]))
    return h[name]


def ema(values: np.ndarray, alpha: float) -> np.ndarray:
    """Causal exponential moving average (a non-finite value keeps the previous average)."""
    out, acc = np.empty_like(values), math.nan
    for t, v in enumerate(values):
        if math.isfinite(v):
            acc = v if math.isnan(acc) else (1 - alpha) * acc + alpha * v
        out[t] = acc
    return out


def gap_closed(h: History, gate: float | None, smooth: float | None = None) -> np.ndarray:
    """Per epoch: |train rel gap| < gate (all True without a gate); with `smooth`, the EMA of the gap."""
    gap = h["train_rel_gap"]
    if gate is None:
        return np.ones(len(gap), bool)
    if smooth is not None:
        gap = ema(gap, smooth)
    return np.abs(gap) < gate  # NaN compares False


def gate_epoch(h: History, gate: float | None, smooth: float | None = None, consecutive: int = 1) -> int:
    """First epoch ending `consecutive` closed-gap epochs in a row (0 without a gate; len(h) if never)."""
    if gate is None:
        return 0
    hit = _first_run(gap_closed(h, gate, smooth), consecutive)
    return len(h["train_rel_gap"]) if hit is None else hit


# ------------------------------------------------------------------------------------------- rules
def budget(h: History) -> int | None:
    return None


def early_stopping(h: History, monitor: str, patience: int, gate: float | None = None, mode: str = "arm",
                   growth: float = 0.0, smooth: float | None = None, consecutive: int = 1) -> int | None:
    """Lightning's EarlyStopping(mode="max", min_delta=0) on `monitor`, with an optional train-gap gate.

    The gap is "closed" at an epoch when |train rel gap| < gate (with `smooth`, its EMA).
    ``mode="arm"``: nothing counts before the first run of `consecutive` closed epochs.
    ``mode="count"``: an epoch without improvement adds to the wait only while the gap is closed
    (while it is open the model is not at a stationary point: keep training).
    ``growth`` > 0 lets the patience grow with the run: stop after max(patience, growth * best epoch)
    epochs without improvement (a run that took 600 epochs to improve waits longer than one that took 60).
    """
    values = signal(h, monitor)
    closed = gap_closed(h, gate, smooth)
    start = gate_epoch(h, gate, smooth, consecutive) if mode == "arm" else 0
    best, best_t, wait = -math.inf, 0, 0
    for t in range(start, len(values)):
        if values[t] > best:
            best, best_t, wait = values[t], t, 0
        elif mode == "arm" or closed[t]:  # also a NaN: Lightning counts a non-finite value as no improvement
            wait += 1
            if wait >= max(patience, growth * (best_t + 1)):
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
    restore: str = "val_elbo"  # the rule's own restore monitor (ModelCheckpoint(monitor=...) up to the stop)
    baseline: bool = False
    params: dict = field(default_factory=dict)
    entropy: bool = True  # reads an entropy signal (sum, gap); False: only the val ELBO (stock-callback material)


MONITOR_LABELS = {"val_elbo": "val ELBO", "val_sum": "val sum"}


def monitor_label(monitor: str) -> str:
    if monitor.startswith("val_elbo_dn:"):
        return f"val sum + EMA_{monitor.split(':')[1]}(val gap)"
    return MONITOR_LABELS.get(monitor, monitor)


def restores(rule: Rule) -> list[str | None]:
    """The variants of a rule: no restore, ModelCheckpoint(monitor=val ELBO), and the rule's own monitor."""
    return list(dict.fromkeys([None, "val_elbo", rule.restore]))


def replay(rule: Rule, h: History) -> dict:
    """Stop epoch of `rule` on one run, its restore epochs, and the ground truth's shortfalls there:
    ``plain`` at the stop, ``restore:<monitor>`` at the best epoch of <monitor> up to the stop."""
    test, dim = h["test_elbo"], int(h["dim"])
    epochs = len(test)
    stop = rule.fn(h)
    stop = epochs - 1 if stop is None else stop
    best = float(np.nanmax(test))
    out = {"stop": stop, "stop_frac": (stop + 1) / epochs, "scale": scale(best, dim)}
    for monitor in restores(rule):
        epoch = stop
        if monitor is not None:
            seen = signal(h, monitor)[:stop + 1]
            epoch = int(np.nanargmax(seen)) if np.isfinite(seen).any() else stop
        key = "plain" if monitor is None else f"restore:{monitor}"
        shortfall = best - test[epoch] if math.isfinite(test[epoch]) else math.inf
        out[key], out[f"{key}_rel"], out[f"{key}_epoch"] = shortfall, shortfall / out["scale"], epoch
    return out
