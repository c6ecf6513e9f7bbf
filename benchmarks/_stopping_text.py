"""The ``docs/results.md`` section of ``stopping.py`` (numbers formatted in from the replay)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from _stopping_grid import SELECTION, SELECTION_WORST_FIRST, WITHIN, Summary


def section(tables: dict, verdicts: dict, per_group: list[str], picks: dict[str, Summary], admissible: bool,
            args: argparse.Namespace, markdown: Callable[[list[list[str]]], list[str]]) -> list[str]:
    seeds = ", ".join(str(s) for s in args.seeds)
    tune = ", ".join(str(s) for s in args.tune_seeds)
    lines = [
        "## Stopping benchmark (issue 9)",
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
        f"{SELECTION_WORST_FIRST}",
        "",
    ]
    for name, pick in picks.items():
        lines.append(f"- {name}: **{pick.label}**" + (" (a miss: no candidate meets all three targets on the"
                                                         " tuning seeds)" if name.startswith("pre") and not
                                                         admissible else ""))
    lines.append("")
    for label in ("all seeds", "held-out seeds"):
        lines += [f"### {label.capitalize()}", "", *markdown(tables[label]), ""]
        for name, verdict in verdicts[label].items():
            lines.append(f"- targets for the {name} ({label}): " + "; ".join(verdict))
        lines.append("")
    lines += ["### Per data set and learning rate (all seeds)", "",
              "Median stop (% of budget); shortfall median / worst (nats per point).", "", *per_group, "",
              "![stopping benchmark](figures/stopping_benchmark.png)", ""]
    return lines
