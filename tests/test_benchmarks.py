"""The benchmark scripts run at tiny sizes and their numbers hold together: a broken benchmark fails here.

Each script runs in a subprocess, as a user runs it. The tests read what it prints and writes and check what
the numbers say (finite, in range, counts that match the run's size, a verdict that agrees with its number,
a replayed shortfall that matches the saved histories), not how fast anything was.
"""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"[-+]?(?:\d+\.?\d*(?:e[-+]?\d+)?|nan|inf)"


def _run(script: str, args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd, env=env)
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _stopping_phase1():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import _stopping_train
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return _stopping_train


def test_stopping_smoke_trains_and_records_every_batch(tmp_path):
    import numpy as np
    import torch
    from torch.distributions import Normal, kl_divergence

    out = tmp_path / "runs"
    printed = _run("stopping.py", ["--smoke", "--train-only", "--out", str(out)], tmp_path)
    # 11 families x 2 rates x --smoke's seeds 0 and 1; 5 loss variants x 4 families; sasa: 11 families x 2 seeds
    assert "phase 1: 86 runs (86 trained now" in printed
    (out / "summary.json").write_text("{}")  # another phase's output in the same folder is not a run
    train = _stopping_phase1()
    runs = train.load_runs(out)
    assert len(runs) == 86
    assert {run["config"]["variant"] for run in runs} == {"mean", "sum", "beta4", "warmup", "freebits", "scaled"}
    assert len({run["config"]["family"] for run in runs}) == 11
    log_2pi = math.log(2 * math.pi)
    for run in runs:
        cfg, name = run["config"], run["name"]
        epochs = cfg["epochs"] if run["stop_epoch"] is None else run["stop_epoch"] + 1
        assert all(len(run[key]) == epochs for key in train.EPOCH_ARRAYS), name
        e, n = run["batch_epoch"], run["batch_n"].astype(np.float64)
        assert run["batch_kl_sums"].shape == (len(e), cfg["latents"]) and (run["batch_kl_sums"] >= 0).all(), name
        assert all(len(run[key]) == len(e) for key in train.BATCH_ARRAYS), name
        assert (np.diff(e) >= 0).all() and e[0] == 0 and e[-1] == epochs - 1, name
        assert (np.bincount(e, weights=n) == cfg["n_train"]).all(), name
        assert all(np.isfinite(run[key]).all() for key in (*train.BATCH_ARRAYS, *train.EPOCH_ARRAYS)), name
        # the epoch's metrics (EntropySumELBO, GaussianELBO over its steps) are the points' means of the batch sums
        np.testing.assert_allclose(run["train_elbo"], np.bincount(e, weights=run["batch_elbo_sum"]) / cfg["n_train"],
                                   rtol=1e-5, atol=1e-4, err_msg=name)
        np.testing.assert_allclose(run["train_sum"], np.bincount(e, weights=run["batch_entsum_sum"]) / cfg["n_train"],
                                   rtol=1e-5, atol=1e-4, err_msg=name)
        elbo, kl_h = run["batch_elbo_sum"], run["batch_kl_sums"].astype(np.float64)
        kl, beta = kl_h.sum(1), run["batch_beta"].astype(np.float64)
        steps = len(e) // epochs if run["stop_epoch"] is None else None
        expected = {
            "mean": elbo / n,
            "scaled": 2 * elbo / n,
            "sum": elbo + 0.5 * cfg["D"] * log_2pi * n,
            "beta4": (elbo - 3 * kl) / n,
            "warmup": (elbo + (1 - beta) * kl) / n,
            "freebits": (elbo + kl) / n - np.maximum(cfg.get("free_bits", math.nan), kl_h / n[:, None]).sum(1),
        }[cfg["variant"]]
        assert cfg.get("free_bits") == (3.0 if cfg["variant"] == "freebits" else None), name  # lambda saved
        np.testing.assert_allclose(run["batch_neg_loss"], expected, rtol=1e-5, atol=2e-4, err_msg=name)
        ramp = np.minimum(1.0, np.arange(len(e)) / (0.5 * epochs * steps)) if cfg["variant"] == "warmup" else None
        np.testing.assert_allclose(beta, {"beta4": 4.0, "warmup": ramp}.get(cfg["variant"], 1.0), rtol=1e-6,
                                   err_msg=name)
        drops = run["lr_drop_epochs"]
        lr = cfg["lr"] * 0.1 ** np.searchsorted(drops, np.arange(epochs), side="left")
        np.testing.assert_allclose(run["lr"], lr, rtol=1e-6, err_msg=name)
        assert cfg["policy"] == "sasa" or (drops == [] and run["stop_epoch"] is None), name
    by_name = {run["name"]: run for run in runs}
    assert set(by_name["breast_cancer_mean_lr0.003_s0"]["batch_n"][:2]) == {128, 72}  # a smaller last batch
    assert set(by_name["wine_mean_lr0.003_s0"]["batch_n"]) == {110}  # one batch per epoch

    # the losses and the conv VAE's ELBO against torch.distributions
    torch.manual_seed(0)
    conv = train.ConvVAE(3, channels=(4, 8), side=8)
    x, eps = torch.randn(5, 64), torch.randn(5, 3)
    step = conv.step(x, eps=eps)
    q = Normal(step["enc_mean"], (0.5 * step["enc_logvar"]).exp())
    kl_ref = kl_divergence(q, Normal(0.0, 1.0))
    decoded = conv.decoder(step["enc_mean"] + (0.5 * step["enc_logvar"]).exp() * eps)
    log_lik = Normal(decoded, (0.5 * conv.dec_logvar).exp()).log_prob(x).sum(-1)
    torch.testing.assert_close(step["elbo"], log_lik - kl_ref.sum(-1))
    kl = train.latent_kl(step)
    torch.testing.assert_close(kl, kl_ref)
    torch.testing.assert_close(train.variant_loss("sum", step, kl, 1.0), -(log_lik.sum() - kl_ref.sum())
                               - 5 * 0.5 * 64 * log_2pi)
    torch.testing.assert_close(train.variant_loss("beta4", step, kl, 4.0), -(log_lik - 4 * kl_ref.sum(-1)).mean())
    torch.testing.assert_close(train.variant_loss("freebits", step, kl, 1.0, free_bits=0.1),
                               -log_lik.mean() + kl_ref.mean(0).clamp(min=0.1).sum())
    assert (kl_ref.mean(0) < 3.0).any()  # the default lambda binds here
    torch.testing.assert_close(train.variant_loss("freebits", step, kl, 1.0),
                               -log_lik.mean() + kl_ref.mean(0).clamp(min=3.0).sum())


def test_metric_update_table_and_verdict(tmp_path):
    printed = _run("metric_update.py", ["--repeat", "1", "--number", "20"], tmp_path)
    table = {}
    for line in printed.splitlines():
        match = re.fullmatch(rf"(.+?)\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})\s+(\d+)", line)
        if match:
            table[match[1]] = [float(match[i]) for i in range(2, 5)] + [int(match[5])]
    assert {"EntropySumELBO", "GaussianELBO (computed)", "torchmetrics.MeanMetric (elbo)",
            "(floor: 1-sum TorchMetrics metric)"} <= set(table)
    floor = table["(floor: 1-sum TorchMetrics metric)"]
    for name, (low, median, x_floor, calls) in table.items():
        assert 0 < low <= median < 1e6 and calls == 20, name
        assert math.isclose(x_floor, median / floor[1], rel_tol=0.03, abs_tol=0.01), name  # one repeat: one ratio
    assert floor[2] == 1.0
    (line,) = [line for line in printed.splitlines() if line.startswith("target EntropySumELBO.update()")]
    ratio, verdict = re.search(rf": ({NUMBER})x .* -> (PASS|FAIL)$", line).groups()
    expected = table["EntropySumELBO"][1] / table["torchmetrics.MeanMetric (elbo)"][1]  # one repeat: one ratio
    assert math.isclose(float(ratio), expected, rel_tol=0.03, abs_tol=0.01)
    assert verdict == _verdict(float(ratio) <= 1.0)


def test_stopping_fresh_smoke_replays_the_shipped_rule_on_the_families_added_after_the_choice(tmp_path):
    before = (ROOT / "docs" / "results.md").read_text()
    printed = _run("stopping_fresh.py", ["--smoke", "--out", str(tmp_path / "runs")], tmp_path)
    # 3 families x 2 rates x --smoke's seed 0, and 5 loss variants x 3 families
    assert "21 runs (" in printed
    assert {p.stem.split("_mean_")[0] for p in (tmp_path / "runs").glob("*_mean_*.json")} == {
        "diabetes", "s_curve", "blobs"}
    rows = {}
    for line in printed.splitlines():
        match = re.fullmatch(rf"(\S.*?)\s+({NUMBER}) % \((\d+)\)\s+({NUMBER}) / ({NUMBER})\s+(\S+ %.*?|-)\s+(\d+) of"
                             rf" (\d+)\s*", line)
        if match:
            rows[match[1]] = match.groups()[1:]
    assert len(rows) == 9, printed
    shipped = [name for name in rows if name.startswith("EntropyConvergence(): gate(ci, W 32, z 1, tol 0.01 D, E 1,"
                                                        " P 5) or fallback(P 20, |gap| <= 3 tol)")]
    assert len(shipped) == 2  # the callback's defaults, with and without the restore
    for name, (stop, _, median, worst, _, forbidden, never) in rows.items():
        assert 0 < float(stop) <= 100 and 0 <= float(median) <= float(worst), name
        assert int(never) == 15 - 3  # the sum variant is a beta = 1 run; beta4, warmup, freebits, scaled are not
        assert int(forbidden) <= int(never)
    assert rows["fixed budget"][0] == "100" and rows["fixed budget"][5] == "0"
    assert (ROOT / "docs" / "results.md").read_text() == before  # --smoke writes no docs


def test_overhead_quick_counts_hooks_and_verdicts_agree(tmp_path):
    printed = _run("overhead.py", ["--quick", "--configs", "train"], tmp_path)
    steps = math.ceil(6_400 / 128)  # --quick: N = 6,400, B = 128, one epoch
    assert f"; {steps} train steps)" in printed
    calls = dict(re.findall(r"^  (on_\w+|setup|teardown)\s+(\d+) ", printed, flags=re.MULTILINE))
    assert int(calls["on_train_batch_end"]) == int(calls["on_train_batch_start"]) == steps
    assert int(calls["on_train_epoch_end"]) == 1

    (row,) = re.findall(rf"^  train\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})\s+(PASS|FAIL)\s+({NUMBER})\s+(PASS|FAIL)"
                        rf"\s+({NUMBER})\s+(PASS|FAIL)\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})"
                        rf"\s+({NUMBER})$", printed, flags=re.MULTILINE)
    (base_us, fit_cpu, fit_wall, fit_ok, est, est_ok, pct, pct_ok, hook_us, plain_us, plain_median, _, naive_cpu,
     naive_wall) = row
    for value in (fit_cpu, fit_wall, est, naive_cpu, naive_wall):
        assert 0.2 < float(value) < 5.0, row  # a ratio of two fits of the same loop
    assert float(base_us) > 0 and 0 <= float(plain_us) <= float(hook_us)
    assert 0 < float(plain_median) <= float(hook_us)
    assert 0 <= float(pct) < 100
    assert fit_ok == _verdict(float(fit_cpu) <= 1.02) and est_ok == _verdict(float(est) <= 1.02)
    assert pct_ok == _verdict(float(pct) <= 1.0)
    assert f"overall (fit ratio and hooks): {_verdict(fit_ok == pct_ok == 'PASS')}" in printed


def test_overhead_runs_without_the_naive_callback(tmp_path):
    printed = _run("overhead.py", ["--quick", "--configs", "train", "--naive-rounds", "0"], tmp_path)
    (row,) = [line.split() for line in printed.splitlines() if line.startswith("  train ")]
    assert row[-2:] == ["nan", "nan"]  # no naive round: its ratios are not numbers
    assert 0.2 < float(row[2]) < 5.0  # the monitor's fit ratio still is


def test_logging_step_profile_counts_the_logging_steps(tmp_path):
    printed = _run("logging_step_profile.py", ["--epochs", "1"], tmp_path)
    parts = {}
    for line in printed.splitlines():
        match = re.fullmatch(rf"(\s*\S.*?)\s+(\d+)\s+({NUMBER})\s+({NUMBER})", line)
        if match:
            parts[match[1].strip()] = (int(match[2]), float(match[3]), float(match[4]))
    assert len(parts) == 12, parts
    assert all(calls > 0 and median > 0 and late > 0 for calls, median, late in parts.values())
    # 157 steps of B = 128 on N = 20,000; a logging step every 50: steps 50, 100 and 150
    logging_steps = math.ceil(20_000 / 128) // 50
    assert parts["logging step"][0] == parts["window"][0] == parts["_publish.step"][0] == logging_steps
    assert parts["reduce"][0] == 1  # the kept batches are reduced once, at the epoch's end (157 < 256 kept)
    assert parts["stack (window and reduce)"][0] == logging_steps + 1
    updates = parts["metric updates"][0]
    assert updates == parts["reduce"][0]
    for metric in ("EntropySumELBO", "ELBO", "PosteriorCollapse"):
        assert parts[f"{metric}.update"][0] == updates, metric
    assert parts["reduce"][1] >= parts["metric updates"][1]  # a part is timed inside the one holding it
    assert parts["logging step"][1] >= parts["window"][1]


def test_hot_path_floor_prints_each_arm_net_of_the_empty_hooks(tmp_path):
    printed = _run("hot_path_floor.py", ["--n", "3200", "--rounds", "1"], tmp_path)
    rows = dict((name.strip(), (float(total), float(net))) for name, total, net in re.findall(
        rf"^(empty hooks|one parameter copy|copy \+ detach \+ keep|EntropyMonitor)\s+({NUMBER})\s+({NUMBER})$",
        printed, flags=re.MULTILINE))
    assert list(rows) == ["empty hooks", "one parameter copy", "copy + detach + keep", "EntropyMonitor"]
    assert rows["empty hooks"][1] == 0.0
    for total, net in rows.values():
        assert total > 0 and math.isclose(net, total - rows["empty hooks"][0], abs_tol=0.11)


def test_ddp_spawn_exit_counts_runs(tmp_path):
    printed = _run("ddp_spawn_exit.py", ["--runs", "1"], tmp_path)
    arms = dict(
        (arm.strip(), (int(failed), int(aborted)))
        for arm, failed, aborted in re.findall(
            r"^(.+?): (\d+) of 1 runs exited non-zero \((\d+) with the abort at exit\)$", printed, flags=re.MULTILINE)
    )
    assert set(arms) == {"plain Lightning", "with DestroyGlooGroupAtExit"}
    assert all(0 <= aborted <= failed <= 1 for failed, aborted in arms.values())
    assert arms["with DestroyGlooGroupAtExit"] == (0, 0)  # the tests' fix: no run aborts at exit
