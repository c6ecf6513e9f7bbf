"""The stopping benchmark's replay (benchmarks/_stopping_rules.py, _stopping_grid.py, _stopping_report.py) on
synthetic records in the format of ``_stopping_train.load_runs``: the rules against independent references
(Lightning's own EarlyStopping, a batch-by-batch simulation of the callback, float64 closed forms), the scoring
against hand-computed numbers, and the selection on summaries built to make one choice right."""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from _stopping_grid import (
    ES20,
    SELECTION,
    SELECTION_FALLBACK,
    SELECTION_WORST_FIRST,
    GateConfig,
    Summary,
    fallback_grid,
    grid,
    replay_all,
    select,
    select_fallback,
    select_worst_first,
    summarise,
)
from _stopping_rules import (
    FallbackConfig,
    Replay,
    as_record,
    combined_rule,
    eligible,
    fallback_counts,
    fallback_rule,
    fallback_stop,
    first_run_end,
    gate_rule,
    objective_verdicts,
    patience_stop,
    score,
    window_stats,
)

from lightning_entropy_vae.callbacks._objective import ObjectiveCheck
from lightning_entropy_vae.functional import batch_means

LOG_2PI = math.log(2 * math.pi)


def synthetic_run(family: str = "ppca", variant: str = "mean", seed: int = 0, epochs: int = 60, batches: int = 6,
                  dim: int = 10, latents: int = 3, lr: float = 1e-3, gap_tau: float = 8.0, gap_noise: float = 0.05,
                  policy: str = "fixed") -> dict:
    """A run in the format of ``_stopping_train.load_runs``: the ELBO rises and levels off, the per-batch train
    gap decays to zero with noise, the test ELBO peaks at 60 % of the budget, and the loss follows ``variant``."""
    rng = np.random.default_rng([seed, sum(map(ord, family + variant))])
    sizes = [128] * (batches - 1) + [64]
    steps = epochs * batches
    rows = {k: [] for k in ("batch_epoch", "batch_n", "batch_neg_loss", "batch_elbo_sum", "batch_entsum_sum",
                            "batch_kl_sums", "batch_beta")}
    train_elbo, train_sum = [], []
    for t in range(epochs):
        level = -dim * (1.0 + 2.0 * math.exp(-t / 10))
        tot_e, tot_s, tot_n = 0.0, 0.0, 0
        for b, n in enumerate(sizes):
            step = t * batches + b
            beta = {"beta4": 4.0, "warmup": min(1.0, step / (0.5 * steps))}.get(variant, 1.0)
            e = level + rng.normal(0, 0.3)  # ELBO per point
            kl = 1.0 + 0.5 * np.sin(step + np.arange(latents)) + rng.normal(0, 0.2, latents)
            kl[0] = 0.1 + 0.05 * rng.random() if variant == "freebits" else kl[0]
            g = 2.0 * math.exp(-t / gap_tau) + rng.normal(0, gap_noise)
            neg = {"mean": e, "sum": (e + 0.5 * dim * LOG_2PI) * n, "beta4": e - 3.0 * kl.sum(),
                   "warmup": e + (1.0 - beta) * kl.sum(), "scaled": 2.0 * e,
                   "freebits": e + kl.sum() - np.maximum(0.5, kl).sum()}[variant]
            for key, value in (("batch_epoch", t), ("batch_n", n), ("batch_neg_loss", neg),
                               ("batch_elbo_sum", e * n), ("batch_entsum_sum", (e - g) * n),
                               ("batch_kl_sums", kl * n), ("batch_beta", beta)):
                rows[key].append(value)
            tot_e, tot_s, tot_n = tot_e + e * n, tot_s + (e - g) * n, tot_n + n
        train_elbo.append(tot_e / tot_n)
        train_sum.append(tot_s / tot_n)
    ts = np.arange(epochs)
    test = -dim * (1.0 + 2.0 * np.exp(-ts / 10)) - 0.002 * dim * np.maximum(0, ts - 0.6 * epochs)
    arrays = {k: np.asarray(v, dtype=float) for k, v in rows.items()}
    arrays["batch_epoch"] = arrays["batch_epoch"].astype(np.int32)
    arrays.update(train_elbo=np.array(train_elbo), train_sum=np.array(train_sum), test_elbo=test,
                  val_elbo=test + rng.normal(0, 0.05, epochs), val_sum=test - 0.1, val_elbo_acc=test,
                  lr=np.full(epochs, lr), seconds=np.arange(1.0, epochs + 1))
    config = {"family": family, "lr": lr, "seed": seed, "variant": variant, "epochs": epochs, "D": dim,
              "latents": latents, "policy": policy}
    name = f"{family}_{variant}{'' if policy == 'fixed' else '_' + policy}_lr{lr:g}_s{seed}"
    return {"name": name, "config": config, "stop_epoch": None, "lr_drop_epochs": [], **arrays}


# -------------------------------------------------------------------------------------- patience and runs
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("patience", [1, 3, 7])
def test_patience_stop_is_lightnings_early_stopping(seed, patience):
    rng = np.random.default_rng(seed)
    values = np.round(np.cumsum(rng.normal(0.2, 1.0, 60)), 1)  # rounding makes ties (no improvement)
    if seed % 2:
        values[rng.integers(20, 60)] = math.nan
    start = int(rng.integers(0, 10))
    stopper = EarlyStopping(monitor="v", mode="max", patience=patience, min_delta=0.0)
    expected = None
    for t in range(start, len(values)):
        if stopper._evaluate_stopping_criteria(torch.tensor(values[t], dtype=torch.float64))[0]:
            expected = t
            break
    assert patience_stop(values, start, patience) == expected


def test_patience_stop_stops_at_a_non_finite_value_as_lightning_does():
    values = np.array([1.0, 2.0, 3.0, math.nan, 4.0, 5.0])
    assert patience_stop(values, 0, 3) == 3 and patience_stop(values, 4, 3) is None
    assert patience_stop(np.array([1.0, 1.0, math.inf]), 0, 5) == 2


def test_first_run_end_counts_runs_in_a_row():
    ok = np.array([1, 1, 0, 1, 1, 1, 0, 1], bool)
    assert [first_run_end(ok, k) for k in (1, 2, 3, 4)] == [0, 1, 5, None]
    assert first_run_end(np.zeros(0, bool), 1) is None


# --------------------------------------------------------------------------------- the package statistics
def test_window_stats_are_the_float64_batch_means_of_the_last_w_batches():
    rec = as_record(synthetic_run(epochs=12, batches=5))
    mean, se = window_stats(rec, 16, groups=4)
    g = (rec["batch_elbo_sum"] - rec["batch_entsum_sum"]) / rec["batch_n"]
    for t in range(12):
        end = 5 * (t + 1)
        if end < 16:
            assert math.isnan(mean[t]) and math.isnan(se[t])
            continue
        gw, nw = g[end - 16:end], rec["batch_n"][end - 16:end]
        parts = [slice(0, 4), slice(4, 8), slice(8, 12), slice(12, 16)]
        weights = np.array([nw[p].sum() for p in parts])
        means = np.array([(gw[p] * nw[p]).sum() / nw[p].sum() for p in parts])
        ref = (weights * means).sum() / weights.sum()
        ref_se = math.sqrt(4 / 3 * (weights ** 2 * (means - ref) ** 2).sum() / weights.sum() ** 2)
        assert mean[t] == pytest.approx(ref, rel=1e-12) and se[t] == pytest.approx(ref_se, rel=1e-10)


@pytest.mark.parametrize(("variant", "expected"), [("mean", 1.0), ("sum", 1.0), ("beta4", 0.0), ("scaled", 0.0),
                                                   ("freebits", 0.0)])
def test_objective_verdicts_tell_the_beta1_elbo_from_the_other_losses(variant, expected):
    rec = as_record(synthetic_run(variant=variant, epochs=30, batches=6))
    verdicts = objective_verdicts(rec)[-10:]
    if expected:
        assert np.all(verdicts == 1.0), verdicts
    else:  # never the ELBO; "cannot tell" (NaN) now and then
        assert not (verdicts == 1.0).any() and (verdicts == 0.0).sum() >= 8, verdicts


def test_objective_verdicts_of_warmup_are_false_until_beta_reaches_1():
    rec = as_record(synthetic_run(variant="warmup", epochs=40, batches=6))
    verdicts = objective_verdicts(rec)
    assert np.all(verdicts[5:18] == 0.0) and np.all(verdicts[-5:] == 1.0), verdicts


# -------------------------------------------------------------------------- the rule against a live callback
def simulate_callback(run: dict, cfg: GateConfig, fb: FallbackConfig | None = None) -> int | None:
    """The rebuilt EntropyConvergence as Lightning runs it, fed batch by batch: per epoch the validation ends first
    (the fallback's check, then the gate's patience once armed: the first counted check is the validation of the
    epoch after the gate opens), then ``on_train_epoch_end`` updates the gate and records whether the next check
    counts for the fallback (the loss judged the ELBO and the window's gap within ``fb.gap_factor`` tol; False
    before the first training epoch's end). ``fb=None``: the gate alone."""
    rec = as_record(run)
    check = ObjectiveCheck(window=64)
    gaps, points, count, armed, best, wait = [], [], 0, False, -math.inf, 0
    fb_ok, fb_best, fb_wait = False, -math.inf, 0
    tol = cfg.tol * rec.dim if cfg.tol_unit == "D" else cfg.tol
    for t in range(rec.epochs):
        for k in np.nonzero(rec["batch_epoch"] == t)[0]:
            n = int(rec["batch_n"][k])
            check.add(rec["batch_neg_loss"][k], n, rec["batch_elbo_sum"][k], rec["batch_kl_sums"][k])
            gaps.append((rec["batch_elbo_sum"][k] - rec["batch_entsum_sum"][k]) / n)
            points.append(n)
        v = float(rec["val_elbo"][t])  # the validation loop's end
        stop = False
        if fb is not None:
            if not fb_ok:
                fb_best, fb_wait = max(fb_best, v), 0
            elif v > fb_best + fb.min_delta:
                fb_best, fb_wait = v, 0
            else:
                fb_wait += 1
                stop = fb_wait >= fb.patience
        if armed:
            if not math.isfinite(v):
                return t
            if v > best:
                best, wait = v, 0
            else:
                wait += 1
                stop = stop or wait >= cfg.patience
        if stop:
            return t
        is_elbo = check.verdict().is_elbo is True  # on_train_epoch_end
        mean = se = math.nan
        if len(gaps) >= cfg.window:
            m, s = batch_means(torch.tensor(gaps[-cfg.window:]), torch.tensor(points[-cfg.window:]),
                               groups=cfg.groups)
            mean, se = abs(float(m)), float(s)
        if not armed:
            counted = is_elbo and (mean + cfg.z * se <= tol if cfg.form == "ci" else mean <= max(cfg.z * se, tol))
            count = count + 1 if counted else 0
            armed = count >= cfg.epochs
        if fb is not None:
            fb_ok = is_elbo and (fb.gap_factor is None or mean <= fb.gap_factor * tol)  # NaN compares False
    return None


@pytest.mark.parametrize("variant", ["mean", "sum", "warmup", "beta4"])
@pytest.mark.parametrize("cfg", [GateConfig(16, 2.0, 0.1, "nats", 1, 5), GateConfig(32, 1.0, 0.005, "D", 3, 10),
                                 GateConfig(16, 3.0, 0.5, "nats", 3, 3), GateConfig(16, 2.0, 0.5, "nats", 1, 5, "ci"),
                                 GateConfig(32, 1.0, 0.02, "D", 3, 10, "ci")])
def test_gate_rule_stops_where_the_simulated_callback_stops(variant, cfg):
    run = synthetic_run(variant=variant, epochs=70, batches=6, seed=3)
    rp = Replay(as_record(run), (cfg,))
    expected = simulate_callback(run, cfg)
    assert gate_rule(rp, cfg) == expected
    if variant in ("mean", "sum"):
        assert expected is not None
    if variant == "beta4":
        assert expected is None


def test_objective_verdicts_asked_now_and_then_are_those_asked_every_epoch():
    rec = as_record(synthetic_run(variant="warmup", epochs=60, batches=5, seed=2))
    full = objective_verdicts(rec)
    ask = np.zeros(60, bool)
    ask[::7] = True
    sparse = objective_verdicts(rec, ask=ask)
    assert np.isnan(sparse[~ask]).all() and np.array_equal(sparse[ask], full[ask], equal_nan=True)
    assert (full[ask] == 0.0).any() and (full[ask] == 1.0).any()


def test_replay_uses_the_window_statistics_and_verdicts_of_the_whole_record():
    rec = as_record(synthetic_run(variant="warmup", epochs=60, batches=5, seed=2, gap_tau=5.0, gap_noise=0.3))
    rp = Replay(rec, tuple(grid()))
    full = objective_verdicts(rec)
    asked = ~np.isnan(rp.verdicts)
    assert asked.sum() > 10 and np.array_equal(rp.verdicts[asked], full[asked])
    assert (full[asked] == 0.0).any() and (full[asked] == 1.0).any()
    for w, (mean, se) in rp.stats.items():
        ref_mean, ref_se = window_stats(rec, w)
        seen = ~np.isnan(mean)
        assert seen.sum() > 5 and np.allclose(mean[seen], ref_mean[seen], rtol=1e-12, atol=0)
        assert np.allclose(se[seen], ref_se[seen], rtol=1e-12, atol=0)


def test_gate_rule_is_causal():
    run = synthetic_run(epochs=80, batches=6, seed=1)
    cfg = GateConfig(16, 2.0, 0.1, "nats", 1, 5)
    stop = gate_rule(Replay(as_record(run), (cfg,)), cfg)
    assert stop is not None
    keep = np.asarray(run["batch_epoch"]) <= stop
    cut = {k: (np.asarray(v)[keep] if k.startswith("batch_") else np.asarray(v)[:stop + 1])
           if isinstance(v, np.ndarray) else v for k, v in run.items()}
    assert gate_rule(Replay(as_record(cut), (cfg,)), cfg) == stop


# -------------------------------------------------------------------------------------------------- scores
def test_score_reads_the_test_elbo_at_the_stop_and_at_the_best_val_epoch():
    run = synthetic_run(epochs=10, batches=2)
    run["test_elbo"] = np.array([-9.0, -5.0, -4.0, -3.0, -3.5, -2.0, -6.0, -2.5, -7.0, -8.0])
    run["val_elbo"] = np.array([-9.0, -4.0, -5.0, -3.9, -3.0, -3.1, -2.9, -8.0, -9.0, -9.0])
    rec = as_record(run)
    s = score(rec, 5)
    assert (s["stop"], s["stop_pct"], s["fired"], s["restore_epoch"]) == (5, 60.0, True, 4)
    assert s["plain"] == pytest.approx(0.0) and s["restore"] == pytest.approx(1.5)
    assert score(rec, 6)["restore_epoch"] == 6  # the stop epoch itself is seen by the checkpoint
    s = score(rec, None)
    assert (s["stop"], s["fired"], s["restore_epoch"]) == (9, False, 6)
    assert s["plain"] == pytest.approx(6.0) and s["restore"] == pytest.approx(4.0)
    assert eligible(rec)  # best test epoch 6 of 10 < 8


def test_score_marks_stops_of_runs_that_must_not_stop():
    warm = as_record(synthetic_run(variant="warmup", epochs=40, batches=6))  # beta reaches 1 in epoch 20
    assert score(warm, 15)["forbidden"] and not score(warm, 25)["forbidden"] and not score(warm, None)["forbidden"]
    for variant in ("beta4", "freebits", "scaled"):
        assert score(as_record(synthetic_run(variant=variant, epochs=20)), 30 // 3)["forbidden"]
    assert not score(as_record(synthetic_run(epochs=20)), 10)["forbidden"]


# ------------------------------------------------------------------------------------------------ selection
def _summary(stop: float, worst: float, fire: float = 1.0, forbidden: int = 0, median: float = 0.1) -> Summary:
    return Summary("x", True, 10, stop, stop, median, worst, 10, fire, 4, forbidden)


def test_select_takes_the_earliest_admissible_config_and_breaks_ties_to_the_simpler_one():
    es20 = _summary(50.0, 5.0)
    a, b, c, d, e = (GateConfig(64, 2.0, 0.1, "nats", 3, 5), GateConfig(64, 2.0, 0.01, "D", 1, 5),
                     GateConfig(32, 2.0, 0.1, "nats", 1, 10), GateConfig(32, 1.0, 0.1, "nats", 1, 5),
                     GateConfig(128, 3.0, 0.5, "nats", 1, 20))
    summaries = [(a, _summary(30.0, 0.5)), (b, _summary(30.5, 0.5)), (c, _summary(30.8, 0.9, median=0.3)),
                 (d, _summary(20.0, 1.5)),  # earlier but too short
                 (e, _summary(10.0, 0.2, fire=0.5))]  # earlier but fires too rarely
    chosen, _s, ok = select(summaries, es20)
    assert ok and chosen == c  # a, b, c stop within 1 point: E = 1 before 3, then tol in nats before per D
    summaries.append((GateConfig(16, 2.0, 0.5, "nats", 1, 5), _summary(25.0, 0.5, forbidden=1)))
    assert select(summaries, es20)[0] == c


def test_select_worst_first_takes_the_lowest_worst_shortfall_then_the_earlier_stop_then_the_simpler_config():
    a, b, c, d, e, f = (GateConfig(64, 2.0, 0.02, "D", 1, 10, "ci"), GateConfig(32, 2.0, 0.02, "D", 1, 10, "ci"),
                        GateConfig(32, 1.0, 0.01, "D", 3, 10, "ci"), GateConfig(32, 2.0, 0.1, "nats", 1, 5),
                        GateConfig(32, 1.0, 0.5, "nats", 1, 5), GateConfig(128, 2.0, 0.5, "nats", 1, 20, "ci"))
    summaries = [(a, _summary(44.0, 1.10)), (b, _summary(44.0, 1.12)),  # tied with c on worst and stop
                 (c, _summary(44.0, 1.08)),
                 (d, _summary(30.0, 1.20)),  # earlier, but 0.12 nats worse than the lowest: not tied
                 (e, _summary(20.0, 0.50, fire=0.8)),  # lower worst, but fires too rarely
                 (f, _summary(25.0, 0.90, forbidden=1))]  # lower worst, but stops a never-stop run
    chosen, s, ok = select_worst_first(summaries)
    assert ok and chosen == b and s.worst == 1.12  # a, b, c within 0.05 nats and at 44 %: E 1, then W 32
    assert select_worst_first([(a, _summary(44.0, 1.10)), (b, _summary(44.0, 1.14)), (c, _summary(44.0, 1.08))]
                              )[0] == a  # 1.14 is more than 0.05 above 1.08: not tied
    summaries.append((GateConfig(128, 2.0, 0.02, "D", 3, 20, "ci"), _summary(43.0, 1.12)))
    assert select_worst_first(summaries)[0].patience == 20  # within 0.05 nats and earlier: wins over simpler ones
    summaries.append((GateConfig(128, 2.0, 0.02, "D", 3, 20), _summary(90.0, 1.00)))
    assert select_worst_first(summaries)[0] == GateConfig(128, 2.0, 0.02, "D", 3, 20)  # 1.00 ties only <= 1.05
    chosen, _, ok = select_worst_first([(e, _summary(20.0, 0.5, fire=0.8)), (f, _summary(25.0, 0.4, forbidden=1))])
    assert not ok and chosen == f  # none fits: a miss over all configs
    assert "added after the first results were seen" in SELECTION_WORST_FIRST.lower()


def test_gate_forms_count_a_noisy_window_differently():
    noisy_max, noisy_ci = GateConfig(32, 2.0, 0.5, "nats", 1, 5), GateConfig(32, 2.0, 0.5, "nats", 1, 5, "ci")
    assert noisy_max.counts(0.3, 0.5, 10) and not noisy_ci.counts(0.3, 0.5, 10)  # within noise, not within tol
    assert noisy_max.counts(0.3, 0.05, 10) and noisy_ci.counts(0.3, 0.05, 10)  # 0.3 + 0.1 <= 0.5
    assert not noisy_ci.counts(-0.45, 0.05, 10) and noisy_max.counts(-0.45, 0.05, 10)
    assert GateConfig(32, 1.0, 0.02, "D", 1, 5, "ci").counts(0.15, 0.04, 10)  # tol 0.2 nats at D = 10
    with pytest.raises(ValueError, match="Expected `form` in"):
        GateConfig(32, 1.0, 0.02, "D", 1, 5, "both")
    run = synthetic_run(epochs=70, batches=6, seed=5, gap_tau=6.0, gap_noise=1.5)
    rp = Replay(as_record(run), (noisy_max, noisy_ci))
    opened_max, opened_ci = rp.opens[noisy_max.gate(10)], rp.opens[noisy_ci.gate(10)]
    assert opened_max is not None and (opened_ci is None or opened_ci > opened_max)
    assert gate_rule(rp, noisy_max) == simulate_callback(run, noisy_max)
    assert gate_rule(rp, noisy_ci) == simulate_callback(run, noisy_ci)


def test_patience_starts_the_epoch_after_the_gate_opens():
    cfg = GateConfig(8, 2.0, 0.5, "nats", 1, 3)
    run = synthetic_run(epochs=30, batches=4, seed=0, gap_tau=2.0, gap_noise=0.01)
    rp = Replay(as_record(run), (cfg,))
    opened = rp.opens[cfg.gate(10)]
    assert opened is not None and opened + 6 < 30
    val = np.full(30, -10.0)
    val[opened] = 5.0  # the best value is at the gate's epoch, before the first counted check
    val[opened + 1:] = np.arange(1.0, 30 - opened) * -0.1  # falls from the next epoch on
    run["val_elbo"] = val
    rp = Replay(as_record(run), (cfg,))
    assert gate_rule(rp, cfg) == opened + 1 + 3 == simulate_callback(run, cfg)


def test_select_reports_a_miss_when_nothing_is_admissible():
    es20 = _summary(20.0, 5.0)
    a, b = GateConfig(64, 2.0, 0.1, "nats", 1, 5), GateConfig(32, 2.0, 0.1, "nats", 1, 5)
    chosen, _, ok = select([(a, _summary(30.0, 0.5)), (b, _summary(30.0, 2.0))], es20)
    assert not ok and chosen == a


# --------------------------------------------------------------------------------------------- end to end
def test_report_chooses_on_the_tuning_families_and_writes_its_outputs(tmp_path, capsys):
    from _stopping_report import report

    runs = [synthetic_run(family, variant, seed, epochs=50, batches=4)
            for family in ("ppca", "digits", "wine") for seed in (0, 1) for variant in ("mean", "sum")]
    runs += [synthetic_run("ppca", v, 0, epochs=50, batches=4) for v in ("beta4", "warmup", "freebits", "scaled")]
    runs.append(synthetic_run("wine", "mean", 0, epochs=30, batches=4, policy="sasa"))
    args = argparse.Namespace(out=tmp_path, no_docs=True)
    summary = report(runs, args)
    printed = capsys.readouterr().out
    assert "Selection rule (stated before any result)" in printed and SELECTION_WORST_FIRST in printed
    assert printed.index("Selection rule") < printed.index("Second selection rule") < printed.index("phase 2:")
    assert f"The selection stated before any result picks: {summary['prestated']['label']} + restore (" in printed
    assert f"-> THE DEFAULT: {summary['chosen']['label']} + restore" in printed
    assert "On the tuning families (digits, ppca:" in printed and "On the held-out families (wine:" in printed
    assert "SASA" in printed
    assert printed.index("Second selection rule") < printed.index(f"Fallback stage: {SELECTION_FALLBACK}") < \
        printed.index("phase 2:")
    fb = summary["fallback"]
    assert fb["shipped"].startswith(f"EntropyConvergence(): {summary['chosen']['label']} or fallback(P ")
    assert f"-> SHIPPED: {fb['shipped']} + restore" in printed
    assert any(row[0] == f"{fb['shipped']} + restore" for row in summary["tables"]["held-out families"])
    assert any(row[0] == f"the gate alone (the grid's pick): {summary['chosen']['label']} + restore"
               for row in summary["tables"]["tuning families"])
    # the fallback stage recomputed from the records with the combined rule
    gate = GateConfig(**{k: summary["chosen"][k] for k in ("window", "z", "tol", "tol_unit", "epochs", "patience",
                                                           "form", "groups")})
    fixed = [as_record(r) for r in runs if r["config"]["policy"] == "fixed"]
    tuning = [r for r in fixed if r.family != "wine"]
    replays = [Replay(r, (gate,)) for r in tuning]
    own = [(v, summarise("x", [score(r, combined_rule(rp, gate, v)) for r, rp in zip(tuning, replays)], tuning, True))
           for v in fallback_grid()]
    assert select_fallback(own)[0].label == fb["pick"]["label"]
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["chosen"]["label"] == summary["chosen"]["label"]
    assert len((tmp_path / "candidates.csv").read_text().splitlines()) == 1 + 2 * (4 + len(grid()))
    records = [as_record(r) for r in runs if r["config"]["policy"] == "fixed"]
    results, _ = replay_all(records, [], log=lambda s: None)
    tune = [i for i, r in enumerate(records) if r.family != "wine"]
    es20 = summarise(ES20, [results[ES20][i] for i in tune], [records[i] for i in tune], False)
    beta1 = [records[i] for i in tune if records[i].variant in ("mean", "sum")]
    stops = [patience_stop(r["val_elbo"], 0, 20) for r in beta1]
    stops = [100 * ((r.epochs - 1 if t is None else t) + 1) / r.budget for t, r in zip(stops, beta1)]
    assert es20.stop_pct == pytest.approx(np.median(stops))
    with (tmp_path / "candidates.csv").open() as f:
        rows = {(r["rule"], r["restore"]): r for r in csv.DictReader(f)}
    assert float(rows[(ES20, "no")]["median_stop_pct"]) == pytest.approx(np.median(stops), abs=0.05)


@pytest.mark.parametrize("variant", ["mean", "warmup"])
def test_gate_rule_over_the_whole_grid_stops_where_the_simulated_callback_stops(variant):
    run = synthetic_run(variant=variant, epochs=70, batches=6, seed=5, gap_tau=12.0, gap_noise=0.3)
    configs = grid()
    rp = Replay(as_record(run), tuple(configs))
    stops = []
    for cfg in configs[::7]:
        expected = simulate_callback(run, cfg)
        assert gate_rule(rp, cfg) == expected, cfg
        stops.append(expected)
    assert len(set(stops)) >= 3  # the configs differ in where they stop


def test_report_writes_the_figure_and_the_docs_section_keeping_the_rule_before(tmp_path, monkeypatch, capsys):
    import _stopping_report
    import _stopping_text

    docs = tmp_path / "docs"
    docs.mkdir()
    old_table = ["### All seeds", "", "| rule | stop |", "|---|---|", "| ES p10 | 20 % |", "",
                 "### Held-out seeds", "", "| rule | stop |"]
    before = "# Results\n\nintro\n\n<!-- stopping-benchmark:begin -->\n## Old\n\n" + "\n".join(old_table) + \
        "\n<!-- stopping-benchmark:end -->\n\n## After\n"
    (docs / "results.md").write_text(before)
    monkeypatch.setattr(_stopping_report, "ROOT", tmp_path)
    runs = [synthetic_run(family, "mean", seed, epochs=40, batches=4) for family in ("ppca", "wine") for seed in (0, 1)]
    _stopping_report.report(runs, argparse.Namespace(out=tmp_path / "runs", no_docs=False))
    capsys.readouterr()
    text = (docs / "results.md").read_text()
    assert text.startswith("# Results\n\nintro\n\n<!-- stopping-benchmark:begin -->\n## Stopping benchmark\n")
    assert text.endswith("<!-- stopping-benchmark:end -->\n\n## After\n") and "## Old" not in text
    # the earlier section kept whole, its headings one level down
    assert "| ES p10 | 20 % |" in text and "#### Held-out seeds" in text and "\n### Held-out seeds" not in text
    assert "### Tuning families (ppca)" in text and "### Held-out families (wine)" in text
    assert SELECTION in text and SELECTION_WORST_FIRST in text and "### The table that chose the gate" in text
    assert SELECTION_FALLBACK in text and "### The fallback variants on the tuning families" in text
    assert "| **EntropyConvergence()**: gate(" in text and "a second look at the held-out families" in text
    (docs / "figures" / "stopping_benchmark.png").unlink()
    _stopping_report.report(runs, argparse.Namespace(out=tmp_path / "runs", no_docs=False))
    assert (docs / "results.md").read_text().count(_stopping_text.BEFORE_BEGIN) == 1  # kept once when rewritten
    assert "| ES p10 | 20 % |" in (docs / "results.md").read_text()
    assert (docs / "figures" / "stopping_benchmark.png").stat().st_size > 10_000
    (docs / "results.md").write_text(before)
    _stopping_report.report(runs, argparse.Namespace(out=tmp_path / "runs", no_docs=True))
    assert (docs / "results.md").read_text() == before


def test_stopping_smoke_trains_replays_and_scores(tmp_path):
    """``stopping.py --smoke`` end to end: phase 1's records replayed, the numbers recomputed from them."""
    import os
    import re
    import statistics
    import subprocess

    from _stopping_grid import BUDGET, TUNING_FAMILIES
    from _stopping_train import load_runs

    root = Path(__file__).resolve().parents[1]
    docs = (root / "docs" / "results.md").read_text()
    out = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "stopping.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout
    runs = load_runs(out)
    (count,) = re.findall(r"phase 1: (\d+) runs \(\1 trained now", printed)
    assert len(runs) == int(count) > 0
    assert printed.index("Selection rule (stated before any result)") < printed.index("phase 2:")
    with (out / "candidates.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * (4 + len(grid())) == 2 * (4 + int(re.findall(r"All (\d+) gate configs", printed)[0]))
    for row in rows:
        assert 0 < float(row["median_stop_pct"]) <= 100, row
        assert 0 <= float(row["median_shortfall"]) <= float(row["worst_shortfall"]), row  # best minus reached
    # the fixed budget on the tuning families' beta = 1 runs, recomputed from the saved runs
    tuning = [r for r in runs if r["config"]["family"] in TUNING_FAMILIES and r["config"]["policy"] == "fixed"
              and r["config"]["variant"] in ("mean", "sum")]
    plain = [max(r["test_elbo"]) - r["test_elbo"][-1] for r in tuning]
    best_val = [max(r["test_elbo"]) - r["test_elbo"][int(np.argmax(r["val_elbo"]))] for r in tuning]
    by_rule = {(row["rule"], row["restore"]): row for row in rows}
    for restore, shortfalls in [("no", plain), ("yes", best_val)]:
        row = by_rule[(BUDGET, restore)]
        assert float(row["median_stop_pct"]) == 100.0
        assert float(row["median_shortfall"]) == round(statistics.median(shortfalls), 4)
        assert float(row["worst_shortfall"]) == round(max(shortfalls), 4)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["chosen"]["label"], "yes") in by_rule and (summary["prestated"]["label"], "yes") in by_rule
    assert f"-> THE DEFAULT: {summary['chosen']['label']} + restore" in printed
    assert f"The selection stated before any result picks: {summary['prestated']['label']} + restore (" in printed
    assert "On the held-out families (" in printed and "Where EntropyConvergence() (with restore) loses" in printed
    assert "Where the gate alone (with restore) loses" in printed and "The fallback stage picks: fallback(P " in printed
    assert (root / "docs" / "results.md").read_text() == docs  # --smoke writes no docs


def test_replay_cache_returns_the_same_gate_epochs_and_is_renewed_when_the_batches_change(tmp_path):
    from _stopping_grid import _cached_replay

    configs = tuple(grid()[::5])
    rec = as_record(synthetic_run(variant="warmup", epochs=50, batches=5, seed=4, gap_tau=6.0))
    fresh = Replay(rec, configs)
    first = _cached_replay(rec, configs, tmp_path)
    assert first.opens == fresh.opens and (tmp_path / f"{rec.name}.json").exists()
    cached = _cached_replay(rec, configs, tmp_path)
    assert cached.opens == fresh.opens and np.isnan(cached.verdicts).all()  # read back: nothing recomputed
    changed = as_record(synthetic_run(variant="mean", epochs=50, batches=5, seed=4, gap_tau=6.0))
    changed.meta["name"] = rec.name
    assert _cached_replay(changed, configs, tmp_path).opens == Replay(changed, configs).opens != fresh.opens


def test_replay_cache_is_renewed_when_only_the_gate_form_changes(tmp_path):
    from _stopping_grid import _cached_replay

    rec = as_record(synthetic_run(epochs=70, batches=6, seed=5, gap_tau=6.0, gap_noise=1.5))
    max_form, ci_form = GateConfig(32, 2.0, 0.5, "nats", 1, 5), GateConfig(32, 2.0, 0.5, "nats", 1, 5, "ci")
    first = _cached_replay(rec, (max_form,), tmp_path)
    second = _cached_replay(rec, (ci_form,), tmp_path)
    assert first.opens[max_form.gate(10)] != second.opens[ci_form.gate(10)] == Replay(rec, (ci_form,)).opens[
        ci_form.gate(10)]


# ------------------------------------------------------------------------------------------------ the fallback
FALLBACK_CASES = [(GateConfig(32, 1.0, 0.01, "D", 1, 5, "ci"), FallbackConfig(20, 3.0)),
                  (GateConfig(32, 1.0, 0.01, "D", 1, 5, "ci"), FallbackConfig(10, 10.0)),
                  (GateConfig(16, 2.0, 0.02, "D", 3, 10, "ci"), FallbackConfig(15, None)),
                  (GateConfig(16, 2.0, 0.1, "nats", 1, 5), FallbackConfig(10, 3.0, min_delta=0.01))]


@pytest.mark.parametrize("noise", [0.05, 1.5])
@pytest.mark.parametrize("variant", ["mean", "sum", "warmup", "beta4"])
@pytest.mark.parametrize("case", range(len(FALLBACK_CASES)))
def test_combined_rule_stops_where_the_simulated_callback_with_its_fallback_stops(case, variant, noise):
    cfg, fb = FALLBACK_CASES[case]
    run = synthetic_run(variant=variant, epochs=120, batches=6, seed=7, gap_tau=6.0, gap_noise=noise)
    rp = Replay(as_record(run), (cfg,))
    expected = simulate_callback(run, cfg, fb)
    assert combined_rule(rp, cfg, fb) == expected
    if variant == "beta4":
        assert expected is None


def test_the_simulated_fallback_cases_cover_both_paths():
    """Across FALLBACK_CASES the fallback decides some stops, the gate others (so both paths are compared)."""
    by_fallback = by_gate = 0
    for cfg, fb in FALLBACK_CASES:
        for noise in (0.05, 1.5):
            run = synthetic_run(epochs=120, batches=6, seed=7, gap_tau=6.0, gap_noise=noise)
            rp = Replay(as_record(run), (cfg,))
            gate, fallback = gate_rule(rp, cfg), fallback_rule(rp, cfg, fb)
            by_fallback += fallback is not None and (gate is None or fallback < gate)
            by_gate += gate is not None and (fallback is None or gate < fallback)
    assert by_fallback >= 2 and by_gate >= 2


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("patience", "min_delta"), [(1, 0.0), (3, 0.0), (7, 0.0), (3, 0.15)])
def test_fallback_stop_where_every_check_counts_is_lightnings_early_stopping(seed, patience, min_delta):
    rng = np.random.default_rng(seed)
    values = np.round(np.cumsum(rng.normal(0.2, 1.0, 60)))  # rounding makes ties (no improvement)
    stopper = EarlyStopping(monitor="v", mode="max", patience=patience, min_delta=min_delta)
    expected = next((t for t in range(60)
                     if stopper._evaluate_stopping_criteria(torch.tensor(values[t], dtype=torch.float64))[0]), None)
    assert fallback_stop(values, np.ones(60, bool), patience, min_delta) == expected


@pytest.mark.parametrize("seed", range(6))
def test_fallback_stop_after_checks_that_do_not_count_is_early_stopping_from_their_best(seed):
    """Checks 0..e do not count (the best still rises); from check e + 1 on it is EarlyStopping whose best starts
    at the highest value seen so far."""
    rng = np.random.default_rng(seed)
    values = np.round(np.cumsum(rng.normal(0.1, 1.0, 80)), 1)
    e = int(rng.integers(3, 30))
    counts = np.arange(80) >= e  # training epochs e, e + 1, ... end within the bound: checks e + 1, ... count
    stopper = EarlyStopping(monitor="v", mode="max", patience=4)
    stopper.best_score = torch.tensor(values[:e + 1].max(), dtype=torch.float64)
    expected = next((t for t in range(e + 1, 80)
                     if stopper._evaluate_stopping_criteria(torch.tensor(values[t], dtype=torch.float64))[0]), None)
    assert fallback_stop(values, counts, 4) == expected


def test_fallback_stop_reads_the_previous_training_epochs_verdict():
    """The check of epoch t reads what training epoch t - 1 published: a falling ELBO whose training epochs count
    from epoch e on stops at e + P (the checks e + 1 .. e + P), not at e + P - 1."""
    values = -np.arange(40.0)
    for e in (0, 5, 12):
        counts = np.arange(40) >= e
        assert fallback_stop(values, counts, 6) == e + 6
    assert fallback_stop(values, np.arange(40) >= 35, 6) is None  # 40 > 35 + 6 - 1 checks: none left
    assert fallback_stop(values, np.zeros(40, bool), 1) is None


def test_fallback_stop_resets_the_wait_and_keeps_the_best_on_a_check_that_does_not_count():
    # the best rises on a check that does not count: later counted checks must beat it
    values = np.array([1.0, 5.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0])
    counts = np.array([False] + [True] * 9)  # check 1 reads training epoch 0: does not count
    assert fallback_stop(values, counts, 3) == 4  # checks 2, 3, 4 do not beat 5
    # the wait restarts after a check that does not count
    values = -np.arange(30.0)
    counts = np.ones(30, bool)
    counts[6] = False  # the check of epoch 7 does not count
    assert fallback_stop(values, np.ones(30, bool), 10) == 10
    assert fallback_stop(values, counts, 10) == 7 + 10  # waited 6 checks, reset at 7, then 10 more
    # min_delta: an improvement must exceed it
    assert fallback_stop(np.array([0.0, 0.05, 0.1, 0.12, 0.5]), np.ones(5, bool), 2, min_delta=0.1) == 2


def test_fallback_counts_needs_the_elbo_verdict_and_a_finite_gap_within_the_bound():
    verdicts = np.array([1.0, 1.0, 1.0, 0.0, math.nan, 1.0, 1.0])
    gap = np.array([math.nan, 0.3, -0.3, 0.0, 0.0, 0.31, -0.29])
    assert fallback_counts(verdicts, gap, 0.3).tolist() == [False, True, True, False, False, False, True]
    assert fallback_counts(verdicts, gap, None).tolist() == [True, True, True, False, False, True, True]


@pytest.mark.parametrize("variant", ["mean", "warmup"])
def test_fallback_rule_is_causal(variant):
    run = synthetic_run(variant=variant, epochs=120, batches=6, seed=7, gap_tau=6.0, gap_noise=1.5)
    cfg, fb = FALLBACK_CASES[1]  # the gate never opens on this noisy gap: the fallback stops
    rp = Replay(as_record(run), (cfg,))
    stop = fallback_rule(rp, cfg, fb)
    assert stop is not None and stop < 110 and (gate_rule(rp, cfg) is None or gate_rule(rp, cfg) > stop)
    keep = np.asarray(run["batch_epoch"]) <= stop
    cut = {k: (np.asarray(v)[keep] if k.startswith("batch_") else np.asarray(v)[:stop + 1])
           if isinstance(v, np.ndarray) else v for k, v in run.items()}
    assert combined_rule(Replay(as_record(cut), (cfg,)), cfg, fb) == stop
    changed = {k: np.array(v, copy=True) if isinstance(v, np.ndarray) else v for k, v in run.items()}
    changed["val_elbo"][stop + 1:] = 1e6  # after the stop: a far better ELBO and a gap far from zero
    changed["batch_entsum_sum"][~keep] -= 100.0 * changed["batch_n"][~keep]
    assert combined_rule(Replay(as_record(changed), (cfg,)), cfg, fb) == stop


def test_replay_published_values_are_the_verdicts_and_window_means_of_every_epoch(tmp_path):
    from _stopping_grid import _cached_published

    rec = as_record(synthetic_run(variant="warmup", epochs=60, batches=5, seed=2, gap_tau=5.0, gap_noise=0.3))
    full, (mean, _) = objective_verdicts(rec), window_stats(rec, 32)
    for rp in (Replay(rec, tuple(grid())), Replay(rec, (), opens={})):  # after the gate replay, and from nothing
        verdicts, gap = rp.published(32)
        assert np.array_equal(verdicts, full, equal_nan=True) and np.allclose(gap, mean, rtol=1e-12, equal_nan=True)
    assert (full == 0.0).any() and (full == 1.0).any() and np.isnan(mean[:6]).all() and np.isfinite(mean[7:]).all()
    cfg = GateConfig(32, 1.0, 0.01, "D", 1, 5, "ci")
    _cached_published(Replay(rec, (cfg,)), cfg, tmp_path)
    cached = Replay(rec, (), opens={})
    _cached_published(cached, cfg, tmp_path)  # read back: seeded, not recomputed
    assert np.array_equal(cached._published[32][0], full, equal_nan=True)
    assert np.allclose(cached._published[32][1], mean, rtol=1e-12, equal_nan=True)


def test_select_fallback_takes_the_lowest_worst_then_the_earlier_stop_then_the_smaller_patience_and_factor():
    a, b, c, d, e, f = (FallbackConfig(30, 3.0), FallbackConfig(20, 3.0), FallbackConfig(20, 10.0),
                        FallbackConfig(20, None), FallbackConfig(10, 3.0), FallbackConfig(15, None))
    summaries = [(a, _summary(42.0, 1.08)), (b, _summary(42.0, 1.10)),  # tied on worst and stop: P 20 wins
                 (c, _summary(42.0, 1.12)),  # tied too, but a larger factor than b
                 (d, _summary(30.0, 1.20)),  # earlier, but 0.12 nats worse: not tied
                 (e, _summary(20.0, 0.50, fire=0.8)),  # lower worst, but fires too rarely
                 (f, _summary(25.0, 0.90, forbidden=1))]  # lower worst, but stops a never-stop run
    chosen, s, ok = select_fallback(summaries)
    assert ok and chosen == b and s.worst == 1.10
    assert select_fallback([(d, _summary(42.0, 1.1)), (c, _summary(42.0, 1.1))])[0] == c  # 10 before no bound
    assert select_fallback([*summaries, (FallbackConfig(30, 10.0), _summary(41.9, 1.13))])[0].patience == 30
    chosen, _, ok = select_fallback([(e, _summary(20.0, 0.5, fire=0.8)), (f, _summary(25.0, 0.4, forbidden=1))])
    assert not ok and chosen == f  # none admissible: a miss over all variants
    assert "after the held-out results of the gate alone had been seen" in SELECTION_FALLBACK
    assert [(fb.patience, fb.gap_factor) for fb in fallback_grid()] == [
        (p, k) for p in (10, 15, 20, 30) for k in (3.0, 10.0, None)]
