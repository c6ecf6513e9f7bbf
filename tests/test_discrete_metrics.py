"""The metrics with Bernoulli and categorical decoders: DecoderEntropy, EntropySumELBO and ELBO against
torch.distributions in float64 (``.entropy()``, ``.log_prob()`` minus ``kl_divergence``), over several updates of
different batch sizes, with ``weight=``, stacked batches, ``merge_state``; GaussianELBO's and the profiled sum's
errors for such decoders."""

import re

import matplotlib
import pytest
import torch
import torch.nn.functional as TF
from torch.distributions import Bernoulli, Categorical, Independent, Normal, OneHotCategorical, kl_divergence
from torchmetrics import MetricCollection

import lightning_entropy_vae
import lightning_entropy_vae.functional as F
from lightning_entropy_vae.metrics import ELBO, DecoderEntropy, EntropySumELBO, GaussianELBO

matplotlib.use("Agg")

F64 = torch.float64
H, S, C = 3, 2, 3
IMAGE = (2, 3)  # a Bernoulli decoder's data shape: D = 6
VARIABLES = (4,)  # a categorical decoder's data shape: D = 4 variables of C classes
SIZES = (5, 8, 3)
# decoder -> (leading z-sample dims of its parameters, whether its inputs are tensors that can be concatenated)
DECODERS = {
    "logits": (1, True),
    "sampled_logits": (2, True),
    "probs": (1, True),
    "class_indices": (1, True),
    "sampled_class_indices": (2, True),
    "one_hot": (1, True),
    "bernoulli_likelihood": (1, False),
    "categorical_likelihood": (1, False),
    "one_hot_likelihood": (1, False),
}
TENSOR_DECODERS = [name for name, (_, tensors) in DECODERS.items() if tensors]
PARAMS = {"logits": "dec_logits", "sampled_logits": "dec_logits", "probs": "dec_probs",
          "class_indices": "dec_class_logits", "sampled_class_indices": "dec_class_logits",
          "one_hot": "dec_class_logits"}


def _exact(message):
    return "^" + re.escape(message) + "$"


def _step(decoder, batch, gen):
    """A step output with the named decoder, and its torch.distributions reference: (output, distribution, x)."""

    def randn(*shape):
        return torch.randn(shape, generator=gen, dtype=F64)

    lead = (S,) if decoder.startswith("sampled") else ()
    out = {"loss": torch.tensor(1.0), "enc_mean": randn(batch, H), "enc_logvar": randn(batch, H) - 1.0,
           "prior_logvar": 0.3 * randn(H)}
    if decoder in ("logits", "sampled_logits", "probs", "bernoulli_likelihood"):
        logits = 3.0 * randn(*lead, batch, *IMAGE)
        logits.view(-1)[:2] = torch.tensor([40.0, -40.0])  # saturated sigmoids
        x = torch.bernoulli(torch.sigmoid(randn(batch, *IMAGE)), generator=gen)
        if decoder == "probs":
            probs = torch.sigmoid(logits.clamp(-8.0, 8.0))
            dist, out["dec_probs"] = Bernoulli(probs=probs), probs
        elif decoder == "bernoulli_likelihood":
            dist = Bernoulli(logits=logits)
            out["likelihood"] = Independent(Bernoulli(logits=logits), len(IMAGE))
        else:
            dist, out["dec_logits"] = Bernoulli(logits=logits), logits
        return {**out, "x": x}, dist, x
    logits = 2.0 * randn(*lead, batch, *VARIABLES, C)
    index = torch.randint(0, C, (batch, *VARIABLES), generator=gen)
    if decoder in ("one_hot", "one_hot_likelihood"):
        x = TF.one_hot(index, C).to(F64)
        dist = OneHotCategorical(logits=logits)
        out["likelihood" if decoder == "one_hot_likelihood" else "dec_class_logits"] = (
            OneHotCategorical(logits=logits) if decoder == "one_hot_likelihood" else logits)
        return {**out, "x": x}, dist, x
    dist = Categorical(logits=logits)
    if decoder == "categorical_likelihood":
        out["likelihood"] = Independent(Categorical(logits=logits), 1)
    else:
        out["dec_class_logits"] = logits
    return {**out, "x": index}, dist, index


def _per_point(values, lead):
    """(*lead, B, *data) values: summed over the data, averaged over the z-samples -> (B,)."""
    total = values.reshape(*values.shape[:lead], -1).sum(-1)
    return total.mean(0) if lead == 2 else total


def _reference(decoder, out, dist, x):
    """Per-point float64 references from torch.distributions: encoder, prior and decoder entropies and the ELBO."""
    lead = DECODERS[decoder][0]
    q = Normal(out["enc_mean"], (0.5 * out["enc_logvar"]).exp())
    prior = Normal(torch.zeros(H, dtype=F64), (0.5 * out["prior_logvar"]).exp())
    batch = out["enc_mean"].shape[0]
    elbo = _per_point(dist.log_prob(x), lead) - kl_divergence(q, prior).sum(-1)
    return {"encoder": q.entropy().sum(-1), "prior": prior.entropy().sum().expand(batch),
            "decoder": _per_point(dist.entropy(), lead), "elbo": elbo}


def _batches(decoder, seed=0, sizes=SIZES):
    gen = torch.Generator().manual_seed(seed)
    steps = [_step(decoder, b, gen) for b in sizes]
    outs = [out for out, _, _ in steps]
    refs = [_reference(decoder, *step) for step in steps]
    return outs, {key: torch.cat([r[key] for r in refs]) for key in refs[0]}


def _metrics(**kwargs):
    metrics = {"decoder": DecoderEntropy(**kwargs), "sum": EntropySumELBO(**kwargs), "elbo": ELBO(**kwargs)}
    for metric in metrics.values():
        metric.set_dtype(F64)
    return metrics


def _expected(ref, weight=None):
    """The metrics' values from the per-point references: their (weighted) means over the kept points."""
    w = torch.ones_like(ref["elbo"]) if weight is None else weight.to(F64)
    keep = w > 0

    def mean(v):
        return (v[keep] * w[keep]).sum() / w[keep].sum()

    terms = {key: mean(ref[key]) for key in ("encoder", "prior", "decoder")}
    return {"decoder": terms["decoder"], "elbo": mean(ref["elbo"]),
            "sum": {**terms, "sum": terms["encoder"] - terms["prior"] - terms["decoder"]}}


def _assert_close(actual, expected, tol=1e-10):
    if isinstance(expected, dict):
        assert set(actual) == set(expected)
        for key in expected:
            _assert_close(actual[key], expected[key], tol)
        return
    assert actual.dtype == expected.dtype
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_metrics_match_torch_distributions_over_batches_of_different_sizes(decoder):
    outs, ref = _batches(decoder)
    metrics = _metrics()
    for out in outs:
        for metric in metrics.values():
            metric.update(out)
    expected = _expected(ref)
    for name, metric in metrics.items():
        _assert_close(metric.compute(), expected[name])
        assert metric.num_skipped_batches == 0
    # the same numbers as the functional API over the same points
    n = ref["elbo"].shape[0]
    for name, function in (("decoder", F.decoder_entropy), ("elbo", F.elbo)):
        total = sum(function(**{k: v for k, v in out.items() if k != "loss"}, reduction="sum") for out in outs)
        _assert_close(metrics[name].compute(), total / n)
    total = sum(F.entropy_sum(**{k: v for k, v in out.items() if k != "loss"}, reduction="sum") for out in outs)
    _assert_close(metrics["sum"].compute()["sum"], total / n)


@pytest.mark.parametrize("decoder", ["logits", "class_indices"])
def test_float32_inputs_in_default_float32_states(decoder):
    outs, ref = _batches(decoder)
    metrics = {"decoder": DecoderEntropy(), "sum": EntropySumELBO(), "elbo": ELBO()}
    for out in outs:
        single = {k: v.float() if v.is_floating_point() else v for k, v in out.items()}
        for metric in metrics.values():
            metric.update(single)
    expected = _expected(ref)
    for name, metric in metrics.items():
        value = metric.compute()
        for key, exp in (value.items() if isinstance(value, dict) else [(None, value)]):
            want = expected[name] if key is None else expected[name][key]
            assert exp.dtype == torch.float32
            torch.testing.assert_close(exp, want.float(), rtol=1e-5, atol=1e-4)


def _weights(sizes, seed=3):
    """Per-batch float weights in [0.5, 2), with two points of weight 0 in the first batch."""
    gen = torch.Generator().manual_seed(seed)
    weights = [0.5 + 1.5 * torch.rand(b, generator=gen, dtype=F64) for b in sizes]
    weights[0][[1, 3]] = 0.0
    return weights


def _poison(out, decoder, point):
    """NaN in the decoder parameters (and a Bernoulli decoder's data) of one point."""
    bad = dict(out)
    key = PARAMS[decoder]
    params = bad[key].clone()
    params[(slice(None), point) if DECODERS[decoder][0] == 2 else point] = float("nan")
    bad[key] = params
    if bad["x"].is_floating_point() and key != "dec_class_logits":
        bad["x"] = bad["x"].clone()
        bad["x"][point] = float("nan")
    return bad


@pytest.mark.parametrize("nan_strategy", ["skip", "error"])
@pytest.mark.parametrize("decoder", TENSOR_DECODERS)
def test_weights_drop_points_of_weight_zero_also_when_they_hold_nan(decoder, nan_strategy):
    outs, ref = _batches(decoder)
    weights = _weights(SIZES)
    outs[0] = _poison(outs[0], decoder, 3)  # a point of weight 0
    metrics = _metrics(nan_strategy=nan_strategy)
    for out, weight in zip(outs, weights, strict=True):
        for metric in metrics.values():
            metric.update(out, weight=weight)
    expected = _expected(ref, torch.cat(weights))
    for name, metric in metrics.items():
        _assert_close(metric.compute(), expected[name])
        assert metric.num_skipped_batches == 0


@pytest.mark.parametrize("decoder", ["logits", "sampled_class_indices", "one_hot"])
def test_bool_weights_keep_the_points_they_mark(decoder):
    outs, ref = _batches(decoder)
    keep = [torch.rand(b, generator=torch.Generator().manual_seed(b)) > 0.3 for b in SIZES]
    metrics = _metrics()
    for out, weight in zip(outs, keep, strict=True):
        for metric in metrics.values():
            metric.update(out, weight=weight)
    expected = _expected(ref, torch.cat(keep))
    for name, metric in metrics.items():
        _assert_close(metric.compute(), expected[name])


@pytest.mark.parametrize("decoder", TENSOR_DECODERS)
def test_nan_in_a_kept_point_skips_the_batch_or_names_the_key(decoder):
    outs, ref = _batches(decoder)
    bad = _poison(outs[1], decoder, 2)
    for name, metric in _metrics().items():
        for out in (outs[0], bad, outs[2]):
            metric.update(out)
        assert metric.num_skipped_batches == 1
        n0 = SIZES[0]
        kept = {key: torch.cat([v[:n0], v[n0 + SIZES[1]:]]) for key, v in ref.items()}
        with pytest.warns(UserWarning, match="skipped 1 batch"):
            _assert_close(metric.compute(), _expected(kept)[name])
    # the first input holding NaN: ELBO checks `x` before the decoder, the others the decoder before `x`
    nan_x = bad["x"].is_floating_point() and not bool(torch.isfinite(bad["x"]).all())
    for metric_type in (DecoderEntropy, EntropySumELBO, ELBO):
        key = "x" if metric_type is ELBO and nan_x else PARAMS[decoder]
        with pytest.raises(ValueError, match=_exact(
                f"{metric_type.__name__}.update() got non-finite values (NaN or Inf) in `{key}`. Expected finite"
                " tensors; use nan_strategy='skip' to skip such batches instead.")):
            metric_type(nan_strategy="error").update(bad)


def _stack(outs, decoder):
    """One step output of several batches: the tensors concatenated along the batch, the priors as rows."""
    lead = DECODERS[decoder][0]
    stacked = {"x": torch.cat([o["x"] for o in outs]),
               "enc_mean": torch.cat([o["enc_mean"] for o in outs]),
               "enc_logvar": torch.cat([o["enc_logvar"] for o in outs]),
               "prior_logvar": torch.cat([o["prior_logvar"].expand(o["enc_mean"].shape[0], H) for o in outs])}
    key = PARAMS[decoder]
    stacked[key] = torch.cat([o[key] for o in outs], dim=lead - 1)
    return stacked


@pytest.mark.parametrize("decoder", TENSOR_DECODERS)
def test_stacked_batches_with_weights_equal_one_update_per_batch(decoder):
    """As the EntropyMonitor reduces many batches at once: concatenated, a NaN batch given weight 0."""
    outs, ref = _batches(decoder)
    bad = _poison(_batches(decoder, seed=9, sizes=(4,))[0][0], decoder, slice(None))
    stacked = _stack([outs[0], bad, outs[1], outs[2]], decoder)
    weight = torch.cat([torch.ones(SIZES[0]), torch.zeros(4), torch.ones(SIZES[1] + SIZES[2])]).bool()
    expected = _expected(ref)
    for name, metric in _metrics().items():
        metric.update(stacked, weight=weight)
        _assert_close(metric.compute(), expected[name])
        assert metric.num_skipped_batches == 0


@pytest.mark.parametrize("decoder", ["sampled_logits", "class_indices", "categorical_likelihood"])
def test_merge_state_equals_one_metric_over_all_batches(decoder):
    outs, ref = _batches(decoder)
    first, second = _metrics(), _metrics()
    for out in outs[:2]:
        for metric in first.values():
            metric.update(out)
    for metric in second.values():
        metric.update(outs[2])
    expected = _expected(ref)
    for name in first:
        first[name].merge_state(second[name])
        _assert_close(first[name].compute(), expected[name])


def test_a_step_output_with_every_name_feeds_the_metrics():
    """A categorical step output with ``data_dim``, ``loss`` and the other names of the vocabulary it lacks."""
    outs, ref = _batches("class_indices", sizes=(6,))
    out = {**outs[0], "data_dim": 4, "dec_sq_residual": torch.full((6,), float("nan"))}
    expected = _expected(ref)
    for name, metric in _metrics().items():
        metric.update(out)
        _assert_close(metric.compute(), expected[name])
    # a given `elbo` is used as it is, whatever the decoder
    metric = ELBO()
    metric.update({**out, "elbo": torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])})
    assert metric.compute() == 3.5


def test_elbo_equals_gaussian_elbo_for_a_gaussian_decoder():
    gen = torch.Generator().manual_seed(4)
    out = {"x": torch.randn(5, 4, generator=gen, dtype=F64), "enc_mean": torch.randn(5, H, generator=gen, dtype=F64),
           "enc_logvar": torch.randn(5, H, generator=gen, dtype=F64) - 1.0,
           "dec_mean": torch.randn(S, 5, 4, generator=gen, dtype=F64),
           "dec_logvar": torch.randn(S, 5, 4, generator=gen, dtype=F64) - 1.0}
    q = Normal(out["enc_mean"], (0.5 * out["enc_logvar"]).exp())
    p = Normal(torch.zeros(H, dtype=F64), torch.ones(H, dtype=F64))
    ll = Normal(out["dec_mean"], (0.5 * out["dec_logvar"]).exp()).log_prob(out["x"]).sum(-1).mean(0)
    expected = (ll - kl_divergence(q, p).sum(-1)).mean()
    collection = MetricCollection({"elbo": ELBO(), "gaussian": GaussianELBO(), "sum": EntropySumELBO()})
    collection.set_dtype(F64)
    collection.update(out)
    values = collection.compute()
    _assert_close(values["elbo"], expected)
    _assert_close(values["gaussian"], expected)
    names = {name for metric in collection.values() for name in metric.metric_state}
    assert {"elbo_sum", "elbo_count", "elbo_skipped", "gaussian_elbo_sum"} <= names


def test_elbo_is_exported_and_plots():
    assert lightning_entropy_vae.ELBO is ELBO and "ELBO" in lightning_entropy_vae.__all__
    import lightning_entropy_vae.metrics as metrics

    assert "ELBO" in metrics.__all__
    import matplotlib.pyplot as plt

    metric = ELBO()
    values = [metric(elbo=torch.full((3,), v)) for v in (-3.0, -2.0, -1.0)]
    fig, ax = metric.plot(values)
    assert [float(y) for y in ax.lines[0].get_ydata()] == [-3.0, -2.0, -1.0]
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ errors
def _z(*shape):
    return torch.zeros(shape)


_ENC = {"enc_mean": _z(2, 1), "enc_logvar": _z(2, 1)}
_GAUSSIAN_ELBO = ("GaussianELBO.update() computes the ELBO of a Gaussian decoder, but got a {} decoder ({}). Call {}()"
                  " for it, or elbo(), which reads the decoder from the inputs. As a metric: ELBO, which reads the"
                  " decoder the same way.")
_BERNOULLI = ("Bernoulli", "`dec_logits`, `dec_probs` or a Bernoulli `likelihood`", "bernoulli_elbo")
_CATEGORICAL = ("categorical", "`dec_class_logits` or a Categorical `likelihood`", "categorical_elbo")
_PROFILED = ("EntropySumELBO.update() with profile_decoder_variance=True is defined for Gaussian decoders only (the"
             " decoder entropy at the optimal variance, the mean squared residual), but got a non-Gaussian decoder:"
             " {}. The entropy sum of a Bernoulli or categorical decoder needs no decoder variance: use entropy_sum()"
             " and elbo(). As metrics: EntropySumELBO() without profiling, and ELBO.")
ERRORS = {
    "GaussianELBO with logits": (
        lambda: GaussianELBO().update(x=_z(2, 3), **_ENC, dec_logits=_z(2, 3)),
        _GAUSSIAN_ELBO.format(*_BERNOULLI),
    ),
    "GaussianELBO with probabilities": (
        lambda: GaussianELBO().update(x=_z(2, 3), **_ENC, dec_probs=_z(2, 3) + 0.5),
        _GAUSSIAN_ELBO.format(*_BERNOULLI),
    ),
    "GaussianELBO with class indices": (
        lambda: GaussianELBO().update(x=torch.zeros(2, 3, dtype=torch.long), **_ENC, dec_class_logits=_z(2, 3, 4)),
        _GAUSSIAN_ELBO.format(*_CATEGORICAL),
    ),
    "GaussianELBO with a Categorical likelihood": (
        lambda: GaussianELBO().update(x=torch.zeros(2, 3, dtype=torch.long), **_ENC,
                                      likelihood=Categorical(logits=_z(2, 3, 4))),
        _GAUSSIAN_ELBO.format(*_CATEGORICAL),
    ),
    "profiled sum with logits": (
        lambda: EntropySumELBO(profile_decoder_variance=True).update(x=_z(2, 3), enc_logvar=_z(2, 1),
                                                                     dec_logits=_z(2, 3)),
        _PROFILED.format("`dec_logits`"),
    ),
    "profiled sum with a Bernoulli likelihood": (
        lambda: EntropySumELBO(profile_decoder_variance=True).update(enc_logvar=_z(2, 1),
                                                                     likelihood=Bernoulli(logits=_z(2, 3))),
        _PROFILED.format("a Bernoulli `likelihood`"),
    ),
    "ELBO with two decoders": (
        lambda: ELBO().update(x=_z(2, 3), **_ENC, dec_mean=_z(2, 3), dec_logvar=_z(), dec_logits=_z(2, 3)),
        "Expected one decoder: `dec_mean`/`dec_logvar` (Gaussian), `dec_logits` or `dec_probs` (Bernoulli),"
        " `dec_class_logits` (categorical) or a `likelihood`, but got `dec_mean`, `dec_logvar`, `dec_logits`.",
    ),
    "DecoderEntropy with two decoders": (
        lambda: DecoderEntropy().update(dec_logits=_z(2, 3), dec_probs=_z(2, 3)),
        "Expected one decoder: `dec_mean`/`dec_logvar` (Gaussian), `dec_logits` or `dec_probs` (Bernoulli),"
        " `dec_class_logits` (categorical) or a `likelihood`, but got `dec_logits`, `dec_probs`.",
    ),
    "EntropySumELBO batch sizes": (
        lambda: EntropySumELBO().update(enc_logvar=_z(2, 1), dec_logits=_z(3, 4)),
        "Expected one batch size B across the inputs of EntropySumELBO.update(), but got `encoder`: 2, `decoder`: 3.",
    ),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_error_message(name):
    call, message = ERRORS[name]
    with pytest.raises(ValueError, match=_exact(message)):
        call()


def test_elbo_without_a_decoder_names_every_decoder():
    with pytest.raises(ValueError, match="^" + re.escape(
            "ELBO.update() needs a decoder (`dec_mean` and `dec_logvar`, `dec_logits`, `dec_probs`,"
            " `dec_class_logits` or a `likelihood`), but got `x`, `enc_mean`, `enc_logvar`. Return the encoder and"
            " decoder statistics from your step, for example:")):
        ELBO().update(x=_z(2, 3), **_ENC)


def test_gaussian_elbo_takes_a_given_elbo_with_any_decoder():
    metric = GaussianELBO()
    metric.update(x=_z(2, 3), **_ENC, dec_logits=_z(2, 3), elbo=torch.tensor([-1.0, -2.0]))
    assert metric.compute() == -1.5
