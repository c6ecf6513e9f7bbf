"""The EntropyMonitor's fused flush against the metrics' own ``update()``, batch by batch.

``StageBuffer.flush`` reduces many stashed batches in one pass and writes the metrics' states
directly. Here the same batches go one by one through ``EntropySumELBO``, ``GaussianELBO`` and
``PosteriorCollapse.update()`` (tested against torch.distributions in test_metrics.py), skipping the
batches that hold NaN/Inf, and every computed value must agree: ragged batch sizes, a prior that
changes between batches, every decoder layout, the profiled decoder variance, and non-finite batches.
"""

import math

import pytest
import torch

from lightning_entropy_vae.callbacks._stage import Spec, StageBuffer
from lightning_entropy_vae.metrics import EntropySumELBO, GaussianELBO, PosteriorCollapse

H, D = 3, 5


def _batch(gen, n, layout, prior, samples=2):
    x = torch.randn(n, D, generator=gen)
    out = {
        "x": x,
        "enc_mean": torch.randn(n, H, generator=gen),
        "enc_logvar": torch.randn(n, H, generator=gen) - 1.0,
        "elbo": torch.randn(n, generator=gen) - 5.0,
        "loss": torch.randn((), generator=gen),
    }
    if layout == "per_z":
        out["dec_mean"] = x + 0.3 * torch.randn(samples, n, D, generator=gen)
        out["dec_logvar"] = torch.randn(samples, n, D, generator=gen)
    else:
        out["dec_mean"] = x + 0.3 * torch.randn(n, D, generator=gen)
        shape = {"scalar": (), "per_dim": (D,), "per_sample": (n, D), "per_sample_1": (n, 1)}[layout]
        out["dec_logvar"] = torch.randn(shape, generator=gen)
    if prior:
        out["prior_logvar"] = 0.5 * torch.randn(H, generator=gen)  # a different prior in every batch
    return out


def _reference(batches, profiled):
    """Fresh metrics fed batch by batch; non-finite batches left out, as the flush leaves them out."""
    entropy_sum = EntropySumELBO(profile_decoder_variance=profiled, warn_fixed_variance=False)
    elbo, collapse = GaussianELBO(), PosteriorCollapse(H)
    kept = [b for b in batches if all(torch.isfinite(v).all() for k, v in b.items() if k != "loss")
            and torch.isfinite(b["enc_logvar"].exp()).all()]
    for b in kept:
        for metric in (entropy_sum, elbo, collapse):
            metric.update(b)
    return entropy_sum.compute(), elbo.compute(), collapse.compute(), kept


def _buffer(batches, profiled):
    spec = Spec(batches[0], "test")
    buffer = StageBuffer(spec, profiled=profiled, criterion="entropy", threshold=None, nan_strategy="skip",
                         device=torch.device("cpu"))
    return buffer


@pytest.mark.parametrize(("layout", "prior", "sizes", "profiled"), [
    ("scalar", False, [4, 4, 4], False),
    ("scalar", True, [4, 4, 3], False),
    ("per_dim", True, [5, 2, 4], False),
    ("per_sample", False, [4, 4, 1], True),
    ("per_sample_1", True, [3, 3, 3], True),
    ("per_z", False, [2, 4, 4], True),
])
def test_flush_equals_per_batch_updates(layout, prior, sizes, profiled):
    gen = torch.Generator().manual_seed(0)
    batches = [_batch(gen, n, layout, prior) for n in sizes]
    buffer = _buffer(batches, profiled)
    assert buffer.spec.layout == layout.removesuffix("_1")
    for i, b in enumerate(batches):
        buffer.record(b, loss_scale=1.0)
        if i == 1:
            buffer.flush()  # two flushes: states add up
    sums, elbo, collapse = buffer.compute_epoch()
    ref_sums, ref_elbo, ref_collapse, _ = _reference(batches, profiled)
    assert set(sums) == set(ref_sums)
    for key in ref_sums:
        assert float(sums[key]) == pytest.approx(float(ref_sums[key]), rel=1e-5, abs=1e-6), key
    assert float(elbo) == pytest.approx(float(ref_elbo), rel=1e-6)
    for key in ("latent_entropy", "prior_latent_entropy", "latent_kl", "latent_mean_variance"):
        torch.testing.assert_close(collapse[key], ref_collapse[key], rtol=1e-5, atol=1e-5, msg=key)
    assert torch.equal(collapse["collapsed"], ref_collapse["collapsed"])
    assert int(buffer.skipped) == 0
    # the objective bookkeeping: -loss over the points, and the ELBO over the same points
    points = sum(sizes)
    assert float(buffer.objective_sum) == pytest.approx(-sum(float(b["loss"]) * n for b, n in zip(batches, sizes)),
                                                        rel=1e-5)
    assert float(buffer.objective_summed) == pytest.approx(-sum(float(b["loss"]) for b in batches), rel=1e-5)
    assert float(buffer.objective_elbo_sum) == pytest.approx(float(ref_elbo) * points, rel=1e-5)


def test_flush_drops_batches_with_nan_or_inf():
    gen = torch.Generator().manual_seed(1)
    batches = [_batch(gen, 4, "scalar", prior=True) for _ in range(6)]
    batches[1]["enc_logvar"][2, 0] = math.nan
    batches[2]["dec_logvar"] = torch.tensor(math.inf)
    batches[3]["enc_logvar"][0, 1] = 200.0  # finite, but exp() overflows: its KL is Inf
    batches[4]["prior_logvar"][1] = -math.inf
    batches[5]["loss"] = torch.tensor(math.nan)  # the loss alone does not drop a batch (it is read as 0)
    buffer = _buffer(batches, profiled=False)
    for b in batches:
        buffer.record(b, loss_scale=1.0)
    sums, elbo, collapse = buffer.compute_epoch()
    ref_sums, ref_elbo, ref_collapse, kept = _reference(batches, profiled=False)
    assert len(kept) == 2 and int(buffer.skipped) == 4
    assert float(sums["sum"]) == pytest.approx(float(ref_sums["sum"]), rel=1e-5)
    assert float(elbo) == pytest.approx(float(ref_elbo), rel=1e-6)
    torch.testing.assert_close(collapse["latent_kl"], ref_collapse["latent_kl"], rtol=1e-5, atol=1e-5)
    assert int(buffer.epoch_sum.num_skipped_batches) == 0  # counted by the buffer, not as metric skips
    assert float(buffer.objective_sum) == pytest.approx(-float(batches[0]["loss"]) * 4, rel=1e-5)


def test_window_is_the_points_since_the_last_read():
    gen = torch.Generator().manual_seed(2)
    batches = [_batch(gen, n, "scalar", prior=False) for n in (4, 4, 2, 4, 3)]
    buffer = _buffer(batches, profiled=False)
    for b in batches[:2]:
        buffer.record(b, loss_scale=1.0)
    first = buffer.compute_window()
    for b in batches[2:]:
        buffer.record(b, loss_scale=1.0)
    second = buffer.compute_window()
    for window, part in ((first, batches[:2]), (second, batches[2:])):
        ref_sums, ref_elbo, _, _ = _reference(part, profiled=False)
        assert window["sum"] == pytest.approx(float(ref_sums["sum"]), rel=1e-5)
        assert window["elbo"] == pytest.approx(float(ref_elbo), rel=1e-6)
    empty = buffer.compute_window()  # nothing since: NaN, not a division error
    assert math.isnan(empty["sum"]) and math.isnan(empty["elbo"])


def test_stash_is_flushed_once_it_holds_max_pending_batches(monkeypatch):
    """Between logging steps (or in a long validation epoch) the stash stays bounded."""
    from lightning_entropy_vae.callbacks import _stage

    monkeypatch.setattr(_stage, "MAX_PENDING", 2)
    gen = torch.Generator().manual_seed(3)
    batches = [_batch(gen, 4, "scalar", prior=False) for _ in range(5)]
    buffer = _buffer(batches, profiled=False)
    for i, b in enumerate(batches):
        buffer.record(b, loss_scale=1.0)
        assert len(buffer._sizes) == (i + 1) % 2  # flushed at 2 and 4
    sums, elbo, _ = buffer.compute_epoch()
    ref_sums, ref_elbo, _, _ = _reference(batches, profiled=False)
    assert float(sums["sum"]) == pytest.approx(float(ref_sums["sum"]), rel=1e-5)
    assert float(elbo) == pytest.approx(float(ref_elbo), rel=1e-6)
