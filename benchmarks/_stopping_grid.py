"""The rules ``stopping.py`` replays, how a rule's runs are summarised, and how the default is chosen."""

from __future__ import annotations

import itertools
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _stopping_rules import (
    BETA1,
    GATE_FORMS,
    FallbackConfig,
    GateConfig,
    Record,
    Replay,
    cache_key,
    combined_rule,
    eligible,
    gate_rule,
    score,
    todays_rule,
)

TUNING_FAMILIES = ("ppca", "pca_ring", "swiss_roll", "digits", "eight_gaussians")
FIRE_TARGET = 0.9
WORST_TARGET = 1.0  # nats per point, with the restore
STOP_TIE = 1.0  # percentage points of median stop counted as a tie
WORST_TIE = 0.05  # nats of worst shortfall counted as a tie (SELECTION_WORST_FIRST)

#: The selection rule, fixed before any result was seen (printed with the results).
SELECTION = (
    "Chosen on the TUNING families (ppca, pca_ring, swiss_roll, digits, eight_gaussians; all their seeds,"
    " learning rates and variants) over every config of the gate rule (W, z, tol, E, P; G = 10), each scored"
    " with the best-checkpoint restore (the stop does not depend on it). A config is admissible when on those"
    " runs (1) it fires in >= 90 % of the eligible runs (beta = 1 runs, variants mean and sum, whose best test"
    " epoch comes before 80 % of the budget); (2) its worst shortfall over the beta = 1 runs is <= 1 nat per"
    " point; (3) its median stop (% of budget) over the beta = 1 runs is <= that of EarlyStopping(val ELBO,"
    " patience 20) on the same runs; (4) it stops no beta4, freebits or scaled run and no warm-up run before"
    " beta reaches 1. Among the admissible configs the earliest median stop wins; configs within 1 percentage"
    " point of it count as tied and go to the simpler one: E = 1 before E = 3, tol in nats before tol per data"
    " dimension, then the lower median shortfall, then the lower worst shortfall, then the smaller W, z and P."
    " If none is admissible, the config that misses the fewest of (1)-(4) wins, then the lower worst shortfall,"
    " then the earlier median stop, and it is reported as a miss. The chosen config is then reported unchanged"
    " on the HELD-OUT families (all the others) and on all runs."
)

#: The second selection rule, added after the first results were seen; its pick is the default reported.
SELECTION_WORST_FIRST = (
    "Added after the first results were seen (the pre-stated selection found no admissible config): among the"
    " configs that, on the TUNING families, fire in >= 90 % of the eligible runs and stop no never-stop run, the"
    " lowest worst shortfall with the restore over the beta = 1 runs wins; worst shortfalls within 0.05 nats of"
    " the lowest count as tied and go to the earlier median stop, then to the simpler config (E = 1 before E = 3,"
    " then the smaller W, z and P; a tie left after that goes to the first config in grid order). If no config"
    " fires that often without a forbidden stop, the same order runs over all configs and it is reported as a"
    " miss. This pick is the default reported below, unchanged, on the HELD-OUT families and on all runs."
)

#: The fallback stage, stated before its results were computed; its pick is the shipped rule reported.
SELECTION_FALLBACK = (
    "Added after the held-out results of the gate alone had been seen (a second look at the held-out families):"
    " the gate chosen above is kept, and a gated fallback is chosen next to it on the TUNING families only. The"
    " fallback is EarlyStopping on the validation ELBO (min_delta 0) whose checks count only while the training"
    " loss is the beta = 1 ELBO and the window's gap (the gate's W batches) is within a factor times the gate's"
    " tolerance, each check reading the values of the training epoch before it; a check that does not count sets"
    " the wait to 0 and still raises the best value. The run stops at the earlier of the gate rule and the"
    " fallback. Variants: patience in (10, 15, 20, 30) x gap factor in (3, 10, no gap condition), each with the"
    " restore. Admissible: fires in >= 90 % of the eligible tuning runs and stops no never-stop run. Among them"
    " the lowest worst shortfall wins; worst shortfalls within 0.05 nats of the lowest count as tied and go to the"
    " lower median stop, then the smaller patience, then the smaller gap factor (no gap condition last). If none"
    " is admissible, the same order runs over all variants and it is reported as a miss. The pick, with the gate,"
    " is EntropyConvergence() reported below on the HELD-OUT families and on all runs."
)

FALLBACK_GRID = {"patience": (10, 15, 20, 30), "gap_factor": (3.0, 10.0, None)}

GRID = {"form": GATE_FORMS, "window": (32, 64, 128), "z": (1.0, 2.0),
        "tol": ((0.1, "nats"), (0.25, "nats"), (0.5, "nats"), (1.0, "nats"), (0.005, "D"), (0.01, "D"), (0.02, "D")),
        "epochs": (1, 3), "patience": (5, 10, 20)}


def grid() -> list[GateConfig]:
    """Every gate config of ``GRID``."""
    return [GateConfig(w, z, tol, unit, e, p, form=form) for form, w, z, (tol, unit), e, p in
            itertools.product(GRID["form"], GRID["window"], GRID["z"], GRID["tol"], GRID["epochs"],
                              GRID["patience"])]


def fallback_grid() -> list[FallbackConfig]:
    """Every fallback variant of ``FALLBACK_GRID`` (min_delta 0)."""
    return [FallbackConfig(p, k) for p, k in itertools.product(FALLBACK_GRID["patience"],
                                                                 FALLBACK_GRID["gap_factor"])]


def _es(patience: int) -> Callable[[Replay], int | None]:
    return lambda rp: rp.patience_stop(0, patience)


ES10, ES20 = "EarlyStopping(val ELBO, patience 10)", "EarlyStopping(val ELBO, patience 20)"
TODAY = "the rule before: today's rule (|train rel gap| < 1 % for 10 epochs, then patience 10)"
BUDGET = "fixed budget"
SHIPPED = "EntropyConvergence()"


def gate_alone_label(gate: GateConfig) -> str:
    """The headline label of the gate rule without the fallback."""
    return f"the gate alone (the grid's pick): {gate.label}"


def shipped_label(gate: GateConfig, fb: FallbackConfig) -> str:
    """The headline label of the shipped rule: the gate or the fallback."""
    return f"{SHIPPED}: {gate.label} or {fb.label}"
BASELINES: dict[str, Callable[[Replay], int | None]] = {
    BUDGET: lambda rp: None,
    ES10: _es(10),
    ES20: _es(20),
    TODAY: lambda rp: todays_rule(rp.rec),
}


def replay_all(records: list[Record], configs: list[GateConfig], log: Callable[[str], None] = print,
               cache: Path | None = None) -> tuple[dict[str, list[dict]], list[Replay]]:
    """Per rule label (the baselines and every gate config), the score of every record (in the order given).

    With ``cache`` (a folder), each run's gate epochs are saved there and read back while the run's batches, the
    gates and the deciding code are unchanged (:func:`cache_key`)."""
    results: dict[str, list[dict]] = {name: [] for name in BASELINES}
    results.update({cfg.label: [] for cfg in configs})
    replays, gates = [], tuple(configs)
    for i, rec in enumerate(records):
        rp = _cached_replay(rec, gates, cache)
        replays.append(rp)
        for name, fn in BASELINES.items():
            results[name].append(score(rec, fn(rp)))
        for cfg in configs:
            results[cfg.label].append(score(rec, gate_rule(rp, cfg)))
        if (i + 1) % 20 == 0:
            log(f"  replayed {i + 1} of {len(records)} runs")
    return results, replays


def _cached_replay(rec: Record, configs: tuple[GateConfig, ...], cache: Path | None) -> Replay:
    if cache is None:
        return Replay(rec, configs)
    path, key = cache / f"{rec.name}.json", cache_key(rec, configs)
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            return Replay(rec, configs, opens={tuple(gate): epoch for gate, epoch in saved["opens"]})
    rp = Replay(rec, configs)
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "opens": [[list(gate), epoch] for gate, epoch in rp.opens.items()]}))
    return rp


def replay_fallbacks(records: list[Record], replays: list[Replay], gate: GateConfig,
                     variants: list[FallbackConfig], cache: Path | None = None) -> dict[FallbackConfig, list[dict]]:
    """Per fallback variant, the score of every record (in the order given) of ``gate`` or that fallback.

    With ``cache`` (a folder), each run's published verdicts and window gaps are saved there and read back while
    the run's batches and the deciding code are unchanged."""
    results: dict[FallbackConfig, list[dict]] = {fb: [] for fb in variants}
    for rec, rp in zip(records, replays):
        _cached_published(rp, gate, cache)
        for fb in variants:
            results[fb].append(score(rec, combined_rule(rp, gate, fb)))
    return results


def _cached_published(rp: Replay, gate: GateConfig, cache: Path | None) -> None:
    if cache is None:
        return
    path = cache / f"{rp.rec.name}.published-W{gate.window}-G{gate.groups}.json"
    key = f"{cache_key(rp.rec, ())}-W{gate.window}-G{gate.groups}"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            rp.seed_published(gate.window, np.array(saved["verdicts"], dtype=float),
                              np.array(saved["gap"], dtype=float))
            return
    verdicts, gap = rp.published(gate.window, gate.groups)
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "verdicts": verdicts.tolist(), "gap": gap.tolist()}))


@dataclass
class Summary:
    """One rule (with or without restore) over a set of runs."""

    label: str
    restore: bool
    runs: int  # beta = 1 runs scored
    stop_pct: float  # median stop over them, % of budget
    stop_epochs: float
    median: float  # shortfall, nats per point
    worst: float
    eligible: int
    fire: float  # share of the eligible runs stopped before the budget (NaN without any)
    never: int  # runs that must not be stopped (beta4, freebits, scaled, warm-up)
    forbidden: int  # of those, stopped where they must not be

    @property
    def name(self) -> str:
        return self.label + (" + restore" if self.restore else "")


def summarise(label: str, scores: list[dict], records: list[Record], restore: bool) -> Summary | None:
    """The summary of one rule over the runs with the given scores (None without a beta = 1 run)."""
    key = "restore" if restore else "plain"
    beta1 = [(s, r) for s, r in zip(scores, records) if r.variant in BETA1]
    if not beta1:
        return None
    elig = [s for s, r in beta1 if eligible(r)]
    never = [s for s, r in zip(scores, records) if r.variant not in BETA1 and r.variant != "sasa"]
    short = [s[key] for s, _ in beta1]
    return Summary(label, restore, len(beta1), statistics.median(s["stop_pct"] for s, _ in beta1),
                   statistics.median(s["stop"] + 1 for s, _ in beta1), statistics.median(short), max(short),
                   len(elig), sum(s["fired"] for s in elig) / len(elig) if elig else float("nan"),
                   len(never), sum(s["forbidden"] for s in never))


def subset(results: dict[str, list[dict]], records: list[Record], keep: Callable[[Record], bool]
           ) -> tuple[dict[str, list[dict]], list[Record]]:
    idx = [i for i, r in enumerate(records) if keep(r)]
    return {k: [v[i] for i in idx] for k, v in results.items()}, [records[i] for i in idx]


def targets(s: Summary, es20: Summary) -> dict[str, bool]:
    """The four targets of one summary (a fire rate without eligible runs counts as met)."""
    return {"fire": not s.fire < FIRE_TARGET, "worst": s.worst <= WORST_TARGET,
            "stop": s.stop_pct <= es20.stop_pct + 1e-9, "never": s.forbidden == 0}


def select(summaries: list[tuple[GateConfig, Summary]], es20: Summary) -> tuple[GateConfig, Summary, bool]:
    """The config SELECTION chooses among (config, summary with restore) on the tuning families, and whether it
    was admissible."""
    admissible = [(c, s) for c, s in summaries if all(targets(s, es20).values())]
    if not admissible:
        c, s = min(summaries, key=lambda cs: (sum(not v for v in targets(cs[1], es20).values()), cs[1].worst,
                                              cs[1].stop_pct))
        return c, s, False
    earliest = min(s.stop_pct for _, s in admissible)
    tied = [(c, s) for c, s in admissible if s.stop_pct <= earliest + STOP_TIE]
    c, s = min(tied, key=lambda cs: (cs[0].epochs, cs[0].tol_unit != "nats", cs[1].median, cs[1].worst,
                                     cs[0].window, cs[0].z, cs[0].patience))
    return c, s, True


def select_worst_first(summaries: list[tuple[GateConfig, Summary]]) -> tuple[GateConfig, Summary, bool]:
    """The config SELECTION_WORST_FIRST chooses among (config, summary with restore) on the tuning families, and
    whether some config fired in >= 90 % of the eligible runs without a forbidden stop (else it is a miss)."""
    fit = [(c, s) for c, s in summaries if not s.fire < FIRE_TARGET and s.forbidden == 0]
    pool = fit or summaries
    lowest = min(s.worst for _, s in pool)
    tied = [(c, s) for c, s in pool if s.worst <= lowest + WORST_TIE]
    c, s = min(tied, key=lambda cs: (cs[1].stop_pct, cs[0].epochs, cs[0].window, cs[0].z, cs[0].patience))
    return c, s, bool(fit)


def _factor_order(fb: FallbackConfig) -> float:
    return float("inf") if fb.gap_factor is None else fb.gap_factor


def select_fallback(summaries: list[tuple[FallbackConfig, Summary]]) -> tuple[FallbackConfig, Summary, bool]:
    """The variant SELECTION_FALLBACK chooses among (variant, summary with restore of the gate or it) on the tuning
    families, and whether it was admissible (fire >= 90 %, no forbidden stop; else a miss)."""
    fit = [(f, s) for f, s in summaries if not s.fire < FIRE_TARGET and s.forbidden == 0]
    pool = fit or summaries
    lowest = min(s.worst for _, s in pool)
    tied = [(f, s) for f, s in pool if s.worst <= lowest + WORST_TIE]
    f, s = min(tied, key=lambda fs: (fs[1].stop_pct, fs[0].patience, _factor_order(fs[0])))
    return f, s, bool(fit)
