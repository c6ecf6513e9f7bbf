"""The figure of ``stopping.py``: trade-off of all variants, per-run shortfalls, and one run's stops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from _stopping_grid import WORST_TARGET, Summary
from _stopping_rules import monitor_label, signal

EXAMPLE_RUN = "pca_ring_lr0.0003_s2"
KEY_RULES = (
    ("fixed budget", None, "budget"),
    ("fixed budget", "val_elbo", "budget\n+restore"),
    ("EarlyStopping(val ELBO, patience 10)", None, "ES p10"),
    ("EarlyStopping(val ELBO, patience 10)", "val_elbo", "ES p10\n+restore"),
    ("EarlyStopping(val ELBO, patience 20)", None, "ES p20"),
    ("today's gap rule on val (|rel gap| < 1 %, 3 checks)", None, "gap rule\n(val)"),
    ("today's gap rule on train (|rel gap| < 1 %, 3 checks)", None, "gap rule\n(train)"),
)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure(histories: list[dict], results: dict[str, list[dict]], tuned: list[Summary], picks: dict[str, Summary],
           es10: Summary, es20: Summary, path: Path) -> None:
    plt = _pyplot()
    fig, (ax_a, ax_b, ax_c) = plt.subplots(1, 3, figsize=(17, 5.2), gridspec_kw={"width_ratios": [1, 1.2, 1.2]})

    # (a) every variant on the tuning seeds
    ok = np.array([s.worst <= WORST_TARGET for s in tuned])
    x = np.array([s.stop_pct for s in tuned])
    y = np.array([s.median for s in tuned])
    ax_a.scatter(x[~ok], y[~ok], s=8, color="0.75", label=f"candidates, worst > {WORST_TARGET:g} nat")
    ax_a.scatter(x[ok], y[ok], s=8, color="C2", label=f"candidates, worst <= {WORST_TARGET:g} nat")
    for s, marker in ((es10, "s"), (es20, "D")):
        ax_a.scatter(s.stop_pct, s.median, marker=marker, color="C0", s=40, label=s.label, zorder=3)
    for (name, pick), color in zip(picks.items(), ("C3", "C4")):
        ax_a.scatter(pick.stop_pct, pick.median, marker="*", color=color, s=160, label=name, zorder=4)
    ax_a.axhline(es10.median, color="C0", lw=0.6, ls="--")
    ax_a.axvline(es20.stop_pct, color="C0", lw=0.6, ls=":")
    ax_a.set_yscale("symlog", linthresh=0.01)
    ax_a.set_ylim(0, None)
    ax_a.set_xlabel("median stop, % of budget")
    ax_a.set_ylabel("median shortfall, nats per point")
    ax_a.set_title("(a) every rule variant, tuning seeds", fontsize=10)
    ax_a.legend(fontsize=6.5, loc="upper right")

    # (b) per-run shortfalls of the key rules and the picks, all seeds
    rules = [*KEY_RULES, *((p.rule.name, p.restore, name.replace(" pick", "\npick") + "\n+restore" * bool(p.restore))
                           for name, p in picks.items())]
    rng = np.random.default_rng(0)
    for i, (name, restore, _) in enumerate(rules):
        rs = results[name]
        vals = np.array([r[f"restore:{restore}" if restore else "plain"] for r in rs])
        jitter = i + rng.uniform(-0.25, 0.25, len(vals))
        color = "C0" if i < len(KEY_RULES) else ("C3", "C4")[i - len(KEY_RULES)]
        ax_b.scatter(jitter, np.maximum(vals, 0), s=9, alpha=0.7, color=color)
        ax_b.plot([i - 0.3, i + 0.3], [np.median(vals)] * 2, color="k", lw=1.5)
    ax_b.axhline(WORST_TARGET, color="C3", lw=0.7, ls="--")
    ax_b.set_yscale("symlog", linthresh=0.01)
    ax_b.set_ylim(0, None)
    ax_b.set_xticks(range(len(rules)), [label for *_, label in rules], fontsize=7)
    ax_b.set_ylabel("shortfall, nats per point")
    ax_b.set_title(f"(b) every run (all seeds; bar: median; dashed: {WORST_TARGET:g} nat)", fontsize=10)

    # (c) one run: the ground truth, what the rules see, where they stop
    h = next((h for h in histories if h["name"] == EXAMPLE_RUN), histories[0])
    epochs = np.arange(1, len(h["test_elbo"]) + 1)
    ax_c.plot(epochs, h["val_elbo"], color="0.7", lw=0.6, label="val ELBO, one z per point (EarlyStopping's)")
    ax_c.plot(epochs, h["val_sum"], color="C1", lw=0.8, label="val entropy sum")
    for monitor in dict.fromkeys(m for p in picks.values() for m in (p.rule.restore, p.restore or "val_elbo")):
        if monitor.startswith("val_elbo_dn"):
            ax_c.plot(epochs, signal(h, monitor), color="C2", lw=0.8, label=monitor_label(monitor))
    ax_c.plot(epochs, h["test_elbo"], color="k", lw=1.0, label="test ELBO, 32 z per point (hidden truth)")
    shown = [(rules[2], "C0", "--"), (rules[5], "C5", "--")]
    shown += [(rule, color, ":") for rule, color in zip(rules[len(KEY_RULES):], ("C3", "C4"))]
    for (name, restore, label), color, ls in shown:
        r = next(r for r in results[name] if r["run"] == h["name"])
        ax_c.axvline(r["stop"] + 1, color=color, ls=ls, lw=1.2, label=f"stop: {label.replace(chr(10), ' ')}")
        if restore:
            ax_c.plot(r[f"restore:{restore}_epoch"] + 1, h["test_elbo"][r[f"restore:{restore}_epoch"]], "o",
                      color=color, ms=5)
    best = np.nanmax(h["test_elbo"])
    ax_c.set_ylim(best - 3.5, best + 0.7)
    ax_c.set_xlabel("epoch")
    ax_c.set_ylabel("ELBO, nats per point")
    ax_c.set_title(f"(c) one run: {h['name']} (dots: the restored epochs)", fontsize=10)
    ax_c.legend(fontsize=6.5, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
