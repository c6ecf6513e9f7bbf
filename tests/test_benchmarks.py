"""The benchmark scripts run at tiny sizes and their numbers hold together: a broken benchmark fails here.

Each script runs in a subprocess, as a user runs it. The tests read what it prints and writes and check what
the numbers say (finite, in range, counts that match the run's size, a verdict that agrees with its number,
a replayed shortfall that matches the saved histories), not how fast anything was.
"""

import csv
import json
import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"[-+]?(?:\d+\.?\d*(?:e[-+]?\d+)?|nan|inf)"


def _run(script: str, args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd, env=env)
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def test_stopping_smoke_trains_replays_and_scores(tmp_path):
    out = tmp_path / "runs"
    printed = _run("stopping.py", ["--smoke", "--out", str(out)], tmp_path)
    histories = [json.loads(path.read_text()) for path in sorted(out.glob("*_s*.json"))]
    assert len(histories) == 5 * 2 * 2  # data sets x learning rates x --smoke's seeds 0 and 1
    assert "phase 1: 20 runs (20 trained now" in printed
    for run in histories:
        h, epochs = run["history"], run["config"]["epochs"]
        assert all(len(values) == epochs for values in h.values()), run["config"]
        assert all(math.isfinite(v) for v in h["test_elbo"] + h["train_sum"] + h["val_elbo"]), run["config"]

    with (out / "candidates.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    (count,) = re.findall(r"All (\d+) variants on the tuning seeds", printed)
    assert len(rows) == int(count) > 0
    for row in rows:
        assert 0 < float(row["median_stop_pct"]) <= 100, row
        assert 0 <= float(row["median_shortfall"]) <= float(row["worst_shortfall"]), row  # best minus reached

    # the baselines' shortfalls on the tuning seed, recomputed from the saved histories
    tuning = [run["history"] for run in histories if run["config"]["seed"] == 0]
    plain = [max(h["test_elbo"]) - h["test_elbo"][-1] for h in tuning]
    best_val = [max(h["test_elbo"]) - h["test_elbo"][h["val_elbo"].index(max(h["val_elbo"]))] for h in tuning]
    by_rule = {(row["rule"], row["restore"]): row for row in rows}
    for restore, shortfalls in [("", plain), ("val_elbo", best_val)]:
        row = by_rule[("fixed budget", restore)]
        assert float(row["median_stop_pct"]) == 100.0
        assert float(row["median_shortfall"]) == round(statistics.median(shortfalls), 4)
        assert float(row["worst_shortfall"]) == round(max(shortfalls), 4)

    summary = json.loads((out / "summary.json").read_text())
    assert isinstance(summary["admissible"], bool)
    assert summary["pre-stated pick"]["rule"] in {row["rule"] for row in rows}
    assert f"-> {summary['pre-stated pick']['rule']} (" in printed


def test_metric_update_table_and_verdict(tmp_path):
    printed = _run("metric_update.py", ["--repeat", "1", "--number", "20"], tmp_path)
    table = {}
    for line in printed.splitlines():
        match = re.fullmatch(rf"(.+?)\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})\s+(\d+)", line)
        if match:
            table[match[1]] = [float(match[i]) for i in range(2, 5)] + [int(match[5])]
    assert {"EntropySumELBO", "GaussianELBO (computed)", "torchmetrics.MeanMetric (elbo)",
            "(floor: 1-sum TorchMetrics metric)"} <= set(table)
    floor = table["(floor: 1-sum TorchMetrics metric)"]
    for name, (low, median, x_floor, calls) in table.items():
        assert 0 < low <= median < 1e6 and calls == 20, name
        assert math.isclose(x_floor, median / floor[1], rel_tol=0.03, abs_tol=0.01), name  # one repeat: one ratio
    assert floor[2] == 1.0
    (line,) = [line for line in printed.splitlines() if line.startswith("target EntropySumELBO.update()")]
    ratio, verdict = re.search(rf": ({NUMBER})x .* -> (PASS|FAIL)$", line).groups()
    expected = table["EntropySumELBO"][1] / table["torchmetrics.MeanMetric (elbo)"][1]  # one repeat: one ratio
    assert math.isclose(float(ratio), expected, rel_tol=0.03, abs_tol=0.01)
    assert verdict == _verdict(float(ratio) <= 1.0)


def test_overhead_quick_counts_hooks_and_verdicts_agree(tmp_path):
    printed = _run("overhead.py", ["--quick", "--configs", "train"], tmp_path)
    steps = math.ceil(6_400 / 128)  # --quick: N = 6,400, B = 128, one epoch
    assert f"; {steps} train steps)" in printed
    calls = dict(re.findall(r"^  (on_\w+|setup|teardown)\s+(\d+) ", printed, flags=re.MULTILINE))
    assert int(calls["on_train_batch_end"]) == int(calls["on_train_batch_start"]) == steps
    assert int(calls["on_train_epoch_end"]) == 1

    (row,) = re.findall(rf"^  train\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})\s+(PASS|FAIL)\s+({NUMBER})\s+(PASS|FAIL)"
                        rf"\s+({NUMBER})\s+(PASS|FAIL)\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})$",
                        printed, flags=re.MULTILINE)
    base_us, fit_cpu, fit_wall, fit_ok, est, est_ok, pct, pct_ok, hook_us, plain_us, _, naive_cpu, naive_wall = row
    for value in (fit_cpu, fit_wall, est, naive_cpu, naive_wall):
        assert 0.2 < float(value) < 5.0, row  # a ratio of two fits of the same loop
    assert float(base_us) > 0 and 0 <= float(plain_us) <= float(hook_us)
    assert 0 <= float(pct) < 100
    assert fit_ok == _verdict(float(fit_cpu) <= 1.02) and est_ok == _verdict(float(est) <= 1.02)
    assert pct_ok == _verdict(float(pct) <= 1.0)
    assert f"overall (fit ratio and hooks): {_verdict(fit_ok == pct_ok == 'PASS')}" in printed


def test_logging_step_profile_counts_the_logging_steps(tmp_path):
    printed = _run("logging_step_profile.py", ["--epochs", "1"], tmp_path)
    parts = {}
    for line in printed.splitlines():
        match = re.fullmatch(rf"(\s*\S.*?)\s+(\d+)\s+({NUMBER})\s+({NUMBER})", line)
        if match:
            parts[match[1].strip()] = (int(match[2]), float(match[3]), float(match[4]))
    assert len(parts) == 11, parts
    assert all(calls > 0 and median > 0 and late > 0 for calls, median, late in parts.values())
    # 157 steps of B = 128 on N = 20,000; a logging step every 50: steps 50, 100 and 150
    logging_steps = math.ceil(20_000 / 128) // 50
    (publish,) = [calls for label, (calls, *_) in parts.items() if "publish" in label and label.endswith(".step")]
    (window,) = [calls for label, (calls, *_) in parts.items() if label.startswith("window")]
    assert publish == window == logging_steps
    assert parts["reduce"][0] == logging_steps + 1  # and once at the epoch end
    updates = parts["metric updates"][0]
    assert updates == parts["reduce"][0]
    for metric in ("EntropySumELBO", "ELBO", "PosteriorCollapse"):
        assert parts[f"{metric}.update"][0] == updates, metric
    assert parts["reduce"][1] >= parts["metric updates"][1]  # a part is timed inside the one holding it


def test_ddp_spawn_exit_counts_runs(tmp_path):
    printed = _run("ddp_spawn_exit.py", ["--runs", "1"], tmp_path)
    arms = dict(
        (arm.strip(), (int(failed), int(aborted)))
        for arm, failed, aborted in re.findall(
            r"^(.+?): (\d+) of 1 runs exited non-zero \((\d+) with the abort at exit\)$", printed, flags=re.MULTILINE)
    )
    assert set(arms) == {"plain Lightning", "with DestroyGlooGroupAtExit"}
    assert all(0 <= aborted <= failed <= 1 for failed, aborted in arms.values())
    assert arms["with DestroyGlooGroupAtExit"] == (0, 0)  # the tests' fix: no run aborts at exit
