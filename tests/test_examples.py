"""Every script in examples/ runs with tiny arguments and returns, prints and writes what it promises.

As in Pyro's tests/test_examples.py, a new example must be added to ``EXAMPLES`` (and to examples/README.md),
or ``test_every_example_is_listed`` fails. Each script's ``main(argv)`` runs in this process (``--smoke`` and
options that shrink it further), so the test reads the dict it returns next to what it prints and the files it
writes. The scripts live in the repository, not in the wheel; they import the same ``lightning_entropy_vae`` as
this test.
"""

from __future__ import annotations

import csv
import importlib.util
import inspect
import math
import os
import random
import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.decomposition import PCA

from lightning_entropy_vae.data import make_ppca_data

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
PNG = b"\x89PNG\r\n\x1a\n"


def _finite(*values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def _assert_png(path: Path) -> None:
    assert path.is_file(), f"{path.name} was not written"
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 5_000, f"{path.name} is not a drawn PNG figure ({len(data)} bytes)"


def _rel_gap(elbo: float, entropy_sum: float, data_dim: int) -> float:
    """EntropyMonitor's relative gap: (ELBO - sum) / max(|sum|, 0.1 D)."""
    return (elbo - entropy_sum) / max(abs(entropy_sum), 0.1 * data_dim)


def _table_rows(printed: str, first: str) -> list[list[str]]:
    return [line.split() for line in printed.splitlines() if line.split()[:1] == [first]]


def _check_entropy_keys(logged: dict, data_dim: int, prefix: str = "") -> None:
    """The logged entropies add up to the sum; gap and rel_gap follow from the logged ELBO and sum."""
    for stage in ("train", "val"):
        v = {k[len(f"{prefix}{stage}/"):]: x for k, x in logged.items() if k.startswith(f"{prefix}{stage}/")}
        assert _finite(v["elbo"], v["sum"], v["encoder"], v["prior"], v["decoder"]), v
        assert v["sum"] == pytest.approx(v["encoder"] - v["prior"] - v["decoder"], abs=1e-3)
        assert v["gap"] == pytest.approx(v["elbo"] - v["sum"], abs=1e-3)
        assert v["rel_gap"] == pytest.approx(_rel_gap(v["elbo"], v["sum"], data_dim), abs=1e-4)
        assert v["abs_rel_gap"] == pytest.approx(abs(v["rel_gap"]), abs=1e-6)
        assert v["active_latents"] == int(v["active_latents"]) and v["skipped_batches"] == 0


# ------------------------------------------------------------------------------ one check per example
def check_quickstart(r: dict, out: Path, printed: str) -> None:
    assert set(r) == {f"{s}/{k}" for s in ("train", "val") for k in ("elbo", "sum", "rel_gap", "active_latents")}
    for stage in ("train", "val"):
        elbo, total, gap = r[f"{stage}/elbo"], r[f"{stage}/sum"], r[f"{stage}/rel_gap"]
        assert _finite(elbo, total, gap)
        assert gap == pytest.approx(_rel_gap(elbo, total, 64), abs=2e-4)
        assert 0 <= r[f"{stage}/active_latents"] <= 8
        (row,) = _table_rows(printed, stage)  # the printed table shows the returned numbers
        assert [float(row[1]), float(row[2])] == [round(elbo, 2), round(total, 2)]
    with (out / "metrics.csv").open(newline="") as f:
        rows = [row for row in csv.DictReader(f) if row.get("entropy/train/sum")]
    assert len(rows) == 2  # one per epoch of --smoke
    assert float(rows[-1]["entropy/train/sum"]) == pytest.approx(r["train/sum"], abs=1e-3)
    _assert_png(out / "elbo_vs_entropy_sum.png")


def check_vae_kinds(r: dict, out: Path, printed: str) -> None:
    assert list(r) == ["vae0", "vae1", "vae2", "vae3"]
    for kind, logged in r.items():
        _check_entropy_keys(logged, data_dim=10)
        # only the fixed-variance VAE-0 gets the entropy sum at the profiled variance
        assert ("train/sum_profiled" in logged) == (kind == "vae0"), kind
        with (out / kind / "metrics.csv").open(newline="") as f:
            assert sum(1 for row in csv.DictReader(f) if row.get("entropy/val/sum")) == 2, kind
        (row,) = [row for row in _table_rows(printed, kind) if row[1] == "train"]
        assert float(row[2]) == round(logged["train/elbo"], 3)
    assert _finite(r["vae0"]["train/sum_profiled"])
    _assert_png(out / "rel_gap_per_kind.png")


def check_linear_vae_ppca(r: dict, out: Path, printed: str) -> None:
    x = make_ppca_data(500, data_dim=10, latent_dim=3, noise_std=0.5, seed=0).double().numpy()  # --smoke sizes
    reference = PCA(n_components=3).fit(x).score(x)
    assert r["ppca_log_likelihood"] == pytest.approx(reference, rel=1e-6)
    elbo, total = r["elbo"], r["entropy_sum"]
    assert r["rel_error_elbo"] == pytest.approx(abs(elbo - reference) / abs(reference), rel=1e-6)
    assert r["rel_error_sum"] == pytest.approx(abs(total - reference) / abs(reference), rel=1e-6)
    assert r["rel_gap"] == pytest.approx((elbo - total) / abs(total), rel=1e-6)
    # a lower bound of the maximum log-likelihood, already close to it after the 300 smoke steps
    assert elbo < reference + 0.05
    assert r["rel_error_elbo"] < 0.05 and r["rel_error_sum"] < 0.15
    assert re.search(rf"pPCA max\. log-likelihood \(sklearn\)\s+{reference:.4f}\n", printed)
    _assert_png(out / "linear_vae_ppca.png")


def _check_streaming(r: dict, out: Path, setup: str, samples: int) -> None:
    assert (r["setup"], r["samples"], r["dims"], r["latents"]) == (setup, samples, [6, 2, 4], [2, 4, 6])
    assert r["own_stream"] == (setup == "paper")
    batch = 10
    for s in range(3):
        for name in ("elbo", "sum"):
            assert 0.0 <= r[f"right_share_{name}"][s] <= 1.0
            # BIC = k ln B - 2 B F: the BIC's std is 2B times the per-point value's
            assert r[f"point_std_{name}"][s] == pytest.approx(r[f"bic_std_{name}"][s] / (2 * batch), rel=1e-4)
            settle = r[f"settle_{name}"][s]
            assert settle is None or 0 <= settle <= 100 - r["settle_run"]  # 100 batches per smoke segment
        # the entropy sum's BIC is far smoother than the sampled ELBO's, for every model
        assert all(ratio > 3 for ratio in r["std_ratio"][s]), r["std_ratio"][s]
        assert r["std_ratio_right"][s] == r["std_ratio"][s][r["latents"].index(r["dims"][s])]
    _assert_png(out / "streaming_bic.png")


def check_streaming_bic(r: dict, out: Path, printed: str) -> None:
    _check_streaming(r, out, "paper", samples=10)  # --smoke caps the paper's 100 samples at 10


def check_streaming_bic_legacy(r: dict, out: Path, printed: str) -> None:
    _check_streaming(r, out, "legacy", samples=1)


def check_elbo_estimation(r: dict, out: Path, printed: str) -> None:
    assert list(r) == ["ppca/vae1", "ppca/vae3"]
    for key, e in r.items():
        assert e["sizes"] == [10, 100, 1000] and e["held_out"] == 2000 and e["iwae_samples"] == 50
        for name in ("elbo", "sum", "iwae"):
            values = np.array(e["estimates"][name])
            assert values.shape == (3, 3)  # sizes x --smoke's 3 repeats
            np.testing.assert_allclose(e[f"{name}_mean"], values.mean(1), rtol=1e-5)
        iwae = np.array(e["estimates"]["iwae"])
        assert np.isfinite(iwae[:2]).all() and np.isnan(iwae[2]).all()  # IWAE only for n <= --iwae-max-n (100)
        for i, n in enumerate(e["sizes"]):
            # the entropy sum varies less than the sampled ELBO at every n
            assert e["sum_std"][i] < e["elbo_std"][i], (key, n)
            assert e["std_ratio"][n] == pytest.approx(e["elbo_std"][i] / e["sum_std"][i], rel=1e-4)
        assert e["point_std_sum"] < e["point_std_elbo"]
        assert e["us_per_point"]["single"] > 0 and e["us_per_point"]["iwae"] > 0
    _assert_png(out / "elbo_estimation.png")


def check_toy_manifolds(r: dict, out: Path, printed: str) -> None:
    assert {name: list(per_kind) for name, per_kind in r.items()} == {"circle": ["vae1", "vae3"],
                                                                      "manifold": ["vae1", "vae3"]}
    for name, per_kind in r.items():
        for v in per_kind.values():
            elbo, total = v["elbo"], v["sum"]
            assert _finite(elbo, total) and v["data_dim"] == {"circle": 2, "manifold": 100}[name]
            assert v["abs_gap"] == pytest.approx(elbo - total, rel=1e-6)
            assert v["rel_gap"] == pytest.approx(abs(elbo - total) / abs(elbo), rel=1e-6)  # the paper's
            assert v["floored_gap"] == pytest.approx(abs(_rel_gap(elbo, total, v["data_dim"])), rel=1e-6)
            assert len(v["curve"]) == 2 and _finite(*v["curve"])  # one per --smoke epoch
    _assert_png(out / "toy_manifolds.png")


def check_posterior_collapse(r: dict, out: Path, printed: str) -> None:
    digits = r["digits"]
    entropies = digits["latent_entropy"]
    assert len(entropies) == 8 and _finite(*entropies)  # --smoke: H = 8
    # the paper's criterion: a latent is active when its average encoder entropy is below 1 nat
    assert digits["active"]["entropy"] == sum(e < 1.0 for e in entropies)
    assert digits["monitor_active"] == digits["active"]["entropy"]  # the monitor and the metric agree
    assert all(0 <= n <= 8 for n in digits["active"].values())
    assert list(r["ppca_active"]) == [2] and 0 <= r["ppca_active"][2] <= 8
    assert f"intrinsic dimension k = 2: {r['ppca_active'][2]} active latents" in printed
    _assert_png(out / "latent_entropies.png")
    _assert_png(out / "latent_bars.png")


def check_early_stopping(r: dict, out: Path, printed: str) -> None:
    runs = ["fixed budget", "convergence stop", "stock early stopping"]
    assert list(r) == [*runs, "stop_reason"]
    assert r["fixed budget"]["epochs"] == 3  # --smoke's budget
    for name in runs:
        assert 1 <= r[name]["epochs"] <= 3 and _finite(r[name]["val_elbo"], r[name]["val_rel_gap"]), name
    # EntropyConvergence records a reason exactly when it stopped the run before the budget
    assert (r["stop_reason"] is None) == (r["convergence stop"]["epochs"] == 3)
    assert not list((out / "checkpoints").glob("*.ckpt"))  # each restored checkpoint is removed after use
    _assert_png(out / "early_stopping.png")


def check_plain_pytorch(r: dict, out: Path, printed: str) -> None:
    assert set(r) == {"elbo", "sum", "active", "rel_gap"}
    assert _finite(r["elbo"], r["sum"]) and 0 <= r["active"] <= 16
    assert r["rel_gap"] == pytest.approx(_rel_gap(r["elbo"], r["sum"], 64), rel=1e-6)
    last = _table_rows(printed, "2")[-1]  # the last epoch's printed row
    assert [float(last[1]), float(last[2]), last[4]] == [round(r["elbo"], 2), round(r["sum"], 2), f"{r['active']}/16"]
    _assert_png(out / "plain_pytorch.png")


def check_cli(r: dict, out: Path, printed: str) -> None:
    _check_entropy_keys(r, data_dim=64, prefix="entropy/")
    (log_dir,) = (out / "lightning_logs").iterdir()
    config = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert config["trainer"]["max_epochs"] == 1 and config["trainer"]["limit_train_batches"] == 2  # --smoke
    assert config["trainer"]["callbacks"][0]["class_path"].endswith("EntropyMonitor")
    assert config["model"]["latent_dim"] == 8
    events = list(log_dir.glob("events.out.tfevents.*"))
    assert events and all(path.stat().st_size > 0 for path in events)
    train = rf"train\s+ELBO\s+{r['entropy/train/elbo']:.2f}\s+entropy sum\s+{r['entropy/train/sum']:.2f}\s"
    assert re.search(train, printed), printed


def check_discrete_vaes(r: dict, out: Path, printed: str) -> None:
    assert list(r["settings"]) == ["gray", "binary", "categorical"]
    for name, v in r["settings"].items():
        assert v["seeds"] == [0, 1] and v["eval_epochs"] == [1, 2, 5, 10], name  # --smoke: 2 seeds, 10 epochs
        elbo, total = np.array(v["elbo"]), np.array(v["sum"])
        assert elbo.shape == total.shape == (2, 4) and np.isfinite(elbo).all() and np.isfinite(total).all(), name
        # the paper's relative gap, and the median (two seeds: their mean) and range over seeds
        rel = np.abs(elbo - total) / np.abs(elbo)
        np.testing.assert_allclose(v["rel_gaps"], rel, rtol=1e-6)
        np.testing.assert_allclose(v["rel_gap"]["median"], rel.mean(0), rtol=1e-6)
        np.testing.assert_allclose([v["rel_gap"]["low"], v["rel_gap"]["high"]], [rel.min(0), rel.max(0)], rtol=1e-6)
        logged = np.array(v["logged_rel_gap"])  # EntropyMonitor's entropy/train/rel_gap, one per epoch
        assert logged.shape == (2, 10) and np.isfinite(logged).all() and (np.abs(logged) < 1).all(), name
    # the printed table shows the returned medians (gray digits, last epoch)
    gray = r["settings"]["gray"]
    row = _table_rows(printed, "10")[0]  # the gray table comes first
    assert row[3] == f"{gray['rel_gap']['median'][-1]:.2%}"
    # gray digits: the gap closes from the first recorded epoch to the last, for every seed
    rel = np.array(gray["rel_gaps"])
    assert (rel[:, -1] < rel[:, 0]).all(), rel
    assert gray["rel_gap"]["median"][-1] < 0.5 * gray["rel_gap"]["median"][0]
    s = r["held_out"]
    assert s["sizes"] == [10, 100, 359] and s["held_out"] == 359 and s["iwae_samples"] == 50
    for name in ("elbo", "sum", "iwae"):
        values = np.array(s["estimates"][name])
        assert values.shape == (3, 3) and np.isfinite(values).all()  # sizes x --smoke's 3 repeats
        np.testing.assert_allclose(s[f"{name}_mean"], values.mean(1), rtol=1e-5)
        np.testing.assert_allclose(s[f"{name}_std"], values.std(1, ddof=1), rtol=1e-4)
    # one point's entropy sum varies less than its sampled ELBO (what the spread is made of when n << 359)
    assert s["point_std_sum"] < s["point_std_elbo"], (s["point_std_sum"], s["point_std_elbo"])
    # the IWAE bound is tighter than the ELBO on the same points
    assert s["iwae_mean"][-1] > s["elbo_mean"][-1]
    assert r["figure"] == str(out / "discrete_vaes.png")
    _assert_png(out / "discrete_vaes.png")
    assert (out / "discrete_vaes.json").stat().st_size > 0


# (script, arguments beyond --smoke, check of (returned value, output folder, stdout))
EXAMPLES = [
    ("quickstart.py", [], check_quickstart),
    ("vae_kinds.py", [], check_vae_kinds),
    ("linear_vae_ppca.py", [], check_linear_vae_ppca),
    ("streaming_bic.py", [], check_streaming_bic),
    ("streaming_bic.py", ["--setup", "legacy"], check_streaming_bic_legacy),
    ("elbo_estimation.py", ["--data", "ppca"], check_elbo_estimation),
    ("discrete_vaes.py", [], check_discrete_vaes),
    ("toy_manifolds.py", ["--data", "circle", "manifold"], check_toy_manifolds),
    ("posterior_collapse.py", [], check_posterior_collapse),
    ("early_stopping.py", [], check_early_stopping),
    ("plain_pytorch.py", [], check_plain_pytorch),
    ("cli.py", [], check_cli),
]


def test_examples_folder_is_present():
    """The examples live in the repository, not the wheel: the tests run from a checkout."""
    assert EXAMPLES_DIR.is_dir(), f"expected the examples at {EXAMPLES_DIR}"


def _load(script: str, monkeypatch):
    """Import ``examples/<script>`` as ``python examples/<script>`` sees it (_common.py on the path)."""
    monkeypatch.syspath_prepend(str(EXAMPLES_DIR))
    spec = importlib.util.spec_from_file_location(f"example_{script[:-3]}", EXAMPLES_DIR / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def isolated():
    """The scripts seed the global generators and set ``PL_GLOBAL_SEED``: give both back afterwards."""
    environ, states = dict(os.environ), (random.getstate(), np.random.get_state())
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(states[0])
    np.random.set_state(states[1])
    os.environ.clear()
    os.environ.update(environ)


@pytest.mark.parametrize(("script", "args", "check"), EXAMPLES, ids=[" ".join([e[0], *e[1]]) for e in EXAMPLES])
def test_example_returns_what_it_promises(script, args, check, tmp_path, monkeypatch, capsys, isolated):
    module = _load(script, monkeypatch)
    out = tmp_path / "out"
    result = module.main(["--smoke", "--threads", "1", "--out", str(out), *args])
    check(result, out, capsys.readouterr().out)


def test_every_example_is_listed():
    scripts = {path.name for path in EXAMPLES_DIR.glob("*.py") if not path.name.startswith("_")}
    listed = {script for script, *_ in EXAMPLES}
    assert scripts == listed, f"add to EXAMPLES {sorted(scripts - listed)}, remove {sorted(listed - scripts)}"
    readme = (EXAMPLES_DIR / "README.md").read_text()
    missing = [s for s in sorted(scripts) if s not in readme]
    assert missing == [], f"add a line to examples/README.md for {missing}"


@pytest.mark.parametrize("script", sorted({e[0] for e in EXAMPLES}))
def test_example_runs_as_a_script(script, monkeypatch, capsys):
    """``main(argv=None)`` is what benchmarks import; ``python examples/<script> --help`` reaches its parser."""
    module = _load(script, monkeypatch)
    signature = inspect.signature(module.main)
    assert list(signature.parameters) == ["argv"] and signature.parameters["argv"].default is None
    monkeypatch.setattr(sys, "argv", [str(EXAMPLES_DIR / script), "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(EXAMPLES_DIR / script), run_name="__main__")
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def _linear_vae_entropy_sum(enc_logvar, dec_logvar, data_dim):
    """VAE-1 entropy sum of a linear VAE in float64: 0.5 * sum_h log tau_h^2 - (D / 2) log(2 pi e sigma^2)."""
    import math

    return 0.5 * float(enc_logvar.double().sum()) - 0.5 * data_dim * (math.log(2 * math.pi * math.e)
                                                                     + float(dec_logvar.double()))


@pytest.mark.parametrize("parametrization", ["softplus", "logvar"])
def test_streaming_values_are_taken_before_the_optimizer_step(parametrization, monkeypatch):
    """Batch i is scored by the parameters that saw batches 0 ... i-1 (the pitfall EntropyMonitor guards against)."""
    import torch

    sb = _load("streaming_bic.py", monkeypatch)
    x = torch.randn(3, 20, 10)  # one stream per model, two batches of 10
    torch.manual_seed(0)
    model = sb.LinearVAEs(10, [2, 4, 6], parametrization)
    before = [t.detach().clone() for t in model.logvars()]
    _, sums = sb.train_online(x, model, batch_size=10, lr=0.05, samples=3)
    after_two = [t.detach().clone() for t in model.logvars()]
    torch.manual_seed(0)
    model = sb.LinearVAEs(10, [2, 4, 6], parametrization)
    sb.train_online(x[:, :10], model, batch_size=10, lr=0.05, samples=3)
    after_one = [t.detach() for t in model.logvars()]
    for m, h in enumerate([2, 4, 6]):
        for i, (enc, dec) in enumerate([before, after_one]):
            expected = _linear_vae_entropy_sum(enc[m, :h], dec[m], 10)
            assert abs(float(sums[m, i]) - expected) < 1e-4, (m, i)
        # the parameters after the last step score no batch
        assert abs(float(sums[m, 1]) - _linear_vae_entropy_sum(after_two[0][m, :h], after_two[1][m], 10)) > 1e-3


def test_streaming_settling_offset(monkeypatch):
    import torch

    sb = _load("streaming_bic.py", monkeypatch)
    hits = torch.tensor([1, 0, 1, 1, 1, 0, 1, 1, 1, 1], dtype=torch.bool)
    assert sb.settling_offset(hits, 3) == 2
    assert sb.settling_offset(hits, 4) == 6
    assert sb.settling_offset(hits, 5) is None
    assert sb.settling_offset(hits[:2], 3) is None
    # brute force on random patterns
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        pattern = torch.rand(40, generator=gen) < 0.8
        brute = next((t for t in range(40 - 5 + 1) if pattern[t:t + 5].all()), None)
        assert sb.settling_offset(pattern, 5) == brute


@pytest.mark.parametrize("setting", ["gray", "categorical"])
def test_discrete_vae_step_elbo_matches_torch_distributions(setting, monkeypatch):
    """The ELBO a step returns (BCE or cross-entropy loss, closed-form KL) is the one torch.distributions gives."""
    from torch.distributions import Bernoulli, Categorical, Normal, kl_divergence

    import lightning_entropy_vae.functional as F

    dv = _load("discrete_vaes.py", monkeypatch)
    torch.manual_seed(0)
    if setting == "gray":
        x, model = torch.rand(16, 64), dv.DiscreteVAE((64,), 3, [20], 1e-3)  # gray levels in [0, 1]
    else:
        x, model = torch.randint(6, (16, 12)), dv.DiscreteVAE((12,), 3, [20], 1e-3, classes=6)
    with torch.random.fork_rng(devices=[]):
        out = model.step(x)
    mean, logvar = model.encode(x)
    z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()  # the same draw as the step's
    logits = model.decode(z).double()
    if setting == "gray":
        log_lik = Bernoulli(logits=logits, validate_args=False).log_prob(x.double()).sum(-1)
        key = "dec_logits"
    else:
        log_lik = Categorical(logits=logits).log_prob(x).sum(-1)
        key = "dec_class_logits"
    kl = kl_divergence(Normal(mean.double(), (0.5 * logvar.double()).exp()), Normal(0.0, 1.0)).sum(-1)
    reference = (log_lik - kl).float()
    torch.testing.assert_close(out["elbo"], reference, atol=1e-4, rtol=1e-5)
    assert out[key].shape == ((16, 64) if setting == "gray" else (16, 12, 6))
    # the package's ELBO of the same step output (what EntropyMonitor computes when `elbo` is absent)
    given = {k: out[k] for k in ("x", "enc_mean", "enc_logvar", key)}
    torch.testing.assert_close(F.elbo(**given, reduction="none"), reference, atol=1e-4, rtol=1e-5)


def test_discrete_vaes_sequences(monkeypatch):
    """The HMM token sequences: class indices 0-5, the same for the same seed, and dependent along the sequence."""
    dv = _load("discrete_vaes.py", monkeypatch)
    x = dv.make_sequences(2000, seed=0)
    assert x.shape == (2000, 12) and x.dtype == torch.int64 and int(x.min()) >= 0 and int(x.max()) <= 5
    assert torch.equal(x, dv.make_sequences(2000, seed=0)) and not torch.equal(x, dv.make_sequences(2000, seed=1))
    # sticky hidden states: neighbouring tokens agree more often than tokens six positions apart
    near, far = (x[:, 1:] == x[:, :-1]).float().mean(), (x[:, 6:] == x[:, :-6]).float().mean()
    assert near > far + 0.03, (near, far)


def test_early_stopping_figure_labels_a_run_that_did_not_stop(tmp_path, monkeypatch, isolated):
    """Two epochs, the default gate (10 epochs) and patience 5: no rule can stop, and the figure says so."""
    module = _load("early_stopping.py", monkeypatch)
    legends = []
    save = module.save_figure

    def keep_labels(fig, path):
        legends.append([text.get_text() for text in fig.axes[0].get_legend().get_texts()])
        save(fig, path)

    monkeypatch.setattr(module, "save_figure", keep_labels)
    r = module.main(["--epochs", "2", "--n", "600", "--patience", "5", "--threads", "1", "--out", str(tmp_path)])
    assert legends == [["validation ELBO", "EntropyConvergence(): did not stop (budget end)",
                        "EarlyStopping(val ELBO): did not stop (budget end)"]]
    assert r["stop_reason"] is None
    assert [r[name]["epochs"] for name in ("convergence stop", "stock early stopping")] == [2, 2]
    assert [r[name]["stopped"] for name in ("fixed budget", "convergence stop", "stock early stopping")] == [
        False, False, False]


def test_early_stopping_figure_labels_where_a_rule_stopped(tmp_path, monkeypatch, isolated):
    module = _load("early_stopping.py", monkeypatch)
    history = module.History()
    history.elbo, history.rel_gap = [-30.0, -29.0, -28.5, -28.4, -28.4], [0.1, 0.05, 0.02, 0.01, 0.01]
    runs = {"fixed budget": {"epochs": 5, "stopped": False, "history": history},
            "convergence stop": {"epochs": 3, "stopped": True, "history": history},
            "stock early stopping": {"epochs": 5, "stopped": False, "history": history}}
    assert module.plot(runs, tmp_path / "figure.png") == [
        "validation ELBO", "EntropyConvergence(): stopped after 3 epochs",
        "EarlyStopping(val ELBO): did not stop (budget end)"]
    assert (tmp_path / "figure.png").stat().st_size > 5_000
