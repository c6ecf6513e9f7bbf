"""What a person sees in TensorBoard: distinct, labelled lines, fewer tags, readable collapse flags."""

import csv as csv_module
import math
import re
from pathlib import Path

import pytest
import torch
from helpers import (
    TRAIN,
    VAL,
    MonitorVAE,
    monitor_loader,
    monitor_trainer,
)
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

from lightning_entropy_vae import EntropyMonitor
from lightning_entropy_vae.callbacks._logger_extras import TensorBoardLines


def _fit(tmp_path, monitor, max_epochs=2, model=None):
    torch.manual_seed(0)
    tb = TensorBoardLogger(tmp_path, name="tb", version=0)
    csv = CSVLogger(tmp_path, name="csv", version=0)
    trainer = monitor_trainer(tmp_path, [monitor], max_epochs=max_epochs, logger=[tb, csv], log_every_n_steps=2)
    trainer.fit(model or MonitorVAE(lr=0.05), monitor_loader(TRAIN), monitor_loader(VAL))
    tb.experiment.flush()
    return trainer, tb, csv


def _events(folder) -> EventAccumulator:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def _values(events, tag):
    return [round(e.value, 5) for e in events.Scalars(tag)]


def test_compared_lines_are_runs_of_their_own(tmp_path):
    """TensorBoard colours by run: the ELBO and the entropy sum, the threshold and the prior line each get one."""
    _, tb, _ = _fit(tmp_path, EntropyMonitor())  # no flush of the line runs: the callback's teardown closed them
    main = _events(tb.log_dir)
    lines = Path(tb.log_dir) / "lines"
    assert {p.name for p in lines.iterdir()} - {"active", "collapsed"} == {
        "collapse_threshold", "elbo", "entropy_sum", "prior_entropy"}
    for stage in ("train", "val", "train_step"):
        tag = f"entropy/{stage}/elbo_vs_sum"
        assert _values(_events(lines / "elbo"), tag) == _values(main, f"entropy/{stage}/elbo"), stage
        assert _values(_events(lines / "entropy_sum"), tag) == _values(main, f"entropy/{stage}/sum"), stage
    assert _values(_events(lines / "collapse_threshold"), "entropy/train/latent_entropy_lines") == [1.0, 1.0]
    prior = _values(_events(lines / "prior_entropy"), "entropy/val/latent_entropy_lines")
    assert prior == [pytest.approx(1.41894, abs=1e-5)] * 2  # 0.5 log(2 pi e), N(0, 1)


def test_every_chart_of_the_layout_finds_its_lines(tmp_path):
    _, tb, _ = _fit(tmp_path, EntropyMonitor(), max_epochs=1)
    main = _events(tb.log_dir)
    layout = layout_pb2.Layout.FromString(main.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    tags = {(run.name, tag) for run in [Path(tb.log_dir), *(Path(tb.log_dir) / "lines").iterdir()]
            for tag in _events(run).Tags()["scalars"]}
    for chart in (chart for category in layout.category for chart in category.chart):
        runs = {run for run, tag in tags if any(re.match(p, tag) for p in chart.multiline.tag)}
        assert runs, chart.title
        if "vs entropy sum" in chart.title:
            assert runs == {"elbo", "entropy_sum"}, chart.title  # two runs: two colours
        if "per-latent encoder entropy" in chart.title:  # the latents in the colours of their states
            assert runs - {"active", "collapsed"} == {"collapse_threshold", "prior_entropy"}, chart.title
            assert runs & {"active", "collapsed"}, chart.title


def test_tensorboard_gets_fewer_tags_and_a_flag_table_the_csv_keeps_all(tmp_path):
    _, tb, csv = _fit(tmp_path, EntropyMonitor(), max_epochs=1)
    main = _events(tb.log_dir)
    scalars = set(main.Tags()["scalars"])
    assert "entropy/train/active_latents" in scalars
    # the per-latent entropies are in the runs lines/active and lines/collapsed, the KL and flags in the table
    assert not {t for t in scalars if re.search(r"/(collapsed|latent_kl|latent_entropy)/", t)}
    # ten epoch keys per stage, three objective and three gap-window keys (training), five step keys
    assert len({t for t in scalars if t.startswith("entropy/")}) == 2 * 10 + 3 + 3 + 5
    table = main.Tensors("entropy/train/latents/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert table.startswith("| latent | encoder entropy | KL | state |")
    assert len(re.findall(r"\| (active|collapsed) \|", table)) == 2
    header = (Path(csv.log_dir) / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("entropy/train/collapsed/0", "entropy/train/latent_kl/1", "entropy/val/latent_entropy/threshold"):
        assert key in header  # CSV, W&B, MLflow: every per-latent key, as before


def test_tensorboard_per_latent_brings_back_the_rows(tmp_path):
    monitor = EntropyMonitor(tensorboard_per_latent=("latent_entropy", "latent_kl", "collapsed"))
    _, tb, _ = _fit(tmp_path, monitor, max_epochs=1)
    scalars = set(_events(tb.log_dir).Tags()["scalars"])
    assert {"entropy/train/collapsed/0", "entropy/val/latent_kl/1"} <= scalars


def test_without_latent_entropy_rows_tensorboard_gets_no_state_runs(tmp_path):
    _, tb, _ = _fit(tmp_path, EntropyMonitor(tensorboard_per_latent=("latent_kl",)), max_epochs=1)
    lines = Path(tb.log_dir) / "lines"
    assert not {p.name for p in lines.iterdir()} & {"active", "collapsed"}
    scalars = set(_events(tb.log_dir).Tags()["scalars"])
    assert "entropy/train/latent_kl/1" in scalars and not {t for t in scalars if "/latent_entropy/" in t}


class OneOfEach(MonitorVAE):
    """H = 3, frozen: latent 0 active (encoder log-variance about -2), latent 1 at the prior N(0, 1) (collapsed),
    latent 2 at the prior in epoch 0 and active from epoch 1."""

    def __init__(self):
        super().__init__(latent_dim=3, lr=0.0)

    def latents(self, mean, logvar):
        keep = torch.tensor([1.0, 0.0, 0.0 if self.current_epoch == 0 else 1.0])
        return mean * keep, logvar * keep


def _points(events, stage, h):
    """(step, value) of latent h's encoder entropy in one line run, values compared to 1e-5."""
    tag = f"entropy/{stage}/latent_entropy/{h}"
    if tag not in events.Tags()["scalars"]:
        return []
    return [(e.step, pytest.approx(e.value, abs=1e-5)) for e in events.Scalars(tag)]


def test_each_latent_is_drawn_in_the_run_of_its_state(tmp_path):
    """A collapsed latent is a line of the run lines/collapsed, an active one of lines/active: two colours. A latent
    that becomes active is in both runs at that epoch, so its line is unbroken and changes colour there."""
    _, tb, csv = _fit(tmp_path, EntropyMonitor(), max_epochs=3, model=OneOfEach())
    lines = Path(tb.log_dir) / "lines"
    active, collapsed = _events(lines / "active"), _events(lines / "collapsed")
    prior = 0.5 * math.log(2 * math.pi * math.e)  # the entropy of N(0, 1): a latent at the prior
    rows = list(csv_module.DictReader((Path(csv.log_dir) / "metrics.csv").open()))
    for stage in ("train", "val"):
        steps = [e.step for e in _events(tb.log_dir).Scalars(f"entropy/{stage}/active_latents")]
        assert len(steps) == 3, stage
        csv_values = {h: [float(r[f"entropy/{stage}/latent_entropy/{h}"]) for r in rows
                          if r.get(f"entropy/{stage}/latent_entropy/{h}")] for h in range(3)}
        assert _points(active, stage, 0) == list(zip(steps, csv_values[0])), stage
        assert _points(collapsed, stage, 0) == [], stage
        assert _points(collapsed, stage, 1) == [(s, pytest.approx(prior, abs=1e-5)) for s in steps], stage
        assert _points(active, stage, 1) == [], stage
        assert _points(collapsed, stage, 2) == [(steps[0], pytest.approx(prior, abs=1e-5)),
                                                (steps[1], pytest.approx(csv_values[2][1], abs=1e-5))], stage
        assert _points(active, stage, 2) == list(zip(steps[1:], csv_values[2][1:])), stage
        assert csv_values[2][1] < 1.0 <= csv_values[2][0]  # below the collapse threshold from epoch 1 on


def test_a_latent_that_changes_state_is_joined_at_the_change(tmp_path):
    tb = TensorBoardLogger(tmp_path, name="tb", version=0)
    lines = TensorBoardLines()
    for step, (run, value) in enumerate([("collapsed", 1.4), ("collapsed", 1.3), ("active", 0.5), ("active", 0.2),
                                         ("collapsed", 1.2)]):
        lines.write([tb], {"entropy/train/latent_entropy/0": {run: value}}, step, flush=True)
    lines.close()
    folder = Path(tb.log_dir) / "lines"
    got = {run: [(e.step, round(e.value, 5)) for e in _events(folder / run).Scalars("entropy/train/latent_entropy/0")]
           for run in ("active", "collapsed")}
    assert got == {"collapsed": [(0, 1.4), (1, 1.3), (2, 0.5), (4, 1.2)],
                   "active": [(2, 0.5), (3, 0.2), (4, 1.2)]}


@pytest.mark.parametrize("value", [("entropy",), "kl", ("latent_entropy", "flags")])
def test_tensorboard_per_latent_is_checked(value):
    with pytest.raises(ValueError, match=r"`tensorboard_per_latent` to be a subset of .* but got"):
        EntropyMonitor(tensorboard_per_latent=value)
