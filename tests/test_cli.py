"""`python -m lightning_entropy_vae demo` and `report`: options, output, figures, errors."""

import csv
import subprocess
import sys

import pytest
from helpers import package_env

from lightning_entropy_vae.__main__ import main
from lightning_entropy_vae.report import load_scalars, plot_run

FIGURES = {"elbo_vs_entropy_sum.png", "latent_entropies.png", "latent_bars.png"}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    code = main(["demo", "--epochs", "3", "--latents", "3", "--out", str(out), "--no-progress-bar"])
    return code, out


def test_demo_writes_logs_and_figures(demo_run):
    code, out = demo_run
    assert code == 0
    assert {p.name for p in (out / "figures").glob("*.png")} == FIGURES
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    with open(out / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    sums = [float(r["entropy/train/sum"]) for r in rows if r.get("entropy/train/sum")]
    assert len(sums) == 3  # one per epoch


def test_demo_prints_table_and_tensorboard_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "lightning_entropy_vae", "demo", "--epochs", "2", "--latents", "2",
         "--logger", "csv", "--out", str(tmp_path), "--no-progress-bar"],
        capture_output=True, text=True, timeout=300, env={**_env(), "MPLBACKEND": "Agg"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert any(line.startswith("train ") and "of 2" in line for line in lines)
    assert any(line.startswith("val ") for line in lines)
    assert any(line.startswith("Figure:") and line.endswith("elbo_vs_entropy_sum.png") for line in lines)
    assert not any(line.startswith("View:") for line in lines)  # only TensorBoard gets a viewer line


def test_report_draws_the_figures_from_tensorboard_logs(demo_run, capsys):
    _, out = demo_run
    assert main(["report", str(out / "tensorboard"), "--out", str(out / "from_tb")]) == 0
    printed = capsys.readouterr().out
    assert {p.name for p in (out / "from_tb").glob("*.png")} == FIGURES
    assert printed.count("Figure:") == 3


def test_report_reads_tensorboard_and_csv_alike(demo_run):
    _, out = demo_run
    from_tb, from_csv = load_scalars(out / "tensorboard"), load_scalars(out / "csv")
    for key in ("entropy/train/sum", "entropy/val/elbo", "entropy/train/latent_entropy/0"):
        assert [round(v, 4) for _, v in from_tb[key]] == [round(v, 4) for _, v in from_csv[key]], key
    assert [p.name for p in plot_run(out / "csv", out / "again")] == [
        "elbo_vs_entropy_sum.png", "latent_entropies.png", "latent_bars.png"]


def test_report_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "Expected `entropy/...` scalars" in capsys.readouterr().err


def test_help_lists_the_options():
    done = subprocess.run([sys.executable, "-m", "lightning_entropy_vae", "demo", "--help"],
                          capture_output=True, text=True, timeout=120, env=_env())
    assert done.returncode == 0
    for option in ("--kind", "--latents", "--epochs", "--logger", "--out", "vae0", "wandb"):
        assert option in done.stdout


def test_demo_rejects_bad_options(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--kind", "vae9"])
    assert "invalid choice: 'vae9'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="must be positive"):
        main(["demo", "--epochs", "0"])


def _env():
    return package_env()
