"""Reproduce the paper's claims at full size and write ``docs/results.md`` (minutes; not run in CI).

    python benchmarks/reproduce.py                 # everything, default sizes (see --help)
    python benchmarks/reproduce.py --only ppca gaps # some claims
    python benchmarks/reproduce.py --quick         # tiny sizes, to check the script itself

Every number comes from the example scripts in ``examples/`` (their ``main()`` returns it), run here
with the arguments printed in the table, so each row can be re-run on its own.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CLAIMS = ("ppca", "gaps", "fixed", "spread", "streaming", "collapse", "stopping")
#: Per-data settings of the gap claim (the examples' defaults are for pPCA data).
GAP_ARGS = {
    "ppca": [],
    "pca_ring": ["--epochs", "200"],
    "digits": ["--latents", "8", "--hidden", "128", "--epochs", "200"],
}


def example(name: str):
    """Import ``examples/{name}.py`` as ``python examples/{name}.py`` would see it (its folder on the path)."""
    folder = str(ROOT / "examples")
    if folder not in sys.path:
        sys.path.insert(0, folder)  # the scripts share examples/_common.py
    spec = importlib.util.spec_from_file_location(f"examples_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], statistics.median(values), q[2]


def pct(value: float) -> str:
    return f"{100 * value:.2f} %"


def run(name: str, argv: list[str]) -> dict:
    print(f"\n$ python examples/{name}.py {' '.join(argv)}", flush=True)
    return example(name).main(argv)


def cmd(name: str, argv: list[str]) -> str:
    return f"`python examples/{name}.py {' '.join(argv)}`"


# ------------------------------------------------------------------------------------------ claims
def claim_ppca(args, out) -> list[dict]:
    seeds = range(args.seeds)
    runs = [run("linear_vae_ppca", [*args.common, "--seed", str(s)]) for s in seeds]
    err_elbo = [r["rel_error_elbo"] for r in runs]
    err_sum = [r["rel_error_sum"] for r in runs]
    worst = max(max(err_elbo), max(err_sum))
    return [{
        "claim": "Linear VAE: ELBO = entropy sum = pPCA max. log-likelihood",
        "paper": "Fig. 1a: the ELBO is essentially equal to the log-likelihood",
        "ours": f"relative error to scikit-learn's pPCA log-likelihood over {len(runs)} seeds: ELBO median"
                f" {statistics.median(err_elbo):.1e} (max {max(err_elbo):.1e}), entropy sum median"
                f" {statistics.median(err_sum):.1e} (max {max(err_sum):.1e})",
        "verdict": "match" if worst < 5e-3 else "short",
        "why": "both within 0.5 % on every seed" if worst < 5e-3 else f"worst seed {worst:.1e}",
        "command": cmd("linear_vae_ppca", [*args.common, "--seed", "S"]),
    }]


def claim_gaps(args, out) -> list[dict]:
    rows = []
    for data in args.gap_data:
        extra = ["--data", data, "--kinds", "vae1", "vae3", *(args.common or GAP_ARGS.get(data, []))]
        runs = [run("vae_kinds", [*extra, "--seed", str(s), "--out", str(out / f"gaps_{data}_{s}")])
                for s in range(args.seeds)]
        for kind in ("vae1", "vae3"):
            gaps = [abs(r[kind]["train/rel_gap"]) for r in runs]
            q1, med, q3 = quartiles(gaps)
            good = med < 0.04
            rows.append({
                "claim": f"{kind.upper()} on {data}: final |relative gap| (train)",
                "paper": "Fig. 1b/c, 5: median relative difference on a 0-4 % axis, shrinking with training",
                "ours": f"median {pct(med)}, quartiles {pct(q1)} - {pct(q3)} over {len(runs)} seeds",
                "verdict": "match" if good else "short",
                "why": ("inside the paper's 0-4 % band" if good else
                        "not converged within the epoch budget; more epochs close it further"),
                "command": cmd("vae_kinds", [*extra, "--seed", "S"]),
            })
    return rows


def claim_fixed(args, out) -> list[dict]:
    extra = ["--data", "ppca", "--kinds", "vae0", "vae1", *args.common]
    r = run("vae_kinds", [*extra, "--out", str(out / "fixed")])
    fixed, learned = abs(r["vae0"]["train/rel_gap"]), abs(r["vae1"]["train/rel_gap"])
    profiled_gap = abs(r["vae0"]["train/elbo"] - r["vae0"]["train/sum_profiled"]) / abs(r["vae0"]["train/sum_profiled"])
    sep = fixed > 5 * max(learned, 1e-4)
    return [{
        "claim": "Fixed decoder variance (VAE-0) keeps its gap",
        "paper": "Fig. 1 (fixed-sigma run visibly separates)",
        "ours": f"|rel. gap| VAE-0 {pct(fixed)} vs VAE-1 {pct(learned)}; VAE-0 ELBO vs profiled sum"
                f" (sigma^2 = sigma^2*) {pct(profiled_gap)}",
        "verdict": "match" if sep else "short",
        "why": "the fixed-sigma gap stays open; the profiled sum tracks what a learned sigma would reach"
               if sep else "VAE-0 gap did not separate at this data scale",
        "command": cmd("vae_kinds", extra),
    }]


def claim_spread(args, out) -> list[dict]:
    extra = [*args.common, "--out", str(out / "spread")]
    r = run("elbo_estimation", extra)
    ratios = r["std_ratio"]
    rows = []
    for n in (100, 1000):
        if n in ratios:
            ratio = ratios[n]
            rows.append({
                "claim": f"Held-out ELBO estimate from n = {n} points: spread of the sampled ELBO / entropy sum",
                "paper": "Fig. 2b: the entropy sum's standard deviation is orders of magnitude smaller",
                "ours": f"std ratio {ratio:.1f}x (10 repeats)",
                "verdict": "match" if ratio >= 10 else "short",
                "why": "at least an order of magnitude" if ratio >= 10 else "less than an order of magnitude here",
                "command": cmd("elbo_estimation", args.common),
            })
    return rows


def claim_streaming(args, out) -> list[dict]:
    extra = ["--segment-size", str(args.segment_size), *args.common, "--out", str(out / "streaming")]
    r = run("streaming_bic", extra)
    share_sum, share_elbo = r["right_share_sum"], r["right_share_elbo"]
    right = [r["latents"].index(k) for k in r["dims"]]  # the model with the segment's intrinsic dimension
    std_right = [r["std_ratio"][s][m] for s, m in enumerate(right)]
    noise_right = [r["noise_ratio"][s][m] for s, m in enumerate(right)]
    perfect = all(s >= 0.999 for s in share_sum)
    std_ok = min(std_right) >= 9
    return [{
        "claim": "Streaming model selection (D = 10; intrinsic dims 6, 2, 4; linear VAEs H = 2, 4, 6)",
        "paper": "Fig. 3a: entropy-sum BIC picks the right H in 100 % of the last 5,000 batches;"
                 " ELBO BIC 98.3-99.9 %; per-batch std 9-20x lower",
        "ours": f"right H (last {r['eval_batches']} batches per segment): entropy sum "
                + ", ".join(pct(s) for s in share_sum) + "; sampled ELBO " + ", ".join(pct(s) for s in share_elbo)
                + "; std ratio ELBO/sum of the right model per segment (incl. the drift of learning) "
                + ", ".join(f"{v:.1f}x" for v in std_right)
                + "; batch-to-batch " + ", ".join(f"{v:.0f}x" for v in noise_right),
        "verdict": ("match" if std_ok else "match (selection), short (spread)") if perfect else "short",
        "why": ("entropy-sum BIC right in every evaluated batch" if perfect
                else "the entropy-sum BIC misses some batches at this segment size")
        + ("" if std_ok else "; the std over the last batches also holds the slow drift of the still-learning"
           " models, which both BICs share, so it can fall below 9x where a segment's learning is slow (segment"
           " 1, H = 6); the batch-to-batch noise is 2-3 orders of magnitude lower with the entropy sum"),
        "command": cmd("streaming_bic", ["--segment-size", str(args.segment_size), *args.common]),
    }]


def claim_collapse(args, out) -> list[dict]:
    extra = [*args.common, "--out", str(out / "collapse")]
    r = run("posterior_collapse", extra)
    ppca = r["ppca_active"]
    found = ", ".join(f"k = {k}: {v}" for k, v in ppca.items())
    digits = r["digits"]
    ok = all(int(v) == int(k) for k, v in ppca.items())
    return [{
        "claim": "Posterior collapse: active latents vs the data's intrinsic dimension",
        "paper": "Fig. 3b: collapsed latents sit at the prior entropy, active ones below 1.0 nat",
        "ours": f"pPCA data, H = 8: active latents found {found}; digits H = {len(digits['latent_entropy'])}:"
                f" {digits['monitor_active']} active",
        "verdict": "match" if ok else "short",
        "why": "the entropy criterion finds exactly the intrinsic dimension" if ok
               else "the count differs from the intrinsic dimension on some data set",
        "command": cmd("posterior_collapse", args.common),
    }]


def claim_stopping(args, out) -> list[dict]:
    extra = [*args.common, "--out", str(out / "stopping")]
    r = run("early_stopping", extra)
    budget, stopped = r["fixed budget"], r["convergence stop"]
    saved = budget["epochs"] - stopped["epochs"]
    delta = stopped["val_elbo"] - budget["val_elbo"]
    ok = saved > 0 and abs(delta) <= 0.01 * abs(budget["val_elbo"])
    return [{
        "claim": "Convergence stopping: epochs saved at equal ELBO",
        "paper": "(an application of the gap as a convergence signal; no figure in the paper)",
        "ours": f"stopped after {stopped['epochs']} of {budget['epochs']} epochs ({saved} saved); val ELBO"
                f" {stopped['val_elbo']:.3f} vs {budget['val_elbo']:.3f} with the full budget",
        "verdict": "match" if ok else "short",
        "why": "same ELBO within 1 % with fewer epochs" if ok else (
            "the gap closes once the variances are near their stationary values, while the ELBO itself still"
            f" rises slowly ({abs(delta):.2f} nats here); a smaller tolerance trades saved epochs for ELBO"
            if saved > 0 else "the early stop saved nothing"),
        "command": cmd("early_stopping", args.common),
    }]


# ----------------------------------------------------------------------------------------- report
def write_markdown(rows: list[dict], path: Path, seconds: float, argv: list[str]) -> None:
    lines = [
        "# Reproducing the paper's results",
        "",
        "Damm et al., *The ELBO of Variational Autoencoders Converges to a Sum of Three Entropies*, AISTATS 2023.",
        "Produced by `python benchmarks/reproduce.py` (all claims, default sizes; about 10 minutes on one CPU"
        f" thread, torch {torch.__version__}). `--only CLAIM ...` re-runs some claims and keeps the other rows"
        f" of the last run (`runs/reproduce/rows.json`); this file's last writer: `reproduce.py {' '.join(argv)}`"
        f" ({seconds / 60:.1f} min). S in a command is the seed (0 ... seeds-1). Verdicts follow the rule"
        " in each row's *why*; they are computed, not edited.",
        "",
        "| claim | paper | ours | verdict | why | command |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [c.replace("|", "\\|") for c in
                 (r["claim"], r["paper"], r["ours"], f"**{r['verdict']}**", r["why"], r["command"])]
        lines.append("| " + " | ".join(cells) + " |")
    figures = sorted(p.name for p in (path.parent / "figures").glob("reproduce_*.png"))
    lines += ["", "## Figures from these runs", ""] + [f"![{name}](figures/{name})" for name in figures] + [""]
    # keep the section benchmarks/stopping.py writes (an hour of training; not re-run here)
    old = path.read_text() if path.exists() else ""
    begin, end = "<!-- stopping-benchmark:begin -->", "<!-- stopping-benchmark:end -->"
    if begin in old and end in old:
        lines += [old[old.index(begin):old.index(end) + len(end)], ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=CLAIMS, default=list(CLAIMS))
    parser.add_argument("--seeds", type=int, default=5, help="seeds for the per-seed claims (default: 5)")
    parser.add_argument("--gap-data", nargs="+", default=["ppca", "pca_ring", "digits"])
    parser.add_argument("--segment-size", type=int, default=100_000, help="streaming segment (paper: 100,000)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (checks the script, not the claims)")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the results from rows.json")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "reproduce")
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "results.md")
    args = parser.parse_args(argv)
    args.common = ["--smoke"] if args.quick else []
    if args.quick:
        args.seeds, args.segment_size = min(args.seeds, 2), 2_000
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    store = args.out / "rows.json"  # rows of earlier runs: re-running some claims keeps the others
    previous = json.loads(store.read_text()) if store.exists() and not args.quick else []
    fresh: dict[str, list[dict]] = {}
    for name in [] if args.markdown_only else args.only:
        fresh[name] = [{**row, "key": name} for row in globals()[f"claim_{name}"](args, args.out)]
    rows = [r for key in CLAIMS for r in (fresh.get(key) or [p for p in previous if p.get("key") == key])]
    store.write_text(json.dumps(rows, indent=1, default=str))
    seconds = time.perf_counter() - start
    if not args.quick:  # one figure per claim folder (not the per-seed gap runs) next to the results
        figures = args.results.parent / "figures"
        figures.mkdir(parents=True, exist_ok=True)
        for folder in ("fixed", "spread", "streaming", "collapse", "stopping"):
            for png in sorted((args.out / folder).glob("*.png")):
                shutil.copyfile(png, figures / f"reproduce_{png.name}")
    write_markdown(rows, args.results, seconds, argv)
    print(f"\nwrote {args.results} ({seconds / 60:.1f} min)")
    for r in rows:
        print(f"- {r['verdict']:5s} {r['claim']}: {r['ours']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
