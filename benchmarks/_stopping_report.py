"""Phase 2 of ``stopping.py``: replay every rule, choose the default on the tuning families, print the tables,
draw the figure, write the ``docs/results.md`` section."""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import time
from dataclasses import asdict
from pathlib import Path

from _stopping_grid import (
    BASELINES,
    BUDGET,
    ES10,
    ES20,
    FIRE_TARGET,
    SELECTION,
    SELECTION_WORST_FIRST,
    TODAY,
    TUNING_FAMILIES,
    WORST_TARGET,
    WORST_TIE,
    Summary,
    grid,
    replay_all,
    select,
    select_worst_first,
    subset,
    summarise,
    targets,
)
from _stopping_rules import BETA1, Record, as_record

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- stopping-benchmark:begin -->", "<!-- stopping-benchmark:end -->"
HEAD = ["rule", "median stop, % of budget (epochs)", "shortfall median / worst, nats", "fired (eligible runs)",
        "stops of never-stop runs"]


def _row(s: Summary) -> list[str]:
    fire = "-" if math.isnan(s.fire) else f"{100 * s.fire:.0f} % ({s.eligible})"
    return [s.name, f"{s.stop_pct:.0f} % ({s.stop_epochs:.0f})", f"{s.median:.2f} / {s.worst:.2f}", fire,
            f"{s.forbidden} of {s.never}"]


def markdown(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
        "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]


def console(title: str, head: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    print(f"\n{title}")
    for row in [head, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


def _verdict_line(s: Summary, es10: Summary, es10r: Summary, es20: Summary) -> str:
    met = {True: "met", False: "MISSED"}
    t = targets(s, es20)
    fire = "- (no eligible run)" if math.isnan(s.fire) else f"{100 * s.fire:.0f} % of {s.eligible} eligible runs"
    moon = s.stop_pct < es10.stop_pct and s.median < es10r.median
    return (f"fires in {fire} (>= {100 * FIRE_TARGET:.0f} %): {met[t['fire']]};"
            f" worst shortfall {s.worst:.2f} nats (<= {WORST_TARGET:g}): {met[t['worst']]};"
            f" median stop {s.stop_pct:.0f} % (<= ES p20's {es20.stop_pct:.0f} %): {met[t['stop']]};"
            f" never-stop runs stopped {s.forbidden} of {s.never}: {met[t['never']]};"
            f" moonshot (median stop below ES p10's {es10.stop_pct:.0f} % and median shortfall below ES p10 +"
            f" restore's {es10r.median:.2f}): {met[moon]}")


def report(runs: list[dict], args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    records = [as_record(run) for run in runs]
    live = [r for r in records if r.variant == "sasa"]
    records = [r for r in records if r.variant != "sasa"]
    print(f"\nSelection rule (stated before any result): {SELECTION}", flush=True)
    print(f"\nSecond selection rule: {SELECTION_WORST_FIRST}", flush=True)
    configs = grid()
    results, _ = replay_all(records, configs, log=lambda s: print(s, flush=True), cache=args.out / "replay-cache")
    seconds = time.perf_counter() - start
    print(f"\nphase 2: {len(BASELINES)} baselines and {len(configs)} gate configs (x 2: with and without restore)"
          f" replayed over {len(records)} runs in {seconds:.1f} s", flush=True)

    scopes = {"tuning families": lambda r: r.family in TUNING_FAMILIES,
              "held-out families": lambda r: r.family not in TUNING_FAMILIES, "all runs": lambda r: True}
    split = {name: subset(results, records, keep) for name, keep in scopes.items()}
    tune_results, tune_records = split["tuning families"]
    candidates = [(c, summarise(c.label, tune_results[c.label], tune_records, True)) for c in configs]
    candidates = [(c, s) for c, s in candidates if s is not None]
    if not candidates:
        print("no beta = 1 run on the tuning families: nothing to choose on")
        return {}
    es20_tune = summarise(ES20, tune_results[ES20], tune_records, False)
    prestated, _prestated_tune, admissible = select(candidates, es20_tune)
    n_ok = sum(all(targets(s, es20_tune).values()) for _, s in candidates)
    print(f"\nThe selection stated before any result picks: {prestated.label} + restore"
          f" ({'admissible' if admissible else 'NOT admissible: a miss'};"
          f" {n_ok} of {len(candidates)} configs admissible on the tuning families)")
    chosen, chosen_tune, fits = select_worst_first(candidates)
    n_fit = sum(not s.fire < FIRE_TARGET and s.forbidden == 0 for _, s in candidates)
    print(f"The second selection picks: {chosen.label} + restore"
          f" ({'worst shortfall ' + format(chosen_tune.worst, '.2f') + ' nats' if fits else 'a miss'}; {n_fit} of"
          f" {len(candidates)} configs fire in >= {100 * FIRE_TARGET:.0f} % without a forbidden stop)")
    print(f"  -> THE DEFAULT: {chosen.label} + restore")

    ranked = sorted(candidates, key=lambda cs: (not all(targets(cs[1], es20_tune).values()), cs[1].stop_pct,
                                                cs[1].median))[:8]
    console("The earliest-stopping configs on the tuning families (with restore; admissible first)",
            [*HEAD, "admissible"], [[*_row(s), "yes" if all(targets(s, es20_tune).values()) else "no"]
                                    for _, s in ranked])
    choosing = choice_table(candidates, chosen)
    console(f"The configs the second selection chose among, on the tuning families (with restore; fire >="
            f" {100 * FIRE_TARGET:.0f} %, no forbidden stop; lowest worst shortfall first; within {WORST_TIE:g} nats"
            " of the lowest: tied)", CHOICE_HEAD, choosing)

    tables, verdicts = {}, {}
    rows_of = [(BUDGET, False), (BUDGET, True), (ES10, False), (ES10, True), (ES20, False), (ES20, True),
               (TODAY, False), (TODAY, True), (chosen.label, False), (chosen.label, True)]
    if prestated != chosen:
        rows_of += [(prestated.label, True)]
    floors, lowest = {}, {}
    for scope, (res, recs) in split.items():
        sums = {(label, r): summarise(label, res[label], recs, r) for label, r in rows_of}
        if any(s is None for s in sums.values()):
            continue
        tables[scope] = [_row(s) for s in sums.values()]
        families = sorted({r.family for r in recs})
        where = "all runs" if scope == "all runs" else "the " + scope
        console(f"On {where} ({', '.join(families)}: {sum(r.variant in BETA1 for r in recs)} beta = 1 runs,"
                f" {len(recs)} runs)", HEAD, tables[scope])
        verdicts[scope] = _verdict_line(sums[(chosen.label, True)], sums[(ES10, False)], sums[(ES10, True)],
                                        sums[(ES20, False)])
        print(f"  targets for the chosen default + restore: {verdicts[scope]}")
        floors[scope] = sums[(BUDGET, True)].worst
        lowest[scope] = min(summarise(c.label, res[c.label], recs, True).worst for c in configs)
    print("\nWorst shortfall of the fixed budget + restore, then the lowest of any gate config + restore: "
          + "; ".join(f"{scope} {floors[scope]:.2f} and {lowest[scope]:.2f} nats" for scope in floors))

    loses = per_family(results, records, chosen.label)
    console("Where the chosen default (with restore) loses, per family (a * marks a missed target)",
            FAMILY_HEAD, loses)
    live_rows = live_table(live, records, results, chosen.label)
    if live_rows:
        console("The live SASA policy against the replayed rules, on the same family, lr and seed",
                LIVE_HEAD, live_rows)
    write_grid(candidates, configs, results, records, args.out / "candidates.csv")
    print(f"\nAll {len(candidates)} gate configs on the tuning families: {args.out / 'candidates.csv'}")
    summary = {"selection": SELECTION, "selection_worst_first": SELECTION_WORST_FIRST,
               "prestated": {"label": prestated.label, **asdict(prestated), "restore": True},
               "admissible": admissible, "admissible_configs": n_ok,
               "chosen": {"label": chosen.label, **asdict(chosen), "restore": True}, "chosen_fits": fits,
               "fitting_configs": n_fit, "configs": len(candidates), "replay_seconds": round(seconds, 2),
               "tables": tables, "choosing": choosing, "verdicts": verdicts, "floors": floors,
               "lowest_worst": lowest, "per_family": loses,
               "live": live_rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    if not args.no_docs:
        from _stopping_figure import figure
        from _stopping_text import section

        png = ROOT / "docs" / "figures" / "stopping_benchmark.png"
        figure(configs, split, chosen, png)
        path = ROOT / "docs" / "results.md"
        text = path.read_text() if path.exists() else ""
        old = text[text.index(BEGIN) + len(BEGIN):text.index(END)] if BEGIN in text and END in text else ""
        lines = section(summary, tables, verdicts, loses, live_rows, records, args, old)
        write_section(path, lines)
        print(f"\nwrote {png} and the stopping section of {path}")
    return summary


CHOICE_HEAD = [*HEAD, "chosen"]


def choice_table(candidates: list, chosen, rows: int = 10) -> list[list[str]]:
    """The configs SELECTION_WORST_FIRST ranks first (fire rate met, no forbidden stop; by worst shortfall), the
    chosen one among them."""
    fit = [(c, s) for c, s in candidates if not s.fire < FIRE_TARGET and s.forbidden == 0] or candidates
    lowest = min(s.worst for _, s in fit)
    ranked = sorted(fit, key=lambda cs: (cs[1].worst > lowest + WORST_TIE, cs[1].stop_pct if cs[1].worst <= lowest
                                         + WORST_TIE else cs[1].worst, cs[0].epochs, cs[0].window, cs[0].z,
                                         cs[0].patience))
    top = ranked[:rows]
    if chosen not in [c for c, _ in top]:
        top += [cs for cs in ranked if cs[0] == chosen]
    return [[*_row(s), "<-" if c == chosen else ""] for c, s in top]


FAMILY_HEAD = ["family", "set", "beta = 1 runs", "fired (eligible)", "worst shortfall, nats",
               "median stop vs ES p20", "never-stop runs stopped"]


def per_family(results: dict[str, list[dict]], records: list[Record], label: str) -> list[list[str]]:
    """Per family, the chosen default with restore: fire rate, worst shortfall, median stop against ES p20."""
    rows = []
    for family in sorted({r.family for r in records}, key=lambda f: (f not in TUNING_FAMILIES, f)):
        res, recs = subset(results, records, lambda r, f=family: r.family == f)
        s, es20 = summarise(label, res[label], recs, True), summarise(ES20, res[ES20], recs, False)
        if s is None:
            continue
        t = targets(s, es20)
        mark = {True: "", False: " *"}
        fire = "-" if math.isnan(s.fire) else f"{100 * s.fire:.0f} % ({s.eligible})"
        rows.append([family, "tuning" if family in TUNING_FAMILIES else "held-out", str(s.runs),
                     fire + mark[t["fire"]], f"{s.worst:.2f}" + mark[t["worst"]],
                     f"{s.stop_pct:.0f} % vs {es20.stop_pct:.0f} %" + mark[t["stop"]],
                     f"{s.forbidden} of {s.never}" + mark[t["never"]]])
    return rows


LIVE_HEAD = ["policy", "runs", "epochs spent, % of budget (median)", "shortfall of the final model, median / worst"]


def live_table(live: list[Record], records: list[Record], results: dict[str, list[dict]], label: str
               ) -> list[list[str]]:
    """SASA runs (a live policy that stops itself) against the replayed rules on the matching ``mean`` run: epochs
    spent and the final model's test ELBO short of the best test ELBO of the ``mean`` run over its budget."""
    index = {(r.family, r.meta["lr"], r.meta["seed"]): i for i, r in enumerate(records) if r.variant == "mean"}
    pairs = [(rec, index[key]) for rec in live if (key := (rec.family, rec.meta["lr"], rec.meta["seed"])) in index]
    if not pairs:
        return []
    spent, short = [], []
    for rec, i in pairs:
        best = float(max(records[i]["test_elbo"]))
        spent.append(100 * rec.epochs / records[i].budget)
        short.append(best - float(rec["test_elbo"][-1]))
    rows = [["SASA (live: lr x 0.1 on stationarity, stop at the last rate)", str(len(pairs)),
             f"{statistics.median(spent):.0f} %", f"{statistics.median(short):.2f} / {max(short):.2f}"]]
    for name, restore in ((f"{label} + restore", True), (f"{ES20} + restore", True), (f"{BUDGET} + restore", True)):
        scores = [results[name.removesuffix(" + restore")][i] for _, i in pairs]
        vals = [s["restore" if restore else "plain"] for s in scores]
        rows.append([name, str(len(pairs)), f"{statistics.median(s['stop_pct'] for s in scores):.0f} %",
                     f"{statistics.median(vals):.2f} / {max(vals):.2f}"])
    return rows


def write_grid(candidates: list, configs: list, results: dict[str, list[dict]], records: list[Record],
               path: Path) -> None:
    """Every config (and baseline) on the tuning families, without and with restore, as CSV."""
    tune_results, tune_records = subset(results, records, lambda r: r.family in TUNING_FAMILIES)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rule", "restore", "window", "z", "tol", "tol_unit", "gate_epochs", "patience",
                         "median_stop_pct", "median_stop_epochs", "median_shortfall", "worst_shortfall", "fire",
                         "eligible", "forbidden", "never"])
        rules = [(name, None) for name in BASELINES] + [(c.label, c) for c in configs]
        for name, c in rules:
            for restore in (False, True):
                s = summarise(name, tune_results[name], tune_records, restore)
                if s is None:
                    continue
                params = [c.window, c.z, c.tol, c.tol_unit, c.epochs, c.patience] if c else [""] * 6
                writer.writerow([name, "yes" if restore else "no", *params, f"{s.stop_pct:.1f}", s.stop_epochs,
                                 f"{s.median:.4f}", f"{s.worst:.4f}", f"{s.fire:.3f}", s.eligible, s.forbidden,
                                 s.never])


def write_section(path: Path, lines: list[str]) -> None:
    text = path.read_text() if path.exists() else ""
    block = "\n".join([BEGIN, *lines, END])
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
