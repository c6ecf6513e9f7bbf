"""EntropyMonitor under Trainer(strategy="ddp_spawn" or "ddp", accelerator="cpu", devices=2) against one process.

The two-process run happens in a child interpreter with a timeout, so a hang fails the test instead of
blocking the suite.
"""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import EPOCH_KEYS_DDP, D, ddp_fit, monitor_reference

TESTS = Path(__file__).resolve().parent


def _epoch_rows(folder):
    with open(Path(folder) / "csv" / "version_0" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    values = {}
    for row in rows:
        if row.get("entropy/train/sum") or row.get("entropy/val/sum"):
            values.setdefault(int(row["epoch"]), {}).update({k: float(v) for k, v in row.items()
                                                            if v and k.startswith("entropy/")})
    return values


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp"])
def test_ddp_matches_one_process(tmp_path, strategy):
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    ddp_dir.mkdir()
    single_dir.mkdir()
    # a script file: strategy="ddp" starts rank 1 by running it again (the main guard keeps rank 1 from recursing)
    script = tmp_path / "fit.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(TESTS)!r})\nimport helpers\n\n"
                      f"if __name__ == '__main__':\n    helpers.ddp_fit({str(ddp_dir)!r}, 2, {strategy!r})\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    for _attempt in range(2):  # a second try only when the port Lightning picked was taken meanwhile
        try:
            done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                                  env=env, cwd=tmp_path)
        except subprocess.TimeoutExpired as err:
            pytest.fail(f"the {strategy} run hung (no result after {err.timeout} s)")
        if done.returncode == 0 or "address already in use" not in done.stderr.lower():
            break
    assert done.returncode == 0, done.stderr[-4000:]

    model = ddp_fit(str(single_dir), 1)

    # every rank took the same stop decision at the same epoch
    reports = [json.loads((ddp_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    single = json.loads((single_dir / "rank0.json").read_text())
    assert [r["world_size"] for r in reports] == [2, 2]
    for report in reports:
        for key in ("should_stop", "current_epoch", "stopped_epoch", "wait_count"):
            assert report[key] == single[key], (report["rank"], key)
    assert single["should_stop"] and single["stopped_epoch"] == 11 and "did not improve" in single["stop_reason"]
    # the gap window adds up both ranks' groups (their batches differ): one value on every rank, not each its own
    assert reports[0]["gap_window"] == reports[1]["gap_window"]
    assert all(math.isfinite(v) for v in reports[0]["gap_window"]) and reports[0]["gap_window"][2] == D

    # the epoch values rank 0 wrote are those of all the data, as in one process
    ddp, one = _epoch_rows(ddp_dir), _epoch_rows(single_dir)
    assert sorted(ddp) == sorted(one) == list(range(12))
    for epoch in sorted(one):
        assert set(EPOCH_KEYS_DDP) <= set(one[epoch]) and set(EPOCH_KEYS_DDP) <= set(ddp[epoch])
        for key in EPOCH_KEYS_DDP:
            assert ddp[epoch][key] == pytest.approx(one[epoch][key], rel=1e-5, abs=1e-6), (epoch, key)
    assert one[1]["entropy/train/skipped_batches"] == 1.0  # the batch holding row 5 (on rank 1 under DDP)

    # and they are the recomputation over all kept points, not over rank 0's shard
    kept = [e for e in model.train_epoch(1) if not bool(e["enc_logvar"].isnan().any())]
    assert len(kept) == 3
    assert ddp[1]["entropy/train/sum"] == pytest.approx(monitor_reference(kept)["sum"], rel=1e-5)
    rank0 = kept[:2]  # batches [0, 2, 4, 6] and [8, 10, 12, 14]
    assert [int(e["x"].shape[0]) for e in rank0] == [4, 4]
    assert abs(ddp[1]["entropy/train/sum"] - monitor_reference(rank0)["sum"]) > 1e-3
    val = model.val_epoch(1)
    assert ddp[1]["entropy/val/elbo"] == pytest.approx(monitor_reference(val)["elbo"], rel=1e-5)
    assert abs(ddp[1]["entropy/val/elbo"] - monitor_reference(val[:2])["elbo"]) > 1e-3  # rank 0's rows
