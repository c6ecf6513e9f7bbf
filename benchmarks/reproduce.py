"""Reproduce the paper's claims at full size and write ``docs/results.md`` (minutes; not run in CI).

    python benchmarks/reproduce.py                 # everything, default sizes (see --help)
    python benchmarks/reproduce.py --only ppca gaps # some claims
    python benchmarks/reproduce.py --quick         # tiny sizes, to check the script itself

Every number comes from the example scripts in ``examples/`` (their ``main()`` returns it), run here
with the arguments printed in the table, so each row can be re-run on its own.

The results file is its own record: each table row names its claim in the last column, and ``--only``
keeps the rows of the claims it does not run from the file it rewrites (parsed back). Where the file
lacks a row of a claim it must keep, the script refuses before running anything and writes nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CLAIMS = ("ppca", "gaps", "manifolds", "fixed", "spread", "streaming", "collapse", "stopping", "discrete")
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
    results = run("elbo_estimation", extra)
    rows = []
    for r in results.values():
        ratios = [r["std_ratio"][n] for n in r["sizes"]]
        ok = min(ratios) >= 10
        iwae = [(n, m) for n, m in zip(r["sizes"], r["iwae_mean"]) if m == m]  # NaN where not computed
        n_ref, iwae_ref = iwae[-1] if iwae else (None, float("nan"))
        i_ref = r["sizes"].index(n_ref) if n_ref else -1
        point = r["point_std_elbo"] / r["point_std_sum"]
        cost = r["us_per_point"]
        if ok:
            why = "at least an order of magnitude at every n"
        elif r["kind"] == "vae3":
            why = ("VAE-3's decoder entropy depends on x and z, so its entropy sum varies from point to point too"
                   f" ({r['point_std_sum']:.2f} vs {r['point_std_elbo']:.2f} nats per point for the ELBO); that is"
                   " spread over the points, which more z samples per point do not remove")
        else:
            why = (f"per point the ELBO varies {r['point_std_elbo']:.2f} nats and the entropy sum"
                   f" {r['point_std_sum']:.2f} (through tau^2(x)) at D = {r['data_dim']}; the paper's Fig. 2 is a"
                   " VAE-1 at D = 12,288, where a point's ELBO sums far more terms")
        rows.append({
            "claim": f"Held-out ELBO estimate, {r['kind'].upper()} on {r['data']} (D = {r['data_dim']}, H ="
                     f" {r['latents']}): spread of the sampled ELBO / entropy sum",
            "paper": "Fig. 2b (VAE-1 on CelebA): n = 10 ... 10,000 in batches of 10, 10 repeats; the entropy sum's"
                     " std orders of magnitude below the ELBO's",
            "ours": "std ratio at n = " + ", ".join(f"{n:,}: {v:.1f}x" for n, v in zip(r["sizes"], ratios))
                    + f" (std of the ELBO {r['elbo_std'][0]:.3f} ... {r['elbo_std'][-1]:.4f}, of the entropy sum"
                    f" {r['sum_std'][0]:.3f} ... {r['sum_std'][-1]:.4f}); per point {point:.1f}x. Mean at n ="
                    f" {n_ref:,}: ELBO {r['elbo_mean'][i_ref]:.3f}, entropy sum {r['sum_mean'][i_ref]:.3f}, IWAE"
                    f" (K = {r['iwae_samples']:,}) log-likelihood {iwae_ref:.3f} (std {r['iwae_std'][i_ref]:.3f});"
                    f" cost per point {cost['iwae']:.0f} us for the IWAE vs {cost['single']:.1f} us for ELBO and"
                    f" entropy sum together ({cost['iwae'] / cost['single']:.0f}x)",
            "verdict": "match" if ok else "short",
            "why": why,
            "command": cmd("elbo_estimation", args.common),
        })
    return rows


def _finite(value: float | None) -> float:
    """A settling offset of None (never settled within the segment) counts as infinitely late."""
    return float("inf") if value is None else value


def _seed_range(values: list[float], fmt: str) -> str:
    """Median over seeds with the range in brackets."""
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def claim_streaming(args, out) -> list[dict]:
    size = ["--segment-size", str(args.segment_size)]
    runs = [run("streaming_bic", [*size, *args.common, "--seed", str(s),
                                  "--out", str(out / ("streaming" if s == 0 else f"streaming_{s}"))])
            for s in range(args.seeds)]
    legacy = run("streaming_bic", [*size, *args.common, "--setup", "legacy", "--out", str(out / "streaming_legacy")])
    paper = example("streaming_bic").PAPER
    segments = range(len(runs[0]["dims"]))
    seeds = f"{len(runs)} seeds, median (range) per segment"
    command = cmd("streaming_bic", [*size, *args.common, "--seed", "S"])

    def per_segment(key: str, fmt: str) -> str:
        return "; ".join(_seed_range([_finite(r[key][s]) for r in runs], fmt) for s in segments)

    def paper_values(key: str, fmt: str) -> str:
        return " / ".join(format(v, fmt) for v in paper[key])

    def medians(key: str) -> list[float]:
        return [statistics.median(_finite(r[key][s]) for r in runs) for s in segments]

    setup = ("paper's set-up (S = 100, one stream per model, nested subspaces, softplus std; values before the"
             " optimizer step)")
    sum_all = all(r["right_share_sum"][s] == 1.0 for r in runs for s in segments)
    lo, hi = paper["std_ratio_range"]
    ratio_med = medians("std_ratio_right")
    inside = all(lo <= v <= hi for v in ratio_med)
    outside = [f"seed {i}, segment {s + 1}: {r['std_ratio_right'][s]:.1f}x" for i, r in enumerate(runs)
               for s in segments if not lo <= r["std_ratio_right"][s] <= hi]
    above = all(r["std_ratio_right"][s] >= lo for r in runs for s in segments)
    all_models = [v for r in runs for per_model in r["std_ratio"] for v in per_model]
    noise_med = medians("noise_ratio_right")
    noise_ok = all(0.5 <= ours / theirs <= 2 for ours, theirs in zip(noise_med, paper["noise_ratio_right"]))
    settle_sum, settle_elbo = medians("settle_sum"), medians("settle_elbo")
    sooner = all(a < b for a, b in zip(settle_sum, settle_elbo))
    pairs_sooner = sum(_finite(r["settle_sum"][s]) < _finite(r["settle_elbo"][s]) for r in runs for s in segments)
    return [
        {
            "claim": "Streaming model selection (Fig. 3a; D = 10, intrinsic dims 6, 2, 4; linear VAEs H = 2, 4, 6):"
                     " right H by BIC over the last 5,000 batches of each segment",
            "paper": "authors' published outputs: entropy sum " + paper_values("right_share_sum", ".2%")
                     + "; sampled ELBO " + paper_values("right_share_elbo", ".2%"),
            "ours": f"{setup}, {seeds}: entropy sum " + per_segment("right_share_sum", ".2%") + "; sampled ELBO "
                    + per_segment("right_share_elbo", ".2%"),
            "verdict": "match" if sum_all else "short",
            "why": "the entropy-sum BIC picks the right H in every evaluated batch of every segment and seed"
                   if sum_all else "the entropy-sum BIC misses some batches",
            "command": command,
        },
        {
            "claim": "Streaming model selection: std of the right model's BIC, ELBO / entropy sum",
            "paper": "authors' published outputs: " + paper_values("bic_std_elbo", ".2f") + " vs "
                     + paper_values("bic_std_sum", ".3f") + ", ratio " + paper_values("std_ratio_right", ".1f")
                     + f"x ({lo}-{hi}x over all models)",
            "ours": f"{seeds}: " + per_segment("bic_std_elbo", ".2f") + " vs " + per_segment("bic_std_sum", ".3f")
                    + "; ratio " + per_segment("std_ratio_right", ".1f") + f"; {min(all_models):.1f}-"
                    f"{max(all_models):.1f}x over all models and seeds. Earlier set-up (`--setup legacy`: S = 1,"
                    " one shared stream, a new subspace per segment, log-variance parameters), seed 0: ratio "
                    + " / ".join(f"{v:.1f}" for v in legacy["std_ratio_right"]) + "x",
            "verdict": "match" if inside else "short",
            "why": (f"the median over seeds is inside the authors' {lo}-{hi}x in every segment" if inside
                    else f"the median over seeds leaves the authors' {lo}-{hi}x in some segment")
                   + ("; single seeds outside: " + ", ".join(outside) if outside else "")
                   + (" (all above it: the entropy sum steadier still)" if outside and above else "")
                   + ("; over all models the ratio drops where a model with more latents than the data still drifts"
                      " late in a segment: the entropy sum follows that drift (see reproduce_streaming_bic.png)"
                      if min(all_models) < lo else ""),
            "command": command,
        },
        {
            "claim": "Streaming model selection: batch-to-batch std ratio of the right model's BIC, and the per-point"
                     " std",
            "paper": "authors' published outputs: " + paper_values("noise_ratio_right", ".0f") + "x; per point"
                     f" {paper['point_std_elbo'][0]}-{paper['point_std_elbo'][1]} (ELBO) vs"
                     f" {paper['point_std_sum'][0]}-{paper['point_std_sum'][1]} (entropy sum)",
            "ours": f"{seeds}: " + per_segment("noise_ratio_right", ".0f") + "x; per point "
                    + per_segment("point_std_elbo", ".2f") + " vs " + per_segment("point_std_sum", ".3f")
                    + "; earlier set-up, seed 0: " + " / ".join(f"{v:.0f}" for v in legacy["noise_ratio_right"])
                    + "x",
            "verdict": "match" if noise_ok else "short",
            "why": "median within a factor of 2 of the authors' value in every segment" if noise_ok
                   else "the median is more than a factor of 2 off the authors' value in some segment",
            "command": command,
        },
        {
            "claim": f"Streaming model selection: batches after each change until the BIC picks the right H"
                     f" {runs[0]['settle_run']} times in a row",
            "paper": "authors' published outputs: entropy sum " + paper_values("settle_sum", "d") + "; ELBO "
                     + paper_values("settle_elbo", "d"),
            "ours": f"{seeds}: entropy sum " + per_segment("settle_sum", ".0f") + "; ELBO "
                    + per_segment("settle_elbo", ".0f")
                    + f"; the entropy sum first in {pairs_sooner} of {len(runs) * len(segments)} seed-segment pairs",
            "verdict": "match" if sooner else "short",
            "why": "the entropy-sum BIC settles sooner than the ELBO's after every change (median over seeds)"
                   if sooner else "the entropy-sum BIC does not settle sooner after every change",
            "command": command,
        },
    ]


def claim_manifolds(args, out) -> list[dict]:
    runs = [run("toy_manifolds", [*args.common, "--seed", str(s),
                                  "--out", str(out / ("manifolds" if s == 0 else f"manifolds_{s}"))])
            for s in range(args.seeds)]
    rows = []
    for name, per_kind in runs[0].items():
        dim = next(iter(per_kind.values()))["data_dim"]
        cells, good, floored = [], True, []
        for kind in ("vae1", "vae3"):
            gaps = [r[name][kind]["rel_gap"] for r in runs]
            q1, med, q3 = quartiles(gaps)
            cells.append(f"{kind.upper()} median {pct(med)} ({pct(q1)} - {pct(q3)})")
            if statistics.median(abs(r[name][kind]["elbo"]) for r in runs) < 0.1 * dim:  # ELBO near zero
                med = statistics.median(r[name][kind]["floored_gap"] for r in runs)
                floored.append(f"{kind.upper()} {pct(med)}")
            good = good and med <= 0.04
        elbos = ", ".join(f"{kind.upper()} {statistics.median(r[name][kind]['elbo'] for r in runs):.3f}"
                          for kind in ("vae1", "vae3"))
        rows.append({
            "claim": f"Toy manifold {name} (D = {dim}): final |relative gap| (train), VAE-1 and VAE-3",
            "paper": "Fig. 1, 5 and the verification data of the authors' code: relative difference on a 0-4 % axis",
            "ours": "; ".join(cells) + f" over {len(runs)} seeds (quartiles); median ELBO {elbos} nats per point"
                    + ("; floored gap |ELBO - sum| / max(|sum|, 0.1 D): " + ", ".join(floored)
                       if floored else ""),
            "verdict": "match" if good else "short",
            "why": ("both medians inside the paper's 0-4 %" if good else "a median above 4 %")
                   + ("; where the median |ELBO| < 0.1 D the relative difference is ill-conditioned (the ELBO"
                      " crosses zero; a change of units x -> c x shifts it by -D log c), so the floored gap decides"
                      if floored else ""),
            "command": cmd("toy_manifolds", [*args.common, "--seed", "S"]),
        })
    return rows


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
    budget, stopped, stock = r["fixed budget"], r["convergence stop"], r["stock early stopping"]
    saved = budget["epochs"] - stopped["epochs"]
    delta = stopped["val_elbo"] - budget["val_elbo"]
    ok = abs(delta) <= 0.1 and stopped["val_elbo"] >= stock["val_elbo"] - 0.1
    return [{
        "claim": "Convergence stopping (EntropyConvergence, best checkpoint restored)",
        "paper": "(an application of the gap as a convergence signal; no figure in the paper)",
        "ours": f"stopped after {stopped['epochs']} of {budget['epochs']} epochs ({saved} saved); held-out ELBO"
                f" {stopped['val_elbo']:.3f} vs {budget['val_elbo']:.3f} with the full budget and"
                f" {stock['val_elbo']:.3f} with EarlyStopping(val ELBO, patience 10) after {stock['epochs']} epochs",
        "verdict": "match" if ok else "short",
        "why": ("within 0.1 nats of the full budget and of stock EarlyStopping" if ok else
                f"{abs(delta):.2f} nats from the full budget; see the stopping benchmark below for the rule's"
                " spread over 86 runs"),
        "command": cmd("early_stopping", args.common),
    }]


def claim_discrete(args, out) -> list[dict]:
    extra = [*args.common, "--out", str(out / "discrete")]
    r = run("discrete_vaes", extra)
    names = {"gray": "gray digits", "binary": "binarized digits", "categorical": "categorical HMM sequences"}
    parts, finals = [], []
    for key, setting in r["settings"].items():
        gap = setting["rel_gap"]
        peak = max(range(len(gap["median"])), key=lambda i: gap["median"][i])
        epochs = setting["eval_epochs"]
        finals.append(gap["median"][-1])
        parts.append(f"{names[key]}: {pct(gap['median'][peak])} (epoch {epochs[peak]}) -> {pct(gap['median'][-1])}"
                     f" [{pct(gap['low'][-1])}, {pct(gap['high'][-1])}] (epoch {epochs[-1]})")
    s = r["held_out"]
    spread = "; ".join(f"n = {n}: {e:.3g} / {m:.3g} / {w:.3g}" for n, e, m, w in
                       zip(s["sizes"], s["elbo_std"], s["sum_std"], s["iwae_std"]))
    ok = all(f < 0.02 for f in finals)
    return [{
        "claim": "Bernoulli and categorical VAEs: the ELBO converges to the entropy sum",
        "paper": "Lücke & Warnken (arXiv 2209.03077), Warnken et al. (arXiv 2501.09022): equal at stationary points"
                 " for exponential-family decoders with a linear last layer",
        "ours": "|ELBO - sum| / |ELBO| over all training points (20 z draws), median [min, max] of 5 seeds, peak ->"
                f" last: {'; '.join(parts)}. Held-out gray digits, std of 10 estimates, ELBO / entropy sum / IWAE"
                f" (K = {s['iwae_samples']}): {spread}",
        "verdict": "match" if ok else "short",
        "why": ("the median final gap is below 2 % in every setting (the paper's Gaussian gaps: 0-4 %); with a"
                " constant learning rate it levels off at 0.2-1 %. The Bernoulli entropy sum depends on z, so its"
                " held-out spread is only a little below the sampled ELBO's" if ok else
                "the median final gap is 2 % or more in some setting"),
        "command": cmd("discrete_vaes", args.common),
    }]


# ----------------------------------------------------------------------------------------- report
COLUMNS = ("claim", "paper", "ours", "verdict", "why", "command", "key")
HEADER = "| claim | paper | ours | verdict | why | command | `--only` |"
BEGIN, END = "<!-- stopping-benchmark:begin -->", "<!-- stopping-benchmark:end -->"
#: the sections other scripts write into the results file (stopping.py, stopping_fresh.py), kept as they are
KEPT_SECTIONS = ((BEGIN, END), ("<!-- stopping-fresh:begin -->", "<!-- stopping-fresh:end -->"))
_UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


class KeptRowsMissing(ValueError):
    """The results file lacks a row of a claim that a partial run must keep."""


def table_line(row: dict) -> str:
    """One Markdown table line of a row (``|`` escaped inside cells, the verdict in bold)."""
    cells = [row["claim"], row["paper"], row["ours"], f"**{row['verdict']}**", row["why"], row["command"],
             row["key"]]
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def parse_rows(text: str) -> list[dict]:
    """The claim rows of a results file, as :func:`table_line` wrote them; [] where the file has no claim table.

    Raises:
        ValueError: a line of the table does not have one cell per column of :data:`HEADER`, or names a claim
            that is not one of :data:`CLAIMS`.
    """
    lines = text.splitlines()
    if HEADER not in lines:
        return []
    rows = []
    for line in lines[lines.index(HEADER) + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip().replace("\\|", "|") for c in _UNESCAPED_PIPE.split(line.strip())[1:-1]]
        if len(cells) != len(COLUMNS):
            raise ValueError(f"Expected {len(COLUMNS)} cells ({', '.join(COLUMNS)}) in each row of the claim table,"
                             f" but got {len(cells)} in {line[:120]!r}.")
        row = dict(zip(COLUMNS, cells))
        if row["key"] not in CLAIMS:
            raise ValueError(f"Expected the last cell of a claim row to be one of {CLAIMS}, but got {row['key']!r}"
                             f" in {line[:120]!r}.")
        row["verdict"] = row["verdict"].removeprefix("**").removesuffix("**")
        rows.append(row)
    return rows


def merge_rows(fresh: dict[str, list[dict]], kept: list[dict], path: Path) -> list[dict]:
    """Rows in the order of :data:`CLAIMS`: the fresh rows of the claims run, the kept rows of the others.

    Raises:
        KeptRowsMissing: a claim that was not run has no row in ``kept`` (the rows of ``path``).
    """
    missing = [key for key in CLAIMS if key not in fresh and not any(r["key"] == key for r in kept)]
    if missing:
        raise KeptRowsMissing(
            f"Expected {path} to hold a row of every claim this run does not re-run, but it has no row of"
            f" {', '.join(missing)}. Nothing was written: run the full reproduction, or re-run these claims too"
            f" (add {' '.join(missing)} to --only).")
    return [r for key in CLAIMS for r in (fresh[key] if key in fresh else [r for r in kept if r["key"] == key])]


def write_markdown(rows: list[dict], path: Path, seconds: float, argv: list[str]) -> None:
    lines = [
        "# Reproducing the paper's results",
        "",
        "Damm et al., *The ELBO of Variational Autoencoders Converges to a Sum of Three Entropies*, AISTATS 2023.",
        "Produced by `python benchmarks/reproduce.py` (all claims, default sizes; about 25 minutes on one CPU"
        f" thread, torch {torch.__version__}). `--only CLAIM ...` re-runs some claims and keeps the other rows"
        " of this file (the last column names each row's claim); this file's last writer:"
        f" `reproduce.py {' '.join(argv)}` ({seconds / 60:.1f} min). S in a command is the seed (0 ... seeds-1)."
        " Verdicts follow the rule in each row's *why*; they are computed, not edited.",
        "",
        HEADER,
        "|" + "---|" * len(COLUMNS),
        *(table_line(r) for r in rows),
    ]
    figures = sorted(p.name for p in (path.parent / "figures").glob("reproduce_*.png"))
    lines += ["", "## Figures from these runs", ""] + [f"![{name}](figures/{name})" for name in figures] + [""]
    # keep the sections of the stopping benchmarks (their runs are not re-run here)
    old = path.read_text() if path.exists() else ""
    for begin, end in KEPT_SECTIONS:
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
    parser.add_argument("--markdown-only", action="store_true",
                        help="run no claim: rewrite the results file from its own rows")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "reproduce")
    parser.add_argument("--results", type=Path, default=None,
                        help="the file to write (default: docs/results.md; with --quick: OUT/results.md)")
    args = parser.parse_args(argv)
    args.common = ["--smoke"] if args.quick else []
    if args.quick:
        args.seeds, args.segment_size = min(args.seeds, 2), 2_000
    if args.results is None:
        args.results = args.out / "results.md" if args.quick else ROOT / "docs" / "results.md"
    names = [] if args.markdown_only else list(dict.fromkeys(args.only))

    def kept_rows() -> list[dict]:
        return parse_rows(args.results.read_text()) if args.results.exists() else []

    try:  # refuse before hours of training, not after
        merge_rows({key: [] for key in names}, kept_rows(), args.results)
    except ValueError as error:  # a row to keep is missing, or the table does not parse
        print(f"reproduce.py: {error}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    fresh: dict[str, list[dict]] = {}
    for name in names:
        fresh[name] = [{**row, "key": name} for row in globals()[f"claim_{name}"](args, args.out)]
    (args.out / "rows.json").write_text(json.dumps(fresh, indent=1, default=str))  # this run's rows only
    try:  # the file as it is now: another writer may have changed it during the run
        rows = merge_rows(fresh, kept_rows(), args.results)
    except ValueError as error:
        print(f"reproduce.py: {error} This run's rows are in {args.out / 'rows.json'}.", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    if not args.quick:  # one figure per claim folder (not the per-seed gap runs) next to the results
        figures = args.results.parent / "figures"
        figures.mkdir(parents=True, exist_ok=True)
        for folder in ("manifolds", "fixed", "spread", "streaming", "collapse", "stopping", "discrete"):
            if folder in fresh:
                for png in sorted((args.out / folder).glob("*.png")):
                    shutil.copyfile(png, figures / f"reproduce_{png.name}")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    write_markdown(rows, args.results, seconds, argv)
    print(f"\nwrote {args.results} ({seconds / 60:.1f} min)")
    for r in rows:
        print(f"- {r['verdict']:5s} {r['claim']}: {r['ours']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
