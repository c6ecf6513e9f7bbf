"""`python -m lightning_entropy_vae report` on a folder of several runs, figure titles and legends, and the
install hints: one run per figure, said which; an extra to install instead of a traceback; a quiet demo in a pipe."""

import subprocess
import sys

import pytest
import torch
from helpers import (
    TRAIN,
    VAL,
    MonitorVAE,
    monitor_loader,
    monitor_trainer,
    package_env,
)
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lightning_entropy_vae import EntropyMonitor
from lightning_entropy_vae.__main__ import main
from lightning_entropy_vae.report import _legend_outside, convergence_title, find_runs, load_scalars, pyplot

FIGURES = ["elbo_vs_entropy_sum.png", "latent_entropies.png", "latent_bars.png"]


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory):
    """Two runs logged into one folder, as re-running a script does: version_0 (2 epochs), version_1 (3)."""
    root = tmp_path_factory.mktemp("logs")
    for epochs in (2, 3):
        torch.manual_seed(0)
        loggers = [CSVLogger(root / "csv", name="vae"), TensorBoardLogger(root / "tb", name="vae")]
        trainer = monitor_trainer(root, [EntropyMonitor()], max_epochs=epochs, logger=loggers)
        trainer.fit(MonitorVAE(lr=0.05), monitor_loader(TRAIN), monitor_loader(VAL))
    return root


def _epochs(series):
    return len(series["entropy/train/sum"])


@pytest.mark.parametrize("kind", ["csv", "tb"])
def test_find_runs_lists_the_versions_and_load_reads_the_latest(two_versions, kind):
    runs = find_runs(two_versions / kind)
    assert [r.name for r in runs] == ["version_0", "version_1"]  # the TensorBoard lines/* runs are no runs
    assert _epochs(load_scalars(two_versions / kind)) == 3  # the latest run alone, not 2 + 3 merged
    assert _epochs(load_scalars(runs[0])) == 2



def test_tensorboard_and_csv_give_the_report_the_same_threshold_and_prior_lines(two_versions):
    """TensorBoard gets the threshold and prior as lines in runs of their own; the report reads them back."""
    csv_series, tb_series = load_scalars(two_versions / "csv"), load_scalars(two_versions / "tb")
    for stage in ("train", "val"):
        for key in ("threshold", "prior"):
            name = f"entropy/{stage}/latent_entropy/{key}"
            assert [v for _, v in tb_series[name]] == pytest.approx([v for _, v in csv_series[name]]), name


def test_report_draws_the_latest_run_and_says_which(two_versions, tmp_path, capsys):
    assert main(["report", str(two_versions / "csv"), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "version_1 (the latest of 2 runs" in printed and "--version N or --all" in printed
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(FIGURES)


def test_report_version_and_all(two_versions, tmp_path, capsys):
    assert main(["report", str(two_versions / "tb"), "--version", "0", "--out", str(tmp_path / "v0")]) == 0
    assert "the latest" not in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "v0").glob("*.png")) == sorted(FIGURES)
    assert main(["report", str(two_versions / "csv"), "--all", "--out", str(tmp_path / "all")]) == 0
    assert capsys.readouterr().out.count("Run:") == 2
    for version in ("version_0", "version_1"):
        assert sorted(p.name for p in (tmp_path / "all" / "vae" / version).glob("*.png")) == sorted(FIGURES)
    assert main(["report", str(two_versions / "csv"), "--version", "7"]) == 2
    assert "expected a run folder version_7" in capsys.readouterr().err



def test_a_run_logged_to_tensorboard_and_csv_offers_both(tmp_path, capsys):
    """One run with a CSVLogger and a TensorBoardLogger in folders of their own: the report draws one of the two
    and says which and why, and --all draws both."""
    logs = tmp_path / "logs"
    torch.manual_seed(0)
    loggers = [CSVLogger(logs, name="csv"), TensorBoardLogger(logs, name="tb")]
    trainer = monitor_trainer(tmp_path, [EntropyMonitor()], max_epochs=2, logger=loggers)
    trainer.fit(MonitorVAE(lr=0.05), monitor_loader(TRAIN), monitor_loader(VAL))
    runs = find_runs(logs)
    assert sorted(run.relative_to(logs).as_posix() for run in runs) == ["csv/version_0", "tb/version_0"]

    assert main(["report", str(logs), "--out", str(tmp_path / "one")]) == 0
    printed = capsys.readouterr().out
    assert f"Run:     {runs[-1]} (the latest of 2 runs under {logs};" in printed
    # both are version_0 (of two loggers): --version cannot tell them apart, their folders can
    named = ", ".join(run.relative_to(logs).as_posix() for run in runs)  # oldest first
    assert f"--all draws the others, or name one: {named})" in printed
    assert main(["report", str(logs), "--version", "0", "--out", str(tmp_path / "v0")]) == 2
    assert (f"error: version_0 names 2 runs under {logs}: {named}; their figures would overwrite each other in --out"
            in capsys.readouterr().err)
    assert main(["report", str(logs), "--version", "0"]) == 0  # each into its own run folder
    for run in runs:
        assert sorted(p.name for p in run.glob("*.png")) == sorted(FIGURES)
    capsys.readouterr()
    assert sorted(p.name for p in (tmp_path / "one").glob("*.png")) == sorted(FIGURES)

    assert main(["report", str(logs), "--all", "--out", str(tmp_path / "all")]) == 0
    printed = capsys.readouterr().out
    assert printed.count("Run:") == 2
    for kind in ("csv", "tb"):
        assert f"Run:     {logs / kind / 'version_0'}" in printed
        assert sorted(p.name for p in (tmp_path / "all" / kind / "version_0").glob("*.png")) == sorted(FIGURES)


def _csv_run(folder, prefix="entropy", epochs=2):
    torch.manual_seed(0)
    trainer = monitor_trainer(folder, [EntropyMonitor(prefix=prefix)], max_epochs=epochs,
                              logger=CSVLogger(folder, name="", version=""))
    trainer.fit(MonitorVAE(lr=0.05), monitor_loader(TRAIN), monitor_loader(VAL))
    return folder


def test_report_of_another_prefix_and_all_goes_on_past_a_failing_run(tmp_path, capsys):
    _csv_run(tmp_path / "logs" / "a", prefix="vae/ent")
    _csv_run(tmp_path / "logs" / "b")
    assert main(["report", str(tmp_path / "logs" / "a"), "--out", str(tmp_path / "out")]) == 2
    assert "Expected `entropy/...` scalars" in capsys.readouterr().err  # and it names --prefix
    assert main(["report", str(tmp_path / "logs" / "a"), "--prefix", "vae/ent", "--out", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == sorted(FIGURES)
    # --all: run "a" has no `entropy/` keys; "b" is still drawn
    assert main(["report", str(tmp_path / "logs"), "--all", "--out", str(tmp_path / "all")]) == 2
    assert sorted(p.name for p in (tmp_path / "all" / "b").glob("*.png")) == sorted(FIGURES)


def test_the_latest_run_is_the_last_logged_not_the_last_reported(tmp_path, capsys):
    """Runs in folders of their own are ordered by their log files: figures a report writes next to them do not
    make a run the latest."""
    import os

    old = _csv_run(tmp_path / "logs" / "old")
    _csv_run(tmp_path / "logs" / "new")
    os.utime(old / "metrics.csv", (1_000_000, 1_000_000))  # logged long ago
    assert [r.name for r in find_runs(tmp_path / "logs")] == ["old", "new"]
    assert main(["report", str(old)]) == 0  # its figures go into its folder, now the newest files there
    assert [r.name for r in find_runs(tmp_path / "logs")] == ["old", "new"]
    capsys.readouterr()

def test_report_without_matplotlib_names_the_extra(two_versions, monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` meets when it is missing
    assert main(["report", str(two_versions / "csv"), "--out", str(two_versions / "none")]) == 2
    err = capsys.readouterr().err
    assert "need matplotlib" in err and "pip install 'lightning-entropy-vae[examples]'" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(("gap", "converged"), [(0.182, False), (-0.182, False), (0.0099, True), (-0.004, True),
                                                (0.0101, False)])
def test_title_claims_convergence_only_under_the_tolerance(gap, converged):
    title = convergence_title(gap)
    assert ("has converged" in title) is converged
    assert f"{gap:.1%}" in title
    assert ("not converged" in title) is not converged


def test_title_without_a_gap_claims_nothing():
    assert "converged" not in convergence_title(None) and "converged" not in convergence_title(float("nan"))


def test_legends_sit_outside_the_axes():
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    for h in range(8):
        ax.plot(range(10), [h] * 10, label=f"z{h}")
    _legend_outside(ax)
    fig.tight_layout()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend, axes = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
    assert legend.x0 >= axes.x1  # right of the data, covering none of it
    assert legend.x1 <= fig.bbox.x1  # and inside the saved figure
    plt.close(fig)


def test_demo_into_a_pipe_writes_lines_not_a_progress_bar(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "lightning_entropy_vae", "demo", "--epochs", "3", "--latents", "2", "--logger", "csv",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env={**_env(), "MPLBACKEND": "Agg"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "it/s" not in done.stdout + done.stderr and "\r" not in done.stdout
    assert "epoch 3/3" in done.stdout
    assert len(done.stdout) < 3000, len(done.stdout)  # a progress bar wrote ~4 KB per epoch


def _env():
    return package_env()
