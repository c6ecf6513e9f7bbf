"""docs/results.md holds a row of every claim of benchmarks/reproduce.py, its figures exist, and ``--only`` keeps
the other claims' rows (or refuses to write). No benchmark runs here: the claims are replaced by stubs."""

import importlib.util
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results.md"


def _load_reproduce():
    spec = importlib.util.spec_from_file_location("benchmarks_reproduce", ROOT / "benchmarks" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reproduce = _load_reproduce()


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    threads = torch.get_num_threads()  # reproduce.main() sets one thread for its runs
    yield
    torch.set_num_threads(threads)


def test_every_claim_has_a_row():
    text = RESULTS.read_text()
    rows = reproduce.parse_rows(text)
    assert {r["key"] for r in rows} == set(reproduce.CLAIMS)
    claims = [r["claim"] for r in rows]
    assert len(claims) == len(set(claims)), "a claim row appears twice"
    assert all(r["verdict"] in ("match", "short") for r in rows)
    # the parsed rows give back the file's table lines exactly (escaped pipes included)
    lines = text.splitlines()
    first = lines.index(reproduce.HEADER) + 2
    assert [reproduce.table_line(r) for r in rows] == lines[first:first + len(rows)]


def test_every_linked_figure_exists():
    links = re.findall(r"\]\(([^)#\s]+)\)", RESULTS.read_text())
    local = [link for link in links if "://" not in link]
    assert any(link.startswith("figures/") for link in local)
    missing = [link for link in local if not (RESULTS.parent / link).is_file()]
    assert not missing, f"docs/results.md links files that are not under docs/: {missing}"


# A results file as reproduce.py writes it, written out by hand: one or two rows per claim, a pipe inside a cell.
KEPT_OURS = {key: f"ours-{key}-kept" for key in reproduce.CLAIMS}
STOPPING_SECTION = "<!-- stopping-benchmark:begin -->\n## Stopping benchmark\n\ntable\n<!-- stopping-benchmark:end -->"
FRESH_SECTION = "<!-- stopping-fresh:begin -->\n### Fresh families\n\ntable\n<!-- stopping-fresh:end -->"


def _results_file(path: Path, keys) -> Path:
    lines = ["# Reproducing the paper's results", "", "header text", "",
             "| claim | paper | ours | verdict | why | command | `--only` |", "|---|---|---|---|---|---|---|"]
    for key in keys:
        lines.append(f"| claim {key} | paper \\|x\\| | {KEPT_OURS[key]} | **match** | why | `cmd {key}` | {key} |")
        if key == "gaps":
            lines.append(f"| claim {key} 2 | paper | {KEPT_OURS[key]}-2 | **short** | why 2 | `cmd {key}` | {key} |")
    lines += ["", "## Figures from these runs", "", STOPPING_SECTION, "", FRESH_SECTION, ""]
    path.write_text("\n".join(lines))
    return path


@pytest.fixture
def stub_ppca(monkeypatch):
    """``claim_ppca`` replaced by a stub that records its calls and returns one fresh row."""
    calls = []

    def claim_ppca(args, out):
        calls.append(out)
        return [{"claim": "claim ppca", "paper": "paper", "ours": "ours-ppca-fresh", "verdict": "short",
                 "why": "why", "command": "`cmd ppca`"}]

    monkeypatch.setattr(reproduce, "claim_ppca", claim_ppca)
    return calls


def test_only_keeps_the_rows_of_the_claims_it_does_not_run(tmp_path, stub_ppca):
    path = _results_file(tmp_path / "results.md", reproduce.CLAIMS)
    code = reproduce.main(["--only", "ppca", "--results", str(path), "--out", str(tmp_path / "out")])
    assert code == 0
    assert len(stub_ppca) == 1
    text = path.read_text()
    assert "ours-ppca-fresh" in text
    assert KEPT_OURS["ppca"] not in text
    # every other claim's rows, in the order of CLAIMS, with the cell's pipe still escaped
    positions = [text.index(f"| {KEPT_OURS[key]} |") for key in reproduce.CLAIMS if key != "ppca"]
    assert positions == sorted(positions)
    assert f"| {KEPT_OURS['gaps']}-2 | **short** |" in text
    assert text.count("paper \\|x\\|") == len(reproduce.CLAIMS) - 1
    assert STOPPING_SECTION in text and FRESH_SECTION in text


def test_only_refuses_to_write_without_a_row_it_must_keep(tmp_path, stub_ppca, capsys):
    path = _results_file(tmp_path / "results.md", [key for key in reproduce.CLAIMS if key != "gaps"])
    before = path.read_bytes()
    code = reproduce.main(["--only", "ppca", "--results", str(path), "--out", str(tmp_path / "out")])
    assert code != 0
    assert path.read_bytes() == before
    assert stub_ppca == []  # refused before running any claim
    assert "no row of gaps" in capsys.readouterr().err


def test_only_refuses_a_file_without_a_claim_table(tmp_path, stub_ppca, capsys):
    path = tmp_path / "results.md"
    path.write_text("# Reproducing the paper's results\n\n" + STOPPING_SECTION + "\n")
    before = path.read_bytes()
    code = reproduce.main(["--only", "ppca", "--results", str(path), "--out", str(tmp_path / "out")])
    assert code != 0
    assert path.read_bytes() == before
    assert stub_ppca == []
    assert "no row of gaps, manifolds, fixed, spread, streaming, collapse, stopping" in capsys.readouterr().err


def test_markdown_only_rewrites_the_file_from_its_own_rows(tmp_path, stub_ppca):
    path = _results_file(tmp_path / "results.md", reproduce.CLAIMS)
    assert reproduce.main(["--markdown-only", "--results", str(path), "--out", str(tmp_path / "out")]) == 0
    assert stub_ppca == []
    text = path.read_text()
    assert all(f"| {KEPT_OURS[key]} |" in text for key in reproduce.CLAIMS)
    assert STOPPING_SECTION in text and FRESH_SECTION in text
