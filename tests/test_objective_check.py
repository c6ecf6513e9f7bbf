"""The objective check on rows of real forward passes: is the training loss the beta = 1 ELBO?

Each row comes from a VAE-1 trained on the loss under test (Adam steps between batches, so the statistics drift),
with batches of 64 points and a smaller last batch of 40: -loss as the user's step returns it, the batch size, the
batch's ELBO (``F.gaussian_elbo``) and per latent its KL summed over the points.
"""

from __future__ import annotations

import functools
import io
import json
import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

import lightning_entropy_vae.functional as F
from lightning_entropy_vae.callbacks._objective import MIN_BATCHES, ObjectiveCheck
from lightning_entropy_vae.data import make_ppca_data
from lightning_entropy_vae.models import GaussianVAE

D, H = 12, 4
SIZES = (64, 64, 64, 64, 64, 40)  # an "epoch": five full batches and a smaller last one
FLOAT32 = torch.finfo(torch.float32).eps


def _kl_per_latent(mu, logvar):
    """KL(q(z_h|x) || N(0, 1)) per point and latent (B, H)."""
    return 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar)


def _recon(c):
    return c["elbo"] + c["kl"].sum(-1)


def _beta(beta):
    return lambda c: -(_recon(c) - beta(c["k"]) * c["kl"].sum(-1)).mean()


LOSSES = {
    "mean": lambda c: -c["elbo"].mean(),
    # a summed Gaussian log-likelihood without its D/2 log(2 pi) per point
    "sum without the per-point constant": lambda c: -(c["elbo"] + 0.5 * D * math.log(2 * math.pi)).sum(),
    "mean + offset": lambda c: -c["elbo"].mean() + 37.5,
    "sum + offset": lambda c: -c["elbo"].sum() + 3.7,
    "beta = 4": _beta(lambda k: 4.0),
    "beta = 4, summed": lambda c: -(_recon(c) - 4.0 * c["kl"].sum(-1)).sum(),
    "2 x mean": lambda c: -2 * c["elbo"].mean(),
    # free bits: the batch-mean KL of each latent charged at least lambda = 0.5 nats
    "free bits": lambda c: -(_recon(c).mean() - torch.clamp(c["kl"].mean(0), min=0.5).sum()),
    # -(log p(x|z) + log p(z) - log q(z|x)) at the step's one z: a Monte Carlo KL
    "Monte Carlo KL": lambda c: -(_recon(c) + Normal(0.0, 1.0).log_prob(c["z"]).sum(-1)
                                  - Normal(c["mu"], (0.5 * c["logvar"]).exp()).log_prob(c["z"]).sum(-1)).mean(),
    # KL warm-up: the weight rises from 0 to 1 over the first 64 batches
    "warm-up": _beta(lambda k: min(1.0, k / 64)),
    # a BCE loss of a decoder whose dec_mean are probabilities
    "BCE": lambda c: -(F.bernoulli_log_likelihood(x=c["x"], probs=c["dec_mean"]) - c["kl"].sum(-1)).mean(),
}


@functools.cache
def rows(name, seed=0, batches=64, pretrain=300, sizes=SIZES, dtype=None, probs=False):
    """Rows ``(-loss, n, elbo_sum, kl_sums, bernoulli_sum)`` of the last ``batches`` of ``pretrain + batches`` Adam
    steps on ``LOSSES[name]``; ``dtype`` rounds the returned losses, ``probs`` squashes ``dec_mean`` into (0, 1)."""
    torch.manual_seed(seed)
    data = make_ppca_data(4096, D, 2, seed=seed)
    data = torch.sigmoid(data) if probs else data
    model = GaussianVAE(D, H, kind="vae1", hidden_dims=(16,))
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    out, start = [], 0
    for step in range(pretrain + batches):
        n = sizes[step % len(sizes)]
        x = data[start:start + n]
        start = (start + n) % (len(data) - max(sizes))
        mu, logvar = model.encode(x)
        z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
        dec_mean, dec_logvar = model.decode(z)
        dec_mean = torch.sigmoid(dec_mean) if probs else dec_mean
        kl = _kl_per_latent(mu, logvar)
        elbo = F.gaussian_elbo(x=x, enc_mean=mu, enc_logvar=logvar, dec_mean=dec_mean, dec_logvar=dec_logvar,
                               reduction="none")
        loss = LOSSES[name](dict(x=x, mu=mu, logvar=logvar, z=z, dec_mean=dec_mean, kl=kl, elbo=elbo,
                                 k=step - pretrain))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step >= pretrain:
            with torch.no_grad():
                y = loss.detach() if dtype is None else loss.detach().to(dtype)
                bernoulli = F.bernoulli_log_likelihood(x=x, probs=dec_mean) - kl.sum(-1) if probs else None
                out.append((-float(y), n, float(elbo.sum()), tuple(kl.sum(0).tolist()),
                            None if bernoulli is None else float(bernoulli.sum())))
    return tuple(out)


def judge(table, eps=FLOAT32, window=64):
    check = ObjectiveCheck(window)
    check.eps = eps
    for neg_loss, n, elbo, kl, bernoulli in table:
        check.add(neg_loss, n, elbo, kl, bernoulli)
    return check


def test_per_latent_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(32, H, dtype=torch.float64), torch.randn(32, H, dtype=torch.float64)
    reference = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(torch.zeros_like(mu), torch.ones_like(mu)))
    torch.testing.assert_close(_kl_per_latent(mu, logvar), reference)
    torch.testing.assert_close(_kl_per_latent(mu, logvar).sum(-1),
                               F.gaussian_kl(enc_mean=mu, enc_logvar=logvar, reduction="none"))


@pytest.mark.parametrize(("loss", "convention"), [
    ("mean", "mean"), ("sum without the per-point constant", "sum"), ("mean + offset", "mean"),
    ("sum + offset", "sum"),
])
def test_the_elbo_up_to_a_reduction_and_an_offset_is_the_elbo(loss, convention):
    verdict = judge(rows(loss)).verdict()
    assert verdict.is_elbo is True, verdict.why
    assert verdict.convention == convention
    assert verdict.elbo_coef == pytest.approx(1.0, abs=1e-3) and verdict.kl_coef == pytest.approx(0.0, abs=1e-3)
    assert f"batch {convention}" in verdict.why and "the beta = 1 ELBO" in verdict.why


@pytest.mark.parametrize(("loss", "convention"), [("beta = 4", "mean"), ("beta = 4, summed", "sum")])
def test_beta_4_is_not_the_elbo_and_reports_b_minus_3(loss, convention):
    verdict = judge(rows(loss)).verdict()
    assert verdict.is_elbo is False, verdict.why
    assert verdict.convention == convention
    assert verdict.elbo_coef == pytest.approx(1.0, abs=1e-3) and verdict.kl_coef == pytest.approx(-3.0, abs=1e-3)
    assert "beta = 4" in verdict.why


def test_a_scaled_mean_loss_is_not_the_elbo_and_says_so():
    verdict = judge(rows("2 x mean")).verdict()
    assert verdict.is_elbo is False and verdict.convention == "mean"
    assert verdict.elbo_coef == pytest.approx(2.0, abs=1e-3) and verdict.kl_coef == pytest.approx(0.0, abs=1e-3)
    assert "the loss is 2 x -ELBO (batch mean)" in verdict.why


@pytest.mark.parametrize(("loss", "convention", "elbo_coef"), [
    ("mean", "mean", 1.0), ("sum + offset", "sum", 1.0), ("2 x mean", "mean", 2.0),
])
def test_equal_batch_sizes_take_the_reading_whose_coefficient_is_closest_to_one(loss, convention, elbo_coef):
    verdict = judge(rows(loss, sizes=(64,))).verdict()
    assert verdict.convention == convention and verdict.elbo_coef == pytest.approx(elbo_coef, abs=1e-3)
    assert verdict.is_elbo is (elbo_coef == 1.0), verdict.why


def test_free_bits_are_not_the_elbo():
    table = rows("free bits")
    charged = [sum(kl[h] for _, _, _, kl, _ in table) / sum(n for _, n, _, _, _ in table) for h in range(H)]
    assert min(charged) < 0.5 < max(charged)  # some latents below lambda, some above
    verdict = judge(table).verdict()
    assert verdict.is_elbo is False and "free bits" in verdict.why, verdict.why
    below = [str(h) for h in range(H) if charged[h] < 0.5]
    assert f"latent(s) {', '.join(below)} " in verdict.why


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_monte_carlo_kl_is_never_judged_not_the_elbo(seed):
    verdict = judge(rows("Monte Carlo KL", seed=seed)).verdict()
    assert verdict.is_elbo is not False, verdict.why


def test_kl_warm_up_is_not_the_elbo_until_a_whole_window_has_weight_one():
    table = rows("warm-up", batches=128, pretrain=0)
    check = ObjectiveCheck(window=64)
    check.eps = FLOAT32
    verdicts = []
    for k, (neg_loss, n, elbo, kl, _) in enumerate(table):
        check.add(neg_loss, n, elbo, kl)
        if k % 8 == 7:  # an epoch of 8 batches
            verdicts.append(check.verdict())
    assert [v.is_elbo for v in verdicts[:8]] == [False] * 8, [v.why for v in verdicts[:8]]  # weight below 1
    assert verdicts[-1].is_elbo is True, verdicts[-1].why  # batches 64-127 at weight 1
    assert check.batches == 64


@pytest.mark.parametrize("loss", ["mean", "sum without the per-point constant"])
def test_bfloat16_rounded_elbo_losses_are_the_elbo(loss):
    table = rows(loss, dtype=torch.bfloat16)
    assert any(abs(y - x) > 0 for (y, *_), (x, *_) in zip(table, rows(loss)))  # the rounding shows
    verdict = judge(table, eps=torch.finfo(torch.bfloat16).eps).verdict()
    assert verdict.is_elbo is True, verdict.why


def test_a_constant_kl_cannot_tell_beta():
    table = [(y - 3.0 * 2.0, n, e, (2.0 * n,), None) for y, n, e, _, _ in rows("mean")]  # beta = 4, KL = 2 nats
    verdict = judge(table).verdict()
    assert verdict.is_elbo is None and "KL varies too little" in verdict.why, verdict.why


def test_too_few_rows_cannot_tell():
    table = rows("mean")
    verdict = judge(table[:MIN_BATCHES - 1]).verdict()
    assert verdict.is_elbo is None and "too few to tell" in verdict.why
    assert judge(table[:MIN_BATCHES]).verdict().is_elbo is True


def test_one_batch_per_epoch_is_judged_once_the_window_has_enough_rows():
    check = ObjectiveCheck(window=16)
    check.eps = FLOAT32
    verdicts = []
    for neg_loss, n, elbo, kl, _ in rows("mean", batches=40, sizes=(40,)):  # one batch per epoch, 40 epochs
        check.add(neg_loss, n, elbo, kl)
        verdicts.append(check.verdict().is_elbo)
        assert check.batches == min(len(verdicts), 16)
    assert verdicts == [None] * (MIN_BATCHES - 1) + [True] * (40 - MIN_BATCHES + 1)


def test_state_dict_round_trip_through_json_and_torch_save():
    table = rows("beta = 4")
    check = judge(table[:50])
    state = check.state_dict()
    assert all(isinstance(v, float) for row in state["rows"] for v in row)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    for loaded in (json.loads(json.dumps(state)), torch.load(buffer, weights_only=True)):
        resumed = ObjectiveCheck()
        resumed.load_state_dict(loaded)
        assert resumed.batches == 50 and resumed.eps == FLOAT32
        assert resumed.verdict() == check.verdict()
        for row in table[50:]:
            resumed.add(row[0], row[1], row[2], row[3])
        assert resumed.verdict() == judge(table).verdict()


def test_the_bernoulli_diagnosis_of_a_bce_loss():
    verdict = judge(rows("BCE", probs=True)).verdict()
    assert verdict.bernoulli is not None and "the Bernoulli ELBO explains -loss" in verdict.bernoulli
    # the same model trained on its Gaussian ELBO: no Bernoulli diagnosis
    gaussian = judge(rows("mean", probs=True))
    assert gaussian.bernoulli() is None and gaussian.verdict().is_elbo is True


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda: ObjectiveCheck(MIN_BATCHES - 1), ValueError, rf"Expected `window` to be at least {MIN_BATCHES}"),
    (lambda: ObjectiveCheck("64"), TypeError, "Expected `window` to be an int, but got str"),
    (lambda: judge(rows("mean")[:2]).add(-1.0, 4, -4.0, [1.0]), ValueError,
     rf"Expected `kl_sums` of {H} latents as in the rows held, but got 1"),
    (lambda: ObjectiveCheck().add(-1.0, 0, -4.0, [1.0]), ValueError, "Expected `points`"),
])
def test_argument_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
