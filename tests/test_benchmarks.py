"""The benchmark scripts run (tiny sizes): a broken benchmark fails here, not in a release's measurements."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("script", "args", "expect"), [
    ("stopping.py", ["--smoke"], "All 700 variants on the tuning seeds"),
    ("metric_update.py", ["--repeat", "1", "--number", "20"], "EntropySumELBO.update() <= 1.0x"),
    ("overhead.py", ["--quick", "--configs", "train"], "overall (fit ratio and hooks):"),
    ("logging_step_profile.py", ["--epochs", "1"], "window_values"),
    ("ddp_spawn_exit.py", ["--runs", "1"], "with DestroyGlooGroupAtExit:"),
])
def test_benchmark_runs(tmp_path, script, args, expect):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert expect in done.stdout
