"""`python -m lightning_entropy_vae demo` and `report`: options, output, figures, errors."""

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
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


def test_demo_options_take_effect_and_the_printed_numbers_are_the_logged_ones(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "lightning_entropy_vae", "demo", "--epochs", "2", "--latents", "2", "--kind", "vae3",
         "--hidden", "16", "--logger", "csv", "--out", str(tmp_path), "--no-progress-bar"],
        capture_output=True, text=True, timeout=300, env={**_env(), "MPLBACKEND": "Agg"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    hparams = yaml.load((tmp_path / "csv" / "hparams.yaml").read_text(), Loader=yaml.FullLoader)
    assert (hparams["kind"], hparams["latent_dim"], tuple(hparams["hidden_dims"])) == ("vae3", 2, (16,))
    with open(tmp_path / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {key for key in rows[0] if key.startswith("entropy/val/latent_entropy/")} == {
        "entropy/val/latent_entropy/0", "entropy/val/latent_entropy/1", "entropy/val/latent_entropy/prior",
        "entropy/val/latent_entropy/threshold"}
    lines = done.stdout.splitlines()
    assert any(re.fullmatch(r"Digits \(1797 x 64\), VAE3 with H = 2, 2 epochs in \d+ s", line) for line in lines)
    for stage in ("train", "val"):
        logged = [r for r in rows if r.get(f"entropy/{stage}/sum")]
        assert len(logged) == 2  # one per epoch
        (row,) = [line.split() for line in lines if line.startswith(f"{stage} ")]
        elbo, total, gap, rel_gap = (float(v.rstrip("%")) for v in row[1:5])
        assert row[5:] == [logged[-1][f"entropy/{stage}/active_latents"].split(".")[0], "of", "2"]
        # the table shows the last epoch's logged values, and its gap columns follow from them
        assert elbo == pytest.approx(float(logged[-1][f"entropy/{stage}/elbo"]), abs=1e-3)
        assert total == pytest.approx(float(logged[-1][f"entropy/{stage}/sum"]), abs=1e-3)
        assert gap == pytest.approx(elbo - total, abs=2e-3)
        assert rel_gap == pytest.approx(100 * (elbo - total) / max(abs(total), 0.1 * 64), abs=0.01)
    figures = [Path(line.split(maxsplit=1)[1]) for line in lines if line.startswith("Figure:")]
    assert {path.name for path in figures} == FIGURES
    assert all(path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000 for path in figures)
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


def test_help_exits_cleanly(capsys):
    for command in (["demo", "--help"], ["report", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(command)
        assert exit_info.value.code == 0
        assert capsys.readouterr().out.startswith("usage: ")


def test_demo_rejects_bad_options(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--kind", "vae9"])
    assert "invalid choice: 'vae9'" in capsys.readouterr().err
    for option in ("--epochs", "--latents", "--batch-size"):
        with pytest.raises(SystemExit) as exit_:
            main(["demo", option, "0"])
        assert exit_.value.code == 2
        assert f"argument {option}: expected a positive integer, but got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--epochs", "ten"])
    assert "argument --epochs: invalid int value: 'ten'" in capsys.readouterr().err


def _env():
    return package_env()
