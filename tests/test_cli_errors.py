"""`python -m lightning_entropy_vae demo` with an `--out` that cannot be a folder: a message and exit status 2."""

import subprocess
import sys

from helpers import package_env

from lightning_entropy_vae.__main__ import main


def test_demo_out_is_an_existing_file(tmp_path, capsys):
    out = tmp_path / "run.txt"
    out.write_text("kept")
    assert main(["demo", "--epochs", "1", "--out", str(out), "--no-progress-bar"]) == 2
    err = capsys.readouterr().err
    assert f"error: expected --out to be a folder (created if missing), but {out} is an existing file" in err
    assert out.read_text() == "kept"


def test_demo_out_below_a_file(tmp_path, capsys):
    parent = tmp_path / "run.txt"
    parent.write_text("kept")
    assert main(["demo", "--epochs", "1", "--out", str(parent / "run"), "--no-progress-bar"]) == 2
    err = capsys.readouterr().err
    assert f"error: expected --out to be a folder that can be created, but creating {parent / 'run'} failed:" in err
    assert parent.read_text() == "kept"


def test_demo_out_is_a_file_from_the_command_line(tmp_path):
    out = tmp_path / "run.txt"
    out.write_text("kept")
    done = subprocess.run([sys.executable, "-m", "lightning_entropy_vae", "demo", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=package_env())
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().endswith(f"error: expected --out to be a folder (created if missing), but {out} is an"
                                        " existing file")
