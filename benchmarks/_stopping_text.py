"""The ``docs/results.md`` section of ``stopping.py``: fixed prose, every number formatted in."""

from __future__ import annotations

import argparse
import statistics

from _stopping_grid import GRID, SHIPPED, TUNING_FAMILIES, WORST_TARGET
from _stopping_report import CHOICE_HEAD, FALLBACK_HEAD, FAMILY_HEAD, HEAD, LIVE_HEAD, markdown
from _stopping_rules import Record

BEFORE_BEGIN, BEFORE_END = "<!-- stopping-benchmark:before:begin -->", "<!-- stopping-benchmark:before:end -->"


def _bold_shipped(rows: list[list[str]]) -> list[list[str]]:
    """The shipped rule's name in bold where a row's label starts with it."""
    return [[row[0].replace(f"{SHIPPED}:", f"**{SHIPPED}**:", 1), *row[1:]] if row and
             row[0].startswith(f"{SHIPPED}:") else row for row in rows]


def _cells(row: list[str]) -> str:
    """A row's numbers (stop, shortfall, fired, never-stop runs stopped) as one phrase."""
    return f"stop {row[0]}, shortfall {row[1]}, fired {row[2]}, never-stop runs stopped {row[3]}"


def _changes_text(changes: dict) -> str:
    """What the fallback changes against the gate alone: the tuning families' rows and runs, the held-out rows."""
    parts = []
    tune = changes.get("tuning families")
    if tune is not None:
        rows, same = tune["rows"], tune["same"]
        text = "On the tuning families " + (
            "the row with the restore, on which the fallback was chosen, reads as the gate alone's"
            f" ({_cells(rows['restore'][1])})" if same["restore"] else
            f"the row with the restore moves from {_cells(rows['restore'][0])} to {_cells(rows['restore'][1])}")
        moved = tune["moved"]
        if not moved:
            text += "; no tuning run stops at another epoch, so no tuning-family number changes."
        else:
            earlier = sum(b < a for _, a, b, _, _ in moved)
            restored = [m for m in moved if abs(m[3] - m[4]) > 5e-3]
            text += (f"; it is not the same rule there, though: {len(moved)} of {tune['runs']} tuning runs stop at"
                     f" another epoch ({'all' if earlier == len(moved) else earlier} earlier)")
            if restored:
                text += (", and the restored epoch moves the shortfall of "
                         + ", ".join(f"{n} ({x:.2f} -> {y:.2f} nats)" for n, _, _, x, y in restored))
            text += ("; so the row without the restore "
                     + (f"reads the same ({_cells(rows['plain'][1])})" if same["plain"] else
                        f"moves (shortfall {rows['plain'][0][1]} -> {rows['plain'][1][1]} nats)")
                     + f" and the per-family rows of {SHIPPED} differ from the gate alone's (both tables below).")
        parts.append(text)
    held = changes.get("held-out families")
    if held is not None:
        gate, new = held["rows"]["restore"]
        parts.append(f"On the held-out families, with the restore, it moves {_cells(gate)} to {_cells(new)}"
                     f" ({len(held['moved'])} of {held['runs']} runs stop at another epoch).")
    return " ".join(parts)


def _fallback_paragraphs(summary: dict) -> list[str]:
    """The fallback stage: its rule, its pick, its tables, what it changes and where the shipped rule loses."""
    fb = summary.get("fallback")
    if not fb:
        return []
    pick, changes = fb["pick"], fb["changes"]
    gate = summary["chosen"]
    tol = f"{gate['tol']:g}" + (" D" if gate["tol_unit"] == "D" else "")
    gap = ("no gap condition" if pick["gap_factor"] is None
           else f"|gap_window| <= {pick['gap_factor']:g} x tol = {pick['gap_factor']:g} x {tol} nats per point")
    lines = [f"**The fallback stage.** {fb['selection']}", "",
             f"It picks {pick['label']}"
             + (f" ({fb['fitting_variants']} of {fb['variants']} variants admissible)." if fb["fits"]
                else " as a miss: no variant fires in >= 90 % of the eligible tuning runs without a forbidden stop."),
             "",
             f"**{SHIPPED}** = the gate above, or the fallback: from the first training epoch on, each"
             " validation check of the val ELBO counts for the fallback when the training epoch before it ended"
             f" with the objective verdict 1 and {gap} (the gate's tolerance; gap_window the mean gap over the"
             f" gate's W = {gate['window']} batches, NaN until they are seen); after {pick['patience']} counted"
             f" checks in a row without improvement (min_delta {pick['min_delta']:g}) it stops; a check that does"
             " not count sets the wait to 0 and still raises the best value. Training stops at the earlier of the"
             f" gate rule's stop and the fallback's. Label in the tables: `{fb['shipped']}`.", ""]
    lines += [f"**Read this with care.** The fallback stage was added after the held-out results of the gate alone"
              " had been seen: it is a second look at the held-out families, so they are no longer untouched test"
              f" data for {SHIPPED}. " + _changes_text(changes), ""]
    loses = []
    for scope, ch in changes.items():
        where = "all runs" if scope == "all runs" else "the " + scope
        unfired = ", ".join(ch["unfired"]) if ch["unfired"] else "none"
        unfired = "" if scope == "all runs" else f"eligible runs it does not stop: {unfired}; "
        loses.append(f"on {where}, {unfired}median stop {ch['stop_pct']:.0f} % against {ch['es20_stop_pct']:.0f} %"
                     " for `EarlyStopping(patience=20)`")
    lines += ["**Where it still loses:** " + "; ".join(loses) + ". A run whose gap never comes within the fallback's"
              " bound and never passes the gate is not stopped (the checkpoint still restores its best validation"
              " epoch).", ""]
    for scope, title in (("tuning families", "the tuning families"), ("held-out families", "the held-out families"),
                         ("all runs", "all runs")):
        if scope in fb["tables"]:
            lines += [f"### The fallback variants on {title} (each with the gate, with restore)", "",
                      *markdown(FALLBACK_HEAD, fb["tables"][scope]), ""]
    return lines


def rule_before(old: str) -> list[str]:
    """The earlier benchmark's section, kept whole from the section being replaced: its marked block, or else
    everything the earlier section held (its headings one level down; empty if there was none)."""
    if BEFORE_BEGIN in old and BEFORE_END in old:
        return old[old.index(BEFORE_BEGIN):old.index(BEFORE_END) + len(BEFORE_END)].split("\n")
    lines = old.split("\n")
    body = [line for line in lines if not line.startswith("<!-- stopping-benchmark:")]
    while body and (not body[0].strip() or body[0].startswith("## ")):
        body.pop(0)
    while body and not body[-1].strip():
        body.pop()
    if not body:
        return []
    body = ["#" + line if line.startswith("### ") else line for line in body]
    return [BEFORE_BEGIN, "### The rule before", "",
            "The previous `EntropyConvergence` rule (|train rel gap| < 1 % for 10 epochs in a row, then patience 10"
            " on the validation ELBO, restore the best validation epoch) was chosen by an earlier version of this"
            " benchmark: VAE-1 on the five tuning families only, 2 learning rates x 5 seeds, rules reading the"
            " per-epoch published values. Its section, as written then:", "", *body, "", BEFORE_END]


def section(summary: dict, tables: dict, verdicts: dict, loses: list[list[str]], live: list[list[str]],
            records: list[Record], args: argparse.Namespace, old: str) -> list[str]:
    families = sorted({r.family for r in records})
    held = [f for f in families if f not in TUNING_FAMILIES]
    variants = sorted({r.variant for r in records})
    seeds = sorted({r.meta["seed"] for r in records})
    lrs = sorted({r.meta["lr"] for r in records})
    budgets = [r.budget for r in records]
    chosen, prestated = summary["chosen"], summary["prestated"]
    tol = f"{chosen['tol']:g} nats per point" if chosen["tol_unit"] == "nats" else f"{chosen['tol']:g} D nats per point"
    counts = ("|mean| + z se <= tol (the window's gap is confidently within tol)" if chosen["form"] == "ci"
              else "|mean| <= max(z se, tol)")
    floors, lowest = summary.get("floors", {}), summary.get("lowest_worst", {})
    floor_text = ", ".join(f"{floors[k]:.2f} nats on {'the ' if k != 'all runs' else ''}{k}" for k in floors)
    lowest_text = ", ".join(f"{lowest[k]:.2f}" for k in floors)
    above = bool(floors) and min(floors.values()) > WORST_TARGET and min(lowest.values()) > WORST_TARGET
    lines = [
        "## Stopping benchmark",
        "",
        f"Written by `python benchmarks/stopping.py` (phase 1 trains and saves {len(records)} runs; phase 2 replays"
        f" every rule over the saved records: {summary['replay_seconds']:.0f} s this time, where the gate epochs of"
        " unchanged records come from `runs/stopping2/replay-cache`; about 20 s without it). Families:"
        f" {', '.join(families)};"
        f" variants: {', '.join(variants)}; learning rates {', '.join(f'{lr:g}' for lr in lrs)}; seeds"
        f" {', '.join(str(s) for s in seeds)}; budgets {min(budgets)}-{max(budgets)} epochs. The ground truth,"
        " hidden from every rule: the ELBO of a separate test set with fixed z draws, each epoch. Shortfall: the"
        " best test ELBO over the budget minus the test ELBO at the stop epoch (or, with restore, at the best"
        " validation-ELBO epoch up to the stop: a `ModelCheckpoint` on the validation ELBO), nats per point, over"
        " the beta = 1 runs (variants mean and sum). Stop: epochs trained, % of the budget. Fired: share of the"
        " eligible runs (beta = 1, best test epoch before 80 % of the budget) stopped before the budget. Never-stop"
        " runs: beta4, freebits and scaled runs, and warm-up runs before beta reaches 1.",
        "",
        f"**The gate.** Per training batch k the gap g_k = (elbo_sum_k - entsum_sum_k) / n_k nats per"
        f" point; at each epoch's end, over the last W = {chosen['window']} training batches (across epochs),"
        f" `mean, se = batch_means(g, n, groups={chosen['groups']})` (`lightning_entropy_vae.functional`); the"
        f" epoch counts when {counts} with z = {chosen['z']:g} and tol = {tol} (D the data dimension), and the"
        " package's `ObjectiveCheck` says the loss is the beta = 1 ELBO; the gate opens after"
        f" E = {chosen['epochs']} counted epoch(s) in a row; from the next epoch on (the gate updates after that"
        " epoch's validation has run) `EarlyStopping(val ELBO, patience"
        f" {chosen['patience']}, min_delta 0)` stops training, and the best validation-ELBO checkpoint is"
        " restored. The shipped rule adds a gated fallback to this gate (below: the fallback stage).",
        "",
        "**The grid replayed.** Both gate forms: `max` counts an epoch when |mean| <= max(z se, tol), `ci` when"
        f" |mean| + z se <= tol. W in {GRID['window']}, z in {GRID['z']}, tol in"
        f" {', '.join(f'{t:g} ' + ('nats' if u == 'nats' else 'D') for t, u in GRID['tol'])}, E in"
        f" {GRID['epochs']}, P in {GRID['patience']} ({summary['configs']} configs); each with and without the"
        " restore.",
        "",
        f"**The selection stated before any result.** {summary['selection']}",
        "",
        f"It picks {prestated['label']} + restore"
        + (f" ({summary['admissible_configs']} admissible configs)." if summary["admissible"]
           else " as a miss: no config met all four targets on the tuning families."),
        "",
        f"**The selection that chose the gate.** {summary['selection_worst_first']}",
        "",
        f"**The gate (the grid's pick):** {chosen['label']} + restore"
        + (f" ({summary['fitting_configs']} of {summary['configs']} configs fire in >= 90 % of the eligible"
           " tuning runs without a forbidden stop)." if summary["chosen_fits"]
           else " (a miss: no config fires in >= 90 % of the eligible tuning runs without a forbidden stop)."),
        "",
    ]
    if floors:
        lines += ["**The floor.** Training to the full budget and restoring the best validation checkpoint has a"
                  f" worst shortfall of {floor_text}. A restore-based rule reads the test ELBO at a validation-chosen"
                  " epoch, so where the validation ELBO's best epoch misses the test ELBO's best, the shortfall stays"
                  " whenever the rule stops; stopping earlier only changes which epochs the checkpoint chooses among."
                  f" The lowest worst shortfall of any gate config + restore, in the same order: {lowest_text} nats"
                  + (f"; the <= {WORST_TARGET:g} nat target cannot be met by any rule here." if above else "."), ""]
    if summary.get("choosing"):
        lines += ["### The table that chose the gate (tuning families, with restore)", "",
                  *markdown(CHOICE_HEAD, summary["choosing"]), ""]
    lines += _fallback_paragraphs(summary)
    gate_verdicts = summary.get("gate_verdicts", {})
    for scope, title in (("tuning families", "Tuning families"), ("held-out families", "Held-out families"),
                         ("all runs", "All runs")):
        if scope not in tables:
            continue
        fams = TUNING_FAMILIES if scope == "tuning families" else held if scope == "held-out families" else families
        lines += [f"### {title} ({', '.join(f for f in fams if f in families)})", "",
                  *markdown(HEAD, _bold_shipped(tables[scope])), "",
                  f"Targets for {SHIPPED} + restore: {verdicts[scope]}", ""]
        if scope in gate_verdicts:
            lines += [f"Targets for the gate alone + restore: {gate_verdicts[scope]}", ""]
    lines += [f"### Where {SHIPPED} loses", "",
              f"Per family, {SHIPPED} (the gate or the fallback) with restore; a * marks a missed target (fire rate"
              " >= 90 %, worst shortfall <= 1 nat, median stop <= that of `EarlyStopping(patience=20)`, no"
              " never-stop run stopped).", "", *markdown(FAMILY_HEAD, loses), ""]
    if summary.get("gate_per_family"):
        lines += ["### Where the gate alone loses", "", "The same, for the gate alone (the grid's pick) with restore.",
                  "", *markdown(FAMILY_HEAD, summary["gate_per_family"]), ""]
    if live:
        lines += ["### The live SASA policy", "",
                  "SASA runs stop themselves (lr x 0.1 on stationarity, stop once stationary at the last rate);"
                  " the rows below them are the replayed rules on the `mean` runs of the same family, learning"
                  " rate and seed. Shortfall: the best test ELBO of that `mean` run over its budget minus the"
                  " final model's.", "", *markdown(LIVE_HEAD, _bold_shipped(live)), ""]
    before = rule_before(old)
    if before:
        lines += [*before, ""]
    spent = statistics.median(budgets) if budgets else 0
    lines += ["### Command", "", "```bash", "python benchmarks/stopping.py                # train what is missing,"
              " then replay", "python benchmarks/stopping.py --replay-only  # replay the saved records only", "```",
              "", f"(median budget {spent:.0f} epochs; `--smoke` checks the script at tiny sizes and writes no docs)",
              "", "![stopping benchmark](figures/stopping_benchmark.png)", ""]
    return lines
