"""Figures from a finished run's logs (TensorBoard event files or a CSVLogger's metrics.csv).

``python -m lightning_entropy_vae report LOGDIR`` reads every ``entropy/...`` scalar the
:class:`~lightning_entropy_vae.EntropyMonitor` wrote and draws:

- ``elbo_vs_entropy_sum.png``: the ELBO and the entropy sum over training, the relative gap below
  (the paper's Fig. 2a);
- ``latent_entropies.png``: each latent's average encoder entropy over training against the collapse
  threshold and the prior line, and the number of active latents (the paper's Fig. 3b);
- ``latent_bars.png``: the final per-latent average encoder entropies.

A log folder may hold several runs (Lightning's ``version_0``, ``version_1``, ...): :func:`find_runs` lists
them, and each figure is drawn from one run, never from a merge of several.
"""

from __future__ import annotations

import csv
import math
import re
from collections import defaultdict
from pathlib import Path

from lightning_entropy_vae.callbacks._logger_extras import line_folder

Series = dict[str, list[tuple[int, float]]]

__all__ = ["convergence_title", "find_runs", "load_scalars", "plot_run"]

#: |relative gap| below which a title says "converged" (EntropyConvergence's default gap tolerance)
CONVERGED_TOLERANCE = 0.01
#: the runs ``lines/{run}`` of a TensorBoard log that hold ``entropy/{stage}/latent_entropy/{key}`` (see
#: ``callbacks._logger_extras.line_values``)
LINE_RUNS = {"collapse_threshold": "threshold", "prior_entropy": "prior"}
#: the runs ``lines/{run}`` that hold each latent's ``entropy/{stage}/latent_entropy/{h}``, by the latent's state
STATE_RUNS = ("active", "collapsed")
#: the extra that brings matplotlib (and TensorBoard's event reader)
EXTRA = "pip install 'lightning-entropy-vae[examples]'"


def _read_csv(path: Path, series: Series, prefix: str = "entropy") -> None:
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            step = int(float(row.get("step") or 0))
            for key, value in row.items():
                if key.startswith(f"{prefix}/") and value not in (None, ""):
                    series["entropy" + key[len(prefix):]].append((step, float(value)))


def _read_tensorboard(path: Path, series: Series, prefix: str = "entropy") -> None:
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as err:
        raise ImportError("Reading TensorBoard event files needs tensorboard, which is not installed:"
                          " pip install 'lightning-entropy-vae[tensorboard]'") from err

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
    acc.Reload()
    for tag in acc.Tags().get("scalars", []):
        if tag.startswith(f"{prefix}/"):
            series["entropy" + tag[len(prefix):]].extend((e.step, e.value) for e in acc.Scalars(tag))
    # the threshold and prior lines live in runs of their own below the run, so that TensorBoard colours them
    for run, key in LINE_RUNS.items():
        folder = path / line_folder(prefix) / run
        if not folder.is_dir():
            continue
        lines = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        lines.Reload()
        for tag in lines.Tags().get("scalars", []):
            if tag.startswith(f"{prefix}/") and tag.endswith("/latent_entropy_lines"):
                stage = "entropy" + tag[len(prefix):-len("latent_entropy_lines")]
                series[f"{stage}latent_entropy/{key}"].extend((e.step, e.value) for e in lines.Scalars(tag))
    # each latent's entropies are in the run of its state; at a change of state, in both runs (the same point)
    latent = re.compile(rf"{re.escape(prefix)}/[^/]+/latent_entropy/\d+")
    merged: dict[str, dict[int, float]] = {}
    for run in STATE_RUNS:
        folder = path / line_folder(prefix) / run
        if not folder.is_dir():
            continue
        states = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        states.Reload()
        for tag in states.Tags().get("scalars", []):
            if latent.fullmatch(tag):
                points = merged.setdefault("entropy" + tag[len(prefix):], {})
                points.update((e.step, e.value) for e in states.Scalars(tag))
    for key, points in merged.items():
        series[key].extend(sorted(points.items()))



def _version(path: Path) -> int | None:
    match = re.fullmatch(r"version_(\d+)", path.name)
    return int(match.group(1)) if match else None


def _one_loggers_versions(runs: list[Path]) -> bool:
    """Whether ``runs`` are Lightning's ``version_N`` folders of one logger (one parent): ``--version N`` names one."""
    return all(_version(r) is not None for r in runs) and len({r.parent for r in runs}) == 1


def find_runs(logdir: str | Path) -> list[Path]:
    """The runs under ``logdir``, oldest first: folders with a ``metrics.csv`` (CSV logs) and folders with
    TensorBoard event files, leaving out the ``lines/*`` runs the EntropyMonitor writes inside a run.

    A run logged by both a CSVLogger and a TensorBoardLogger into separate folders (``csv/...`` and ``tb/...``) is
    listed once per folder; a folder that holds both kinds of logs is one run. Lightning's ``version_N`` folders
    of one parent are ordered by N, the others by their log files' modification time; the last one is the latest.
    """
    root = Path(logdir)
    csv_runs = {p.parent for p in root.rglob("metrics.csv")}
    folders = {p.parent for p in root.rglob("events.out.tfevents.*")}
    runs = sorted(csv_runs | {f for f in folders if not _in_lines(f, folders)})

    if _one_loggers_versions(runs):
        return sorted(runs, key=_version)
    return sorted(runs, key=lambda run: (_last_logged(run), str(run)))


def _in_lines(folder: Path, folders: set[Path]) -> bool:
    """Whether ``folder`` is a line run: below a ``lines`` folder of another run."""
    return any(parent.name == "lines" and parent.parent in folders for parent in folder.parents)


def _last_logged(run: Path) -> float:
    """When the run's log files last changed (not the figures a report wrote next to them)."""
    logs = [p for p in run.iterdir() if p.is_file() and (p.name == "metrics.csv" or p.name.startswith("events."))]
    return max((p.stat().st_mtime for p in logs), default=0.0)


def load_scalars(logdir: str | Path, prefix: str = "entropy") -> Series:
    """All ``entropy/...`` scalars of one run in ``logdir``: ``{key: [(step, value), ...]}`` sorted by step.

    ``logdir`` is a run's folder; if it holds several runs (see :func:`find_runs`), the latest is read.
    ``prefix``: that of the monitor whose keys to read (``EntropyMonitor(prefix=...)``); they are returned
    under ``entropy/`` all the same.

    Raises:
        FileNotFoundError: if ``logdir`` holds neither a ``metrics.csv`` nor TensorBoard event files
            with ``entropy/`` scalars.
    """
    root = Path(logdir)
    if not root.exists():
        raise FileNotFoundError(f"Expected a log directory, but {str(root)!r} does not exist.")
    series: Series = defaultdict(list)
    runs = find_runs(root)
    if runs:
        run = runs[-1]
        if (run / "metrics.csv").exists():
            _read_csv(run / "metrics.csv", series, prefix)
        else:
            _read_tensorboard(run, series, prefix)
    if not series:
        raise FileNotFoundError(
            f"Expected `{prefix}/...` scalars in a metrics.csv or TensorBoard event files under {str(root)!r},"
            " but found none. Was the run trained with EntropyMonitor and a CSV or TensorBoard logger? (A monitor"
            " with another `prefix`: pass it, `report --prefix ...`.)"
        )
    return {k: sorted(v) for k, v in series.items()}


def _line(ax, series: Series, key: str, **kw) -> None:
    if key in series:
        steps, values = zip(*series[key])
        ax.plot(steps, values, **kw)


def convergence_title(rel_gap: float | None, *, tolerance: float = CONVERGED_TOLERANCE) -> str:
    """The ELBO figure's title: the last training relative gap, and "converged" only if it is under ``tolerance``.

    >>> convergence_title(0.004)
    'ELBO has converged to the entropy sum: gap 0.4% (< 1%)'
    >>> convergence_title(0.182)
    'ELBO vs entropy sum: gap 18.2%, not converged (tolerance 1%)'
    >>> convergence_title(None)
    'ELBO vs entropy sum'
    """
    if rel_gap is None or not math.isfinite(rel_gap):
        return "ELBO vs entropy sum"
    if abs(rel_gap) < tolerance:
        return f"ELBO has converged to the entropy sum: gap {rel_gap:.1%} (< {tolerance:.0%})"
    return f"ELBO vs entropy sum: gap {rel_gap:.1%}, not converged (tolerance {tolerance:.0%})"


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend, or an ImportError that names the extra to install."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(f"The figures need matplotlib, which is not installed: {EXTRA}") from err
    return plt


def _legend_outside(ax, **kw) -> None:
    """A legend to the right of the axes, where it hides no line."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize="small", **kw)


def plot_run(logdir: str | Path, out_dir: str | Path | None = None, prefix: str = "entropy") -> list[Path]:
    """Draw the three figures for the run in ``logdir`` (the latest, if it holds several) into ``out_dir``
    (default: ``logdir``), from the keys of the monitor with ``prefix``.

    Raises:
        ImportError: without matplotlib, naming the extra to install.
        FileNotFoundError: see :func:`load_scalars`.
    """
    plt = pyplot()
    series = load_scalars(logdir, prefix)
    out = Path(out_dir) if out_dir is not None else Path(logdir)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True, height_ratios=(2, 1))
    _line(top, series, "entropy/train_step/elbo", color="C0", alpha=0.35, lw=0.8, label="minibatch ELBO (steps)")
    _line(top, series, "entropy/train/elbo", color="C0", marker=".", label="ELBO (train, epoch)")
    _line(top, series, "entropy/train/sum", color="C3", lw=2, label="entropy sum (train)")
    _line(top, series, "entropy/val/elbo", color="C2", ls="--", label="ELBO (val)")
    _line(top, series, "entropy/val/sum", color="C1", ls="--", label="entropy sum (val)")
    top.set_ylabel("nats per data point")
    last_gap = series.get("entropy/train/rel_gap", [(0, None)])[-1][1]
    top.set_title(convergence_title(last_gap))
    _legend_outside(top)
    for stage, color in (("train", "C3"), ("val", "C1")):
        _line(bottom, series, f"entropy/{stage}/rel_gap", color=color, marker=".", label=f"relative gap ({stage})")
    bottom.axhline(0.0, color="k", lw=0.6)
    bottom.set_yscale("symlog", linthresh=0.01)  # shows both the early peak and the last per cent
    bottom.set_ylabel("relative gap")
    bottom.set_xlabel("optimizer step")
    _legend_outside(bottom)
    fig.tight_layout()
    written.append(out / "elbo_vs_entropy_sum.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    latent_keys = sorted(k for k in series if k.startswith("entropy/train/latent_entropy/") and k[-1].isdigit())
    if latent_keys:
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True, height_ratios=(2, 1))
        cmap = plt.get_cmap("viridis", max(len(latent_keys), 2))
        for i, key in enumerate(latent_keys):
            _line(top, series, key, color=cmap(i), lw=1.2, label=f"z{key.rsplit('/', 1)[1]}")
        _line(top, series, "entropy/train/latent_entropy/threshold", color="C3", ls="--", label="collapse threshold")
        _line(top, series, "entropy/train/latent_entropy/prior", color="k", ls=":", label="prior entropy")
        top.set_ylabel("average encoder entropy [nats]")
        top.set_title("Posterior-collapse monitor: collapsed latents sit on the prior line")
        _legend_outside(top, ncol=max(1, math.ceil((len(latent_keys) + 2) / 16)))
        steps = {"drawstyle": "steps-post"}  # a count: no ramps between epochs
        _line(bottom, series, "entropy/train/active_latents", color="C0", marker=".", label="train", **steps)
        _line(bottom, series, "entropy/val/active_latents", color="C1", ls="--", label="val", **steps)
        bottom.set_ylabel("active latents")
        bottom.set_xlabel("optimizer step")
        _legend_outside(bottom)
        fig.tight_layout()
        written.append(out / "latent_entropies.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)

        final = [series[k][-1][1] for k in latent_keys]
        threshold = series.get("entropy/train/latent_entropy/threshold", [(0, 1.0)])[-1][1]
        prior = series.get("entropy/train/latent_entropy/prior", [(0, 0.5 * math.log(2 * math.pi * math.e))])[-1][1]
        fig, ax = plt.subplots(figsize=(max(4.0, 0.4 * len(final) + 2) + 2.0, 3.2))
        ax.bar(range(len(final)), final, color=["#bbbbbb" if v >= threshold else "#1f77b4" for v in final])
        ax.axhline(threshold, color="C3", ls="--", label="collapse threshold")
        ax.axhline(prior, color="k", ls=":", label="prior entropy")
        ax.set_xlabel("latent h")
        ax.set_ylabel("average encoder entropy [nats]")
        ax.set_title(f"final: {sum(v < threshold for v in final)} of {len(final)} latents active")
        _legend_outside(ax)
        fig.tight_layout()
        written.append(out / "latent_bars.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written
