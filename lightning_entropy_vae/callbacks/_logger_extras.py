"""Logger-specific extras of the EntropyMonitor: chart layouts, line runs, histograms, bar images, tables (private).

What only some loggers can show is written here, on global rank 0 only: a TensorBoard custom-scalars layout
(once per run), W&B ``define_metric`` groupings, and per-epoch histograms / bar images / a table of the
per-latent values (text in TensorBoard, a ``wandb.Table`` in W&B). The scalars themselves go to every logger
through :mod:`._loggers`.

TensorBoard colours lines by *run*, not by tag: two tags of one run on one chart differ only by their markers.
So the lines a chart compares (the ELBO and the entropy sum; the collapse threshold and the prior entropy next
to the latents) are also written, each under one shared tag, to small runs of their own in
``{log_dir}/lines/{name}`` (:class:`TensorBoardLines`): TensorBoard draws them in distinct colours, labelled
with the run's name, on the Scalars page and in the custom-scalars charts alike. Each latent's encoder entropy
``{prefix}/{stage}/latent_entropy/{h}`` goes to the run of its state at that epoch, ``lines/active`` or
``lines/collapsed``, not to the main run: a collapsed latent is drawn in the colour of its state.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch  # noqa: F401  (the doctests use it)
from torch import Tensor

from lightning_entropy_vae.callbacks._loggers import PER_LATENT_ROWS, is_logger

#: the folder, below a TensorBoard run, of the runs that carry one line each (:class:`TensorBoardLines`)
LINES_DIR = "lines"
#: the custom-scalars categories written to each TensorBoard run (log_dir), by every monitor of the process
_LAYOUTS: dict[str, dict[str, Any]] = {}


def tensorboard_layout(stages: list[str], per_latent: tuple[str, ...] | bool) -> dict[str, dict[str, list]]:
    r"""The custom-scalars layout: one category, Multiline charts per stage.

    ``per_latent``: the per-latent rows TensorBoard gets as scalars (``True``: all, ``False``: none). A chart
    that compares lines reads the shared tag of :class:`TensorBoardLines`' runs, so each line has its colour;
    the per-latent encoder entropies are in the runs ``active`` and ``collapsed`` (:func:`line_values`).

    >>> charts = tensorboard_layout(["train"], ("latent_entropy",))["entropy"]
    >>> charts["train: ELBO vs entropy sum"]
    ['Multiline', ['entropy/train/elbo_vs_sum']]
    >>> charts["train: per-latent encoder entropy"]
    ['Multiline', ['entropy/train/latent_entropy/\\d+$', 'entropy/train/latent_entropy_lines']]
    """
    rows = PER_LATENT_ROWS if per_latent is True else tuple(per_latent or ())
    charts: dict[str, list] = {}
    for stage in stages:
        charts[f"{stage}: ELBO vs entropy sum"] = ["Multiline", [f"entropy/{stage}/elbo_vs_sum"]]
        charts[f"{stage}: relative gap"] = ["Multiline", [f"entropy/{stage}/rel_gap"]]
        if "latent_entropy" in rows:
            charts[f"{stage}: per-latent encoder entropy"] = [
                "Multiline", [rf"entropy/{stage}/latent_entropy/\d+$", f"entropy/{stage}/latent_entropy_lines"]]
        if "latent_kl" in rows:
            charts[f"{stage}: per-latent KL"] = ["Multiline", [rf"entropy/{stage}/latent_kl/\d+$"]]
        charts[f"{stage}: active latents"] = ["Multiline", [f"entropy/{stage}/active_latents"]]
    charts["train steps: ELBO vs entropy sum"] = ["Multiline", ["entropy/train_step/elbo_vs_sum"]]
    charts["train steps: gap (moving average)"] = ["Multiline", ["entropy/train_step/gap_ema"]]
    return {"entropy": charts}


#: the runs of the per-latent encoder entropies, by the latent's state (a collapse flag of 0 or 1)
STATE_RUNS = ("active", "collapsed")


def line_values(stage: str, floats: dict[str, float], prefix: str = "entropy", *,
                latents: bool = False) -> dict[str, dict[str, float]]:
    """``{tag: {run: value}}``: the lines :class:`TensorBoardLines` writes for one stage's logged floats.

    The ELBO and the entropy sum under ``elbo_vs_sum``, the threshold and the prior line under
    ``latent_entropy_lines``; with ``latents``, each latent's encoder entropy ``latent_entropy/{h}`` in the run of
    its state: ``collapsed`` where its flag ``collapsed/{h}`` is 1, ``active`` where it is 0 (neither where the
    flag is NaN: no point was kept).

    >>> line_values("train", {"entropy/train/elbo": -3.0, "entropy/train/sum": -3.5})
    {'entropy/train/elbo_vs_sum': {'elbo': -3.0, 'entropy_sum': -3.5}}
    >>> floats = {"entropy/val/latent_entropy/0": 1.4, "entropy/val/collapsed/0": 1.0,
    ...           "entropy/val/latent_entropy/1": -0.5, "entropy/val/collapsed/1": 0.0}
    >>> line_values("val", floats, latents=True)
    {'entropy/val/latent_entropy/0': {'collapsed': 1.4}, 'entropy/val/latent_entropy/1': {'active': -0.5}}
    """
    out: dict[str, dict[str, float]] = {}
    pairs = {"elbo_vs_sum": (("elbo", "elbo"), ("entropy_sum", "sum")),
             "latent_entropy_lines": (("collapse_threshold", "latent_entropy/threshold"),
                                      ("prior_entropy", "latent_entropy/prior"))}
    for tag, runs in pairs.items():
        values = {run: floats[f"{prefix}/{stage}/{key}"] for run, key in runs if f"{prefix}/{stage}/{key}" in floats}
        if values:
            out[f"{prefix}/{stage}/{tag}"] = values
    if latents:
        start = f"{prefix}/{stage}/latent_entropy/"
        for key, value in floats.items():
            latent = key[len(start):]
            flag = floats.get(f"{prefix}/{stage}/collapsed/{latent}", math.nan)
            if key.startswith(start) and latent.isdigit() and flag in (0.0, 1.0):
                out[key] = {STATE_RUNS[int(flag)]: value}
    return out


def line_folder(prefix: str = "entropy") -> str:
    """The folder, below a TensorBoard run, of the line runs of the monitor with ``prefix`` (two monitors in one
    run must not write to the same event files).

    >>> line_folder(), line_folder("vae/entropy")
    ('lines', 'lines/vae_entropy')
    """
    return LINES_DIR if prefix == "entropy" else f"{LINES_DIR}/{prefix.replace('/', '_')}"


class TensorBoardLines:
    """The runs ``{log_dir}/{line_folder(prefix)}/{name}`` of each TensorBoard logger, one line each (rank 0 only).

    A tag written to one run that was last written to another single run (a latent that changed state) is also
    written to that former run at this step, so that its line is unbroken and changes colour there.
    Created on first use, flushed at each epoch's write, closed by :meth:`close` (the callback's teardown). The
    runs of :data:`STATE_RUNS` are created together, ``active`` first: TensorBoard picks a run's colour by the
    order the runs started in, so each state keeps its colour whichever state came first.
    """

    def __init__(self, prefix: str = "entropy") -> None:
        self._writers: dict[tuple[str, str], Any] = {}
        self._folder = line_folder(prefix)
        self._last_run: dict[tuple[str, str], str | None] = {}

    def write(self, loggers: list[Any], lines: dict[str, dict[str, float]], step: int, *, flush: bool) -> None:
        for logger in loggers:
            if not is_logger(logger, "TensorBoardLogger"):
                continue
            if any(run in STATE_RUNS for runs in lines.values() for run in runs):
                for run in STATE_RUNS:
                    self._writer(logger, run)
            for tag, runs in lines.items():
                for run, value in runs.items():
                    self._writer(logger, run).add_scalar(tag, value, step)
                only = next(iter(runs)) if len(runs) == 1 else None
                former = self._last_run.get((logger.log_dir, tag))
                if only is not None and former is not None and former != only:
                    self._writer(logger, former).add_scalar(tag, runs[only], step)
                self._last_run[(logger.log_dir, tag)] = only
            if flush:
                for (log_dir, _), writer in self._writers.items():
                    if log_dir == logger.log_dir:
                        writer.flush()

    def _writer(self, logger: Any, run: str) -> Any:
        key = (logger.log_dir, run)
        if key not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            self._writers[key] = SummaryWriter(str(Path(logger.log_dir) / self._folder / run))
        return self._writers[key]

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
        self._last_run.clear()


def latent_rows(stats: dict[str, Tensor]) -> list[list[Any]]:
    """The per-latent rows ``[latent, encoder entropy, KL, state]`` of :func:`latent_table` and the W&B table.

    The KL is ``None`` where ``stats`` holds no ``latent_kl``; the state is ``"unknown"`` where the entropy is NaN
    (no data reached the latent), else ``"collapsed"`` or ``"active"``.

    >>> stats = {"latent_entropy": torch.tensor([1.5, 0.25]), "latent_kl": torch.tensor([0.0, 2.5]),
    ...          "collapsed": torch.tensor([True, False])}
    >>> latent_rows(stats)
    [[0, 1.5, 0.0, 'collapsed'], [1, 0.25, 2.5, 'active']]
    """
    kl = stats.get("latent_kl")
    rows: list[list[Any]] = []
    for h, (entropy, flag) in enumerate(zip(stats["latent_entropy"].tolist(), stats["collapsed"].tolist())):
        state = "unknown" if math.isnan(entropy) else ("collapsed" if flag else "active")
        rows.append([h, float(entropy), None if kl is None else float(kl[h]), state])
    return rows


#: the columns of :func:`latent_rows`, as the W&B table names them
LATENT_COLUMNS = ["latent", "encoder entropy", "KL", "state"]


def latent_table(stats: dict[str, Tensor]) -> str:
    """A Markdown table of the per-latent values and flags (TensorBoard's Text tab shows it per epoch).

    >>> stats = {"latent_entropy": torch.tensor([1.4, 0.2]), "latent_kl": torch.tensor([0.0, 2.5]),
    ...          "collapsed": torch.tensor([True, False])}
    >>> print(latent_table(stats))
    | latent | encoder entropy | KL | state |
    |---:|---:|---:|:---|
    | 0 | 1.400 | 0.000 | collapsed |
    | 1 | 0.200 | 2.500 | active |
    """
    rows = ["| " + " | ".join(LATENT_COLUMNS) + " |", "|---:|---:|---:|:---|"]
    for h, entropy, kl, state in latent_rows(stats):
        kl_h = "" if kl is None else f"{kl:.3f}"
        rows.append(f"| {h} | {entropy:.3f} | {kl_h} | {state} |")
    return "\n".join(rows)


def wandb_latent_table(stats: dict[str, Tensor]) -> Any:
    """A ``wandb.Table`` of :func:`latent_rows`, columns ``latent``, ``encoder entropy``, ``KL``, ``state``."""
    import wandb

    return wandb.Table(columns=list(LATENT_COLUMNS), data=latent_rows(stats))


def write_layouts(loggers: list[Any], stages: list[str], per_latent: tuple[str, ...] | bool,
                  prefix: str = "entropy") -> None:
    """Write the TensorBoard layout and the W&B metric groupings (call once, on rank 0).

    TensorBoard shows the last layout a run wrote: a second monitor (another ``prefix``) in the same run writes
    the layouts of both.
    """
    for logger in loggers:
        if is_logger(logger, "TensorBoardLogger"):
            layouts = _LAYOUTS.setdefault(str(logger.log_dir), {})
            layouts.update(_prefixed(tensorboard_layout(stages, per_latent), prefix))
            logger.experiment.add_custom_scalars(dict(layouts))
        elif is_logger(logger, "WandbLogger"):
            run = logger.experiment
            if hasattr(run, "define_metric"):
                run.define_metric("trainer/global_step")
                run.define_metric(f"{prefix}/*", step_metric="trainer/global_step")


def _prefixed(layout: dict[str, dict[str, list]], prefix: str) -> dict[str, dict[str, list]]:
    """The layout with its category and tags under ``prefix`` instead of ``entropy`` (a second monitor's)."""
    if prefix == "entropy":
        return layout

    def tag(t: Any) -> Any:
        return prefix + t[len("entropy"):] if isinstance(t, str) and t.startswith("entropy/") else t

    return {(prefix if category == "entropy" else category):
            {title: [kind, [tag(t) for t in tags], *rest] for title, (kind, tags, *rest) in charts.items()}
            for category, charts in layout.items()}


def write_latent_figures(
    loggers: list[Any], stage: str, stats: dict[str, Tensor], step: int, *, histogram: bool, figure: Any | None,
    table: bool = False,
    prefix: str = "entropy",
) -> None:
    """Per-epoch histogram of the per-latent entropies, optionally a bar-chart figure and a table of the
    per-latent values and flags (rank 0): TensorBoard gets the table as text (``{prefix}/{stage}/latents``),
    W&B as a ``wandb.Table`` under the same key, in the payload of the histogram's step."""
    values = stats["latent_entropy"].detach().float().cpu()
    for logger in loggers:
        if is_logger(logger, "TensorBoardLogger"):
            if table:
                logger.experiment.add_text(f"{prefix}/{stage}/latents", latent_table(stats), step)
            if histogram:
                logger.experiment.add_histogram(f"{prefix}/{stage}/latent_entropy_hist", values, step)
            if figure is not None:
                logger.experiment.add_figure(f"{prefix}/{stage}/latent_entropy_bars", figure, step, close=False)
        elif is_logger(logger, "WandbLogger"):
            import wandb

            payload: dict[str, Any] = {"trainer/global_step": step}
            if histogram:
                payload[f"{prefix}/{stage}/latent_entropy_hist"] = wandb.Histogram(values.numpy())
            if figure is not None:
                payload[f"{prefix}/{stage}/latent_entropy_bars"] = wandb.Image(figure)
            if table:
                payload[f"{prefix}/{stage}/latents"] = wandb_latent_table(stats)
            logger.experiment.log(payload)


def tensorboard_skips(stage: str, latent_dim: int, rows: tuple[str, ...], prefix: str = "entropy") -> set[str]:
    """The per-latent keys the main TensorBoard run does not get as scalars: the rows not in ``rows``, the encoder
    entropies (in the runs ``active`` and ``collapsed`` of :class:`TensorBoardLines` where ``rows`` holds them),
    and the threshold and prior lines (drawn by :class:`TensorBoardLines` in colours of their own).

    >>> sorted(tensorboard_skips("val", 2, ("latent_entropy",)))  # doctest: +NORMALIZE_WHITESPACE
    ['entropy/val/collapsed/0', 'entropy/val/collapsed/1', 'entropy/val/latent_entropy/0',
     'entropy/val/latent_entropy/1', 'entropy/val/latent_entropy/prior', 'entropy/val/latent_entropy/threshold',
     'entropy/val/latent_kl/0', 'entropy/val/latent_kl/1']
    """
    width = len(str(latent_dim - 1))
    skip = {f"{prefix}/{stage}/{row}/{h:0{width}d}" for row in PER_LATENT_ROWS
            if row not in rows or row == "latent_entropy" for h in range(latent_dim)}
    return skip | {f"{prefix}/{stage}/latent_entropy/prior", f"{prefix}/{stage}/latent_entropy/threshold"}
