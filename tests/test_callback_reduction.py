"""The EntropyMonitor's one-call reduction of its kept batches against the metrics fed batch by batch.

``StageTracker.reduce`` concatenates the kept batches into one, reads once which batches hold NaN/Inf, and hands
the finite batches, stacked, to each metric's public ``update``. Here the same batches go one by one through
``EntropySumELBO``, ``GaussianELBO`` and ``PosteriorCollapse.update()`` (tested against torch.distributions in
test_metrics.py), skipping the batches that hold NaN/Inf, and every computed value must agree: ragged batch sizes,
a prior that changes between batches, every decoder layout, the profiled decoder variance, and non-finite batches.
"""

import math
import warnings

import pytest
import torch

from lightning_entropy_vae.callbacks import _stage
from lightning_entropy_vae.callbacks._live_params import LiveParameters
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


class OneProcess:
    """The part of a Lightning strategy a tracker's ``result`` uses, for one process."""

    root_device, world_size = torch.device("cpu"), 1

    def reduce(self, tensor, reduce_op="sum"):
        return tensor


class Stage:
    """A training stage as the EntropyMonitor drives it: keep every batch, reduce at chosen points."""

    def __init__(self, batches, profiled, objective=True, gap_window=32):
        self.tracker = _stage.StageTracker("train", criterion="entropy", threshold=None, nan_strategy="skip",
                                           live=LiveParameters(), fixed_variance=profiled, objective=objective,
                                           gap_window=gap_window)
        self.tracker.keep(batches[0], lambda: "test", 1.0)  # the first batch fixes the layout
        self.layout = self.tracker.layout
        self._first = batches[0]

    def keep(self, batch):
        if batch is self._first:  # kept at construction
            self._first = None
            return
        self.tracker.keep(batch, lambda: "test", 1.0)

    def reduce(self):
        self.tracker.reduce(lambda: "test")

    def epoch(self):
        self.reduce()
        result = self.tracker.result(OneProcess())
        return result.sums, result.elbo, result.collapse

    def window(self):
        self.reduce()
        return self.tracker.window()


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
    stage = Stage(batches, profiled)
    assert stage.layout.decoder_layout == layout.removesuffix("_1")
    for i, b in enumerate(batches):
        stage.keep(b)
        if i == 1:
            stage.reduce()  # two reductions: states add up
    sums, elbo, collapse = stage.epoch()
    ref_sums, ref_elbo, ref_collapse, _ = _reference(batches, profiled)
    assert set(sums) == set(ref_sums)
    for key in ref_sums:
        assert float(sums[key]) == pytest.approx(float(ref_sums[key]), rel=1e-5, abs=1e-6), key
    assert float(elbo) == pytest.approx(float(ref_elbo), rel=1e-6)
    for key in ("latent_entropy", "prior_latent_entropy", "latent_kl", "latent_mean_variance"):
        torch.testing.assert_close(collapse[key], ref_collapse[key], rtol=1e-5, atol=1e-5, msg=key)
    assert torch.equal(collapse["collapsed"], ref_collapse["collapsed"])
    assert stage.tracker.dropped_batches == 0
    # per batch, the objective check's row: -loss, points, the ELBO and per latent the KL summed over its points
    rows = stage.tracker.objective_rows.state_dict()["rows"]
    assert len(rows) == len(batches)
    for row, b in zip(rows, batches):
        posterior = torch.distributions.Normal(b["enc_mean"].double(), (0.5 * b["enc_logvar"].double()).exp())
        prior_std = (0.5 * b.get("prior_logvar", torch.zeros(H)).double()).exp()
        kl = torch.distributions.kl_divergence(posterior, torch.distributions.Normal(0.0, prior_std)).sum(0)
        assert row[0] == pytest.approx(-float(b["loss"]), rel=1e-6)
        assert row[1] == b["x"].shape[0]
        assert row[2] == pytest.approx(float(b["elbo"].double().sum()), rel=1e-5)
        assert row[3:] == pytest.approx(kl.tolist(), rel=1e-5, abs=1e-6)
    # per batch, the gap window's row: the ELBO minus the entropy sum, summed over its points (a metric per batch)
    gaps = stage.tracker.state()["gaps"]
    assert [n for _, n in gaps] == sizes
    for (gap, _), b, n in zip(gaps, batches, sizes):
        alone = EntropySumELBO(profile_decoder_variance=profiled, warn_fixed_variance=False)
        alone.update(b)
        reference = float(b["elbo"].double().sum()) - n * float(alone.compute()["sum"])
        assert gap == pytest.approx(reference, rel=1e-5, abs=1e-5)


def _keep_all_against_reference(batches, *, kept, dropped):
    """Keep every batch, reduce at the epoch end, and check the values against the reference over the batches
    without NaN/Inf (``kept`` of them; ``dropped`` left out by the keep mask)."""
    stage = Stage(batches, profiled=False)
    for b in batches:
        stage.keep(b)
    sums, elbo, collapse = stage.epoch()
    ref_sums, ref_elbo, ref_collapse, ref_kept = _reference(batches, profiled=False)
    assert len(ref_kept) == kept and stage.tracker.dropped_batches == dropped
    assert float(sums["sum"]) == pytest.approx(float(ref_sums["sum"]), rel=1e-5)
    assert float(elbo) == pytest.approx(float(ref_elbo), rel=1e-6)
    torch.testing.assert_close(collapse["latent_kl"], ref_collapse["latent_kl"], rtol=1e-5, atol=1e-5)
    return stage


def test_flush_drops_batches_with_nan_or_inf():
    gen = torch.Generator().manual_seed(1)
    batches = [_batch(gen, 4, "scalar", prior=True) for _ in range(6)]
    batches[1]["enc_logvar"][2, 0] = math.nan
    batches[2]["dec_logvar"] = torch.tensor(math.inf)
    batches[3]["enc_logvar"][0, 1] = 200.0  # finite, but exp() overflows: its KL is Inf
    batches[4]["prior_logvar"][1] = -math.inf
    batches[5]["loss"] = torch.tensor(math.nan)  # the loss alone does not drop a batch, only its objective check
    stage = _keep_all_against_reference(batches, kept=2, dropped=4)
    rows = stage.tracker.objective_rows.state_dict()["rows"]
    assert len(rows) == 1 and rows[0][0] == pytest.approx(-float(batches[0]["loss"]), rel=1e-6)  # batch 5: NaN loss
    assert len(stage.tracker.state()["gaps"]) == 2  # the gap window holds both finite batches, 0 and 5


def test_flush_drops_the_right_batches_of_mixed_sizes():
    """Runs of equal batch sizes are probed run by run: a bad batch in any run drops that batch only."""
    gen = torch.Generator().manual_seed(3)
    batches = [_batch(gen, n, "scalar", prior=True) for n in (4, 4, 2, 3, 3, 1)]
    batches[2]["enc_logvar"][1, 0] = 200.0  # the 2-point run: exp() overflows
    batches[4]["prior_logvar"][0] = math.nan  # second batch of the 3-point run
    batches[5]["enc_mean"][0, 1] = -math.inf  # the last, single point
    _keep_all_against_reference(batches, kept=3, dropped=3)


def test_one_reduction_of_more_batches_than_the_windows_keeps_their_last_rows():
    """90 batches in one reduction (the gap window keeps 12 rows, the objective check 64), with batches holding NaN
    and a NaN loss among the last ones: both windows hold the rows of the last finite batches, as when each batch is
    reduced on its own, and those rows match a float64 reference."""
    gen = torch.Generator().manual_seed(3)
    sizes = [6] * 89 + [4]
    batches = [_batch(gen, n, "scalar", prior=False) for n in sizes]
    for k in (60, 83, 88):
        batches[k]["enc_logvar"][1, 0] = math.nan  # left out of both windows
    for k in (40, 86):
        batches[k]["loss"] = torch.tensor(math.nan)  # in the gap window, not in the objective check

    at_once, one_by_one = Stage(batches, False, gap_window=12), Stage(batches, False, gap_window=12)
    for b in batches:
        at_once.keep(b)
        one_by_one.keep(b)
        one_by_one.reduce()
    at_once.reduce()
    at_once, one_by_one = at_once.tracker, one_by_one.tracker
    assert at_once.state() == one_by_one.state()

    finite = [k for k in range(len(batches)) if k not in (60, 83, 88)]
    gaps = at_once.state()["gaps"]
    assert len(gaps) == 12
    for (gap, n), k in zip(gaps, finite[-12:]):
        alone = EntropySumELBO(warn_fixed_variance=False)
        alone.update(batches[k])
        assert n == sizes[k]
        assert gap == pytest.approx(float(batches[k]["elbo"].double().sum()) - n * float(alone.compute()["sum"]),
                                    rel=1e-5, abs=1e-5)
    rows = at_once.objective_rows.state_dict()["rows"]
    with_loss = [k for k in finite if k not in (40, 86)]
    assert len(rows) == 64
    for row, k in zip(rows, with_loss[-64:]):
        b = batches[k]
        posterior = torch.distributions.Normal(b["enc_mean"].double(), (0.5 * b["enc_logvar"].double()).exp())
        kl = torch.distributions.kl_divergence(posterior, torch.distributions.Normal(0.0, 1.0)).sum(0)
        assert row[:3] == pytest.approx([-float(b["loss"]), sizes[k], float(b["elbo"].double().sum())], rel=1e-5)
        assert row[3:] == pytest.approx(kl.tolist(), rel=1e-5, abs=1e-6)


def test_window_is_the_points_since_the_last_read():
    gen = torch.Generator().manual_seed(2)
    batches = [_batch(gen, n, "scalar", prior=False) for n in (4, 4, 2, 4, 3)]
    stage = Stage(batches, profiled=False)
    for b in batches[:2]:
        stage.keep(b)
    first = stage.window()
    for b in batches[2:]:
        stage.keep(b)
    second = stage.window()
    for window, part in ((first, batches[:2]), (second, batches[2:])):
        ref_sums, ref_elbo, _, _ = _reference(part, profiled=False)
        assert window[0] == pytest.approx(float(ref_sums["sum"]), rel=1e-5)
        assert window[1] == pytest.approx(float(ref_elbo), rel=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no TorchMetrics "compute before update" warning either
        empty = stage.window()  # nothing since: NaN, not a division error
    assert math.isnan(empty[0]) and math.isnan(empty[1])
    # the epoch holds every batch once, whatever the windows did
    sums, elbo, _ = stage.epoch()
    ref_sums, ref_elbo, _, _ = _reference(batches, profiled=False)
    assert float(sums["sum"]) == pytest.approx(float(ref_sums["sum"]), rel=1e-5)
    assert float(elbo) == pytest.approx(float(ref_elbo), rel=1e-6)


@pytest.mark.parametrize(("layout", "prior", "sizes", "profiled"), [
    ("scalar", True, [4, 4, 3], False),
    ("per_dim", False, [5, 2, 4], False),
    ("per_sample", False, [4, 4, 1], True),
    ("per_z", True, [2, 4, 4], True),
])
def test_a_logging_step_reads_its_window_without_reducing_and_each_batch_counts_once(layout, prior, sizes, profiled):
    """The monitor's logging step: the window's sums from the kept batches, which stay kept for the epoch."""
    gen = torch.Generator().manual_seed(7)
    batches = [_batch(gen, n, layout, prior) for n in sizes + sizes]
    stage = Stage(batches, profiled)
    for b in batches[:3]:
        stage.keep(b)
    first = stage.tracker.window()
    assert stage.tracker.num_pending == 3  # for the metrics, the gap window and the objective check
    for b in batches[3:5]:
        stage.keep(b)
    sums, elbo, _ = stage.epoch()  # the epoch's reduction: batches 4 and 5 wait for the next window
    stage.tracker.start_epoch()
    stage.keep(batches[5])
    second = stage.tracker.window()
    for window, part in ((first, batches[:3]), (second, batches[3:])):
        ref_sums, ref_elbo, _, _ = _reference(part, profiled)
        assert window == pytest.approx((float(ref_sums["sum"]), float(ref_elbo)), rel=1e-5)
    ref_sums, ref_elbo, _, _ = _reference(batches[:5], profiled)
    assert float(sums["sum"]) == pytest.approx(float(ref_sums["sum"]), rel=1e-5)
    assert float(elbo) == pytest.approx(float(ref_elbo), rel=1e-6)


def test_a_logging_step_leaves_out_the_batches_whose_elbo_or_entropy_sum_is_not_finite():
    gen = torch.Generator().manual_seed(8)
    batches = [_batch(gen, 4, "scalar", prior=False) for _ in range(5)]
    batches[1]["enc_logvar"][0, 0] = math.nan
    batches[3]["elbo"][2] = math.inf
    stage = Stage(batches, profiled=False)
    for b in batches:
        stage.keep(b)
    window = stage.tracker.window()
    ref_sums, ref_elbo, _, kept = _reference(batches, profiled=False)
    assert len(kept) == 3
    assert window == pytest.approx((float(ref_sums["sum"]), float(ref_elbo)), rel=1e-5)
    sums, elbo, _ = stage.epoch()
    assert stage.tracker.dropped_batches == 2
    assert float(sums["sum"]) == pytest.approx(float(ref_sums["sum"]), rel=1e-5)
    assert float(elbo) == pytest.approx(float(ref_elbo), rel=1e-6)


def test_a_batch_counts_in_the_step_keys_alike_whether_a_logging_step_or_the_reduction_reads_it_first():
    """A NaN in ``enc_mean`` (which neither the ELBO nor the entropy sum reads) leaves the batch out of the epoch's
    metrics but not out of the step keys, whichever reads the batch first."""
    gen = torch.Generator().manual_seed(9)
    batches = [_batch(gen, 4, "scalar", prior=False) for _ in range(5)]
    batches[3]["enc_mean"][1, 0] = math.nan
    windows = []
    for reduce_first in (False, True):
        stage = Stage(batches, profiled=False)
        for b in batches:
            stage.keep(b)
        if reduce_first:
            stage.epoch()  # the epoch's end (or a full stash, or a checkpoint) comes before the logging step
        windows.append(stage.tracker.window())
        assert stage.tracker.dropped_batches == (1 if reduce_first else 0)
    ref_sums, _, _, _ = _reference([{**b, "enc_mean": torch.zeros_like(b["enc_mean"])} for b in batches], False)
    ref_elbo = float(torch.cat([b["elbo"] for b in batches]).double().mean())
    for window in windows:
        assert window == pytest.approx((float(ref_sums["sum"]), ref_elbo), rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_window_is_summed_in_float32(dtype):
    """50 batches of 128 points at D = 784: the ELBO and the entropy sum are near -1,100 nats per point and their
    window totals near -7e6, where bfloat16 steps are 65,536 apart; the window and each batch's gap must equal the
    float64 sums of the same (rounded) values, to 0.01 nats per point."""
    gen = torch.Generator().manual_seed(10)
    batches = []
    for _ in range(50):
        enc_logvar = (torch.randn(128, H, generator=gen) - 2.0).to(dtype)
        dec_logvar = torch.tensor(0.05, dtype=dtype)
        batch = {"x": torch.zeros(128, 784, dtype=dtype), "enc_mean": torch.randn(128, H, generator=gen).to(dtype),
                 "enc_logvar": enc_logvar, "dec_logvar": dec_logvar, "loss": torch.tensor(1.0, dtype=dtype)}
        entropy_sum = _stage.F.entropy_sum(enc_logvar=enc_logvar.double(), dec_logvar=dec_logvar.double(),
                                           x=batch["x"].double(), reduction="none")
        batch["elbo"] = (entropy_sum + 0.4 + 0.1 * torch.randn(128, generator=gen, dtype=torch.float64)).to(dtype)
        batches.append(batch)
    stage = Stage(batches, profiled=False)
    for b in batches:
        stage.keep(b)
    entropy_sum, elbo = stage.tracker.window()
    as64 = [{k: v.double() for k, v in b.items()} for b in batches]  # the same (rounded) values, in float64
    ref_sum = float(torch.cat([_stage.F.entropy_sum(enc_logvar=b["enc_logvar"], dec_logvar=b["dec_logvar"], x=b["x"],
                                                    reduction="none") for b in as64]).mean())
    ref_elbo = float(torch.cat([b["elbo"] for b in as64]).mean())
    assert elbo - entropy_sum == pytest.approx(ref_elbo - ref_sum, abs=0.01)
    assert entropy_sum == pytest.approx(ref_sum, abs=0.01) and elbo == pytest.approx(ref_elbo, abs=0.01)
    # the gap window (what the stopping gate reads) holds each batch's gap from float32 sums too
    stage.epoch()
    gaps = stage.tracker.state()["gaps"]  # the last 32 batches: (ELBO - entropy sum summed over the batch, points)
    assert len(gaps) == 32
    for (gap, n), b in zip(gaps, as64[-len(gaps):]):
        ref = float((b["elbo"] - _stage.F.entropy_sum(enc_logvar=b["enc_logvar"], dec_logvar=b["dec_logvar"],
                                                      x=b["x"], reduction="none")).sum())
        assert n == 128 and gap / n == pytest.approx(ref / n, abs=0.01)


def test_window_carries_the_batches_after_the_last_log_into_the_next_epoch():
    """Batches after an epoch's last step log count in that epoch, and in the next step log's window, once."""
    gen = torch.Generator().manual_seed(5)
    batches = [_batch(gen, 4, "scalar", prior=False) for _ in range(7)]
    stage = Stage(batches, profiled=False)
    for b in batches[:2]:
        stage.keep(b)
    stage.window()  # a step log after batch 2 of epoch 0
    stage.keep(batches[2])
    first_epoch = stage.epoch()
    stage.tracker.start_epoch()
    for b in batches[3:5]:
        stage.keep(b)
    window = stage.window()  # batch 3 of epoch 0 and the first two of epoch 1
    for b in batches[5:]:
        stage.keep(b)
    second_epoch = stage.epoch()
    for got, part in ((first_epoch, batches[:3]), (second_epoch, batches[3:])):
        ref_sums, ref_elbo, _, _ = _reference(part, profiled=False)
        assert float(got[0]["sum"]) == pytest.approx(float(ref_sums["sum"]), rel=1e-5)
        assert float(got[1]) == pytest.approx(float(ref_elbo), rel=1e-6)
    ref_sums, ref_elbo, _, _ = _reference(batches[2:5], profiled=False)
    assert window == pytest.approx((float(ref_sums["sum"]), float(ref_elbo)), rel=1e-5)


def test_stash_is_flushed_once_it_holds_max_pending_batches(monkeypatch):
    """Between logging steps (or in a long validation epoch) the stash stays bounded."""
    monkeypatch.setattr(_stage, "MAX_PENDING", 2)
    gen = torch.Generator().manual_seed(3)
    batches = [_batch(gen, 4, "scalar", prior=False) for _ in range(5)]
    stage = Stage(batches, profiled=False)
    for i, b in enumerate(batches):
        stage.keep(b)
        assert stage.tracker.num_pending == (i + 1) % 2  # reduced at 2 and 4
    sums, elbo, _ = stage.epoch()
    ref_sums, ref_elbo, _, _ = _reference(batches, profiled=False)
    assert float(sums["sum"]) == pytest.approx(float(ref_sums["sum"]), rel=1e-5)
    assert float(elbo) == pytest.approx(float(ref_elbo), rel=1e-6)


def test_stash_is_reduced_once_its_tensors_hold_max_pending_bytes(monkeypatch):
    """References to D-sized tensors hold memory until the reduction: bounded in bytes too."""
    gen = torch.Generator().manual_seed(4)
    batches = [_batch(gen, 4, "per_sample", prior=False) for _ in range(5)]
    stage = Stage(batches, profiled=True)
    # x, dec_mean, dec_logvar (D each), enc_mean, enc_logvar (H each), elbo: float32 per point
    assert stage.layout.bytes_per_point == 4 * (3 * D + 2 * H + 1)
    monkeypatch.setattr(_stage, "MAX_PENDING_BYTES", 3 * 4 * stage.layout.bytes_per_point)  # three batches
    for i, b in enumerate(batches):
        stage.keep(b)
        assert stage.tracker.num_pending == (i + 1) % 3
    sums, _, _ = stage.epoch()
    ref_sums, _, _, _ = _reference(batches, profiled=True)
    assert float(sums["sum_profiled"]) == pytest.approx(float(ref_sums["sum_profiled"]), rel=1e-5)


def test_only_what_the_metrics_need_is_kept():
    """With the ELBO returned and a learned variance, no D-sized tensor is held until the reduction."""
    gen = torch.Generator().manual_seed(6)
    batches = [_batch(gen, 4, "scalar", prior=True) for _ in range(3)]
    stage = Stage(batches, profiled=False, objective=False)
    assert set(stage.layout.kept) == {"enc_mean", "enc_logvar", "elbo", "dec_logvar", "prior_logvar"}
    assert stage.layout.bytes_per_point == 4 * (2 * H + 1)
    for b in batches:
        stage.keep(b)
    assert all("x" not in kw and "dec_mean" not in kw for kw in stage.tracker.pending_batches)
    sums, _, _ = stage.epoch()
    ref_sums, _, _, _ = _reference(batches, profiled=False)
    assert float(sums["sum"]) == pytest.approx(float(ref_sums["sum"]), rel=1e-5)
    # without the ELBO, x and dec_mean are needed to compute it
    no_elbo = [{k: v for k, v in b.items() if k != "elbo"} for b in batches]
    assert {"x", "dec_mean"} <= set(Stage(no_elbo, profiled=False, objective=False).layout.kept)
