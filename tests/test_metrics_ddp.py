"""Metric sync in a 2-process gloo group on CPU: each rank updates with its shard, both report the whole."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import lightning_entropy_vae.functional as F
from lightning_entropy_vae.metrics import (
    DecoderEntropy,
    EncoderEntropy,
    EntropySumELBO,
    GaussianELBO,
    PosteriorCollapse,
    PriorEntropy,
)

WORLD_SIZE = 2
H, D = 3, 6
# uneven shards: rank 0 sees two batches, rank 1 three, one of them holding a NaN (skipped and counted)
SHARDS = {0: [(0, 5), (1, 7)], 1: [(2, 3), (3, 9), (4, 4)]}
NAN_BATCH = 3
LATE_BATCH = {0: (5, 6), 1: (6, 2)}  # one more batch each after the first compute


def _batch(index, size):
    """A float64 VAE-2 step output; the decoder variance and prior change from batch to batch."""
    gen = torch.Generator().manual_seed(index)

    def randn(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64)

    out = {
        "x": randn(size, D),
        "enc_mean": randn(size, H),
        "enc_logvar": randn(size, H) - 1.0,
        "dec_mean": randn(size, D),
        "dec_logvar": torch.nn.Parameter(randn() - 1.0),
        "prior_logvar": torch.nn.Parameter(randn(H)),
    }
    if index == NAN_BATCH:
        out["enc_logvar"][0, 0] = float("nan")
        out["elbo"] = torch.full((size,), float("nan"), dtype=torch.float64)
        out["prior_logvar"] = torch.nn.Parameter(out["prior_logvar"].detach() * float("nan"))
        out["dec_logvar"] = torch.nn.Parameter(out["dec_logvar"].detach() * float("inf"))
    return out


def _metrics():
    metrics = {
        "encoder": EncoderEntropy(),
        "prior": PriorEntropy(),
        "decoder": DecoderEntropy(),
        "sum": EntropySumELBO(profile_decoder_variance=True),
        "elbo": GaussianELBO(),
        "collapse": PosteriorCollapse(latent_dim=H),
    }
    for metric in metrics.values():
        metric.set_dtype(torch.float64)
    return metrics


def _update(metrics, batches):
    for index, size in batches:
        for metric in metrics.values():
            metric.update(_batch(index, size))


def _compute(metrics):
    return {name: metric.compute() for name, metric in metrics.items()}


def _worker(rank, port, path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        metrics = _metrics()
        _update(metrics, SHARDS[rank])
        first = _compute(metrics)
        skipped = int(metrics["sum"].num_skipped_batches)  # the local count, restored after the sync
        _update(metrics, [LATE_BATCH[rank]])
        torch.save({"first": first, "second": _compute(metrics), "skipped": skipped}, f"{path}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


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
