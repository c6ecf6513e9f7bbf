"""The ``docs/results.md`` section of ``stopping.py``: the prose is fixed, every number is formatted in."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from _stopping_grid import SELECTION, SELECTION_WORST_FIRST, WITHIN, Summary

ES10, ES20 = "EarlyStopping(val ELBO, patience 10)", "EarlyStopping(val ELBO, patience 20)"
TRAIN_GAP = "today's gap rule on train (|rel gap| < 1 %, 3 checks)"
VAL_GAP = "today's gap rule on val (|rel gap| < 1 %, 3 checks)"
VAL_SUM = "EarlyStopping(val entropy sum, patience 10)"


def _num(s: Summary | None) -> str:
    if s is None:
        return "(none)"
    return f"median stop {s.stop_pct:.0f} %, shortfall median {s.median:.2f} / worst {s.worst:.2f} nats"


def section(tables: dict, verdicts: dict, per_group: list[str], picks: dict[str, Summary], admissible: bool,
            args: argparse.Namespace, markdown: Callable[[list[list[str]]], list[str]], lookup: dict,
            alternatives: dict, plain: dict) -> list[str]:
    seeds = ", ".join(str(s) for s in args.seeds)
    tune = ", ".join(str(s) for s in args.tune_seeds)

    def get(name: str, restore: str | None = None, label: str = "all seeds") -> Summary | None:
        return lookup.get((label, name, restore))

    pre, wf = picks["pre-stated pick"], picks.get("worst-first pick")
    free = plain.get(1.0)  # the earliest entropy-free candidate with worst <= 1 nat on the tuning seeds
    free_all = get(free.rule.name, free.restore) if free else None
    free_held = get(free.rule.name, free.restore, "held-out seeds") if free else None
    lines = [
        "## Stopping benchmark",
        "",
        "Written by `python benchmarks/stopping.py` (phase 1 trains and saves the runs, about an hour on one"
        " CPU thread; phase 2 replays the rules in seconds). VAE-1 on 5 data sets (pPCA D = 20 k = 4, PCA-ring,"
        " swiss roll, digits, eight Gaussians) x 2 learning rates (3e-4, 3e-3; Adam, batch 128) x seeds"
        f" {seeds}; budgets 300-2,000 epochs. The ground truth, hidden from every rule: the ELBO of a separate"
        " test set with 32 fixed z draws per point, each epoch. Shortfall: the best test ELBO over the budget"
        " minus the test ELBO at the stop epoch (or at the epoch a best-checkpoint restore picks among the epochs"
        " up to the stop), nats per point; relative: divided by max(|best test ELBO|, 0.1 D). Rules see only"
        " what `EntropyMonitor` publishes per epoch (train/val `sum`, `elbo`, `gap`, `rel_gap`; `val elbo` is also"
        " the user's one-sample `val_elbo`). Stop: epochs trained, % of the run's budget. Fired: share of runs"
        f" stopped before the budget. Within: share of runs no more than {WITHIN} nats short.",
        "",
        f"**How the rule was picked.** Parameters were chosen on seeds {tune} only. {SELECTION}",
        "",
        f"{SELECTION_WORST_FIRST}",
        "",
    ]
    lines.append(f"- pre-stated pick: **{pre.label}**" + (
        " (a miss: no candidate meets all three targets on the tuning seeds)" if not admissible else ""))
    if wf:
        lines.append(f"- worst-first pick: **{wf.label}**")
    lines += ["", "**Result.** No candidate meets all three targets: on the tuning seeds the worst shortfall of 1 nat"
              " and the median stop of `EarlyStopping(patience=20)` exclude each other. The pre-stated pick stops as"
              f" early as ES p20 ({_num(get(pre.rule.name, pre.restore))}) but is no safer than"
              f" ES p20 + restore ({_num(get(ES20, 'val_elbo'))})."]
    if wf:
        held = get(wf.rule.name, wf.restore, "held-out seeds")
        lines[-1] += (
            f" The worst-first pick meets the worst-case and median-shortfall targets on all seeds"
            f" ({_num(get(wf.rule.name, wf.restore))}) and on the held-out seeds ({_num(held)}), at about twice"
            " the median stop of ES p20. **It is the recommended default**: the issue's first target is the worst"
            " case, and there the pre-stated pick does not beat stock EarlyStopping.")
    lines += [
        "",
        "**The recommended rule, exactly.** At the end of each epoch, with `g = entropy/train/rel_gap` and"
        " `v = entropy/val/elbo` (the one-sample validation ELBO, the same number as a user's `val_elbo`):",
        "",
        "```text",
        "closed_run = closed_run + 1 if isfinite(g) and |g| < 0.01 else 0",
        "if not armed and closed_run >= 10: armed = True          # this epoch is the first check",
        "if armed:",
        "    if v > best: best, wait = v, 0                       # EarlyStopping(mode=max, min_delta=0)",
        "    else: wait += 1; if wait >= 10: stop",
        "restore at the stop (or at the budget): the epoch with the highest v so far",
        "```",
        "",
        "The gate reads the training gap as a stationarity test: while the minibatch ELBO and the entropy sum"
        " of the epoch's training points differ by 1 % or more, the variances are not at their stationary values"
        " and stopping on a flat validation curve is premature. Runs whose gap never settles (a large learning"
        " rate's noise, slow learning at a small one) train to the budget, and the restore then returns the best"
        " validation epoch: there the rule is `fixed budget + restore`. The restore is"
        " `ModelCheckpoint(monitor=\"entropy/val/elbo\", mode=\"max\")` (or the user's own `val_elbo`) and"
        " loading `best_model_path` after `fit`.",
        "",
        "**When to prefer another rule.** To stop as early as stock early stopping and accept a worst case of a"
        f" few nats: ES p20 + restore ({_num(get(ES20, 'val_elbo'))}) or the pre-stated pick. Without an"
        f" entropy signal, the earliest candidate with worst <= 1 nat on the tuning seeds was"
        f" {free.label if free else '(none)'} ({_num(free_all)} on all seeds; held-out: {_num(free_held)})"
        + (": it does not hold its worst case beyond the tuning seeds." if free_held and free_held.worst > 1 else "."),
        "",
        "**How sharp the choice is.** See the table of the pick's neighbours below. On the tuning seeds every looser"
        " gate (fewer epochs in a row, or 2 %) is caught by the late saddle described next or by an unstable"
        " PCA-ring run at 3e-3; on the held-out seeds most looser gates also stay within 1 nat and stop earlier."
        " The 1-nat worst case rests on a few runs of 50; a saddle left late is rare, but"
        " it is what a worst-case target is about.",
        "",
        "**Where the entropy signals lose.** Early stopping on the validation entropy sum"
        f" ({_num(get(VAL_SUM))}) stops in the first epochs: there the sum falls while the ELBO rises (in its"
        " worst runs the first epoch's sum is the best); plateau tests of"
        " the sums, the overfitting sign (an EMA of the validation gap falling) and their combinations are no"
        " better than `EarlyStopping(patience=20)` on the one-sample validation ELBO in the worst case (see the"
        " family rows printed by the script and `runs/stopping/candidates.csv`). The sum plus a smoothed gap as a"
        " less noisy validation"
        " ELBO did not help either, and as the restore monitor it is worse than the one-sample ELBO (compare the"
        " two restores of the same rule in the tables). Today's gap rule on the"
        f" validation gap: {_num(get(VAL_GAP))}; on the training gap: {_num(get(TRAIN_GAP))}. A saddle that"
        " training leaves late (PCA-ring at 3e-4, seed 2: a plateau on which the training gap hovers around 1 %,"
        " then a jump after epoch 850 of 1,000) fools every rule that stops on the plateau; only long patience or"
        " a gate that stays shut through it survives (the recommended gate never opened in that run).",
        "",
    ]
    for label in ("all seeds", "held-out seeds"):
        lines += [f"### {label.capitalize()}", "", *markdown(tables[label]), ""]
        for name, verdict in verdicts[label].items():
            lines.append(f"- targets for the {name} ({label}): " + "; ".join(verdict))
        lines.append("")
    lines += ["### Per data set and learning rate (all seeds)", "",
              "Median stop (% of budget); shortfall median / worst (nats per point), 5 seeds each.", "", *per_group,
              "", "![stopping benchmark](figures/stopping_benchmark.png)", ""]
    return lines
