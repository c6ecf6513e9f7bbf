"""What a person sees in TensorBoard: distinct, labelled lines, fewer tags, readable collapse flags."""

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


def _fit(tmp_path, monitor, max_epochs=2):
    torch.manual_seed(0)
    tb = TensorBoardLogger(tmp_path, name="tb", version=0)
    csv = CSVLogger(tmp_path, name="csv", version=0)
    trainer = monitor_trainer(tmp_path, [monitor], max_epochs=max_epochs, logger=[tb, csv], log_every_n_steps=2)
    trainer.fit(MonitorVAE(lr=0.05), monitor_loader(TRAIN), monitor_loader(VAL))
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
    assert sorted(p.name for p in lines.iterdir()) == ["collapse_threshold", "elbo", "entropy_sum", "prior_entropy"]
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
        if "per-latent encoder entropy" in chart.title:
            assert runs == {"version_0", "collapse_threshold", "prior_entropy"}, chart.title


def test_tensorboard_gets_fewer_tags_and_a_flag_table_the_csv_keeps_all(tmp_path):
    _, tb, csv = _fit(tmp_path, EntropyMonitor(), max_epochs=1)
    main = _events(tb.log_dir)
    scalars = set(main.Tags()["scalars"])
    assert {"entropy/train/latent_entropy/0", "entropy/val/latent_entropy/1", "entropy/train/active_latents"} <= scalars
    assert not {t for t in scalars if re.search(r"/(collapsed|latent_kl)/|latent_entropy/(threshold|prior)$", t)}
    # H = 2: ten epoch keys and two latents per stage, three objective keys (training), five step keys
    assert len({t for t in scalars if t.startswith("entropy/")}) == 2 * (10 + 2) + 3 + 5
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


@pytest.mark.parametrize("value", [("entropy",), "kl", ("latent_entropy", "flags")])
def test_tensorboard_per_latent_is_checked(value):
    with pytest.raises(ValueError, match=r"`tensorboard_per_latent` to be a subset of .* but got"):
        EntropyMonitor(tensorboard_per_latent=value)
