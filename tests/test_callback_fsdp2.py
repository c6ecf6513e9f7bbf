"""EntropyMonitor under FSDP2 (Lightning's ModelParallelStrategy with ``fully_shard``), one CPU process.

FSDP2 makes the parameters DTensors, whose storage cannot be indexed (the monitor crashed at ``on_train_start``
with "Attempted to access the data pointer on an invalid python storage"), and frees the unsharded parameters the
forward pass used after the backward pass. The fits run in a child interpreter (``fsdp2_worker.py``: it starts a
gloo process group) with a timeout.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import package_env

WORKER = Path(__file__).resolve().parent / "fsdp2_worker.py"
FREED = ("EntropyMonitor (on_train_batch_end of FSDPShardedVAE): `dec_logvar` is a view of a storage that was freed"
         " after the step (a sharded parameter, as FSDP reshards after the forward and backward passes), so it cannot"
         " be read at the next logging step. Return a copy from your step:"
         ' `"dec_logvar": dec_logvar.detach().clone()`.')


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    done = subprocess.run([sys.executable, str(WORKER)], capture_output=True, text=True, timeout=300,
                          env=package_env(), cwd=tmp_path_factory.mktemp("fsdp2"))
    assert done.returncode == 0, done.stderr[-3000:]
    return {c["case"]: c for c in map(json.loads, (line for line in done.stdout.splitlines() if line.startswith("{")))}


def test_a_returned_copy_is_logged_as_the_forward_pass_used_it(cases):
    case = cases["copy"]
    assert case["error"] is None
    assert case["moved"] > 0.01  # the optimizer moved the log-variance between batches
    assert case["decoder"] == pytest.approx(case["expected"], abs=1e-5)


@pytest.mark.parametrize("name", ["view", "view_every_other"])
def test_a_view_of_a_freed_unsharded_parameter_raises_with_the_fix(cases, name):
    assert cases[name]["error"] == "ValueError: " + FREED


def test_unsharded_parameters_kept_after_backward_are_read_as_they_are(cases):
    case = cases["view_kept"]
    assert case["error"] is None
    assert case["decoder"] == pytest.approx(case["expected"], abs=1e-5)
