"""The figure of ``stopping.py``: every gate config's median stop against its worst shortfall, tuning and
held-out families side by side, with the gate alone and the shipped rule (the gate or the fallback) marked, and
the shipped rule's runs."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from _stopping_grid import BUDGET, ES10, ES20, TODAY, WORST_TARGET, summarise
from _stopping_rules import BETA1, GateConfig

BASELINE_MARKERS = ((BUDGET, "o", "budget"), (ES10, "s", "ES p10"), (ES20, "D", "ES p20"),
                    (TODAY, "^", "the rule before"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure(configs: list[GateConfig], split: dict, chosen: GateConfig, path: Path, shipped: str | None = None
           ) -> None:
    """Draw the figure to ``path``; ``shipped`` is the results label of the shipped rule (else the gate's runs)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    scopes = [s for s in ("tuning families", "held-out families") if s in split]
    for ax, scope in zip(axes, scopes):
        res, recs = split[scope]
        pts = [summarise(c.label, res[c.label], recs, True) for c in configs]
        pts = [s for s in pts if s is not None]
        if not pts:
            continue
        x, y = np.array([s.stop_pct for s in pts]), np.array([s.worst for s in pts])
        ok = np.array([s.forbidden == 0 and not s.fire < 0.9 for s in pts])
        ax.scatter(x[~ok], y[~ok], s=8, color="0.7", label="gate configs (+ restore): fire < 90 % or a forbidden stop")
        ax.scatter(x[ok], y[ok], s=8, color="C2", label="gate configs (+ restore): fire >= 90 %, no forbidden stop")
        for name, marker, label in BASELINE_MARKERS:
            for restore, fill in ((False, "none"), (True, "C0")):
                s = summarise(name, res[name], recs, restore)
                ax.scatter(s.stop_pct, s.worst, marker=marker, s=50, edgecolors="C0", facecolors=fill, zorder=3,
                           label=f"{label}{' + restore' if restore else ''}")
        s = summarise(chosen.label, res[chosen.label], recs, True)
        ax.scatter(s.stop_pct, s.worst, marker="*", s=220, color="C3", zorder=4, label="the gate alone + restore")
        if shipped is not None:
            s = summarise(shipped, res[shipped], recs, True)
            ax.scatter(s.stop_pct, s.worst, marker="P", s=150, color="C4", edgecolors="k", zorder=5,
                       label="EntropyConvergence() + restore")
        ax.axhline(WORST_TARGET, color="C3", lw=0.7, ls="--")
        ax.set_yscale("symlog", linthresh=0.1)
        ax.set_ylim(0, None)
        ax.set_xlabel("median stop, % of budget (beta = 1 runs)")
        ax.set_ylabel("worst shortfall, nats per point")
        ax.set_title(f"{scope}: every rule", fontsize=10)
        ax.legend(fontsize=6, loc="lower left")

    ax = axes[2]
    runs_of = chosen.label if shipped is None else shipped
    name = "the gate alone" if shipped is None else "EntropyConvergence()"
    for scope, color in zip(scopes, ("C0", "C1")):
        res, recs = split[scope]
        rows = [(s, r) for s, r in zip(res[runs_of], recs) if r.variant in BETA1]
        ax.scatter([s["stop_pct"] for s, _ in rows], [max(s["restore"], 0) for s, _ in rows], s=12, alpha=0.7,
                   color=color, label=f"{scope}: {name} + restore")
        es = [s for s, r in zip(res[ES20], recs) if r.variant in BETA1]
        ax.scatter([s["stop_pct"] for s in es], [max(s["restore"], 0) for s in es], s=12, marker="x", alpha=0.5,
                   color=color, label=f"{scope}: ES p20 + restore")
    ax.axhline(WORST_TARGET, color="C3", lw=0.7, ls="--")
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_ylim(0, None)
    ax.set_xlabel("stop, % of budget")
    ax.set_ylabel("shortfall, nats per point")
    ax.set_title(textwrap.fill(f"every beta = 1 run: {runs_of}", 80), fontsize=8)
    ax.legend(fontsize=6.5)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
