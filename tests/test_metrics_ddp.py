"""Metric sync in a 2-process gloo group on CPU: each rank updates with its shard, both report the whole."""

import socket

import pytest
import torch
import torch.multiprocessing as mp
from metrics_ddp_worker import (
    LATE_BATCH,
    NAN_BATCH,
    SHARDS,
    WORLD_SIZE,
    H,
    _batch,
    _compute,
    _metrics,
    _update,
    _worker,
)

import lightning_entropy_vae.functional as F


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _assert_equal(actual, expected):
    if isinstance(expected, dict):
        assert set(actual) == set(expected)
        for key in expected:
            _assert_equal(actual[key], expected[key])
    elif expected.is_floating_point():
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-10)
    else:
        assert torch.equal(actual, expected)


def test_metrics_sync_across_two_gloo_processes(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    results = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]

    # one process on all the data
    everything = SHARDS[0] + SHARDS[1]
    single = _metrics()
    _update(single, everything)
    with pytest.warns(UserWarning, match="skipped 1 batch"):
        first = _compute(single)
    _update(single, list(LATE_BATCH.values()))
    second = _compute(single)
    for result in results:
        _assert_equal(result["first"], first)
        _assert_equal(result["second"], second)
    assert [r["skipped"] for r in results] == [0, 1]

    # and the functional API on the concatenated good batches
    good = [_batch(i, n) for i, n in everything if i != NAN_BATCH]
    cat = {k: torch.cat([b[k] for b in good]) for k in ("x", "enc_mean", "enc_logvar", "dec_mean")}
    cat["dec_logvar"] = torch.cat([b["dec_logvar"].detach().expand(b["x"].shape[0], 1) for b in good])
    cat["prior_logvar"] = torch.cat([b["prior_logvar"].detach().expand(b["x"].shape[0], H) for b in good])
    expected = results[0]["first"]
    _assert_equal(expected["encoder"], F.encoder_entropy(**cat))
    _assert_equal(expected["prior"], F.prior_entropy(**cat))
    _assert_equal(expected["decoder"], F.decoder_entropy(**cat))
    _assert_equal(expected["sum"]["sum"], F.entropy_sum(**cat))
    _assert_equal(expected["sum"]["sum_profiled"], F.profiled_entropy_sum(**cat))
    _assert_equal(expected["elbo"], F.gaussian_elbo(**cat))
    stats = F.posterior_collapse(**cat)
    _assert_equal({k: expected["collapse"][k] for k in stats}, stats)
