"""Phase 2 of ``stopping.py``: replay every rule, choose the winner, print the tables, draw the figure,
write the ``docs/results.md`` section."""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

from _stopping_grid import (
    SELECTION,
    SELECTION_WORST_FIRST,
    WITHIN,
    WORST_TARGET,
    Summary,
    baselines,
    candidates,
    evaluate,
    select,
    select_worst_first,
    summarise,
)
from _stopping_rules import Rule, as_history, restores

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- stopping-benchmark:begin -->", "<!-- stopping-benchmark:end -->"
ES10, ES20 = "EarlyStopping(val ELBO, patience 10)", "EarlyStopping(val ELBO, patience 20)"


def _subset(results: list[dict], seeds: set[int]) -> list[dict]:
    return [r for r in results if r["seed"] in seeds]


def _variants(rules: list[Rule], results: dict[str, list[dict]], seeds: set[int]) -> list[Summary]:
    return [summarise(rule, _subset(results[rule.name], seeds), r) for rule in rules for r in restores(rule)]


def _row(s: Summary) -> list[str]:
    return [s.label, f"{s.stop_pct:.0f} % ({s.stop_epochs:.0f})", f"{s.median:.2f} / {s.worst:.2f}",
            f"{100 * s.median_rel:.2f} / {100 * s.worst_rel:.1f} %", f"{100 * s.within:.0f} %",
            f"{100 * s.fired:.0f} %"]


HEAD = ["rule", "median stop, % of budget (epochs)", "shortfall median / worst, nats",
        "relative median / worst", f"within {WITHIN} nats", "fired"]


def _markdown(rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)] + [
        "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]


def _console(title: str, rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [HEAD, *rows]) for i in range(len(HEAD))]
    print(f"\n{title}")
    for row in [HEAD, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


def _family_bests(summaries: list[Summary], es10: Summary, es20: Summary) -> list[Summary]:
    """Per candidate family, its best variant by the selection rule (for the shortlist)."""
    families: dict[str, list[Summary]] = {}
    for s in summaries:
        if not s.rule.baseline:
            families.setdefault(s.rule.family, []).append(s)
    return [select(group, es10, es20)[0] if _any_ok(group, es10, es20) else min(group, key=lambda s: s.worst)
            for group in families.values()]


def _any_ok(group: list[Summary], es10: Summary, es20: Summary) -> bool:
    return any(s.median <= es10.median and s.stop_pct <= es20.stop_pct for s in group)


def report(runs: list[dict], args: argparse.Namespace) -> dict:
    histories = [as_history(run) for run in runs]
    rules = baselines() + candidates()
    by_name = {r.name: r for r in rules}
    results = evaluate(rules, histories)
    all_seeds, tune = {h["seed"] for h in histories}, set(args.tune_seeds)
    held = all_seeds - tune
    print(f"\nphase 2: {len(rules)} rules x {len(histories)} runs replayed; tuning seeds {sorted(tune)},"
          f" held-out seeds {sorted(held)}")

    tuned = _variants(rules, results, tune)
    pick = {(s.rule.name, s.restore): s for s in tuned}
    es10, es20 = pick[(ES10, None)], pick[(ES20, None)]
    cands = [s for s in tuned if not s.rule.baseline]
    winner, admissible = select(cands, es10, es20)
    worst_first = select_worst_first(cands, es10)
    print(f"\nSelection rule (stated before any result): {SELECTION}")
    print(f"  -> {winner.label} ({'admissible' if admissible else 'NOT admissible: a miss'})")
    print(f"{SELECTION_WORST_FIRST}")
    print(f"  -> {worst_first.label if worst_first else 'nothing qualifies'}")
    picks = {"pre-stated pick": winner, **({"worst-first pick": worst_first} if worst_first else {})}

    alternatives = frontier(cands, es10)
    print("\nFrontier on the tuning seeds (the earliest median stop among the candidate variants with a median"
          " shortfall no worse than EarlyStopping(patience 10) and a worst shortfall within each level):")
    for level, s in alternatives.items():
        print(f"  worst <= {level:g} nats: " + (f"{s.label} ({s.stop_pct:.0f} %, {s.median:.2f} / {s.worst:.2f})"
                                                 if s else "none"))
    plain = frontier([s for s in cands if not s.rule.entropy], es10)
    print("The same among the candidates that read no entropy signal (only the val ELBO):")
    for level, s in plain.items():
        print(f"  worst <= {level:g} nats: " + (f"{s.label} ({s.stop_pct:.0f} %, {s.median:.2f} / {s.worst:.2f})"
                                                 if s else "none"))
    shortlist = [(b.name, r) for b in baselines() for r in restores(b)]
    extra = [*picks.values(), *(a for a in alternatives.values() if a), *(a for a in plain.values() if a)]
    families = _family_bests(tuned, es10, es20)
    for rule in [*(s.rule for s in extra), None, *(s.rule for s in families)]:
        if rule is None:
            n_docs = len(shortlist)  # the docs leave the family bests out
            continue
        for r in restores(rule):
            if (rule.name, r) not in shortlist:
                shortlist.append((rule.name, r))
    tables, verdicts, lookup = {}, {}, {}
    for label, seeds in (("all seeds", all_seeds), ("tuning seeds", tune), ("held-out seeds", held)):
        if not seeds:
            continue
        summaries = [summarise(by_name[n], _subset(results[n], seeds), r) for n, r in shortlist]
        lookup.update({(label, s.rule.name, s.restore): s for s in summaries})
        tables[label] = [_row(s) for s in summaries]
        _console(f"On the {label} {sorted(seeds)} ({summaries[0].n} runs): baselines, the picks, the frontier,"
                 " then each candidate family's best variant by the pre-stated rule", tables[label])
        tables[label] = tables[label][:n_docs]
        verdicts[label] = {name: targets(summaries, s) for name, s in picks.items()}
        for name, lines in verdicts[label].items():
            print(f"  targets for the {name}: " + "; ".join(lines))

    sensitivity = neighbours(worst_first, rules, results, tune, held) if worst_first else []
    columns = [(ES10, None, "ES p10"), (ES20, None, "ES p20"), (ES20, "val_elbo", "ES p20 + restore"),
               ("today's gap rule on train (|rel gap| < 1 %, 3 checks)", None, "today's gap rule (train)"),
               ("fixed budget", "val_elbo", "budget + restore")]
    columns += [(s.rule.name, s.restore, name + " + restore" * bool(s.restore)) for name, s in picks.items()]
    per_group = breakdown(results, histories, columns)
    write_grid(tuned, args.out / "candidates.csv")
    print(f"\nAll {len(tuned)} variants on the tuning seeds: {args.out / 'candidates.csv'}")
    summary = {name: {"rule": s.label, "params": s.rule.params, "restore_monitor": s.restore}
               for name, s in picks.items()}
    summary.update(admissible=admissible, tables=tables, verdicts=verdicts,
                   frontier={str(k): v.label if v else None for k, v in alternatives.items()},
                   frontier_without_entropy={str(k): v.label if v else None for k, v in plain.items()})
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    if not args.no_docs:
        from _stopping_figure import figure

        png = ROOT / "docs" / "figures" / "stopping_benchmark.png"
        figure(histories, results, tuned, picks, es10, es20, png)
        write_docs(tables, verdicts, [*per_group, "", *sensitivity], picks, admissible, args, lookup, alternatives,
                   plain)
        print(f"\nwrote {png} and the stopping section of {ROOT / 'docs' / 'results.md'}")
    return summary


FRONTIER_LEVELS = (1.0, 2.0, 3.0)


def frontier(summaries: list[Summary], es10: Summary) -> dict[float, Summary | None]:
    """Per worst-shortfall level: the earliest-stopping variant within it whose median shortfall is no worse
    than EarlyStopping(patience 10)'s (ties: lower median shortfall)."""
    out = {}
    for level in FRONTIER_LEVELS:
        ok = [s for s in summaries if s.worst <= level and s.median <= es10.median]
        out[level] = min(ok, key=lambda s: (s.stop_pct, s.median)) if ok else None
    return out


def targets(summaries: list[Summary], winner: Summary) -> list[str]:
    """The issue's targets for a pick, against the baselines on the same runs."""
    by = {(s.rule.name, s.restore): s for s in summaries}
    w, es10, es20 = by[(winner.rule.name, winner.restore)], by[(ES10, None)], by[(ES20, None)]
    ok = {True: "met", False: "MISSED"}
    return [
        f"worst shortfall {w.worst:.2f} nats <= {WORST_TARGET}: {ok[w.worst <= WORST_TARGET]}",
        f"median shortfall {w.median:.3f} <= ES(p10) {es10.median:.3f}: {ok[w.median <= es10.median]}",
        f"median stop {w.stop_pct:.0f} % <= ES(p20) {es20.stop_pct:.0f} %: {ok[w.stop_pct <= es20.stop_pct]}",
        f"moonshot, both medians below ES(p10) ({es10.median:.3f} nats, {es10.stop_pct:.0f} %):"
        f" {ok[w.median < es10.median and w.stop_pct < es10.stop_pct]}",
    ]


def neighbours(pick: Summary, rules: list[Rule], results: dict[str, list[dict]], tune: set[int], held: set[int]
               ) -> list[str]:
    """The pick's family with the same restore, tuning and held-out seeds: how sharp is the choice?"""
    lines = [f"The worst-first pick's neighbours (family \"{pick.rule.family}\", restore as the pick):", "",
             "| rule | tuning: stop, median / worst | held-out: stop, median / worst |", "|---|---|---|"]
    print(f"\nNeighbours of the worst-first pick (family {pick.rule.family!r}, restore {pick.restore}):")
    for rule in rules:
        if rule.family != pick.rule.family:
            continue
        cells = []
        for seeds in (tune, held):
            if seeds:
                s = summarise(rule, _subset(results[rule.name], seeds), pick.restore)
                cells.append(f"{s.stop_pct:.0f} %, {s.median:.2f} / {s.worst:.2f}")
            else:
                cells.append("-")
        mark = " (the pick)" if rule.name == pick.rule.name else ""
        lines.append(f"| {rule.name.replace('|', chr(92) + '|')}{mark} | " + " | ".join(cells) + " |")
        print(f"  {rule.name + mark:90s} tuning {cells[0]:22s} held-out {cells[1]}")
    return lines


def breakdown(results: dict[str, list[dict]], histories: list[dict], variants: list[tuple[str, str | None, str]]
              ) -> list[str]:
    """Per data set and learning rate (5 seeds each): median stop % and median / worst shortfall."""
    groups = sorted({(h["data"], h["lr"]) for h in histories})
    heads = [head for *_, head in variants]
    lines = ["| data, lr | " + " | ".join(heads) + " |", "|---|" + "---|" * len(variants)]
    print("\nPer data set and learning rate (all seeds): median stop % of budget; shortfall median / worst (nats)")
    for i, head in enumerate(heads):
        print(f"  [{i}] {head}")
    for data, lr in groups:
        cells = []
        for name, restore, _ in variants:
            key = f"restore:{restore}" if restore else "plain"
            rs = [r for r in results[name] if r["run"].startswith(f"{data}_lr{lr:g}_")]
            cells.append(f"{100 * statistics.median(r['stop_frac'] for r in rs):.0f} %;"
                         f" {statistics.median(r[key] for r in rs):.2f} / {max(r[key] for r in rs):.2f}")
        lines.append(f"| {data}, {lr:g} | " + " | ".join(cells) + " |")
        print(f"  {data:16s} {lr:<7g}" + " | ".join(f"[{i}] {c:20s}" for i, c in enumerate(cells)))
    return lines


def write_grid(summaries: list[Summary], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["family", "rule", "restore", "median_stop_pct", "median_stop_epochs", "median_shortfall",
                         "worst_shortfall", "median_rel", "worst_rel", "within", "fired"])
        for s in summaries:
            writer.writerow([s.rule.family, s.rule.name, s.restore, f"{s.stop_pct:.1f}", s.stop_epochs,
                             f"{s.median:.4f}", f"{s.worst:.4f}", f"{s.median_rel:.5f}", f"{s.worst_rel:.5f}",
                             f"{s.within:.3f}", f"{s.fired:.3f}"])


def write_docs(tables: dict, verdicts: dict, per_group: list[str], picks: dict[str, Summary], admissible: bool,
               args: argparse.Namespace, lookup: dict, alternatives: dict, plain: dict) -> None:
    from _stopping_text import section

    lines = section(tables, verdicts, per_group, picks, admissible, args, _markdown, lookup, alternatives, plain)
    path = ROOT / "docs" / "results.md"
    text = path.read_text() if path.exists() else ""
    block = "\n".join([BEGIN, *lines, END])
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
