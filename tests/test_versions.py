"""The Lightning versions the package supports: declared in pyproject.toml, checked when the ``pytorch_lightning``
namespace is imported. An older ``pytorch_lightning`` is simulated by a fake module in a subprocess (installing 1.x
would replace the environment's Lightning)."""

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _import_with_fake_pytorch_lightning(version: str) -> subprocess.CompletedProcess:
    """Import ``lightning_entropy_vae.pytorch_lightning`` in a fresh interpreter whose ``pytorch_lightning`` is a fake
    module of ``version`` (with a ``Callback`` class, as every version has)."""
    code = textwrap.dedent(f"""
        import sys, types
        fake = types.ModuleType("pytorch_lightning")
        fake.__version__ = {version!r}
        fake.Callback = type("Callback", (), {{}})
        sys.modules["pytorch_lightning"] = fake
        import lightning_entropy_vae.pytorch_lightning as m
        print("subclass", issubclass(m.EntropyMonitor, fake.Callback), issubclass(m.EntropyConvergence, fake.Callback))
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_old_pytorch_lightning_is_an_import_error_naming_the_version_needed():
    result = _import_with_fake_pytorch_lightning("1.9.5")  # lightning-bolts 0.7.0's pin
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: ")
    assert "pytorch_lightning>=2.2" in last and "found pytorch_lightning 1.9.5" in last
    assert "lightning_entropy_vae import EntropyMonitor" in last  # what to use instead


@pytest.mark.parametrize("version", ["2.2.0", "2.6.6", "3.0.0rc1"])
def test_supported_pytorch_lightning_imports(version):
    result = _import_with_fake_pytorch_lightning(version)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "subclass True True"  # the callbacks also subclass its Callback


def test_the_installed_pytorch_lightning_imports():
    pl = pytest.importorskip("pytorch_lightning")
    from lightning_entropy_vae.pytorch_lightning import EntropyMonitor

    assert issubclass(EntropyMonitor, pl.Callback)


def _requirement(text: str, name: str) -> str:
    found = re.findall(rf'"{re.escape(name)}(>=[^",\]]+)"', text)
    assert found, f"{name} is not declared"
    return found[0]


def test_pyproject_declares_the_lightning_versions_checked_at_import():
    text = (ROOT / "pyproject.toml").read_text()
    assert _requirement(text, "lightning") == ">=2.2"
    assert _requirement(text, "pytorch-lightning") == ">=2.2"
    docs = (ROOT / "docs" / "recipes.md").read_text()
    assert "lightning>=2.2" in docs and "pytorch-lightning>=2.2" in docs
