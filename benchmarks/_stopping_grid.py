"""The rules ``stopping.py`` compares, how a rule's runs are summarised, and how the winner is chosen."""

from __future__ import annotations

import functools
import itertools
import math
import statistics
from dataclasses import dataclass

import numpy as np
from _stopping_rules import Rule, early_stopping, first_of, gap_rule, monitor_label, overfit, plateau, replay

#: The selection rule, fixed before any result was seen (printed with the results). "Rule variant" means a
#: candidate's variant: the baselines are the yardsticks the targets are defined by (the code did so from the
#: start; the words "candidate" and this note were added after the tuning results were seen).
SELECTION = (
    "On the tuning seeds, over every candidate rule variant (a rule without or with a best-checkpoint restore):"
    " (1) admissible: worst shortfall <= 1.0 nat per point, median shortfall <= that of EarlyStopping(val ELBO,"
    " patience 10) without restore, median stop (% of budget) <= that of EarlyStopping(patience 20) without"
    " restore; (2) admissible variants that also beat EarlyStopping(patience 10) on both medians (lower median"
    " shortfall and earlier median stop) come first; (3) then the lowest median shortfall, ties within 0.01"
    " nats going to the earlier median stop, then to the rule with fewer parameters. If nothing is admissible,"
    " the lowest worst shortfall among the variants that meet the two median conditions wins, as a miss."
)
#: Added AFTER the tuning results showed that no candidate meets all three targets: the issue's own order
#: (worst shortfall first). Its pick is tested on the held-out seeds like the other.
SELECTION_WORST_FIRST = (
    "Worst-first (added after the tuning results were seen, when no candidate met all three targets): among the"
    " candidate variants with worst shortfall <= 1.0 nat and median shortfall <= that of EarlyStopping(val ELBO,"
    " patience 10) on the tuning seeds, the earliest median stop; stops within 1 percentage point count as tied"
    " and go to the rule with fewer parameters, then to the lower median shortfall."
)
WORST_TARGET = 1.0
WITHIN = 0.1  # nats per point: a run "within" is no more than this short of its best


def _gated(text: str, gate: float | None) -> str:
    return f"{text} after |train rel gap| < {gate:g}" if gate is not None else text


def baselines() -> list[Rule]:
    rules = [Rule("fixed budget", "baseline", lambda h: None, baseline=True, entropy=False)]
    for p in (5, 10, 20):
        rules.append(Rule(f"EarlyStopping(val ELBO, patience {p})", "baseline",
                          functools.partial(early_stopping, monitor="val_elbo", patience=p), baseline=True,
                          params={"patience": p}, entropy=False))
    for stage in ("val", "train"):
        rules.append(Rule(f"today's gap rule on {stage} (|rel gap| < 1 %, 3 checks)", "baseline",
                          functools.partial(gap_rule, stage=stage), baseline=True, params={"stage": stage}))
    for p in (5, 10, 20):
        rules.append(Rule(f"EarlyStopping(val entropy sum, patience {p})", "baseline",
                          functools.partial(early_stopping, monitor="val_sum", patience=p), baseline=True,
                          params={"patience": p}))
    return rules


def candidates() -> list[Rule]:
    rules: list[Rule] = []
    es, pl = early_stopping, plateau
    for p in (10, 20, 40):
        rules.append(Rule(f"ES(train sum, patience {p})", "ES on the train entropy sum",
                          functools.partial(es, monitor="train_sum", patience=p), params={"p": p}))
    for monitor, label in (("val_elbo", "val ELBO"), ("val_sum", "val sum")):
        for p, g in itertools.product((5, 10, 20), (0.01, 0.02, 0.05)):
            rules.append(Rule(_gated(f"ES({label}, patience {p})", g), f"ES({label}), train gap as warm-up gate",
                              functools.partial(es, monitor=monitor, patience=p, gate=g), params={"p": p, "gate": g}))
    for monitor, label in (("val_elbo", "val ELBO"), ("val_elbo_dn:0.1", "val sum + EMA_0.1(val gap)")):
        extra = {"alpha": 0.1} if monitor.startswith("val_elbo_dn") else {}
        for p, g in itertools.product((5, 10, 20), (0.01, 0.02, 0.05)):
            rules.append(Rule(f"ES({label}, patience {p}, counting only while |train rel gap| < {g:g})",
                              f"ES({label}), counting only while the train gap is closed",
                              functools.partial(es, monitor=monitor, patience=p, gate=g, mode="count"),
                              restore=monitor, params={"p": p, "gate": g, **extra}))
        for p, growth, g in itertools.product((10, 20), (0.25, 0.5), (None, 0.02)):
            name = f"ES({label}, patience max({p}, {growth:g} x best epoch))"
            name = name if g is None else name[:-1] + f", counting only while |train rel gap| < {g:g})"
            rules.append(Rule(name, f"ES({label}) with growing patience",
                              functools.partial(es, monitor=monitor, patience=p, gate=g, mode="count",
                                                growth=growth),
                              restore=monitor, params={"p": p, "growth": growth, "gate": g, **extra},
                              entropy=monitor != "val_elbo" or g is not None))
    for monitor, label in (("val_elbo", "val ELBO"), ("val_elbo_dn:0.1", "val sum + EMA_0.1(val gap)")):
        extra = {"alpha": 0.1} if monitor.startswith("val_elbo_dn") else {}
        for p, g, k in itertools.product((10, 20), (0.01, 0.02), (3, 5, 10)):
            rules.append(Rule(f"ES({label}, patience {p}, after {k} epochs in a row |train rel gap| < {g:g})",
                              f"ES({label}), train gap closed for k epochs as warm-up gate",
                              functools.partial(es, monitor=monitor, patience=p, gate=g, consecutive=k),
                              restore=monitor, params={"p": p, "gate": g, "k": k, **extra}))
        gates = [(k, "arm") for k in (5, 10)] + [(1, "count")]
        for p, g, (k, mode) in itertools.product((10, 20), (0.01, 0.02, 0.05), gates):
            what = (f"after {k} epochs in a row" if mode == "arm" else "counting only while") + \
                   f" |EMA_0.2(train rel gap)| < {g:g}"
            rules.append(Rule(f"ES({label}, patience {p}, {what})",
                              f"ES({label}), smoothed train gap as gate",
                              functools.partial(es, monitor=monitor, patience=p, gate=g, mode=mode, smooth=0.2,
                                                consecutive=k),
                              restore=monitor, params={"p": p, "gate": g, "k": k, "smooth": 0.2, **extra}))
    for a, p, g in itertools.product((0.05, 0.1, 0.2), (5, 10, 20), (None, 0.02, 0.05)):
        monitor = f"val_elbo_dn:{a:g}"
        rules.append(Rule(_gated(f"ES(val sum + EMA_{a:g}(val gap), patience {p})", g), "ES on the denoised val ELBO",
                          functools.partial(es, monitor=monitor, patience=p, gate=g), restore=monitor,
                          params={"alpha": a, "p": p, "gate": g}))
    labels = {"train_sum": "train sum", "val_sum": "val sum", "val_elbo_dn:0.1": "val sum + EMA_0.1(val gap)",
              "val_elbo": "val ELBO"}
    for monitor, w, tol, g in itertools.product(labels, (10, 20, 40), (1e-3, 3e-3, 1e-2), (None, 0.02, 0.05)):
        rules.append(Rule(_gated(f"plateau({labels[monitor]}, window {w}, tol {tol:g})", g),
                          f"plateau of the {labels[monitor]}",
                          functools.partial(pl, monitor=monitor, window=w, tolerance=tol, gate=g),
                          params={"window": w, "tol": tol, "gate": g}, entropy=monitor != "val_elbo" or g is not None))
    for drop, g in itertools.product((0.01, 0.02, 0.05), (0.02, 0.05)):
        rules.append(Rule(_gated(f"overfit(EMA val rel gap drops {drop:g})", g), "overfitting sign",
                          functools.partial(overfit, drop=drop, gate=g), params={"drop": drop, "gate": g}))
    for w, tol, g, drop in itertools.product((20, 40), (1e-3, 3e-3), (0.02, 0.05), (0.01, 0.02, 0.05)):
        rules.append(Rule(_gated(f"plateau(train sum, window {w}, tol {tol:g}) or overfit(drop {drop:g})", g),
                          "train-sum plateau or overfitting sign",
                          first_of(functools.partial(pl, monitor="train_sum", window=w, tolerance=tol, gate=g),
                                   functools.partial(overfit, drop=drop, gate=g)),
                          params={"window": w, "tol": tol, "gate": g, "drop": drop}))
    for w, tol, g, p in itertools.product((20, 40), (1e-3, 3e-3), (None, 0.02), (10, 20)):
        rules.append(Rule(f"{_gated(f'plateau(train sum, window {w}, tol {tol:g})', g)}"
                          f" or ES(val sum + EMA_0.1(val gap), patience {p})",
                          "train-sum plateau or ES on the denoised val ELBO",
                          first_of(functools.partial(pl, monitor="train_sum", window=w, tolerance=tol, gate=g),
                                   functools.partial(es, monitor="val_elbo_dn:0.1", patience=p)),
                          restore="val_elbo_dn:0.1", params={"window": w, "tol": tol, "gate": g, "p": p}))
    return rules


@dataclass
class Summary:
    """One rule variant over a set of runs."""

    rule: Rule
    restore: str | None  # the restore monitor, None without restore
    n: int
    stop_pct: float  # median stop, % of budget
    stop_epochs: float  # median stop epoch (1-based: epochs trained)
    median: float
    worst: float
    median_rel: float
    worst_rel: float
    within: float  # share of runs within WITHIN nats
    fired: float  # share of runs stopped before the budget

    @property
    def label(self) -> str:
        return self.rule.name + (f" + restore(best {monitor_label(self.restore)})" if self.restore else "")


def summarise(rule: Rule, results: list[dict], restore: str | None) -> Summary:
    key = f"restore:{restore}" if restore else "plain"
    short = [r[key] for r in results]
    return Summary(rule, restore, len(results), 100 * statistics.median(r["stop_frac"] for r in results),
                   statistics.median(r["stop"] + 1 for r in results), statistics.median(short), max(short),
                   statistics.median(r[f"{key}_rel"] for r in results), max(r[f"{key}_rel"] for r in results),
                   float(np.mean([s <= WITHIN for s in short])),
                   float(np.mean([r["stop"] + 1 < r["epochs"] for r in results])))


def evaluate(rules: list[Rule], histories: list[dict]) -> dict[str, list[dict]]:
    """Per rule name: the replay of every history (in the order given)."""
    out = {}
    for rule in rules:
        out[rule.name] = [{**replay(rule, h), "epochs": len(h["test_elbo"]), "run": h["name"], "seed": h["seed"]}
                          for h in histories]
    return out


def select(summaries: list[Summary], es10: Summary, es20: Summary) -> tuple[Summary, bool]:
    """The winner by SELECTION among `summaries` (tuning seeds), and whether it is admissible."""
    medians_ok = [s for s in summaries if s.median <= es10.median + 1e-12 and s.stop_pct <= es20.stop_pct]
    admissible = [s for s in medians_ok if s.worst <= WORST_TARGET]
    if not admissible:
        return min(medians_ok, key=lambda s: s.worst), False

    def key(s: Summary) -> tuple:
        moonshot = s.median < es10.median and s.stop_pct < es10.stop_pct
        return (not moonshot, math.floor(s.median / 0.01 + 1e-9), s.stop_pct, n_params(s.rule))
    return min(admissible, key=key), True


def select_worst_first(summaries: list[Summary], es10: Summary) -> Summary | None:
    """The pick by SELECTION_WORST_FIRST among `summaries` (tuning seeds); None if nothing qualifies."""
    ok = [s for s in summaries if s.worst <= WORST_TARGET and s.median <= es10.median + 1e-12]
    if not ok:
        return None
    earliest = min(s.stop_pct for s in ok)
    tied = [s for s in ok if s.stop_pct <= earliest + 1.0]
    return min(tied, key=lambda s: (n_params(s.rule), s.median, s.stop_pct))


def n_params(rule: Rule) -> int:
    return sum(v is not None for v in rule.params.values())
