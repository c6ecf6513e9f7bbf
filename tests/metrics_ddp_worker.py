"""Worker of tests/test_metrics_ddp.py: a module importable by name in spawned processes.

pytest imports test files under a package path (`tests.test_...`) that a spawned child cannot import
when the checkout is not on sys.path (CI tests the installed wheel); `pythonpath = ["tests"]` makes
this module importable in the parent and, through multiprocessing's sys.path hand-over, in the children.
"""



import torch
import torch.distributed as dist

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


