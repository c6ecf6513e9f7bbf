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

from _stopping_data import FRESH
from _stopping_grid import (
    BASELINES,
    BUDGET,
    ES10,
    ES20,
    FALLBACK_GRID,
    FIRE_TARGET,
    SELECTION,
    SELECTION_FALLBACK,
    SELECTION_WORST_FIRST,
    SHIPPED,
    TODAY,
    TUNING_FAMILIES,
    WORST_TARGET,
    WORST_TIE,
    Summary,
    fallback_grid,
    gate_alone_label,
    grid,
    replay_all,
    replay_fallbacks,
    select,
    select_fallback,
    select_worst_first,
    shipped_label,
    subset,
    summarise,
    targets,
)
from _stopping_rules import BETA1, Record, as_record, combined_label, eligible

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
    print(f"\nFallback stage: {SELECTION_FALLBACK}", flush=True)
    configs = grid()
    results, replays = replay_all(records, configs, log=lambda s: print(s, flush=True),
                                  cache=args.out / "replay-cache")
    seconds = time.perf_counter() - start
    print(f"\nphase 2: {len(BASELINES)} baselines and {len(configs)} gate configs (x 2: with and without restore)"
          f" replayed over {len(records)} runs in {seconds:.1f} s", flush=True)

    scopes = {"tuning families": lambda r: r.family in TUNING_FAMILIES,
              "held-out families": lambda r: r.family not in TUNING_FAMILIES, "all runs": lambda r: True}
    tune_results, tune_records = subset(results, records, scopes["tuning families"])
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

    # the fallback stage: next to the chosen gate, on the tuning families
    gate_label = gate_alone_label(chosen)
    results[gate_label] = results[chosen.label]
    variants = fallback_grid()
    by_variant = replay_fallbacks(records, replays, chosen, variants, cache=args.out / "replay-cache")
    for fb, scores in by_variant.items():
        results[combined_label(chosen, fb)] = scores
    tune_results, tune_records = subset(results, records, scopes["tuning families"])
    fb_candidates = [(fb, summarise(combined_label(chosen, fb), tune_results[combined_label(chosen, fb)],
                                    tune_records, True)) for fb in variants]
    fb_pick, _fb_tune, fb_fits = select_fallback(fb_candidates)
    n_fb_fit = sum(not s.fire < FIRE_TARGET and s.forbidden == 0 for _, s in fb_candidates)
    shipped = shipped_label(chosen, fb_pick)
    results[shipped] = results[combined_label(chosen, fb_pick)]
    print(f"\nThe fallback stage picks: {fb_pick.label}"
          f" ({'admissible' if fb_fits else 'a miss'}; {n_fb_fit} of {len(variants)} variants fire in >="
          f" {100 * FIRE_TARGET:.0f} % of the eligible tuning runs without a forbidden stop)")
    print(f"  -> SHIPPED: {shipped} + restore")
    split = {name: subset(results, records, keep) for name, keep in scopes.items()}
    fallback_tables = {}
    for scope, (res, recs) in split.items():
        rows = fallback_table(res, recs, gate_label, [(fb, combined_label(chosen, fb)) for fb in variants], fb_pick)
        if rows:
            fallback_tables[scope] = rows
            console(f"The fallback variants, each with {chosen.label}, on {_where(scope)} (with restore)",
                    FALLBACK_HEAD, rows)

    tables, verdicts, gate_verdicts = {}, {}, {}
    rows_of = [(BUDGET, False), (BUDGET, True), (ES10, False), (ES10, True), (ES20, False), (ES20, True),
               (TODAY, False), (TODAY, True), (gate_label, False), (gate_label, True), (shipped, False),
               (shipped, True)]
    if prestated != chosen:
        rows_of += [(prestated.label, True)]
    floors, lowest, changes = {}, {}, {}
    for scope, (res, recs) in split.items():
        sums = {(label, r): summarise(label, res[label], recs, r) for label, r in rows_of}
        if any(s is None for s in sums.values()):
            continue
        tables[scope] = [_row(s) for s in sums.values()]
        families = sorted({r.family for r in recs})
        console(f"On {_where(scope)} ({', '.join(families)}: {sum(r.variant in BETA1 for r in recs)} beta = 1 runs,"
                f" {len(recs)} runs)", HEAD, tables[scope])
        verdicts[scope] = _verdict_line(sums[(shipped, True)], sums[(ES10, False)], sums[(ES10, True)],
                                        sums[(ES20, False)])
        gate_verdicts[scope] = _verdict_line(sums[(gate_label, True)], sums[(ES10, False)], sums[(ES10, True)],
                                             sums[(ES20, False)])
        print(f"  targets for {SHIPPED} + restore: {verdicts[scope]}")
        print(f"  targets for the gate alone + restore: {gate_verdicts[scope]}")
        floors[scope] = sums[(BUDGET, True)].worst
        lowest[scope] = min(summarise(c.label, res[c.label], recs, True).worst for c in configs)
        changes[scope] = fallback_changes(res, recs, gate_label, shipped, sums, sums[(ES20, False)])
    print("\nWorst shortfall of the fixed budget + restore, then the lowest of any gate config + restore: "
          + "; ".join(f"{scope} {floors[scope]:.2f} and {lowest[scope]:.2f} nats" for scope in floors))
    for scope, ch in changes.items():
        print(f"What the fallback changes on {_where(scope)}: {ch['text']}")

    loses = per_family(results, records, shipped)
    console(f"Where {SHIPPED} (with restore) loses, per family (a * marks a missed target)", FAMILY_HEAD, loses)
    gate_loses = per_family(results, records, gate_label)
    console("Where the gate alone (with restore) loses, per family (a * marks a missed target)", FAMILY_HEAD,
            gate_loses)
    live_rows = live_table(live, records, results, [shipped, gate_label])
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
               "tables": tables, "choosing": choosing, "verdicts": verdicts, "gate_verdicts": gate_verdicts,
               "floors": floors, "lowest_worst": lowest, "per_family": loses, "gate_per_family": gate_loses,
               "live": live_rows,
               "fallback": {"selection": SELECTION_FALLBACK, "grid": {k: list(v) for k, v in FALLBACK_GRID.items()},
                            "pick": {"label": fb_pick.label, **asdict(fb_pick)}, "fits": fb_fits,
                            "fitting_variants": n_fb_fit, "variants": len(variants), "shipped": shipped,
                            "gate_alone": gate_label, "tables": fallback_tables,
                            "changes": changes}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    if not args.no_docs:
        from _stopping_figure import figure
        from _stopping_text import section

        png = ROOT / "docs" / "figures" / "stopping_benchmark.png"
        figure(configs, split, chosen, png, shipped=shipped)
        path = ROOT / "docs" / "results.md"
        text = path.read_text() if path.exists() else ""
        old = text[text.index(BEGIN) + len(BEGIN):text.index(END)] if BEGIN in text and END in text else ""
        lines = section(summary, tables, verdicts, loses, live_rows, records, args, old)
        write_section(path, lines)
        print(f"\nwrote {png} and the stopping section of {path}")
    return summary


CHOICE_HEAD = [*HEAD, "chosen"]
FALLBACK_HEAD = [*HEAD, "chosen"]


def _where(scope: str) -> str:
    return "all runs" if scope == "all runs" else "the " + scope


def fallback_table(res: dict[str, list[dict]], recs: list[Record], gate_label: str, variants: list,
                   pick) -> list[list[str]]:
    """The gate alone, then each (fallback variant, label of the gate or it), with restore; the pick marked."""
    gate = summarise(gate_label, res[gate_label], recs, True)
    if gate is None:
        return []
    rows = [[*_row(gate), ""]]
    for fb, label in variants:
        s = summarise(label, res[label], recs, True)
        rows.append([*_row(s), "<-" if fb == pick else ""])
    return rows


def fallback_changes(res: dict[str, list[dict]], recs: list[Record], gate_label: str, shipped: str,
                     sums: dict, es20: Summary) -> dict:
    """What adding the fallback changes on these runs: the table rows as printed (with and without the restore),
    the runs that stop at another epoch (by name), the eligible runs it still does not stop, and its median stop
    against ES p20's."""
    rows = {key: (_row(sums[(gate_label, restore)])[1:], _row(sums[(shipped, restore)])[1:])
            for key, restore in (("plain", False), ("restore", True))}
    moved = [(r.name, g["stop_pct"], s["stop_pct"], g["restore"], s["restore"])
             for g, s, r in zip(res[gate_label], res[shipped], recs) if g["stop"] != s["stop"]]
    unfired = [r.name for s, r in zip(res[shipped], recs) if r.variant in BETA1 and eligible(r) and not s["fired"]]
    shipped_r = sums[(shipped, True)]
    same = {key: gate == new for key, (gate, new) in rows.items()}
    parts = [f"the row with restore {'reads as' if same['restore'] else 'differs from'} the gate alone's",
             f"the row without restore {'reads as' if same['plain'] else 'differs from'} the gate alone's",
             f"{len(moved)} of {len(recs)} runs stop at another epoch",
             f"eligible runs it does not stop: {', '.join(unfired) if unfired else 'none'}",
             f"median stop {shipped_r.stop_pct:.0f} % against ES p20's {es20.stop_pct:.0f} %"]
    return {"same": same, "rows": rows, "moved": [list(m) for m in moved], "runs": len(recs), "unfired": unfired,
            "stop_pct": shipped_r.stop_pct, "es20_stop_pct": es20.stop_pct, "text": "; ".join(parts)}


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
        kind = "tuning" if family in TUNING_FAMILIES else "added after the choice" if family in FRESH else "held-out"
        rows.append([family, kind, str(s.runs),
                     fire + mark[t["fire"]], f"{s.worst:.2f}" + mark[t["worst"]],
                     f"{s.stop_pct:.0f} % vs {es20.stop_pct:.0f} %" + mark[t["stop"]],
                     f"{s.forbidden} of {s.never}" + mark[t["never"]]])
    return rows


LIVE_HEAD = ["policy", "runs", "epochs spent, % of budget (median)", "shortfall of the final model, median / worst"]


def live_table(live: list[Record], records: list[Record], results: dict[str, list[dict]], labels: list[str]
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
    for name, restore in ((*((f"{label} + restore", True) for label in labels), (f"{ES20} + restore", True),
                           (f"{BUDGET} + restore", True))):
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


def write_section(path: Path, lines: list[str], begin: str = BEGIN, end: str = END) -> None:
    """Replace the text between the markers ``begin`` and ``end`` of ``path`` (append both where missing)."""
    text = path.read_text() if path.exists() else ""
    block = "\n".join([begin, *lines, end])
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
