"""Tests of the TorchMetrics metrics: accumulation equals the functional API on the concatenated data."""

import math
import pickle
import re
import sys
import warnings

import matplotlib
import pytest
import torch
from torchmetrics import MetricCollection

import lightning_entropy_vae.functional as F
from lightning_entropy_vae.functional._checks import VOCABULARY
from lightning_entropy_vae.metrics import (
    DecoderEntropy,
    EncoderEntropy,
    EntropySumELBO,
    GaussianELBO,
    PosteriorCollapse,
    PriorEntropy,
)
from lightning_entropy_vae.outputs import VAEOutput

matplotlib.use("Agg")

H, D, S = 3, 4, 2
SIZES = (5, 8, 3)
F64 = torch.float64
VARIANTS = ["vae1", "vae2", "vae3", "sampled", "sampled_scalar"]


def _batches(variant="vae2", seed=0, sizes=SIZES):
    """Random float64 step outputs; scalar variances and the prior change between batches, as in training."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(shape, generator=gen, dtype=F64)

    batches = []
    for b in sizes:
        sampled = variant.startswith("sampled")
        out = {
            "x": randn(b, D),
            "enc_mean": randn(b, H),
            "enc_logvar": randn(b, H) - 1.0,
            "dec_mean": randn(S, b, D) if sampled else randn(b, D),
        }
        if variant in ("vae3", "sampled"):
            out["dec_logvar"] = randn(*out["dec_mean"].shape) - 1.0
        else:
            out["dec_logvar"] = torch.nn.Parameter(randn() - 1.0)
        if variant == "vae2":
            out["prior_logvar"] = torch.nn.Parameter(randn(H))
        batches.append(out)
    return batches


def _concat(batches):
    """One step output for all batches: per-batch scalars and priors become per-sample rows."""
    sizes = [b["x"].shape[0] for b in batches]
    cat = {k: torch.cat([b[k] for b in batches]) for k in ("x", "enc_mean", "enc_logvar")}
    cat["dec_mean"] = torch.cat([b["dec_mean"] for b in batches], dim=-2)
    if batches[0]["dec_logvar"].dim() == 0:
        cat["dec_logvar"] = torch.cat(
            [b["dec_logvar"].detach().expand(n, 1) for b, n in zip(batches, sizes, strict=True)]
        )
    else:
        cat["dec_logvar"] = torch.cat([b["dec_logvar"] for b in batches], dim=-2)
    if "prior_logvar" in batches[0]:
        cat["prior_logvar"] = torch.cat(
            [b["prior_logvar"].detach().expand(n, H) for b, n in zip(batches, sizes, strict=True)]
        )
    return cat


def _metrics():
    metrics = {
        "encoder": EncoderEntropy(),
        "prior": PriorEntropy(),
        "decoder": DecoderEntropy(),
        "sum": EntropySumELBO(),
        "elbo": GaussianELBO(),
        "collapse": PosteriorCollapse(latent_dim=H),
    }
    for metric in metrics.values():
        metric.set_dtype(F64)
    return metrics


def _functional(out):
    """What each metric should report for the data in ``out``, from the functional API."""
    return {
        "encoder": F.encoder_entropy(**out),
        "prior": F.prior_entropy(**out),
        "decoder": F.decoder_entropy(**out),
        "sum": {
            "encoder": F.encoder_entropy(**out),
            "prior": F.prior_entropy(**out),
            "decoder": F.decoder_entropy(**out),
            "sum": F.entropy_sum(**out),
        },
        "elbo": F.gaussian_elbo(**out),
        "collapse": F.posterior_collapse(**out),
    }


def _assert_equal(actual, expected, atol=1e-10):
    if isinstance(expected, dict):
        for key, value in expected.items():
            _assert_equal(actual[key], value, atol)
        return
    if expected.dtype == torch.bool or not expected.is_floating_point():
        assert torch.equal(actual, expected)
        return
    torch.testing.assert_close(actual, expected.detach(), rtol=0, atol=atol)


@pytest.mark.parametrize("variant", VARIANTS)
def test_metrics_equal_functional_on_concatenated_data(variant):
    batches = _batches(variant)
    metrics = _metrics()
    for out in batches:
        for metric in metrics.values():
            metric.update(out)
    expected = _functional(_concat(batches))
    for name, metric in metrics.items():
        value = metric.compute()
        _assert_equal(value, expected[name])
        if isinstance(value, dict):
            value = value["latent_entropy" if name == "collapse" else "sum"]
        assert value.dtype == F64
    # the collapse metric's extra count
    assert metrics["collapse"].compute()["num_collapsed"] == H - expected["collapse"]["num_active"]


def test_gaussian_elbo_uses_a_given_elbo():
    gen = torch.Generator().manual_seed(1)
    elbos = [torch.randn(n, generator=gen, dtype=F64) for n in SIZES]
    metric = GaussianELBO()
    metric.set_dtype(F64)
    for elbo, out in zip(elbos, _batches(), strict=True):
        metric.update({**out, "elbo": elbo})  # the given per-sample ELBO wins over the pieces
    _assert_equal(metric.compute(), torch.cat(elbos).mean())


@pytest.mark.parametrize("variant", ["vae2", "sampled"])
def test_forward_returns_the_batch_value_and_accumulates(variant):
    batches = _batches(variant, seed=2)
    forwarded, updated = _metrics(), _metrics()
    for out in batches:
        expected = _functional(out)
        for name in forwarded:
            _assert_equal(forwarded[name](out), expected[name])
            updated[name].update(out)
    for name in forwarded:
        _assert_equal(forwarded[name].compute(), updated[name].compute())
    _assert_equal(forwarded["sum"].compute(), _functional(_concat(batches))["sum"])


def test_reset():
    first, second = _batches(seed=3), _batches(seed=4)
    metrics = _metrics()
    for out in first:
        for metric in metrics.values():
            metric.update(out)
    for metric in metrics.values():
        metric.reset()
        assert metric.num_skipped_batches == 0
    for out in second:
        for metric in metrics.values():
            metric.update(out)
    expected = _functional(_concat(second))
    for name, metric in metrics.items():
        _assert_equal(metric.compute(), expected[name])
        assert all(state.dtype == F64 for state in metric.metric_state.values())  # set_dtype survives reset


def test_pickling():
    batches = _batches(seed=5)
    metrics = _metrics()
    for metric in metrics.values():
        metric.update(batches[0])
    for name, metric in metrics.items():
        restored = pickle.loads(pickle.dumps(metric))
        _assert_equal(restored.compute(), metric.compute())
        for out in batches[1:]:  # a restored metric keeps accumulating
            restored.update(out)
        _assert_equal(restored.compute(), _functional(_concat(batches))[name])


def _unused_vocabulary(metric, out):
    """Every name of the vocabulary that ``metric`` does not read and ``out`` lacks, with a value it cannot use."""
    return {k: torch.full((7,), float("nan")) for k in VOCABULARY if k not in metric._inputs and k not in out}


def test_update_takes_a_mapping_a_vaeoutput_or_keywords_and_ignores_unused_vocabulary():
    out = _batches(seed=6)[0]
    expected = _functional(out)
    typed = VAEOutput(loss=torch.tensor(1.0), **out)
    for name in expected:
        unused = _unused_vocabulary(_metrics()[name], out)
        assert {"dec_sq_residual", "data_dim"} & set(unused) or name in ("sum", "decoder"), name
        extra = {**out, "loss": torch.tensor(1.0), **unused}  # a NaN in a key the metric read would show
        for inputs in (out, extra, typed):
            positional, keywords, called = _metrics()[name], _metrics()[name], _metrics()[name]
            positional.update(inputs)
            keywords.update(**inputs)
            _assert_equal(called(inputs), expected[name])
            for metric in (positional, keywords, called):
                _assert_equal(metric.compute(), expected[name])
                assert metric.num_skipped_batches == 0
    # keywords override the mapping
    metric = EncoderEntropy()
    metric.set_dtype(F64)
    metric.update(out, enc_logvar=out["enc_logvar"] + 1.0)
    _assert_equal(metric.compute(), F.encoder_entropy(enc_logvar=out["enc_logvar"] + 1.0))


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"prior_log_var": "keyword"}, "got unexpected keyword argument(s) `prior_log_var` (did you mean"
                                       " `prior_logvar`?)."),
        ({"prior_log_var": "mapping"}, "got unexpected keyword argument(s) `prior_log_var` (did you mean"
                                       " `prior_logvar`?)."),
        ({"mu": "mapping"}, "got unexpected keyword argument(s) `mu` (did you mean `enc_mean`?)."),
        ({"logvar": "keyword", "z": "keyword"}, "got unexpected keyword argument(s) `logvar` (did you mean"
                                                " `enc_logvar`?), `z` (not needed)."),
        ({"step": "mapping"}, "got unexpected keyword argument(s) `step`."),
    ],
)
def test_unknown_keys_are_a_type_error_with_the_closest_name(inputs, message):
    """A misspelt key raises as the functional API does (which raises the same for ``prior_log_var``)."""
    out = _batches(seed=6)[0]
    value = torch.zeros(H, dtype=F64)
    keywords = {k: value for k, where in inputs.items() if where == "keyword"}
    mapping = {**out, **{k: value for k, where in inputs.items() if where == "mapping"}}
    with pytest.raises(TypeError, match="^entropy_sum\\(\\) " + re.escape(message)):
        F.entropy_sum(**mapping, **keywords)
    for metric in _metrics().values():
        owner = f"{type(metric).__name__}.update()"
        before = {k: v.clone() for k, v in metric.metric_state.items()}
        with pytest.raises(TypeError, match="^" + re.escape(f"{owner} {message} Expected ") + ".* or names of the"
                                            " vocabulary.$"):
            metric.update(mapping, **keywords)
        with pytest.raises(TypeError, match=re.escape(message)):
            metric(mapping, **keywords)
        for key, state in metric.metric_state.items():
            torch.testing.assert_close(state, before[key], rtol=0, atol=0)


def test_update_rejects_a_weight_key_and_non_string_keys():
    out = _batches(seed=6)[0]
    metric = EntropySumELBO()
    with pytest.raises(TypeError, match=re.escape("takes `weight` as a keyword argument, update(outputs, weight=...),"
                                                  " but got it as a key of the mapping.")):
        metric.update({**out, "weight": torch.ones(5)})
    with pytest.raises(TypeError, match="takes a mapping with str keys"):
        metric.update({**out, 3: torch.ones(5)})
    with pytest.raises(TypeError, match="but got a positional tuple"):
        metric.update(tuple(out.values()))


def test_metric_collection_of_all_metrics():
    batches = _batches(seed=7)
    collection = MetricCollection(list(_metrics().values()))
    # every metric keeps its own compute group: no two metrics share a state name
    assert len(collection.compute_groups) == 6
    for out in batches:
        collection.update(out)
    result = collection.compute()
    expected = _functional(_concat(batches))
    _assert_equal(result["EncoderEntropy"], expected["encoder"])
    _assert_equal(result["PriorEntropy"], expected["prior"])
    _assert_equal(result["DecoderEntropy"], expected["decoder"])
    _assert_equal(result["GaussianELBO"], expected["elbo"])
    _assert_equal({k: result[k] for k in ("encoder", "prior", "decoder", "sum")}, expected["sum"])
    _assert_equal({k: result[k] for k in expected["collapse"]}, expected["collapse"])
    collection.reset()
    _assert_equal(collection(batches[0])["sum"], _functional(batches[0])["sum"]["sum"])


def _poisoned(out):
    bad = dict(out)
    bad["enc_logvar"] = out["enc_logvar"].clone()
    bad["enc_logvar"][0, 0] = float("nan")
    bad["dec_logvar"] = torch.nn.Parameter(out["dec_logvar"].detach() * float("inf"))
    bad["prior_logvar"] = out["prior_logvar"].detach() * float("nan")  # PriorEntropy reads only this
    bad["elbo"] = torch.full((out["x"].shape[0],), float("nan"), dtype=F64)  # GaussianELBO reads it first
    return bad


def test_nan_strategy_skip():
    good = _batches(seed=8)
    bad = _poisoned(good[1])
    metrics = _metrics()
    for name, metric in metrics.items():
        metric.update(good[0])
        before = {k: v.clone() for k, v in metric.metric_state.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing is said per batch
            metric.update(bad)
        assert metric.num_skipped_batches == 1, name
        for key, state in metric.metric_state.items():  # the running sums are unchanged
            if not key.endswith("_skipped"):
                torch.testing.assert_close(state, before[key], rtol=0, atol=0)
        metric.update(good[2])
        with pytest.warns(UserWarning, match=f"{type(metric).__name__} skipped 1 batch"):
            value = metric.compute()
        _assert_equal(value, _functional(_concat([good[0], good[2]]))[name])
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the warning is given once
            metric.compute()


def test_profiled_entropy_sum():
    for variant in ("vae1", "sampled", "vae2"):
        batches = _batches(variant, seed=9)
        metric = EntropySumELBO(profile_decoder_variance=True)
        metric.set_dtype(F64)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # profiling is the answer to a fixed variance: no warning
            for out in batches:
                metric.update({**out, "dec_logvar": out["dec_logvar"].detach()})
        cat = _concat(batches)
        result = metric.compute()
        _assert_equal(result["sum_profiled"], F.profiled_entropy_sum(**cat))
        _assert_equal(result["decoder_profiled"], F.profiled_decoder_entropy(**cat))
        _assert_equal(result["sum"], F.entropy_sum(**cat))
        sigma2 = F.optimal_decoder_variance(x=cat["x"], dec_mean=cat["dec_mean"])
        _assert_equal(result["sum_profiled"], F.entropy_sum(**{**cat, "dec_logvar": sigma2.log()}))
    # precomputed squared residuals, (B, 1) log-variances and data_dim instead of x and dec_mean
    out = _batches("vae1", seed=10)[0]
    residual = (out["x"] - out["dec_mean"]).square().sum(-1)
    b = residual.shape[0]
    light = {
        "enc_logvar": out["enc_logvar"],
        "dec_logvar": out["dec_logvar"].detach().expand(b, 1),
        "dec_sq_residual": residual,
        "data_dim": D,
    }
    metrics = [EntropySumELBO(profile_decoder_variance=True) for _ in range(2)]
    for metric, inputs in zip(metrics, (out, light), strict=True):
        metric.set_dtype(F64)
        metric.update(inputs)
    _assert_equal(metrics[1].compute(), metrics[0].compute())


def _fixed_variance_warnings(metric, dec_logvar, x):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            metric.update(enc_logvar=torch.zeros(4, H), dec_logvar=dec_logvar, x=x)
    return [w for w in caught if "does not require grad" in str(w.message)]


@pytest.mark.parametrize("metric_class", [DecoderEntropy, EntropySumELBO])
def test_fixed_variance_warning(metric_class):
    x, fixed = torch.zeros(4, D), torch.tensor(-1.0)
    caught = _fixed_variance_warnings(metric_class(), fixed, x)
    assert len(caught) == 1
    assert "Use EntropySumELBO(profile_decoder_variance=True)" in str(caught[0].message)
    assert _fixed_variance_warnings(metric_class(), fixed.reshape(1), x)  # a (1,) tensor is a scalar too
    assert not _fixed_variance_warnings(metric_class(), torch.nn.Parameter(fixed), x)
    assert not _fixed_variance_warnings(metric_class().eval(), fixed, x)
    assert not _fixed_variance_warnings(metric_class(warn_fixed_variance=False), fixed, x)
    assert not _fixed_variance_warnings(metric_class(), torch.zeros(4, D), x)  # a VAE-3 output, detached
    with torch.inference_mode():
        inference = torch.tensor(-1.0)
    assert not _fixed_variance_warnings(metric_class(), inference, x)
    # in training mode again after an evaluation, the warning can still come (once)
    metric = metric_class().eval()
    assert not _fixed_variance_warnings(metric, fixed, x)
    assert len(_fixed_variance_warnings(metric.train(), fixed, x)) == 1


def test_posterior_collapse_plot():
    import matplotlib.pyplot as plt

    metric = PosteriorCollapse(latent_dim=5)
    gen = torch.Generator().manual_seed(11)
    enc_mean = torch.randn(64, 5, generator=gen) * torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0])
    enc_logvar = torch.tensor([-4.0, -3.0, 0.0, -2.0, 0.0]).expand(64, 5)
    metric.update(enc_mean=enc_mean, enc_logvar=enc_logvar)
    fig, ax = metric.plot()
    assert isinstance(fig, matplotlib.figure.Figure)
    bars = ax.containers[0]
    assert len(bars) == 5
    heights = torch.tensor([bar.get_height() for bar in bars], dtype=torch.float32)
    torch.testing.assert_close(heights, metric.compute()["latent_entropy"])
    assert ax.get_title() == "active latents: 3 of 5"
    # onto a given axis, with given values
    fig2, ax2 = plt.subplots()
    assert metric.plot(metric.compute(), ax=ax2) == (fig2, ax2)
    assert len(ax2.containers[0]) == 5
    plt.close("all")


def test_scalar_metrics_plot():
    import matplotlib.pyplot as plt

    out = _batches("vae1", seed=12)[0]
    for metric in (EncoderEntropy(), PriorEntropy(), DecoderEntropy(), GaussianELBO()):
        values = [metric(out) for _ in range(3)]
        fig, ax = metric.plot()
        assert isinstance(fig, matplotlib.figure.Figure)
        torch.testing.assert_close(torch.tensor(ax.lines[0].get_ydata(), dtype=torch.float32), metric.compute()[None])
        fig, ax = metric.plot(values)
        torch.testing.assert_close(torch.tensor(ax.lines[0].get_ydata(), dtype=torch.float32), torch.stack(values))
    plt.close("all")


@pytest.mark.parametrize("profiled", [False, True])
def test_entropy_sum_plot(profiled):
    """One line per key of ``compute()``: its value, or its values over the steps given."""
    import matplotlib.pyplot as plt

    metric = EntropySumELBO(profile_decoder_variance=profiled)
    values = [metric(out) for out in _batches("vae1", seed=12)]
    keys = ["encoder", "prior", "decoder", "sum"] + (["decoder_profiled", "sum_profiled"] if profiled else [])
    fig, ax = metric.plot()
    assert isinstance(fig, matplotlib.figure.Figure)
    assert [line.get_label() for line in ax.lines] == keys
    computed = metric.compute()
    for key, line in zip(keys, ax.lines, strict=True):
        torch.testing.assert_close(torch.tensor(line.get_ydata(), dtype=torch.float32), computed[key][None])
    _, ax2 = plt.subplots()
    assert metric.plot(values, ax=ax2)[1] is ax2
    for key, line in zip(keys, ax2.lines, strict=True):
        torch.testing.assert_close(torch.tensor(line.get_ydata(), dtype=torch.float32),
                                   torch.stack([v[key] for v in values]))
    plt.close("all")


def test_plot_without_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # `import matplotlib.pyplot` raises ImportError
    for metric in _metrics().values():
        message = f"{type(metric).__name__}.plot() needs matplotlib, which is not installed: pip install"
        with pytest.raises(ImportError, match=re.escape(message + " 'lightning-entropy-vae[examples]'.")):
            metric.plot()


def test_states_are_named_sums_distinct_across_metrics():
    """Every state has its own name across the package's metrics, and merging two metrics adds their states."""
    batches = _batches(seed=14)
    names = []
    for name, metric in _weight_metrics().items():
        if name not in ("sum_profiled", "elbo_given"):  # the same classes as "sum" and "elbo"
            names += list(metric.metric_state)
        first, second, both = _weight_metrics()[name], _weight_metrics()[name], _weight_metrics()[name]
        first.update(batches[0])
        for out in batches[1:]:
            second.update(out)
        for out in batches:
            both.update(out)
        first.merge_state(second)
        for key, state in both.metric_state.items():
            torch.testing.assert_close(first.metric_state[key], state, rtol=0, atol=1e-12)
        _assert_equal(first.compute(), both.compute())
        # updates go on into the merged states; a clone's updates stay its own
        clone = first.clone()
        for metric in (first, both):
            metric.update(batches[0])
        _assert_equal(first.compute(), both.compute())
        _assert_equal(clone.compute(), _functional(_concat(batches))[name.split("_")[0]])
    assert len(names) == len(set(names)) > 6 * 3  # more than a sum, a count and a skipped count per metric


def test_metrics_take_distributions():
    """posterior/prior/likelihood objects instead of tensors, full covariances included."""
    gen = torch.Generator().manual_seed(13)

    def randn(*shape):
        return torch.randn(shape, generator=gen, dtype=F64)

    batches = []
    for b in SIZES:
        factor = randn(b, H, H)
        batches.append(
            {
                "x": randn(b, D),
                "posterior": torch.distributions.MultivariateNormal(
                    randn(b, H), factor @ factor.transpose(-1, -2) + torch.eye(H, dtype=F64)
                ),
                "prior": torch.distributions.Normal(randn(H), randn(H).exp()),
                "likelihood": torch.distributions.Independent(
                    torch.distributions.Normal(randn(S, b, D), randn(S, b, D).exp()), 1
                ),
            }
        )
    metrics = _metrics()
    for out in batches:
        for metric in metrics.values():
            metric.update(out)
    expected = {name: [] for name in metrics}
    for out in batches:
        for name, value in _functional(out).items():
            expected[name].append(value)
    weights = torch.tensor(SIZES, dtype=F64) / sum(SIZES)  # a mean over points: batches weigh by their size
    for name in ("encoder", "prior", "decoder", "elbo"):
        _assert_equal(metrics[name].compute(), (torch.stack(expected[name]) * weights).sum())
    for key in ("encoder", "prior", "decoder", "sum"):
        _assert_equal(
            metrics["sum"].compute()[key], sum(w * e[key] for w, e in zip(weights, expected["sum"], strict=True))
        )
    collapse = metrics["collapse"].compute()
    for key in ("latent_entropy", "prior_latent_entropy", "latent_kl"):
        weighted = sum(w * e[key] for w, e in zip(weights, expected["collapse"], strict=True))
        _assert_equal(collapse[key], weighted)



# ------------------------------------------------------------------------------------------ weight
def _weight_metrics():
    """Every metric, EntropySumELBO also with profiling and GaussianELBO also fed a given ``elbo``."""
    metrics = {
        **_metrics(),
        "sum_profiled": EntropySumELBO(profile_decoder_variance=True),
        "elbo_given": GaussianELBO(),
    }
    for metric in metrics.values():
        metric.set_dtype(F64)
    return metrics


def _fed(name, out, elbo):
    """What metric ``name`` of :func:`_weight_metrics` is given: the step output, with ``elbo`` for "elbo_given"."""
    return {**out, "elbo": elbo} if name == "elbo_given" else out


def _elbos(batches, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(out["x"].shape[0], generator=gen, dtype=F64) for out in batches]


@pytest.mark.parametrize("variant", VARIANTS)
def test_weight_of_ones_changes_nothing(variant):
    batches = _batches(variant, seed=20)
    elbos = _elbos(batches, seed=21)
    plain, weighted, forwarded = _weight_metrics(), _weight_metrics(), _weight_metrics()
    for out, elbo in zip(batches, elbos, strict=True):
        ones = torch.ones(out["x"].shape[0], dtype=torch.bool)
        for name in plain:
            inputs = _fed(name, out, elbo)
            plain[name].update(inputs)
            weighted[name].update(inputs, weight=ones)
            # forward passes the weight on: the batch value is the unweighted one
            _assert_equal(forwarded[name](inputs, weight=ones), _weight_metrics()[name](inputs))
    for name in plain:
        _assert_equal(weighted[name].compute(), plain[name].compute())
        _assert_equal(forwarded[name].compute(), plain[name].compute())
        assert weighted[name].num_skipped_batches == 0


def _nonfinite(out):
    """``out`` with NaN or Inf in every key some metric reads (the prior only where it is learnable)."""
    bad = {key: value.detach().clone() for key, value in out.items()}
    bad["x"][0] = float("nan")
    bad["enc_mean"][:, 0] = float("nan")
    bad["enc_logvar"][-1] = float("inf")
    bad["dec_mean"][..., 1, :] = float("nan")
    bad["dec_logvar"] = bad["dec_logvar"] * float("nan")
    if "prior_logvar" in bad:
        bad["prior_logvar"] = bad["prior_logvar"] * float("nan")
    return bad


@pytest.mark.parametrize("dtype", [torch.bool, F64])
@pytest.mark.parametrize("variant", ["vae2", "vae3", "sampled"])
def test_points_of_weight_zero_are_dropped_even_when_not_finite(variant, dtype):
    """One update of two concatenated batches, the second non-finite and of weight 0: the first batch alone."""
    good, other = _batches(variant, seed=22, sizes=(5, 4))
    bad = _nonfinite(other)
    cat = _concat([good, bad])
    good_elbo, bad_elbo = _elbos([good, bad], seed=23)
    cat_elbo = torch.cat([good_elbo, torch.full_like(bad_elbo, float("nan"))])
    weight = torch.tensor([True] * 5 + [False] * 4).to(dtype)
    alone, weighted = _weight_metrics(), _weight_metrics()
    for name in alone:
        # the second batch on its own is not finite for every metric (the standard prior excepted)
        probe = _weight_metrics()[name]
        probe.update(_fed(name, _concat([bad]), torch.full_like(bad_elbo, float("nan"))))
        assert probe.num_skipped_batches == (0 if name == "prior" and variant != "vae2" else 1), name
        alone[name].update(_fed(name, good, good_elbo))
        weighted[name].update(_fed(name, cat, cat_elbo), weight=weight)
    for name in alone:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no batch was skipped: nothing to warn about
            value = weighted[name].compute()
        assert weighted[name].num_skipped_batches == 0, name
        _assert_equal(value, alone[name].compute())


def test_float_weights_give_weighted_means():
    batches = _batches("vae2", seed=24)
    elbos = _elbos(batches, seed=25)
    gen = torch.Generator().manual_seed(26)
    weights = [2.0 * torch.rand(out["x"].shape[0], generator=gen, dtype=F64) for out in batches]
    weights[1][2] = 0.0
    metric, elbo_metric, given = EntropySumELBO(), GaussianELBO(), GaussianELBO()
    for m in (metric, elbo_metric, given):
        m.set_dtype(F64)
    for out, elbo, weight in zip(batches, elbos, weights, strict=True):
        metric.update(out, weight=weight)
        elbo_metric.update(out, weight=weight)
        given.update({**out, "elbo": elbo}, weight=weight)
    # by hand, per point, in float64: each batch's own scalar decoder variance and (H,) prior
    log_2pi_e = math.log(2 * math.pi * math.e)
    encoder = [0.5 * (log_2pi_e + out["enc_logvar"]).sum(-1) for out in batches]
    prior = [(0.5 * (log_2pi_e + out["prior_logvar"].detach())).sum().expand(out["x"].shape[0]) for out in batches]
    decoder = [(0.5 * D * (log_2pi_e + out["dec_logvar"].detach())).expand(out["x"].shape[0]) for out in batches]
    w = torch.cat(weights)

    def weighted_mean(values):
        return (w * torch.cat(values)).sum() / w.sum()

    result = metric.compute()
    _assert_equal(result["encoder"], weighted_mean(encoder))
    _assert_equal(result["prior"], weighted_mean(prior))
    _assert_equal(result["decoder"], weighted_mean(decoder))
    _assert_equal(
        result["sum"],
        weighted_mean([e - p - d for e, p, d in zip(encoder, prior, decoder, strict=True)]),
    )
    _assert_equal(given.compute(), weighted_mean(elbos))
    per_point = [F.gaussian_elbo(**out, reduction="none") for out in batches]
    _assert_equal(elbo_metric.compute(), weighted_mean(per_point))
    # and not the unweighted mean
    assert not torch.allclose(result["sum"], F.entropy_sum(**_concat(batches)))


_WEIGHT_TYPE = "Expected `weight` to be a bool or floating-point tensor of shape (B,), but got {}."
_WEIGHT_SHAPE = "Expected `weight` of shape (B,) = (5,), one per data point, but got {}."


@pytest.mark.parametrize(
    ("weight", "error", "message"),
    [
        ([1.0] * 5, TypeError, _WEIGHT_TYPE.format("list")),
        (torch.ones(5, dtype=torch.long), TypeError, _WEIGHT_TYPE.format("dtype torch.int64")),
        (torch.ones(5, dtype=torch.uint8), TypeError, _WEIGHT_TYPE.format("dtype torch.uint8")),
        (torch.ones(6, dtype=torch.bool), ValueError, _WEIGHT_SHAPE.format("(6,)")),
        (torch.ones(5, 1), ValueError, _WEIGHT_SHAPE.format("(5, 1)")),
        (torch.ones(()), ValueError, _WEIGHT_SHAPE.format("()")),
    ],
)
def test_wrong_weight_is_an_error(weight, error, message):
    out = _batches("vae2", seed=27)[0]
    assert out["x"].shape[0] == 5
    for name, metric in _weight_metrics().items():
        inputs = _fed(name, out, torch.zeros(5, dtype=F64))
        metric.update(inputs)
        before = {k: v.clone() for k, v in metric.metric_state.items()}
        with pytest.raises(error, match="^" + re.escape(message) + "$"):
            metric.update(inputs, weight=weight)
        for key, state in metric.metric_state.items():
            torch.testing.assert_close(state, before[key], rtol=0, atol=0)


# ------------------------------------------------------------------------------ collapse, no points
@pytest.mark.parametrize("criterion", ["entropy", "kl", "active_units"])
def test_posterior_collapse_without_points_is_nan_and_flags_nothing(criterion):
    out = _batches("vae2", seed=28)[0]
    skipped = PosteriorCollapse(latent_dim=H, criterion=criterion)
    for bad in ({**out, "enc_mean": out["enc_mean"] * float("nan")}, _nonfinite(out)):
        skipped.update(bad)
    with pytest.warns(UserWarning, match="PosteriorCollapse skipped 2 batch"):
        every_update_skipped = skipped.compute()
    # points of weight 0 only: nothing seen either, and nothing skipped
    dropped = PosteriorCollapse(latent_dim=H, criterion=criterion)
    dropped.update(out, weight=torch.zeros(out["x"].shape[0], dtype=torch.bool))
    assert dropped.num_skipped_batches == 0
    for result in (every_update_skipped, dropped.compute()):
        assert torch.isnan(result["num_active"]) and torch.isnan(result["num_collapsed"])
        statistics = ["latent_entropy", "prior_latent_entropy", "latent_kl", "latent_mean_variance"]
        if criterion == "entropy":
            statistics.append("entropy_threshold")
        else:
            assert "entropy_threshold" not in result
        for key in statistics:
            assert result[key].shape == (H,) and torch.isnan(result[key]).all(), key
        assert result["collapsed"].dtype == torch.bool and result["collapsed"].shape == (H,)
        assert not result["collapsed"].any()

def test_importing_the_package_does_not_import_lightning():
    """Metric and function users do not pay for Lightning; the callback is imported on first access."""
    import subprocess
    import sys

    code = (
        "import sys, lightning_entropy_vae as m\n"
        "assert 'lightning' not in sys.modules and 'lightning.pytorch' not in sys.modules\n"
        "assert m.EntropyMonitor.__name__ == 'EntropyMonitor' and 'lightning.pytorch' in sys.modules\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_the_import_paths_of_0_1_0_still_work(monkeypatch):
    """EntropySumELBO moved to metrics.entropy_sum and gaussian_entropy to functional.gaussian; the 0.1.0 paths
    still import them, and a metric pickled under the old path loads."""
    from lightning_entropy_vae.functional.entropy import gaussian_entropy
    from lightning_entropy_vae.metrics import EntropySumELBO
    from lightning_entropy_vae.metrics.entropy import EntropySumELBO as OldPath

    assert OldPath is EntropySumELBO and gaussian_entropy is F.gaussian_entropy
    metric = EntropySumELBO()
    metric.update(enc_logvar=torch.zeros(4, 2), dec_logvar=torch.zeros(()), x=torch.zeros(4, 3))
    # a pickle written when the class lived in metrics.entropy names that module
    with monkeypatch.context() as patch:
        patch.setattr(EntropySumELBO, "__module__", "lightning_entropy_vae.metrics.entropy")
        data = pickle.dumps(metric)
    assert b"metrics.entropy_sum" not in data and b"lightning_entropy_vae.metrics.entropy" in data
    restored = pickle.loads(data)
    assert torch.equal(restored.compute()["sum"], metric.compute()["sum"])
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        import lightning_entropy_vae.metrics.entropy as old

        old.Nope  # noqa: B018


def _as_one_vector(metric):
    """The pickle state of ``metric`` as it was with one state vector ``{prefix}_totals`` (its states, in order)."""
    state = metric.__getstate__()
    old = f"{metric._prefix}_totals"
    names = list(metric._defaults)
    state[old] = torch.cat([state.pop(name).reshape(-1) for name in names])
    for key in ("_defaults", "_reductions", "_persistent"):
        table = {k: v for k, v in state[key].items() if k not in names}
        table[old] = torch.zeros_like(state[old]) if key == "_defaults" else state[key][names[0]]
        state[key] = table
    return state


def test_a_pickle_with_one_state_vector_loads_into_named_states():
    batches = _batches(seed=15)
    for name, metric in _weight_metrics().items():
        metric.update(_fed(name, batches[0], torch.zeros(5, dtype=F64)))
        restored = type(metric).__new__(type(metric))
        restored.__setstate__(_as_one_vector(metric))
        assert list(restored.metric_state) == list(metric.metric_state), name
        _assert_equal(restored.compute(), metric.compute())
        for out in batches[1:]:  # it keeps accumulating, resets and merges as a new one
            restored.update(out)
            metric.update(out)
        _assert_equal(restored.compute(), metric.compute())
        restored.reset()
        assert all(state.dtype == F64 and not state.any() for state in restored.metric_state.values())
    broken = _as_one_vector(EncoderEntropy())
    broken["encoder_entropy_totals"] = torch.zeros(5)
    with pytest.raises(ValueError, match=re.escape("Expected a pickled `encoder_entropy_totals` of 4 values for"
                                                   " EncoderEntropy, but got 5.")):
        EncoderEntropy.__new__(EncoderEntropy).__setstate__(broken)


def test_the_metric_modules_import_each_other_without_a_cycle():
    """Imports between the modules of ``metrics/`` (also those inside functions) form no cycle."""
    import ast
    from pathlib import Path

    import lightning_entropy_vae.metrics as package

    folder = Path(package.__file__).parent
    graph = {}
    for path in folder.glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lightning_entropy_vae.metrics."):
                imported.add(node.module.rsplit(".", 1)[1])
        graph[path.stem] = imported
    assert "_entropy_inputs" in graph["entropy_sum"] and "entropy" in graph["__init__"]

    def reaches(start, target, seen):
        return any(n == target or (n not in seen and reaches(n, target, seen | {n})) for n in graph.get(start, ()))

    assert [m for m in graph if reaches(m, m, set())] == []
