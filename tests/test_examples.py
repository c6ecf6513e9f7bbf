"""Every script in examples/ runs with ``--smoke`` (as Pyro's tests/test_examples.py does).

A new example must be added to ``EXAMPLES`` (and to examples/README.md), or
``test_every_example_is_listed`` fails. The scripts live in the repository, not in the wheel; they run
in a subprocess that imports the same ``lightning_entropy_vae`` as this test (the installed wheel in CI).
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import package_env

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"

# (script, extra arguments, regex that stdout must match, modules the script needs beyond the tests')
EXAMPLES = [
    ("quickstart.py", [], r"train\s+-?\d+\.\d+\s+-?\d+\.\d+", ()),
    ("vae_kinds.py", [], r"vae0\s+train.*\d+\.\d+%\s+-?\d+\.\d+", ()),
    ("linear_vae_ppca.py", [], r"entropy sum \(no sampling\)\s+-?\d+\.\d+\s+rel\. error", ()),
    ("streaming_bic.py", [], r"right H by BIC, entropy sum\s+\d+\.\d+% \(100\.00%\)", ()),
    ("streaming_bic.py", ["--setup", "legacy"], r"legacy set-up.*S = 1;", ()),
    ("elbo_estimation.py", [], r"100\s+-?\d+\.\d+.*\d+\.\dx\s+-?\d+\.\d+", ()),
    ("toy_manifolds.py", [], r"manifold\s+100\s+10\s+-?\d+\.\d+.*%", ()),
    ("posterior_collapse.py", [], r"Active latents: EntropyMonitor \(val\) \d+", ()),
    ("early_stopping.py", [], r"EntropyConvergence\(\)\s+\d+", ()),
    ("plain_pytorch.py", [], r"\n\s+2\s+-?\d+\.\d+\s+-?\d+\.\d+", ()),
    ("cli.py", [], r"train\s+ELBO\s+-?\d+\.\d+\s+entropy sum", ("jsonargparse",)),
]


def test_examples_folder_is_present():
    """The examples live in the repository, not the wheel: the tests run from a checkout."""
    assert EXAMPLES_DIR.is_dir(), f"expected the examples at {EXAMPLES_DIR}"


def _env() -> dict[str, str]:
    return package_env(WANDB_MODE="offline", WANDB_SILENT="true", MPLBACKEND="Agg")


@pytest.mark.parametrize(("script", "args", "expected", "needs"), EXAMPLES,
                         ids=[" ".join([e[0], *e[1]]) for e in EXAMPLES])
def test_example_runs(script, args, expected, needs, tmp_path):
    for module in needs:  # in the [examples] extra; a missing one is a broken environment, not a skip
        assert importlib.util.find_spec(module), f"{script} needs {module}: pip install '.[examples]'"
    command = [sys.executable, str(EXAMPLES_DIR / script), "--smoke", "--threads", "1",
               "--out", str(tmp_path / "out"), *args]
    done = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert re.search(expected, done.stdout), f"{script}: no {expected!r} in:\n{done.stdout[-3000:]}"


def test_every_example_is_listed():
    scripts = {path.name for path in EXAMPLES_DIR.glob("*.py") if not path.name.startswith("_")}
    listed = {script for script, *_ in EXAMPLES}
    assert scripts == listed, f"add to EXAMPLES {sorted(scripts - listed)}, remove {sorted(listed - scripts)}"
    readme = (EXAMPLES_DIR / "README.md").read_text()
    missing = [s for s in sorted(scripts) if s not in readme]
    assert missing == [], f"add a line to examples/README.md for {missing}"


@pytest.mark.parametrize("script", sorted({e[0] for e in EXAMPLES}))
def test_example_exposes_main(script, monkeypatch):
    """``main(argv=None) -> dict`` is what benchmarks import; importing a script must not run it."""
    monkeypatch.syspath_prepend(str(EXAMPLES_DIR))  # as `python examples/<script>` sees it: _common.py is there
    spec = importlib.util.spec_from_file_location(f"example_{script[:-3]}", EXAMPLES_DIR / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    signature = inspect.signature(module.main)
    assert list(signature.parameters) == ["argv"] and signature.parameters["argv"].default is None
    assert module.__doc__ and "--smoke" in module.__doc__, f"{script}'s docstring should show its commands"


def _load(script: str, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES_DIR))
    spec = importlib.util.spec_from_file_location(f"example_{script[:-3]}", EXAMPLES_DIR / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
