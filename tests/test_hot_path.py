"""The per-batch path of EntropyMonitor and the metrics' update path: their shortcuts keep every check and value.

StageLayout.check takes a fast path for a batch like the first one (same keys, tensors of the expected shapes and
dtypes); LiveParameters.restore looks up only tensors that may alias a parameter and copies the watched ones
before each optimizer step; the metrics check keys with one set operation and stack 0-d statistics into a cached
vector. Each test feeds what a shortcut could wrongly let through, or compares with an independent value.
"""

from __future__ import annotations

import copy
import math
import pickle
import re
import warnings

import pytest
import torch
from torch import nn

from lightning_entropy_vae.callbacks._live_params import LiveParameters
from lightning_entropy_vae.callbacks._step_outputs import StageLayout, normalize
from lightning_entropy_vae.metrics import ELBO, EntropySumELBO, PosteriorCollapse

B, H, D = 4, 2, 3
OWNER = "EntropyMonitor (on_train_batch_end of M)"


def _owner():
    return OWNER


def _batch(b=B, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, D, generator=g, dtype=dtype)
    return {"loss": torch.tensor(1.0), "elbo": torch.randn(b, generator=g, dtype=dtype), "x": x,
            "enc_mean": torch.randn(b, H, generator=g, dtype=dtype),
            "enc_logvar": torch.randn(b, H, generator=g, dtype=dtype),
            "dec_mean": x + 0.1, "dec_logvar": torch.tensor(-1.0, dtype=dtype)}


def _layout(first):
    layout = StageLayout(first, OWNER, need_loss=True)
    layout.check(first, _owner)  # the first batch is checked too, as StageTracker.keep does
    return layout


# ------------------------------------------------------------------------------------------ StageLayout.check
def test_a_batch_like_the_first_returns_the_kept_tensors_themselves_and_its_size():
    layout = _layout(_batch())
    later = _batch(b=7, seed=1)  # a short or long batch: another batch size, same rules
    kept, size = layout.check(later, _owner)
    assert size == 7
    assert list(kept) == ["loss", "elbo", "enc_mean", "enc_logvar", "dec_logvar"]
    assert all(kept[k] is later[k] for k in kept)


@pytest.mark.parametrize(("key", "value", "got"), [
    ("elbo", torch.zeros(B, 1), "(4, 1)"),
    ("x", torch.zeros(B, D + 1), "(4, 4)"),
    ("enc_mean", torch.zeros(B, H + 1), "(4, 3)"),
    ("dec_logvar", torch.zeros(1), "(1,)"),
    ("dec_mean", torch.zeros(B + 1, D), "(5, 3)"),
])
def test_a_later_batch_of_a_wrong_shape_raises_on_the_fast_path(key, value, got):
    layout = _layout(_batch())
    layout.check(_batch(seed=1), _owner)  # the cached shapes of this batch size are in use
    with pytest.raises(ValueError, match=re.escape(f"{OWNER} expected `{key}` of shape") + ".*" + re.escape(
            f"but got {got}.")):
        layout.check({**_batch(seed=2), key: value}, _owner)


@pytest.mark.parametrize("key", ["elbo", "x", "enc_logvar", "dec_logvar"])
def test_a_later_batch_of_an_integer_dtype_raises(key):
    layout = _layout(_batch())
    later = _batch(seed=1)
    later[key] = later[key].long()
    with pytest.raises(TypeError, match="^" + re.escape(
            f"{OWNER} expected `{key}` to be a floating-point tensor, but got dtype torch.int64.") + "$"):
        layout.check(later, _owner)


def test_an_integer_tensor_in_the_first_batch_raises_at_its_own_check():
    """A key the parsers do not read (`dec_sq_residual`) is checked by the layout alone, also in the first batch."""
    first = {**_batch(), "dec_sq_residual": torch.zeros(B, dtype=torch.long)}
    layout = StageLayout(first, OWNER, need_loss=True)
    with pytest.raises(TypeError, match=re.escape("`dec_sq_residual` to be a floating-point tensor, but got dtype"
                                                  " torch.int64.")):
        layout.check(first, _owner)


def test_a_later_batch_of_another_floating_dtype_passes_and_a_non_tensor_raises():
    layout = _layout(_batch())
    kept, size = layout.check(_batch(seed=1, dtype=torch.float64), _owner)
    assert size == B and kept["elbo"].dtype == torch.float64
    with pytest.raises(TypeError, match=re.escape(f"{OWNER} expected `elbo` to be a torch.Tensor, as in the stage's"
                                                  " first batch, but got list.")):
        layout.check({**_batch(seed=2), "elbo": [0.0] * B}, _owner)


def test_a_later_batch_without_a_key_or_with_a_new_one_raises():
    layout = _layout(_batch())
    later = _batch(seed=1)
    del later["dec_mean"]
    later["other"] = 0  # as many keys as the first batch
    with pytest.raises(ValueError, match=re.escape(f"{OWNER} expected `dec_mean` in every batch's output")):
        layout.check(later, _owner)
    with pytest.raises(ValueError, match=re.escape(f"{OWNER} got `prior_logvar` in a later batch's output")):
        layout.check({**_batch(seed=2), "prior_logvar": torch.zeros(H)}, _owner)


def test_normalize_returns_a_plain_output_itself_and_turns_a_number_into_a_tensor():
    out = _batch()
    assert normalize(out, _owner) is out
    swapped = normalize({**out, "dec_logvar": -1.5}, _owner)
    assert isinstance(swapped["dec_logvar"], torch.Tensor) and float(swapped["dec_logvar"]) == -1.5


# ------------------------------------------------------------------------------------------ LiveParameters
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([0.5, 1.0, 2.0]))
        self.dec_logvar = nn.Parameter(torch.tensor(-1.0))
        self.big = nn.Linear(3, 3)


def _stepped(net, live, returned):
    """One batch: the copy before the optimizer step, an in-place update, then the batch end."""
    live.start_batch()
    live.before_optimizer_step()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(10.0)
    return live.restore(returned(net), _owner)


@pytest.mark.parametrize(("name", "returned"), [
    ("the parameter", lambda net: {"dec_logvar": net.dec_logvar}),
    ("a view of it", lambda net: {"dec_logvar": net.scale[1:]}),
    ("an expanded view", lambda net: {"dec_logvar": net.dec_logvar.expand(B, D)}),
    ("a detached alias (a leaf)", lambda net: {"dec_logvar": net.scale.detach()}),
])
def test_a_returned_alias_of_a_parameter_reads_the_value_before_the_optimizer_step(name, returned):
    net = Net()
    live = LiveParameters()
    live.attach(net)
    for _ in range(3):
        before = returned(net)["dec_logvar"].detach().clone()  # the value the forward pass used
        kept = _stepped(net, live, returned)["dec_logvar"]
        torch.testing.assert_close(kept, before, rtol=0, atol=0)
        assert not kept.requires_grad


def test_op_results_and_views_of_them_are_detached_and_not_swapped():
    net = Net()
    live = LiveParameters()
    live.attach(net)
    h = net.big(torch.ones(B, 3))
    mean, logvar = h.chunk(2, dim=-1)  # views of an op's result
    elbo = h.sum(-1)  # an op's result
    kept = _stepped(net, live, lambda _: {"elbo": elbo, "enc_mean": mean, "enc_logvar": logvar, "loss": elbo.sum()})
    for key, value in (("elbo", elbo), ("enc_mean", mean), ("enc_logvar", logvar)):
        assert not kept[key].requires_grad and kept[key].data_ptr() == value.data_ptr()
    assert kept["loss"].requires_grad  # the loss is Lightning's own (detached there)


def test_memory_a_parameter_left_is_not_taken_for_the_parameter():
    """A parameter whose ``.data`` is replaced after the index was built lives elsewhere: a tensor still in its old
    memory is the step's own value, not the parameter's (nor its copy before the step)."""
    net = Net()
    live = LiveParameters()
    live.attach(net)
    _stepped(net, live, lambda net: {"dec_logvar": net.scale})  # watched: copied before each step
    old = net.scale.data  # the memory the index knows
    net.scale.data = torch.tensor([7.0, 8.0, 9.0])
    value = old[1:] * 1.0  # held elsewhere, for reference
    kept = _stepped(net, live, lambda net: {"dec_logvar": net.scale, "prior_logvar": old[1:]})
    torch.testing.assert_close(kept["prior_logvar"], value, rtol=0, atol=0)
    torch.testing.assert_close(kept["dec_logvar"], torch.tensor([7.0, 8.0, 9.0]), rtol=0, atol=0)


def test_a_parameter_first_returned_after_the_first_batch_is_read_after_its_update_with_a_warning():
    """The first batch end fixes what is copied: nothing here, so a later alias has no copy (and says so)."""
    net = Net()
    live = LiveParameters()
    live.attach(net)
    _stepped(net, live, lambda net: {"elbo": net.big(torch.ones(B, 3)).sum(-1)})
    with pytest.warns(UserWarning, match="`dec_logvar` aliases a parameter .* was not returned by earlier batches"):
        kept = _stepped(net, live, lambda net: {"dec_logvar": net.dec_logvar})
    assert float(kept["dec_logvar"]) == net.dec_logvar.item()  # after the update
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        before = net.dec_logvar.item()
        kept = _stepped(net, live, lambda net: {"dec_logvar": net.dec_logvar})  # watched from now on
    assert float(kept["dec_logvar"]) == before


def test_several_watched_parameters_are_copied_together():
    net = Net()
    live = LiveParameters()
    live.attach(net)

    def returned(net):
        return {"dec_logvar": net.dec_logvar, "prior_logvar": net.scale[:2]}

    for _ in range(2):
        before = {k: v.detach().clone() for k, v in returned(net).items()}
        kept = _stepped(net, live, returned)
        for key in before:
            torch.testing.assert_close(kept[key], before[key], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ metrics' update path
def _reference_entropy_sum(batches):
    """Encoder, prior, decoder entropies per point in float64, from the closed forms."""
    n = sum(b["enc_logvar"].shape[0] for b in batches)
    log2pie = math.log(2 * math.pi * math.e)
    enc = sum(0.5 * (b["enc_logvar"].double() + log2pie).sum() for b in batches) / n
    dec = sum(0.5 * D * (b["dec_logvar"].detach().double() + log2pie) * b["enc_logvar"].shape[0] for b in batches) / n
    prior = 0.5 * H * log2pie
    return {"encoder": enc, "prior": torch.tensor(prior, dtype=torch.float64), "decoder": dec,
            "sum": enc - prior - dec}


def _assert_sums(values, batches):
    for key, expected in _reference_entropy_sum(batches).items():
        assert float(values[key].detach()) == pytest.approx(float(expected), rel=1e-5), key


def test_entropy_sum_updates_over_batch_sizes_dtypes_and_grad_modes_match_the_closed_forms():
    metric = EntropySumELBO(warn_fixed_variance=False, nan_strategy="ignore")
    batches = [_batch(b=b, seed=s) for s, b in enumerate((4, 4, 7, 4))]
    batches.append({**_batch(b=3, seed=9), "dec_logvar": torch.tensor(-0.5, dtype=torch.float64)})  # mixed dtypes
    for b in batches:
        metric.update(b)
    _assert_sums(metric.compute(), batches)
    nan = {**_batch(seed=11), "enc_logvar": torch.full((B, H), math.nan)}
    metric.update(nan)  # skipped: only the skipped count grows
    assert float(metric.num_skipped_batches) == 1
    grad = {**_batch(b=5, seed=12), "dec_logvar": nn.Parameter(torch.tensor(-2.0))}
    values = metric(grad)  # forward(): the batch's values with grad enabled, then the running state
    _assert_sums(values, [grad])
    _assert_sums(metric.compute(), [*batches, grad])


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))])
def test_a_copied_metric_keeps_adding_into_its_own_states(clone):
    metric = EntropySumELBO(warn_fixed_variance=False)
    first, second = _batch(seed=0), _batch(seed=1)
    metric.update(first)
    twin = clone(metric)
    twin.update(second)
    twin.update(second)
    _assert_sums(twin.compute(), [first, second, second])
    _assert_sums(metric.compute(), [first])


def test_compute_after_a_further_update_is_not_the_cached_value():
    metric = EntropySumELBO(warn_fixed_variance=False)
    first, second = _batch(seed=0), _batch(b=6, seed=1)
    metric.update(first)
    _assert_sums(metric.compute(), [first])
    metric.update(second)
    _assert_sums(metric.compute(), [first, second])
    assert metric.update_count == 2


@pytest.mark.parametrize("metric", [EntropySumELBO(), ELBO(), PosteriorCollapse(latent_dim=H)],
                         ids=["EntropySumELBO", "ELBO", "PosteriorCollapse"])
def test_an_unknown_key_of_a_step_output_raises_with_the_closest_name(metric):
    out = {**_batch(), "enc_logvr": torch.zeros(B, H)}
    with pytest.raises(TypeError, match=re.escape("unexpected keyword argument(s) `enc_logvr` (did you mean"
                                                  " `enc_logvar`?)")):
        metric.update(out)
    with pytest.raises(TypeError, match="takes a mapping with str keys"):
        metric.update({**_batch(), 3: torch.zeros(B)})


def test_a_float64_statistic_is_added_to_float32_states_with_one_rounding():
    """The statistics are added in their promoted dtype and rounded once into the states: 1 + 2**-24 + 2**-50 is
    1 + 2**-23 in float32, where rounding 2**-24 + 2**-50 to float32 first would give 1 (a tie, to even)."""
    metric = EntropySumELBO(warn_fixed_variance=False)
    enc_logvar, x = torch.zeros(4, 1), torch.zeros(4, 4)  # the decoder statistic is 16 * dec_logvar
    for lv in (1.0 / 16, (2.0**-24 + 2.0**-50) / 16):
        metric.update(enc_logvar=enc_logvar, x=x, dec_logvar=torch.tensor(lv, dtype=torch.float64))
    expected = torch.tensor(1.0 + 2.0**-24 + 2.0**-50, dtype=torch.float64).float()
    assert metric.entropy_sum_decoder_logdet.dtype == torch.float32
    assert metric.entropy_sum_decoder_logdet.item() == expected.item() == 1.0 + 2.0**-23
